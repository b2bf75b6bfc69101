"""Class probability maps of a served classifier over images larger than it was trained on.

`convpipe predict --heatmap OUT` turns the classifier into its fully convolutional twin
(`models.segmentation.fcn.to_fully_convolutional`: dense weights reshaped into convolutions), runs it once over
the whole image, and writes `OUT/<image stem>.png`: the image, then one panel per class with that
class's probability at each window position drawn over the image.

The twin needs the Keras model, which a SavedModel does not keep. The served version's
`assets.extra/convpipe.json` records the pipeline root and the export execution that wrote it; the
metadata store there names that execution's `model` input (the train stage's Model artifact), whose
`model.keras` is used when its fingerprint is the one the version records. So a heatmap needs the
pipeline root the version was exported from to still be on disk (or on its bucket, with
`--metadata` naming its store); the error says which one.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from components.training.model_artifact import MODEL_FILE
from pipeline import filesystem


class HeatmapError(ValueError):
    """The version's Keras model cannot be found, or an image cannot be mapped; says which and why."""


def locate_keras_model(version_dir: str | Path, metadata: Optional[str] = None) -> Path:
    """The `model.keras` a served version was exported from (see the module docstring).

    `metadata`: the store of that root when it is not `<root>/metadata.sqlite`. A remote root
    (`s3://...`) always needs it, and its Model artifact is fetched into the root's working copy.
    """
    from components.serving import INFO_FILE, read_info
    from pipeline.metadata import MetadataStore

    version_dir = Path(version_dir)
    info = read_info(version_dir)
    root, execution_id = info.get("pipeline_root"), info.get("execution_id")
    if not root or execution_id is None:
        raise HeatmapError(f"{version_dir / INFO_FILE}: expected pipeline_root and execution_id (written by the "
                           f"export stage), got {sorted(info) or 'no file'}; cannot find the version's Keras model")
    remote = None
    if filesystem.is_url(root):
        if not metadata:
            raise HeatmapError(f"{version_dir} was exported from the remote root {root}, whose metadata store is "
                               "not in it; pass --metadata postgresql+psycopg://user:password@host:5432/db (that "
                               "root's store) to find its Keras model")
        remote = filesystem.RemoteRoot(root)
    local = remote.local if remote else root
    try:
        with MetadataStore(local, create=False, url=metadata, root_label=remote.url if remote else None) as store:
            model = store.inputs(int(execution_id)).get("model")
    except FileNotFoundError as exc:
        raise HeatmapError(f"{version_dir} was exported from pipeline root {root}, which is gone ({exc})") from None
    if model is None:
        raise HeatmapError(f"{root}: execution {execution_id} (the export of {version_dir}) has no recorded "
                           f"'model' input")
    if info.get("model_fingerprint") and model.fingerprint != info["model_fingerprint"]:
        raise HeatmapError(f"{root}: execution {execution_id}'s model has fingerprint {model.fingerprint}, but "
                           f"{version_dir} records {info['model_fingerprint']}")
    if remote is not None:
        try:
            remote.fetch_artifacts([model])
        except filesystem.RootError as exc:
            raise HeatmapError(str(exc)) from None
    path = Path(model.uri) / MODEL_FILE
    if not path.is_file():
        raise HeatmapError(f"{path}: the Model artifact {version_dir} was exported from is gone")
    return path


def probability_map(fcn, image: np.ndarray, window: Sequence[int]) -> np.ndarray:
    """softmax over classes at each window position of `image` (float32 [H, W, C] in [0, 1]) by the
    fully convolutional twin `fcn` of a classifier whose input is `window` [h, w, C]:
    float32 [h', w', K]; an image of exactly the window's size gives [1, 1, K]."""
    import tensorflow as tf

    need = tuple(int(v) for v in window)
    if image.ndim != 3 or image.shape[2] != need[2] or image.shape[0] < need[0] or image.shape[1] < need[1]:
        raise HeatmapError(f"image of shape {image.shape}: expected at least {need[0]}x{need[1]} pixels with "
                           f"{need[2]} channel(s) (the classifier's input size)")
    logits = tf.cast(fcn(image[None].astype(np.float32), training=False), tf.float32)
    return tf.nn.softmax(logits, axis=-1).numpy()[0]


