"""Known backbones (ResNet, EfficientNet, MobileNet, DenseNet) from keras.applications, for the
classifier, the FCN and the detectors: `model.params.backbone = {"name", "weights", "trainable"}`.

- catalog.py: the names, the keras.applications constructor of each, its input, its stride taps.
- preprocessing.py: [0, 1] pixels -> what each backbone expects (a registered layer).
- weights.py: the user's weights file, compared with the backbone before loading.
- build.py: parse the spec, build the backbone, tap strides 8/16/32, freeze and unfreeze.

Nothing here downloads: weights come from a file the user names.
"""
from models.backbones.build import (BackboneSpec, build, check_input, find, parse_spec,  # noqa: F401
                                    set_trainable)
from models.backbones.catalog import CATALOG, STRIDES  # noqa: F401
from models.backbones.preprocessing import BackbonePreprocessing  # noqa: F401
from models.backbones.weights import BackboneWeightsError  # noqa: F401


def names() -> list[str]:
    return sorted(CATALOG)


def architecture_only(params: dict) -> dict:
    """Builder params with any backbone's weights file left out: what describing a model needs
    (the layers and their shapes do not depend on the weights, and the file may live elsewhere)."""
    raw = params.get("backbone")
    if raw is None:
        return dict(params)
    spec = parse_spec(raw, "backbone")
    return {**params, "backbone": {**spec.to_config(), "weights": None}}
