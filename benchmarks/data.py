"""Data for the benchmarks, made by the pipeline's own code: configs, Examples from the ingest stage, arrays.

Nothing is downloaded: images come from the synthetic source (shapes on noise), written to an
Examples artifact by the real ingest stage, so the reader and the trainer see what they see in a
pipeline run.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

LOG = logging.getLogger("benchmarks")


def pipeline_config(root: Path, *, num_examples: int = 512, image_size: int = 32, batch_size: int = 32,
                    task: str = "classification", overrides: Sequence[str] = ()):
    """The default pipeline config on synthetic data of the given size (all train but a small test split)."""
    from pipeline.config import load_config

    settings = [
        f"pipeline.root={root / 'root'}",
        f"pipeline.tensorboard_root={root / 'tensorboard'}",
        f"ingest.task={task}",
        f"ingest.source.num_examples={num_examples}",
        f"ingest.source.image_size={image_size}",
        'ingest.splits={"train": 0.9, "eval": 0.0, "test": 0.1}',
        f"train.batch_size={batch_size}",
        f"export.serving_root={root / 'serving'}",
    ]
    return load_config(None, [*settings, *overrides])


def context(config, root: Path, stage, inputs: Optional[dict] = None, name: Optional[str] = None,
            execution_id: int = 1):
    """An ExecutionContext as the runner hands it to `stage`; outputs land under `root/<name>`."""
    from pipeline.stage import ExecutionContext

    name = name or stage.name
    outputs = {output: root / name / output for output in stage.outputs}
    for path in outputs.values():
        path.mkdir(parents=True, exist_ok=True)
    return ExecutionContext(config=config, params=stage.parameters(config), inputs=inputs or {}, outputs=outputs,
                            work_dir=root / f"{name}-work", root=root, run_id=1, execution_id=execution_id,
                            log=LOG)


def ingest(config, root: Path, name: str = "ingest") -> Path:
    """Run the ingest stage on `config` and return the Examples directory."""
    from components.ingest import stage as ingest_stage

    ctx = context(config, root, ingest_stage.STAGE, name=name)
    ingest_stage.STAGE.executor(ctx)
    return Path(ctx.outputs["examples"])


def split_arrays(examples_dir: Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """A whole split decoded by the reader, as (inputs, targets) numpy arrays in memory."""
    from components.examples import make_dataset

    xs, ys = [], []
    for x, y in make_dataset(examples_dir, split, 256):
        xs.append(x.numpy())
        ys.append(y.numpy())
    return np.concatenate(xs), np.concatenate(ys)


def in_memory_dataset(x: np.ndarray, y, batch_size: int):
    """The same examples as fixed in-memory batches (no decoding, no shuffling): the fastest feed."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices((x, y)).batch(batch_size).cache().prefetch(tf.data.AUTOTUNE)


def synthetic_arrays(task: str, count: int, image_size: int, num_classes: int = 3, num_frames: int = 8,
                     max_shapes: int = 1):
    """Synthetic records as model inputs and targets the way the reader shapes them, without files.

    classification/video: (images or clips float32 in [0, 1], one-hot labels);
    detection: (images, {"boxes" [N, MAX_BOXES, 4] padded with -1, "labels" [N, MAX_BOXES] padded with -1}).
    """
    from components.examples import MAX_BOXES
    from components.sources.synthetic import synthetic_record
    from pipeline.config import SyntheticSource

    source = SyntheticSource(num_examples=count, image_size=image_size, num_classes=num_classes,
                             num_frames=num_frames, max_shapes=max_shapes)
    records = [synthetic_record(i, source, task) for i in range(count)]
    key = "frames" if task == "video" else "image"
    inputs = np.stack([r[key] for r in records]).astype(np.float32) / 255.0
    if task in ("classification", "video"):
        return inputs, np.eye(num_classes, dtype=np.float32)[[r["label"] for r in records]]
    if task != "detection":
        raise ValueError(f"synthetic_arrays: expected task classification, video or detection, got {task!r}")
    boxes = np.full((count, MAX_BOXES, 4), -1.0, np.float32)
    labels = np.full((count, MAX_BOXES), -1, np.int32)
    for i, r in enumerate(records):
        n = min(len(r["boxes"]), MAX_BOXES)
        boxes[i, :n], labels[i, :n] = r["boxes"][:n], r["box_labels"][:n]
    return inputs, {"boxes": boxes, "labels": labels}


def write_image_folder(directory: Path, count: int, image_size: int, num_classes: int = 3) -> Path:
    """An image_folder source: synthetic images as PNG files in one sub-folder per class."""
    from PIL import Image

    from components.sources.synthetic import class_names, synthetic_record
    from pipeline.config import SyntheticSource

    source = SyntheticSource(num_examples=count, image_size=image_size, num_classes=num_classes)
    names = class_names(num_classes, "classification")
    for name in names:
        (directory / name).mkdir(parents=True, exist_ok=True)
    for i in range(count):
        record = synthetic_record(i, source, "classification")
        Image.fromarray(record["image"]).save(directory / names[record["label"]] / f"{i:06d}.png")
    return directory
