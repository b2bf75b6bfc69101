"""The sections of pipeline_config.json, one model each, and PipelineConfig that holds them."""
from __future__ import annotations

from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from pipeline.config.base import Fraction, NonNegativeInt, PositiveInt, Strict, Task
from pipeline.config.sources import Source, SyntheticSource


# --------------------------------------------------------------------------------------------
# pipeline and beam
# --------------------------------------------------------------------------------------------
class PipelineSection(Strict):
    name: str = "convpipe"
    root: str = Field("artifacts", description="Directory holding artifacts, metadata.sqlite and logs.")
    tensorboard_root: Optional[str] = Field(
        None, description="Where every run's TensorBoard logs land (a local directory); default <root>/tensorboard, "
                          "which for a remote root is <root>/tensorboard on the bucket.")
    metadata: Optional[str] = Field(
        None, description="The metadata store's database URL (CLI --metadata); default sqlite:///<root>/metadata.sqlite. "
                          "postgresql+psycopg://user:password@host:5432/db shares one store between machines.")

    @field_validator("tensorboard_root")
    @classmethod
    def _local_tensorboard_root(cls, value: Optional[str]) -> Optional[str]:
        # TensorBoard and tf.summary in TF 2.21 write local files only (s3:// moved to tensorflow-io)
        if value is not None and "://" in value and not value.startswith("file://"):
            raise ValueError("a local directory, not a URL (TensorBoard writes local files; leave it unset and a "
                             "remote --root copies the logs to <root>/tensorboard on the bucket)")
        return value


class DaskSection(Strict):
    """Where `beam.runner: "dask"` runs: a running `distributed` scheduler, or a LocalCluster per Beam pipeline."""
    address: Optional[str] = Field(
        None, description="A dask.distributed scheduler, e.g. tcp://scheduler:8786; none: start a LocalCluster.")
    workers: PositiveInt = Field(2, description="LocalCluster worker processes (only when no address is given).")
    threads_per_worker: PositiveInt = Field(1, description="LocalCluster threads per worker process.")
    partitions: Optional[PositiveInt] = Field(
        None, description="dask.bag partitions a Create is cut into; default: 2 per cluster worker thread, "
                          "at most one per work item (ingest) or train shard (augment).")


class BeamSection(Strict):
    args: list[str] = Field(default_factory=list, description="Extra Beam pipeline options, e.g. --runner=FlinkRunner.")
    runner: str = Field("DirectRunner", description="Named explicitly: a left-default runner may download binaries; "
                                                    "\"dask\" (or DaskRunner) runs on beam.dask's cluster.")
    direct_num_workers: PositiveInt = 1
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"
    dask: DaskSection = Field(default_factory=DaskSection)


# --------------------------------------------------------------------------------------------
# stages
# --------------------------------------------------------------------------------------------
class SplitFractions(Strict):
    train: Fraction = 0.7
    eval: Fraction = 0.15
    test: Fraction = 0.15

    @model_validator(mode="after")
    def _sum_to_one(self):
        total = self.train + self.eval + self.test
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"expected train + eval + test == 1, got {total:g}")
        return self


class IngestSection(Strict):
    source: Source = Field(default_factory=SyntheticSource)
    task: Task = "classification"
    image_size: Optional[tuple[PositiveInt, PositiveInt]] = Field(
        None, description="[height, width] to resize to during ingest; null keeps the source size.")
    image_format: Literal["png", "jpeg"] = "png"
    splits: SplitFractions = Field(default_factory=SplitFractions)
    num_shards: PositiveInt = Field(
        2, description="Shards per split (augment keeps the train split's count). A shard is sorted in one worker's "
                       "memory when written and may hold at most 1 GiB: e.g. ImageNet wants 1024.")
    max_bad_fraction: Fraction = Field(0.05, description="Fail when more than this share of records is bad.")


class ValidateSection(Strict):
    on_anomaly: Literal["fail", "warn"] = "fail"
    min_examples_per_class: NonNegativeInt = 1
    max_class_imbalance: Optional[Annotated[float, Field(ge=1.0)]] = Field(
        None, description="Largest allowed ratio between the most and least frequent class in train.")


class RandomResizedCrop(Strict):
    enabled: bool = True
    scale: tuple[Fraction, Fraction] = (0.6, 1.0)
    ratio: tuple[float, float] = (0.75, 1.333)


class AugmentSection(Strict):
    enabled: bool = True
    copies: NonNegativeInt = 1
    horizontal_flip: bool = True
    vertical_flip: bool = False
    rotate90: bool = False
    random_resized_crop: RandomResizedCrop = Field(default_factory=lambda: RandomResizedCrop(enabled=False))
    brightness: Annotated[float, Field(ge=0.0)] = 0.1
    contrast: Annotated[float, Field(ge=0.0)] = 0.1
    saturation: Annotated[float, Field(ge=0.0)] = 0.0
    noise_std: Annotated[float, Field(ge=0.0)] = 0.0
    min_visible_fraction: Fraction = Field(0.3, description="Drop a cropped box keeping less of its area.")
    reverse_time: bool = Field(False, description="Video only: reverse clips (only if labels allow).")


