"""Loading the user's weights file into a backbone, refusing any file that does not fit it.

Nothing is downloaded: the backbone is built with `weights=None` and `weights` names a file the
user already has, either
- a Keras 3 `.weights.h5` (`model.save_weights(...)` of the same keras.applications model with
  `include_top=False`; the input size does not matter), or
- a legacy `.h5` weights file, which is what keras.applications itself downloads into
  ~/.keras/models (e.g. `mobilenet_v3_small_224_1.0_float_no_top_v2.h5`), copied from a machine
  that has the network.

Keras's own loaders fail on a mismatch with a message about one internal variable, or, for some
differences, warn and load nothing. So the file is compared with the backbone first, entry by
entry, and the first difference is reported as a `BackboneWeightsError` naming the file, the
layer, the entry and both shapes. Only then does Keras load it.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import h5py


class BackboneWeightsError(ValueError):
    """The backbone's weights file is missing, unreadable or made for another model; names the path."""

    def __init__(self, path, message: str):
        super().__init__(f"model.params.backbone.weights: {path}: {message}")
        self.path = str(path)


KINDS = (".weights.h5", ".h5")


def check_path(path, backbone: str) -> Path:
    """The weights file as a Path, or BackboneWeightsError when it cannot be the file asked for."""
    file = Path(path).expanduser()
    if file.is_dir():
        preset = " (it holds config.json: a KerasHub preset)" if (file / "config.json").exists() else ""
        raise BackboneWeightsError(file, f"is a directory{preset}. Expected a weights file ending in "
                                         f"{' or '.join(KINDS)} for the keras.applications model of '{backbone}'; "
                                         f"KerasHub presets are not supported (keras_hub is not installed).")
    if not file.exists():
        raise BackboneWeightsError(file, "no such file. Expected the weights of the backbone "
                                         f"'{backbone}' saved with model.save_weights() or downloaded by keras.applications.")
    if not file.name.endswith(KINDS):
        raise BackboneWeightsError(file, f"expected a file ending in {' or '.join(KINDS)}, got {file.suffix or 'no suffix'}")
    try:
        with h5py.File(file, "r"):
            pass
    except OSError as exc:
        raise BackboneWeightsError(file, f"is not an HDF5 file ({exc})") from None
    return file


def load(model, path, backbone: str) -> None:
    """Check `path` against `model` (the keras.applications model), then load it into `model`."""
    file = check_path(path, backbone)
    if file.name.endswith(".weights.h5"):
        _compare(file, _keras3_entries(file), _reference_entries(model), backbone)
    else:
        _compare_legacy(file, model, backbone)
    try:
        model.load_weights(str(file))
    except ValueError as exc:  # anything the comparison did not foresee still names the file
        raise BackboneWeightsError(file, f"Keras could not load it into '{backbone}': {str(exc).splitlines()[0]}") \
            from None


def _reference_entries(model) -> dict:
    """The backbone's own weights, saved, so the layout to compare with is Keras's, not a guess of it."""
    with tempfile.TemporaryDirectory(prefix="backbone-reference-") as directory:
        reference = Path(directory) / "reference.weights.h5"
        model.save_weights(str(reference))
        return _keras3_entries(reference)


def _keras3_entries(file: Path) -> dict:
    """Entry path -> (shape, layer name) of a Keras 3 weights file."""
    entries = {}
    with h5py.File(file, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                entries[name] = (tuple(obj.shape), str(obj.parent.attrs.get("name", "?")))
        f.visititems(visit)
    return entries


def _compare(file: Path, found: dict, expected: dict, backbone: str) -> None:
    if not found:
        raise BackboneWeightsError(file, "holds no weights")
    for key in sorted(expected):
        shape, layer = expected[key]
        if key not in found:
            raise BackboneWeightsError(
                file, f"has no entry {key} (layer '{layer}', shape {shape}) that '{backbone}' expects: "
                      f"it holds {len(found)} entries, '{backbone}' has {len(expected)}; was it saved from another model?")
        if found[key][0] != shape:
            raise BackboneWeightsError(
                file, f"entry {key} (layer '{found[key][1]}') has shape {found[key][0]}; '{backbone}' expects {shape} "
                      f"(layer '{layer}'). Expected the weights of '{backbone}' with include_top=False.")
    extra = sorted(set(found) - set(expected))
    if extra:
        raise BackboneWeightsError(
            file, f"holds {len(extra)} entries that '{backbone}' does not have, e.g. {extra[0]} (layer "
                  f"'{found[extra[0]][1]}', shape {found[extra[0]][0]}): was it saved with include_top=True or "
                  f"from another model?")


def _compare_legacy(file: Path, model, backbone: str) -> None:
    """The legacy loader assigns layer by layer in order (not by name): compare the same way."""
    with h5py.File(file, "r") as f:
        root = f["model_weights"] if "model_weights" in f else f
        names = [n.decode() if isinstance(n, bytes) else n for n in root.attrs.get("layer_names", [])]
        stored = []
        for name in names:
            weight_names = [w.decode() if isinstance(w, bytes) else w for w in root[name].attrs.get("weight_names", [])]
            if weight_names:
                stored.append((name, [tuple(root[name][w].shape) for w in weight_names]))
    layers = [(layer.name, [tuple(w.shape) for w in layer.trainable_weights + layer.non_trainable_weights])
              for layer in model.layers if layer.weights]
    if not stored:
        raise BackboneWeightsError(file, "holds no layer weights (no layer_names attribute of a Keras .h5 weights file)")
    for (stored_name, stored_shapes), (name, shapes) in zip(stored, layers):
        if stored_shapes != shapes:
            raise BackboneWeightsError(
                file, f"layer '{stored_name}' has weights of shapes {stored_shapes}; layer '{name}' of '{backbone}' "
                      f"expects {shapes}")
    if len(stored) != len(layers):
        raise BackboneWeightsError(file, f"holds {len(stored)} layers with weights; '{backbone}' has {len(layers)}")
