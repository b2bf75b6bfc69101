"""Video: clip classification. The model takes clips [T, H, W, C] and returns class logits.

Everything classification does, on clips: accuracy per step while training; clip-level accuracy,
per-class recall and the confusion matrix on the test split. A clip longer than the model's T
frames is classified by sliding T-frame windows over it (`window_starts`) and averaging the
windows' probabilities (`clip_probabilities`); the synthetic clips are exactly T frames.

SavedModel signatures:
  serving_default(frame_bytes: string [batch, T])  encoded frames (PNG/JPEG/GIF/BMP), decoded and
                                                   resized inside -> probabilities, class_id, class_name
  serving_clips(clips: float32 [batch, T, H, W, C] in [0, 1]) -> the same outputs
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from components.tasks.base import PREDICTIONS_FILE, Evaluation, ExportMismatch
from components.tasks.classification import (ClassificationTask, check_labels, read_split, softmax_batches,
                                              write_predictions)

BYTES_SIGNATURE = "serving_default"
CLIPS_SIGNATURE = "serving_clips"
BYTES_INPUT = "frame_bytes"
CLIPS_INPUT = "clips"
ABOUT = ("<p>Each clip shows one shape moving in one direction; the label is the direction. Any single "
         "frame shows where the shape is, never where it is going, so a model that sees one frame "
         "(fusion <code>single_frame</code>) can do no better than chance; models that fuse frames "
         "(late, early, slow, conv3d) can read the motion.</p>")


def window_starts(length: int, num_frames: int, stride: int | None = None) -> list[int]:
    """First frames of the T-frame windows over a clip of `length` frames: every `stride` frames
    (default T // 2, at least 1), plus a last window flush with the end so no frame is left out."""
    if length < num_frames:
        raise ValueError(f"clip of {length} frames: expected at least {num_frames} (the model's T)")
    stride = max(1, num_frames // 2) if stride is None else int(stride)
    if stride < 1:
        raise ValueError(f"window stride: expected a positive number of frames, got {stride}")
    starts = list(range(0, length - num_frames + 1, stride))
    if starts[-1] != length - num_frames:
        starts.append(length - num_frames)
    return starts


def clip_probabilities(model, clips: Sequence[np.ndarray], num_frames: int, stride: int | None = None,
                       batch_size: int = 64) -> np.ndarray:
    """float32 [N, K]: softmax of each clip, the mean over its sliding windows when longer than T."""
    windows, owners = [], []
    for index, clip in enumerate(clips):
        for start in window_starts(len(clip), num_frames, stride):
            windows.append(clip[start:start + num_frames])
            owners.append(index)
    if not windows:
        return np.zeros((0, 0), np.float32)
    probabilities = softmax_batches(model, np.stack(windows).astype(np.float32), batch_size)
    owners = np.asarray(owners)
    totals = np.zeros((len(clips), probabilities.shape[1]), np.float64)
    np.add.at(totals, owners, probabilities)
    return (totals / np.bincount(owners, minlength=len(clips))[:, None]).astype(np.float32)


def read_clips(examples_dir: str | Path, split: str) -> dict:
    """{"id", "source", "encoded" (list of frame bytes per clip), "label"} lists of one split."""
    return read_split(examples_dir, split, video=True)


def decode_clips(encoded: Sequence[Sequence[bytes]], image_size: Sequence[int]) -> list[np.ndarray]:
    """Each clip's frames decoded as the training reader does: float32 [n_i, H, W, C] in [0, 1]."""
    from components.serving import decode_images

    flat = decode_images([frame for clip in encoded for frame in clip], image_size)
    bounds = np.cumsum([0] + [len(clip) for clip in encoded])
    return [flat[bounds[i]:bounds[i + 1]] for i in range(len(encoded))]


def frame_strip(clip: np.ndarray) -> np.ndarray:
    """First, middle and last frame side by side [H, 3W, C]: the motion at a glance."""
    clip = np.asarray(clip)
    return np.concatenate([clip[0], clip[len(clip) // 2], clip[-1]], axis=1)


class VideoTask(ClassificationTask):
    name = "video"
    signatures = (BYTES_SIGNATURE, CLIPS_SIGNATURE)

    def input_shape(self, schema: dict) -> tuple:
        if not schema.get("num_frames"):
            raise ValueError(f"schema.json: a video schema needs num_frames (frames per clip), got {schema.get('num_frames')!r}")
        return (int(schema["num_frames"]), *(int(v) for v in schema["image_size"]))

    def display_images(self, inputs: np.ndarray) -> np.ndarray:
        return np.stack([frame_strip(clip) for clip in inputs]) if len(inputs) else np.asarray(inputs)

    # evaluation ----------------------------------------------------------------------------------
    def read_test(self, examples_dir, schema) -> dict:
        test = read_clips(examples_dir, "test")
        check_labels(test["label"], schema["class_names"], str(examples_dir))
        return test

    def report_sections(self, metrics: dict, samples: dict) -> list:
        return [("About the task", ABOUT)] + super().report_sections(metrics, samples)

    def comparison_sections(self, trials: dict) -> list:
        """The fusion models side by side: test accuracy, parameters and training time per epoch,
        most accurate first, with why a single frame cannot solve the task."""
        from components.reports.html import table_html

        rows = []
        for name, t in trials.items():
            trial, metrics = t.get("trial") or {}, t.get("metrics") or {}
            fusion = ((trial.get("params") or {}).get("model") or {}).get("params", {}).get("fusion", "slow")
            epochs = trial.get("epochs_run") or 0
            per_epoch = float(trial.get("seconds") or 0.0) / epochs if epochs else float("nan")
            rows.append((metrics.get("accuracy", float("nan")), name, fusion, trial.get("parameters"), per_epoch))
        if not rows:
            return []
        rows.sort(key=lambda r: -r[0] if r[0] == r[0] else float("inf"))
        table = table_html(("trial", "fusion", "test accuracy", "parameters", "training s / epoch"),
                           [(name, fusion, f"{acc:.4f}", f"{params:,}" if params else "-", f"{sec:.1f}")
                            for acc, name, fusion, params, sec in rows])
        return [("Fusion models side by side (test split)", ABOUT + table)]

    def evaluate(self, model, test, schema, evaluate_section, out_dir) -> Evaluation:
        from components.tasks.classification_metrics import classification_metrics

        class_names = schema["class_names"]
        clips = decode_clips(test["encoded"], schema["image_size"])
        probabilities = clip_probabilities(model, clips, int(schema["num_frames"]))
        metrics = classification_metrics(test["label"], probabilities, class_names, evaluate_section.top_k)
        write_predictions(Path(out_dir) / PREDICTIONS_FILE, test, probabilities, class_names)
        count = min(evaluate_section.num_sample_images, len(clips))
        predicted = probabilities.argmax(axis=1)
        samples = {"images": [clip[:int(schema["num_frames"])] for clip in clips[:count]],
                   "true": test["label"][:count], "predicted": predicted[:count],
                   "probability": probabilities[np.arange(count), predicted[:count]]}
        recall = ", ".join(f"{name} {v['recall']:.2f}" for name, v in metrics["per_class"].items())
        summary = (f"video: test split ({metrics['num_examples']} clips): clip accuracy {metrics['accuracy']:.4f}, "
                   f"loss {metrics['loss']:.4f}; recall per class: {recall}")
        return Evaluation(metrics=metrics, sections=self.report_sections(metrics, samples), summary=summary)

    def served_probabilities(self, saved_model, test, schema) -> np.ndarray:
        """serving_default on each clip's T-frame windows, averaged like `clip_probabilities`."""
        from components import serving

        served = serving.ServedModel(saved_model, signatures=self.signatures)
        num_frames = int(schema["num_frames"])
        windows, owners = [], []
        for index, frames in enumerate(test["encoded"]):
            for start in window_starts(len(frames), num_frames):
                windows.append([bytes(f) for f in frames[start:start + num_frames]])
                owners.append(index)
        values = np.empty((len(windows), num_frames), dtype=object)
        for row, window in enumerate(windows):
            values[row, :] = window
        probabilities = served.run(BYTES_SIGNATURE, **{BYTES_INPUT: values})["probabilities"]
        owners = np.asarray(owners)
        totals = np.zeros((len(test["encoded"]), probabilities.shape[1]), np.float64)
        np.add.at(totals, owners, probabilities)
        return totals / np.bincount(owners, minlength=len(test["encoded"]))[:, None]

    def write_probe(self, test, probe_dir, count) -> None:
        """probe/<clip>/<frame>.png: the first `count` clips' frames as stored."""
        from components.tasks.classification import image_extension

        for i, frames in enumerate(test["encoded"][:count]):
            clip_dir = probe_dir / f"{i:03d}"
            clip_dir.mkdir(parents=True, exist_ok=True)
            for t, data in enumerate(frames):
                (clip_dir / f"{t:04d}.{image_extension(data)}").write_bytes(data)

    # export and predict --------------------------------------------------------------------------
    def export_archive(self, model, info):
        """serving_default on a [batch, T] string tensor of encoded frames; serving_clips on floats."""
        import keras
        import tensorflow as tf

        from components.examples import decode_image_tensor

        frames, height, width, channels = (int(v) for v in info["input_shape"])
        names = tf.constant(list(info["class_names"]))

        def serve_clips(clips):
            probabilities = tf.nn.softmax(tf.cast(model(clips, training=False), tf.float32), axis=-1)
            class_id = tf.argmax(probabilities, axis=-1, output_type=tf.int32)
            return {"probabilities": probabilities, "class_id": class_id, "class_name": tf.gather(names, class_id)}

        def serve_bytes(frame_bytes):
            decoded = tf.map_fn(lambda data: decode_image_tensor(data, channels, (height, width)),
                                tf.reshape(frame_bytes, [-1]),
                                fn_output_signature=tf.TensorSpec([height, width, channels], tf.float32))
            return serve_clips(tf.reshape(decoded, [-1, frames, height, width, channels]))

        archive = keras.export.ExportArchive()
        archive.track(model)
        archive.add_endpoint(BYTES_SIGNATURE, serve_bytes,
                             input_signature=[tf.TensorSpec([None, frames], tf.string, name=BYTES_INPUT)])
        archive.add_endpoint(CLIPS_SIGNATURE, serve_clips, input_signature=[
            tf.TensorSpec([None, frames, height, width, channels], tf.float32, name=CLIPS_INPUT)])
        return archive

    def check_export(self, saved_model, model, probe_dir, info, scratch) -> dict:
        from components.serving.probe import run_in_fresh_process

        num_frames = int(info["input_shape"][0])
        clip_dirs = sorted(p for p in Path(probe_dir).iterdir() if p.is_dir())
        encoded = [[f.read_bytes() for f in sorted(d.iterdir())][:num_frames] for d in clip_dirs]
        encoded = [clip for clip in encoded if len(clip) == num_frames]
        if not encoded:
            raise ExportMismatch(f"{probe_dir} holds no clips of {num_frames} frames to check the export with")
        clips = np.stack(decode_clips(encoded, info["input_shape"][1:]))
        values = np.empty((len(encoded), num_frames), dtype=object)
        for row, clip in enumerate(encoded):
            values[row, :] = clip
        expected = softmax_batches(model, clips)
        outputs = run_in_fresh_process(saved_model, {BYTES_SIGNATURE: {BYTES_INPUT: values},
                                                     CLIPS_SIGNATURE: {CLIPS_INPUT: clips}}, scratch)
        names = [info["class_names"][i] for i in expected.argmax(-1)]
        served_names = [str(n) for n in outputs[BYTES_SIGNATURE]["class_name"]]
        if served_names != names:
            raise ExportMismatch(f"{BYTES_SIGNATURE} class_name {served_names} differs from the Keras model's {names}")
        return {signature: float(np.abs(outputs[signature]["probabilities"] - expected).max())
                for signature in (BYTES_SIGNATURE, CLIPS_SIGNATURE)}

    def predict_lines(self, saved_model, paths) -> list:
        """Each path an animated GIF or a folder of numbered frames; clips longer than T are
        classified by sliding windows, as evaluate does."""
        from components.examples import encode_image
        from components.serving import read_info
        from components.sources.video_folder import read_clip

        info = read_info(saved_model)
        test = {"encoded": [[encode_image(frame) for frame in read_clip(Path(p))] for p in paths]}
        schema = {"num_frames": int(info["input_shape"][0])}
        probabilities = self.served_probabilities(saved_model, test, schema)
        names = info["class_names"]
        return [f"{path}\t{names[int(p.argmax())]}\t{float(p.max()):.4f}" for path, p in zip(paths, probabilities)]


TASK = VideoTask()