def window_centres(length: int, window: int, positions: int) -> np.ndarray:
    """Input-pixel centres of `positions` windows of `window` pixels spread evenly over `length`
    (the first flush with the start, the last with the end, as the fully convolutional twin slides)."""
    if positions == 1:
        return np.array([length / 2.0])
    return window / 2.0 + np.arange(positions) * (length - window) / (positions - 1)


def heatmap_png(image: np.ndarray, probabilities: np.ndarray, class_names: Sequence[str], window: Sequence[int],
                title: str = "") -> bytes:
    """The image, then per class its probability map over the image (one cell per window position,
    centred on its window)."""
    from components.reports.mask_pictures import as_rgb
    from components.reports.html import _png, _pyplot

    plt = _pyplot()
    height, width = image.shape[:2]
    rows, columns = probabilities.shape[:2]
    ys, xs = window_centres(height, window[0], rows), window_centres(width, window[1], columns)
    step_y = (ys[1] - ys[0]) if rows > 1 else float(window[0])
    step_x = (xs[1] - xs[0]) if columns > 1 else float(window[1])
    extent = (xs[0] - step_x / 2, xs[-1] + step_x / 2, ys[-1] + step_y / 2, ys[0] - step_y / 2)
    panels = 1 + len(class_names)
    figure, axes = plt.subplots(1, panels, figsize=(2.6 * panels, 2.9), squeeze=False)
    axes[0][0].imshow(as_rgb(image), extent=(0, width, height, 0))
    axes[0][0].set_title(title or "image", fontsize=8)
    for k, name in enumerate(class_names):
        axis = axes[0][k + 1]
        axis.imshow(as_rgb(image), extent=(0, width, height, 0))
        shown = axis.imshow(probabilities[..., k], cmap="inferno", vmin=0.0, vmax=1.0, alpha=0.6,
                            interpolation="nearest", extent=extent)
        axis.set_xlim(0, width)
        axis.set_ylim(height, 0)
        axis.set_title(f"{name} (max {float(probabilities[..., k].max()):.2f})", fontsize=8)
    for axis in axes[0]:
        axis.axis("off")
    figure.colorbar(shown, ax=axes[0][-1], fraction=0.046, pad=0.04)
    return _png(figure)


def write_heatmaps(version_dir: str | Path, paths: Sequence[Path], out_dir: str | Path,
                   metadata: Optional[str] = None) -> list[Path]:
    """`out_dir/<stem>.png` per image file, from the served classifier's Keras model; returns the paths.
    `metadata`: the exporting root's store, when not its metadata.sqlite (see locate_keras_model)."""
    from components.training.model_artifact import load_keras_model
    from components.serving import read_info
    from models.segmentation.fcn import to_fully_convolutional

    info = read_info(version_dir)
    if info.get("task", "classification") != "classification":
        raise HeatmapError(f"{version_dir} serves a {info.get('task')} model; --heatmap needs a classifier")
    classifier = load_keras_model(locate_keras_model(version_dir, metadata).parent)
    window = tuple(int(v) for v in classifier.inputs[0].shape[1:4])
    height, width, channels = window
    fcn = to_fully_convolutional(classifier)
    class_names = info.get("class_names") or [str(k) for k in range(int(classifier.outputs[0].shape[-1]))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for path in paths:
        image = decode_full_size(Path(path).read_bytes(), channels)
        try:
            probabilities = probability_map(fcn, image, window)
        except HeatmapError as exc:
            raise HeatmapError(f"{path}: {exc}") from None
        target = out_dir / f"{Path(path).stem}.png"
        tmp = target.with_name(f".{target.name}.tmp")
        tmp.write_bytes(heatmap_png(image, probabilities, class_names, (height, width), title=Path(path).name))
        tmp.replace(target)
        written.append(target)
    return written


def decode_full_size(data: bytes, channels: int) -> np.ndarray:
    """The image at its own size, decoded as the training reader decodes (float32 in [0, 1])."""
    from components.examples import decode_image_tensor

    return decode_image_tensor(data, channels).numpy()
