"""Building a backbone from `model.params.backbone`, tapping its feature maps, choosing what trains.

    spec = parse_spec({"name": "mobilenet_v3_small", "weights": "w.weights.h5", "trainable": "all"}, "cnn")
    backbone = build(spec, (64, 64, 3), "cnn", taps=False)     # image [0, 1] -> last feature map
    backbone = build(spec, (64, 64, 3), "fcn", taps=True)      # image -> [stride 8, 16, 32 maps]

The backbone is one functional keras.Model named "backbone": our preprocessing layer, then the
keras.applications model (include_top=False, weights=None) built on it, then the user's weights
file loaded (weights.py). Models that hold one (classifier, FCN, detectors) nest it, so
`find(model)` finds it again for the two-phase fine-tune.

Batch norm: with pretrained weights every BatchNormalization layer of the backbone stays frozen,
trainable=False, which Keras 3 runs in inference mode: it normalises with the moving statistics
learnt on the large dataset, which small batches of a new dataset would wreck in a few steps
(Keras's transfer-learning guide). The guide passes `training=False` when calling the base model;
in Keras 3.15 a functional model's own `training` overrides that recorded argument (models/
functional.py `operation_fn`), so the statistics would still move. Freezing the layers holds
under every call and strategy, and is what detection codebases do (detectron2's FrozenBatchNorm);
their scale and offset stay fixed too. Built from scratch (`weights: null`), the backbone trains
its BN layers like any other network.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

import keras

from models.backbones import catalog, weights
from models.backbones.preprocessing import BackbonePreprocessing

NAME = "backbone"
KEYS = ("name", "weights", "trainable")
MIN_SIZE = 32
"""keras.applications refuse inputs smaller than 32 x 32 (and stride 32 needs at least that)."""


@dataclass(frozen=True)
class BackboneSpec:
    name: str
    weights: Optional[str] = None
    """A .weights.h5 or keras.applications .h5 file; None: random initialisation."""
    trainable: str = "all"
    """"all", "none", or "from:<layer name>" (that layer and every later one train)."""

    @property
    def pretrained(self) -> bool:
        return self.weights is not None

    def to_config(self) -> dict:
        return {"name": self.name, "weights": self.weights, "trainable": self.trainable}


def parse_spec(raw: Any, where: str) -> Optional[BackboneSpec]:
    """`model.params.backbone` as given (a dict, a bare name, or None) -> BackboneSpec or None."""
    if raw is None or isinstance(raw, BackboneSpec):
        return raw
    if isinstance(raw, str):
        raw = {"name": raw}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: invalid backbone={raw!r}. Expected a dict with keys {', '.join(KEYS)}, "
                         f"or a backbone name.")
    unknown = sorted(set(raw) - set(KEYS))
    if unknown:
        raise ValueError(f"{where}: backbone has unknown key(s) {unknown}. Expected keys: {', '.join(KEYS)}.")
    if "name" not in raw:
        raise ValueError(f"{where}: backbone is missing 'name'. Expected one of {', '.join(sorted(catalog.CATALOG))}.")
    catalog.entry(raw["name"], where)
    path = raw.get("weights")
    if path is not None and (not isinstance(path, str) or not path):
        raise ValueError(f"{where}: invalid backbone.weights={path!r}. Expected null or the path of a "
                         f"{' or '.join(weights.KINDS)} file.")
    trainable = raw.get("trainable", "all")
    if not isinstance(trainable, str) or not (trainable in ("all", "none") or
                                              (trainable.startswith("from:") and len(trainable) > 5)):
        raise ValueError(f"{where}: invalid backbone.trainable={trainable!r}. Expected 'all', 'none' or "
                         f"'from:<layer name>'.")
    return BackboneSpec(raw["name"], path, trainable)


def check_input(input_shape, where: str, multiple: int = 1) -> None:
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[-1] != 3:
        raise ValueError(f"{where}: a backbone needs RGB images [height, width, 3], got input_shape {shape} "
                         f"(decode images with 3 channels: ingest.source.channels=3).")
    for axis, size in zip(("height", "width"), shape[:2]):
        if size is None or size < MIN_SIZE or size % multiple:
            need = f"a multiple of {multiple} from {max(MIN_SIZE, multiple)}" if multiple > 1 else f"at least {MIN_SIZE}"
            raise ValueError(f"{where}: image {axis} {size} cannot feed a backbone. Expected a fixed {axis}, {need} "
                             f"(ingest.image_size).")


def build(spec: BackboneSpec, input_shape, where: str, *, taps: bool) -> keras.Model:
    """The backbone model: image in [0, 1] -> its last feature map, or (taps) the maps at strides 8/16/32."""
    entry = catalog.entry(spec.name, where)
    check_input(input_shape, where, max(catalog.STRIDES) if taps else 1)
    image = keras.Input(tuple(input_shape), name="backbone_image")
    x = BackbonePreprocessing(entry.preprocessing, name="preprocessing")(image)
    base = getattr(keras.applications, entry.constructor)(include_top=False, weights=None, input_tensor=x,
                                                          **entry.kwargs)
    stable_names(base, spec.name)
    if spec.weights is not None:
        weights.load(base, spec.weights, spec.name)
    outputs = [tap_layer(base, entry, input_shape, s, spec.name).output for s in catalog.STRIDES] if taps \
        else base.output
    model = keras.Model(image, outputs, name=NAME)
    set_trainable(model, spec.trainable, where, frozen_statistics=spec.pretrained)
    return model


def _snake_case(name: str) -> str:
    """Keras's naming of an unnamed layer: its class name in snake case (ReLU -> re_lu)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