class ModelSection(Strict):
    name: str = Field("cnn", description="A registered model builder (models.registry).")
    params: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments for the builder.")


class OptimizerSection(Strict):
    name: Literal["sgd", "batch_gd", "stochastic_gd", "momentum", "nesterov", "adagrad", "adadelta", "adam"] = "adam"
    learning_rate: Annotated[float, Field(gt=0.0)] = 1e-3
    momentum: Fraction = 0.9
    schedule: Literal["constant", "cosine", "step"] = "constant"
    step_epochs: PositiveInt = Field(5, description="For schedule=step: epochs between decays.")
    step_decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.5
    clipnorm: Optional[Annotated[float, Field(gt=0.0)]] = None


class EarlyStopping(Strict):
    enabled: bool = False
    monitor: str = "val_loss"
    patience: PositiveInt = 3


class Divergence(Strict):
    """Fail training whose loss climbs far above where it started (a learning rate far too high)
    instead of finishing every epoch with a broken model. A NaN or infinite loss always fails."""
    factor: Optional[Annotated[float, Field(gt=1.0)]] = Field(
        4.0, description="Fail when the mean loss of the last `window` steps exceeds this times the first step's "
                         "loss; null: only a NaN or infinite loss fails.")
    window: PositiveInt = Field(10, description="Steps averaged before comparing with the first step's loss.")


class ClusterSection(Strict):
    """Multi-worker training: how long the workers wait for each other before failing instead of hanging."""
    heartbeat_timeout_s: PositiveInt = Field(
        10, description="A worker silent (dead, stopped) for this long fails the others (coordination service).")
    collective_timeout_s: Optional[PositiveInt] = Field(
        600, description="An all-reduce waiting longer than this fails (a worker alive but stuck); null: no limit.")


class MultitaskSection(Strict):
    name: str = Field("", description="A label for the scheme (names a sweep's trials); it changes nothing in training.")
    heads: list[str] = Field(
        default_factory=list,
        description="Heads to build and train; when non-empty it replaces model.params.heads (one head: a "
                    "single-task baseline on the same backbone).")
    weighting: Literal["static", "uncertainty"] = "static"
    weights: dict[str, float] = Field(default_factory=dict)
    schedule: Literal["joint", "alternating", "consecutive"] = "joint"
    ratio: dict[str, PositiveInt] = Field(default_factory=dict, description="alternating: steps per task.")
    epochs_per_task: dict[str, PositiveInt] = Field(default_factory=dict, description="consecutive: epochs per task.")
    losses: dict[str, str] = Field(
        default_factory=dict,
        description="Head -> registered loss name for classification (e.g. focal) and segmentation (pixel_focal) "
                    "heads; a head not named uses cross-entropy (detection: focal + Huber, regression: MSE).")
    loss_params: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Head -> keyword arguments for its loss in `losses`.")


class FineTune(Strict):
    """Two-phase fine-tuning of a model on a pretrained `model.params.backbone`: the first
    `frozen_epochs` train the head alone (backbone frozen, at train.optimizer's learning rate), the
    remaining epochs unfreeze the backbone as `backbone.trainable` says and train everything at
    `learning_rate` (components/training/fine_tune.py)."""
    frozen_epochs: PositiveInt = Field(..., description="Epochs that train the head alone, backbone frozen.")
    learning_rate: Annotated[float, Field(gt=0.0)] = Field(
        1e-5, description="Learning rate once the backbone is unfrozen (small: pretrained weights move little).")


