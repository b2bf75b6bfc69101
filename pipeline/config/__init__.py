"""The pipeline as data: typed, validated configuration.

`pipeline_config.json` is parsed into these pydantic models before any stage runs, so a typo or a
wrong type fails at once with the key path, the value received and what was expected, instead of
an hour into training. Unknown keys are forbidden everywhere. Stages receive these typed objects,
never raw dicts (base.py: strict models and ConfigError; sources.py: `ingest.source`; sections.py:
every other section and PipelineConfig; loading.py: files, `--set`, errors). The JSON Schema for editors is generated from the models (`convpipe config schema`).

Names of models, losses, optimizers and sources are plain strings chosen from registries; no code
is ever imported from configuration.
"""
from pipeline.config.base import (  # noqa: F401
    ConfigError, Fraction, NonNegativeInt, PositiveInt, Strict, Task)
from pipeline.config.sources import (  # noqa: F401
    CocoSource, ImageFolderSource, MaskFolderSource, Source, SyntheticSource, TfdsSource, VideoFolderSource,
    VocSource, YoloSource)
from pipeline.config.sections import (  # noqa: F401
    AugmentSection, BeamSection, ClusterSection, DaskSection, Divergence, EarlyStopping, EvaluateSection,
    ExportFormat, ExportSection, FineTune, FormatTolerance, IngestSection, ModelSection, MultitaskSection,
    OptimizerSection, PipelineConfig, PipelineSection, RandomResizedCrop, SplitFractions, TrainSection,
    ValidateSection)
from pipeline.config.loading import (  # noqa: F401
    apply_override, format_validation_error, json_schema, load_config, load_config_dict, parse_config)
