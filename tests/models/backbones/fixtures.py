"""A stand-in for pretrained backbone weights, made here since nothing is downloaded.

Random initial weights with their initial batch-norm statistics (mean 0, variance 1) are a poor
stand-in: a pretrained backbone's BN layers run in inference mode, and with those statistics the
activations of a deep random network fade to ~1e-11 by the last layer, so no head could learn
from them. `write_weights` calibrates the statistics instead: one forward pass in training mode
with momentum 0 sets every moving mean and variance to that batch's, as a network trained on
such images would have them; then the weights are saved as a user would save theirs.
"""
from pathlib import Path

import keras
import numpy as np

CONSTRUCTORS = {"mobilenet_v3_small": "MobileNetV3Small", "mobilenet_v3_large": "MobileNetV3Large"}


def calibrated_backbone(name: str = "mobilenet_v3_small", size: int = 64, seed: int = 0, **kwargs) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = getattr(keras.applications, CONSTRUCTORS[name])(include_top=False, weights=None,
                                                            input_shape=(size, size, 3), **kwargs)
    norms = [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]
    momenta = [layer.momentum for layer in norms]
    for layer in norms:
        layer.momentum = 0.0
    pixels = np.random.default_rng(seed).random((16, size, size, 3)).astype("float32") * 255.0  # its own [0, 255]
    model(pixels, training=True)
    for layer, momentum in zip(norms, momenta):
        layer.momentum = momentum
    return model


def write_weights(path: Path, name: str = "mobilenet_v3_small", size: int = 64, **kwargs) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    calibrated_backbone(name, size, **kwargs).save_weights(str(path))
    return path