class TrainSection(Strict):
    epochs: PositiveInt = 8
    batch_size: PositiveInt = 32
    loss: str = "categorical_crossentropy"
    loss_params: dict[str, Any] = Field(default_factory=dict)
    optimizer: OptimizerSection = Field(default_factory=OptimizerSection)
    distribution: Literal["auto", "default", "one_device", "mirrored", "multi_worker"] = "auto"
    logical_cpu_devices: Optional[PositiveInt] = Field(
        None, description="Split the CPU into this many logical devices (to test mirrored on CPU).")
    jit_compile: Union[bool, Literal["auto"]] = "auto"
    precision: Literal["float32", "mixed_bfloat16", "mixed_float16", "auto"] = Field(
        "float32", description="Keras dtype policy of training: float32 (bit-identical reruns); mixed_bfloat16 "
                               "(bfloat16 compute, float32 weights, batch norm statistics and outputs; the matrix "
                               "units of CPUs with AMX-BF16 and of GPUs from compute capability 8.0); mixed_float16 "
                               "(with loss scaling); auto: mixed_bfloat16 where the CPU or GPU runs it fast, else "
                               "float32 (the log says which and why; components/training/precision.py).")
    seed: int = 0
    seeds: list[int] = Field(default_factory=list, description="Repeat every trial with these seeds (sweeps).")
    sweep: dict[str, list[Any]] = Field(default_factory=dict, description="Config key path -> values to try.")
    parallel_trials: PositiveInt = 1
    shuffle_buffer: PositiveInt = 1024
    cache: Union[bool, Literal["auto"]] = Field(
        "auto", description="Keep the decoded train and eval splits in memory after their first epoch, so later "
                            "epochs only reshuffle them: true, false, or 'auto' (each split that, estimated from "
                            "schema.json, takes at most 512 MiB; components/training/train_input.py).")
    save_freq_steps: Optional[PositiveInt] = Field(None, description="Also back up every N steps (preemption).")
    early_stopping: EarlyStopping = Field(default_factory=EarlyStopping)
    divergence: Divergence = Field(default_factory=Divergence)
    cluster: ClusterSection = Field(default_factory=ClusterSection)
    num_sample_images: NonNegativeInt = 16
    multitask: MultitaskSection = Field(default_factory=MultitaskSection)
    fine_tune: Optional[FineTune] = Field(
        None, description="Two-phase fine-tune of model.params.backbone: {frozen_epochs, learning_rate}; null: "
                          "every epoch trains what backbone.trainable says.")

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data):
        if isinstance(data, dict) and "mixed_precision" in data:
            raise ValueError(f"train.mixed_precision was renamed train.precision (float32, mixed_bfloat16, "
                             f"mixed_float16 or auto); got mixed_precision={data['mixed_precision']!r}")
        return data


class EvaluateSection(Strict):
    metric: str = Field("accuracy", description="The metric that ranks trials and decides the blessing.")
    thresholds: dict[str, float] = Field(default_factory=lambda: {"accuracy": 0.9})
    compare_with_served: bool = True
    served_tolerance: Annotated[float, Field(ge=0.0)] = Field(
        0.0, description="Bless when metric >= served metric - tolerance.")
    target: Optional[float] = Field(None, description="Metric value for 'epochs to target' in comparisons.")
    num_sample_images: NonNegativeInt = 16
    top_k: PositiveInt = Field(2, description="k of the top-k accuracy (capped at the number of classes).")


class FormatTolerance(Strict):
    """Largest |difference| from the Keras model, on the probe images, that each format may show."""
    tflite: Annotated[float, Field(ge=0.0)] = 1e-4
    tflite_int8: Annotated[float, Field(ge=0.0)] = Field(
        0.1, description="For tflite_quantization=dynamic_int8 (weights rounded to 8 bits move outputs by ~1e-2).")
    onnx: Annotated[float, Field(ge=0.0)] = 1e-4


ExportFormat = Literal["saved_model", "tflite", "onnx"]


class ExportSection(Strict):
    serving_root: str = "serving"
    model_name: str = "convpipe"
    tolerance: Annotated[float, Field(gt=0.0)] = 1e-4
    max_detections: PositiveInt = 20
    formats: list[ExportFormat] = Field(
        default_factory=lambda: ["saved_model"],
        description="Files of each pushed version: the SavedModel (always; TF Serving), plus model.tflite (LiteRT) "
                    "and model.onnx, each converted from the float signature and checked in a fresh process.")
    tflite_quantization: Literal["float32", "dynamic_int8"] = Field(
        "float32", description="dynamic_int8: weights stored as int8 (a quarter of the size), activations float.")
    format_tolerance: FormatTolerance = Field(default_factory=FormatTolerance)

    @field_validator("formats")
    @classmethod
    def _saved_model_first(cls, formats):
        if "saved_model" not in formats:
            raise ValueError("a list holding \"saved_model\" (tflite and onnx are converted from it and sit beside it "
                             "in the version directory)")
        if len(set(formats)) != len(formats):
            raise ValueError("each format once")
        return formats


class PipelineConfig(Strict):
    pipeline: PipelineSection = Field(default_factory=PipelineSection)
    beam: BeamSection = Field(default_factory=BeamSection)
    ingest: IngestSection = Field(default_factory=IngestSection)
    validate_: ValidateSection = Field(default_factory=ValidateSection, alias="validate")
    augment: AugmentSection = Field(default_factory=AugmentSection)
    model: ModelSection = Field(default_factory=ModelSection)
    train: TrainSection = Field(default_factory=TrainSection)
    evaluate: EvaluateSection = Field(default_factory=EvaluateSection)
    export: ExportSection = Field(default_factory=ExportSection)

    model_config = ConfigDict(extra="forbid", populate_by_name=True, protected_namespaces=())

    def section(self, name: str) -> BaseModel:
        """The typed section for a stage name (`validate` is stored as `validate_`)."""
        return getattr(self, "validate_" if name == "validate" else name)

    def to_dict(self) -> dict:
        return self.model_dump(mode="json", by_alias=True)


