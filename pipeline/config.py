"""The pipeline as data: typed, validated configuration.

`pipeline_config.json` is parsed into these pydantic models before any stage runs, so a typo or a
wrong type fails at once with the key path, the value received and what was expected, instead of
an hour into training. Unknown keys are forbidden everywhere. Stages receive these typed objects,
never raw dicts. The JSON Schema for editors is generated from the models (`convpipe config schema`).

Names of models, losses, optimizers and sources are plain strings chosen from registries; no code
is ever imported from configuration.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration problem, phrased for the person who wrote the file."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


Task = Literal["classification", "segmentation", "detection", "video", "multitask"]
PositiveInt = Annotated[int, Field(strict=True, ge=1)]
NonNegativeInt = Annotated[int, Field(strict=True, ge=0)]
Fraction = Annotated[float, Field(ge=0.0, le=1.0)]


# --------------------------------------------------------------------------------------------
# pipeline and beam
# --------------------------------------------------------------------------------------------
class PipelineSection(Strict):
    name: str = "convpipe"
    root: str = Field("artifacts", description="Directory holding artifacts, metadata.sqlite and logs.")
    tensorboard_root: Optional[str] = Field(
        None, description="Where every run's TensorBoard logs land; default <root>/tensorboard.")
    metadata: Optional[str] = Field(
        None, description="The metadata store's database URL (CLI --metadata); default sqlite:///<root>/metadata.sqlite. "
                          "postgresql+psycopg://user:password@host:5432/db shares one store between machines.")


class BeamSection(Strict):
    args: list[str] = Field(default_factory=list, description="Extra Beam pipeline options, e.g. --runner=FlinkRunner.")
    runner: str = Field("DirectRunner", description="Named explicitly: a left-default runner may download binaries.")
    direct_num_workers: PositiveInt = 1
    direct_running_mode: Literal["in_memory", "multi_threading", "multi_processing"] = "in_memory"


# --------------------------------------------------------------------------------------------
# sources (one model per source, chosen by `name`)
# --------------------------------------------------------------------------------------------
class SyntheticSource(Strict):
    """Shapes on noisy backgrounds, generated from one seed: labels, masks, boxes and clips."""
    name: Literal["synthetic"] = "synthetic"
    num_examples: PositiveInt = 900
    image_size: PositiveInt = 32
    num_classes: Annotated[int, Field(strict=True, ge=2, le=6)] = 3
    max_shapes: PositiveInt = Field(1, description="Shapes per image (detection and segmentation use several).")
    min_shape_size: Fraction = 0.3
    max_shape_size: Fraction = 0.6
    noise: Annotated[float, Field(ge=0.0)] = 0.08
    num_frames: PositiveInt = Field(8, description="Frames per clip for task=video.")
    seed: int = 0


class ImageFolderSource(Strict):
    """One sub-folder per class, images inside (PNG, JPEG, GIF, BMP)."""
    name: Literal["image_folder"] = "image_folder"
    path: str
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".gif", ".bmp"])
    channels: Literal[1, 3] = Field(3, description="Decode every image to this many channels (3: RGB, 1: grey).")


class TfdsSource(Strict):
    """Any TFDS dataset already prepared in `data_dir` (no download at run time unless asked)."""
    name: Literal["tfds"] = "tfds"
    dataset: str
    data_dir: Optional[str] = None
    download: bool = False
    splits: dict[str, str] = Field(
        default_factory=lambda: {"train": "train", "test": "test"},
        description="TFDS split expression per source split; records are re-split by id hash.")
    features: dict[str, str] = Field(
        default_factory=lambda: {"image": "image", "label": "label"},
        description="Our field name -> TFDS feature name (image, label, mask, boxes, box_labels, frames).")


class CocoSource(Strict):
    """A COCO instances JSON and its image directory."""
    name: Literal["coco"] = "coco"
    annotations: str
    images: str


class VocSource(Strict):
    """A Pascal VOC tree: Annotations/*.xml, JPEGImages/, ImageSets/Main/<image_set>.txt (when present)."""
    name: Literal["voc"] = "voc"
    path: str = Field(..., description="The folder holding Annotations/ and JPEGImages/ (e.g. VOCdevkit/VOC2007).")
    image_set: Optional[str] = Field(
        "trainval", description="Read the ids in ImageSets/Main/<image_set>.txt; when the default's file is absent, "
                                "or with null, every Annotations/*.xml.")
    class_names: Optional[list[str]] = Field(
        None, description="Object names in label order (VOC's 20); default the sorted names found in the XMLs.")


class YoloSource(Strict):
    """A YOLO tree: images/, labels/*.txt (class cx cy w h, normalised) and data.yaml naming the classes."""
    name: Literal["yolo"] = "yolo"
    path: str = Field(..., description="The folder holding images/ and labels/.")
    data_yaml: Optional[str] = Field(None, description="The YAML with `names`; default <path>/data.yaml.")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp"],
                                  description="Image file extensions under images/.")


class MaskFolderSource(Strict):
    """images/ and masks/ with matching file names; masks are PNG class ids or palette PNGs."""
    name: Literal["mask_folder"] = "mask_folder"
    path: str
    num_classes: Annotated[int, Field(strict=True, ge=2)] = Field(
        ..., description="Mask ids 0..num_classes-1 are classes, 0 usually the background.")
    class_names: Optional[list[str]] = Field(None, description="One name per class id; default background, class_1, ...")
    ignore_value: Optional[int] = Field(255, description="Mask value that marks pixels to leave out of loss and metrics.")
    channels: Literal[1, 3] = Field(3, description="Decode every image to this many channels (3: RGB, 1: grey).")
    extensions: list[str] = Field(default_factory=lambda: [".png", ".jpg", ".jpeg", ".bmp"],
                                  description="Image file extensions under images/; masks are always .png.")


class VideoFolderSource(Strict):
    """One sub-folder per class; each clip an animated GIF or a folder of numbered frames."""
    name: Literal["video_folder"] = "video_folder"
    path: str
    num_frames: PositiveInt = 8
    length_policy: Literal["sample", "pad"] = "sample"


Source = Annotated[
    Union[SyntheticSource, ImageFolderSource, TfdsSource, CocoSource, VocSource, YoloSource, MaskFolderSource,
          VideoFolderSource],
    Field(discriminator="name"),
]


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


# --------------------------------------------------------------------------------------------
# loading, overriding, errors
# --------------------------------------------------------------------------------------------
_SOURCE_TAGS = {model.model_fields["name"].default for model in get_args(get_args(Source)[0])}


def _describe_error(err: dict) -> str:
    loc = [p for i, p in enumerate(err["loc"])  # drop the union tag pydantic puts after `source`
           if p not in ("function-after",) and not (i and err["loc"][i - 1] == "source" and p in _SOURCE_TAGS)]
    path = ".".join(str(p) for p in loc) or "<root>"
    path = path.replace("validate_", "validate")
    received = err.get("input")
    kind = err["type"]
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        return f"{path}: unknown key (not part of the configuration schema)"
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<=", "less_than": "<"}[kind]
        bound = next(iter(ctx.values()))
        expected = f"a number {op} {bound}"
    elif kind.startswith("int"):
        expected = "an integer" + (_field_lower_bound(err["loc"]) or "")
    elif kind.startswith("float"):
        expected = "a number"
    elif kind.startswith("bool"):
        expected = "true or false"
    elif kind == "union_tag_not_found":
        expected = f"an object with a {ctx.get('discriminator', 'name')} key choosing its kind"
    elif kind in ("literal_error", "union_tag_invalid"):
        expected = err["msg"].replace("Input should be ", "one of ").replace("Input tag", "tag")
    elif kind == "value_error":
        expected = err["msg"].removeprefix("Value error, ")
    elif kind == "missing":
        return f"{path}: required key is missing"
    else:
        expected = err["msg"][0].lower() + err["msg"][1:]
    return f"{path}: expected {expected}, got {json.dumps(received, default=str)}"


def _field_lower_bound(loc: tuple) -> Optional[str]:
    """The `ge`/`gt` bound declared on the field at `loc`, so a type error can state it too."""
    model: Any = PipelineConfig
    field = None
    for part in loc:
        fields = getattr(model, "model_fields", None)
        if not fields and part in _SOURCE_TAGS:   # the union tag: continue in that source's model
            model = next(m for m in get_args(get_args(Source)[0]) if m.model_fields["name"].default == part)
            continue
        if not fields:
            return None
        field = fields.get(part) or next((f for f in fields.values() if f.alias == part), None)
        if field is None:
            return None
        model = field.annotation
    for meta in getattr(field, "metadata", []):
        if getattr(meta, "ge", None) is not None:
            return f" >= {meta.ge}"
        if getattr(meta, "gt", None) is not None:
            return f" > {meta.gt}"
    return None


def format_validation_error(exc: ValidationError, source: str = "config") -> str:
    lines = [f"{source}: {len(exc.errors())} problem(s)"]
    for err in exc.errors():
        lines.append("  " + _describe_error(err))
    return "\n".join(lines)


def parse_config(data: dict, source: str = "config") -> PipelineConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a JSON object at the top level, got {type(data).__name__}")
    try:
        return PipelineConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def load_config_dict(path: str | Path) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from None


def apply_override(data: dict, assignment: str) -> dict:
    """Apply one `key.path=value` override; the value is parsed as JSON, else taken as a string."""
    if "=" not in assignment:
        raise ConfigError(f"--set {assignment}: expected key.path=value")
    key, raw = assignment.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    data = copy.deepcopy(data)
    node = data
    parts = key.split(".")
    defaults = PipelineConfig().to_dict()
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        defaults = defaults.get(part) if isinstance(defaults, dict) else None
        if child is None:
            # Keep the default's `name` (the discriminator of sources), so `--set ingest.source.seed=1`
            # still means the default synthetic source.
            child = node[part] = {"name": defaults["name"]} if isinstance(defaults, dict) and "name" in defaults else {}
        if not isinstance(child, dict):
            raise ConfigError(f"--set {key}: {'.'.join(parts[:i + 1])} is not a section (it holds {json.dumps(child)})")
        node = child
    node[parts[-1]] = value
    return data


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> PipelineConfig:
    """Load a config file (or the defaults when `path` is None), apply `--set` overrides, validate."""
    data = load_config_dict(path) if path is not None else {}
    for assignment in overrides:
        data = apply_override(data, assignment)
    return parse_config(data, str(path) if path is not None else "config")


def json_schema() -> dict:
    schema = PipelineConfig.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "convpipe pipeline_config.json"
    return schema