def stable_names(base: keras.Model, prefix: str) -> None:
    """Rename the layers and ops keras.applications leaves unnamed (MobileNetV3's activations and
    arithmetic): Keras numbers them with a per-process counter, so the second build in a process
    would name them differently from the first. Here the count starts afresh in every backbone,
    so `trainable: "from:<layer>"` and `convpipe describe-model` name the same layer every time."""
    counts: dict[str, int] = {}
    for operation in base.operations:
        kind = _snake_case(type(operation).__name__)
        if re.fullmatch(rf"{re.escape(kind)}(_\d+)?", operation.name):
            counts[kind] = counts.get(kind, 0) + 1
            operation.name = f"{prefix}_{kind}_{counts[kind]}"


def tap_layer(base: keras.Model, entry: catalog.Entry, input_shape, stride: int, name: str):
    """The last layer matching the entry's pattern whose map is the input size / stride."""
    target = (input_shape[0] // stride, input_shape[1] // stride)
    found = [layer for layer in base.layers if entry.matches(layer.name)
             and len(layer.output.shape) == 4 and tuple(layer.output.shape[1:3]) == target]
    if not found:
        raise ValueError(f"backbone '{name}': no layer matching {entry.tap_pattern!r} gives a {target[0]}x{target[1]} "
                         f"map (stride {stride}) of a {input_shape[0]}x{input_shape[1]} image")
    return found[-1]


def set_trainable(backbone: keras.Model, trainable: str, where: str = "backbone", *,
                  frozen_statistics: bool = False) -> None:
    """"all": every layer trains; "none": none does; "from:<layer>": that layer and every later one
    (in the model's order) train, the earlier ones are frozen. `frozen_statistics`: batch norm
    layers stay frozen whatever `trainable` says (pretrained weights; module doc)."""
    names = [layer.name for layer in backbone.layers]
    if trainable == "none":
        backbone.trainable = False
        return
    start = 0
    if trainable != "all":
        first = trainable.removeprefix("from:")
        if first not in names:
            near = [n for n in names if first.split("_")[0] in n][:5] or names[3:8]
            raise ValueError(f"{where}: invalid backbone.trainable={trainable!r}: the backbone has no layer "
                             f"'{first}'. Expected a layer name such as {', '.join(near)}.")
        start = names.index(first)
    backbone.trainable = True
    for index, layer in enumerate(backbone.layers):
        frozen = frozen_statistics and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = index >= start and not frozen


def find(model) -> list:
    """The backbone models nested anywhere in `model` (functional or subclassed), each once."""
    found, seen = [], set()

    def walk(layer):
        for sub in getattr(layer, "layers", ()):
            if id(sub) in seen:
                continue
            seen.add(id(sub))
            if isinstance(sub, keras.Model) and sub.name == NAME:
                found.append(sub)
            else:
                walk(sub)

    if isinstance(model, keras.Model) and model.name == NAME:
        return [model]
    walk(model)
    return found
