"""Statistics of an Examples artifact (stats.json), computed with one Beam CombineFn.

A record is summarised once, where it is checked (`summarize`), into a small dict of counts and
pixel sums; the combiner adds summaries per split, so the statistics cost one pass over the data
on any runner and never hold images. `finalize` turns the sums into means and standard deviations
and the label ids into class names.
"""
from __future__ import annotations

import math
from collections import Counter
from typing import Iterable

import apache_beam as beam
import numpy as np


def summarize(record: dict, split: str, features: Iterable[str]) -> dict:
    """What stats.json needs from one decoded record; small enough to ship between workers."""
    pixels = record["frames"] if "frames" in record else record["image"]
    height, width, channels = pixels.shape[-3:]
    values = pixels.reshape(-1, channels).astype(np.float64) / 255.0
    summary = {
        "split": split,
        "size": f"{height}x{width}x{channels}",
        "channels": int(channels),
        "pixel_sum": values.sum(axis=0).tolist(),
        "pixel_sq_sum": np.square(values).sum(axis=0).tolist(),
        "num_pixels": int(values.shape[0]),
        "features": sorted(features),
    }
    if "frames" in record:
        summary["num_frames"] = int(record["frames"].shape[0])
    if "label" in record:
        summary["label"] = int(record["label"])
    if "box_labels" in record:
        summary["box_labels"] = [int(v) for v in record["box_labels"]]
    if "mask" in record:
        ids, counts = np.unique(record["mask"], return_counts=True)
        summary["mask_pixels"] = {int(i): int(c) for i, c in zip(ids, counts)}
    return summary


def _empty_split() -> dict:
    return {"count": 0, "labels": Counter(), "box_labels": Counter(), "mask_pixels": Counter(),
            "sizes": Counter(), "boxes_per_image": Counter(), "frames": Counter(), "features": set(),
            "pixel_sum": None, "pixel_sq_sum": None, "num_pixels": 0}


def _add_sums(a, b):
    if a is None:
        return list(b) if b is not None else None
    if b is None:
        return a
    if len(a) != len(b):  # mixed channel counts: statistics per channel are undefined
        return [math.nan] * max(len(a), len(b))
    return [x + y for x, y in zip(a, b)]


def _merge_split(into: dict, other: dict) -> dict:
    into["count"] += other["count"]
    for key in ("labels", "box_labels", "mask_pixels", "sizes", "boxes_per_image", "frames"):
        into[key].update(other[key])
    into["features"] |= other["features"]
    into["pixel_sum"] = _add_sums(into["pixel_sum"], other["pixel_sum"])
    into["pixel_sq_sum"] = _add_sums(into["pixel_sq_sum"], other["pixel_sq_sum"])
    into["num_pixels"] += other["num_pixels"]
    return into


class StatsCombineFn(beam.CombineFn):
    """Record summaries -> {split: sums}; associative and commutative, so any runner may split it."""

    def create_accumulator(self):
        return {}

    def add_input(self, accumulator, summary):
        split = accumulator.setdefault(summary["split"], _empty_split())
        split["count"] += 1
        split["sizes"][summary["size"]] += 1
        split["features"].update(summary["features"])
        if "label" in summary:
            split["labels"][summary["label"]] += 1
        if "box_labels" in summary:
            split["box_labels"].update(summary["box_labels"])
            split["boxes_per_image"][len(summary["box_labels"])] += 1
        if "mask_pixels" in summary:
            split["mask_pixels"].update(summary["mask_pixels"])
        if "num_frames" in summary:
            split["frames"][summary["num_frames"]] += 1
        split["pixel_sum"] = _add_sums(split["pixel_sum"], summary["pixel_sum"])
        split["pixel_sq_sum"] = _add_sums(split["pixel_sq_sum"], summary["pixel_sq_sum"])
        split["num_pixels"] += summary["num_pixels"]
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = {}
        for accumulator in accumulators:
            for split, sums in accumulator.items():
                _merge_split(merged.setdefault(split, _empty_split()), sums)
        return merged

    def extract_output(self, accumulator):
        return accumulator


def _name(names: list[str], index: int) -> str:
    return names[index] if 0 <= index < len(names) else f"<out of range: {index}>"


def _finalize_split(sums: dict, class_names: list[str], mask_class_names: list[str]) -> dict:
    num = sums["num_pixels"]
    mean = [s / num for s in sums["pixel_sum"]] if num else []
    var = [max(0.0, q / num - m * m) for q, m in zip(sums["pixel_sq_sum"] or [], mean)] if num else []
    sizes = [tuple(int(v) for v in key.split("x")) for key in sums["sizes"]]
    out = {
        "num_examples": sums["count"],
        "image_sizes": dict(sorted(sums["sizes"].items())),
        "height": {"min": min((s[0] for s in sizes), default=0), "max": max((s[0] for s in sizes), default=0)},
        "width": {"min": min((s[1] for s in sizes), default=0), "max": max((s[1] for s in sizes), default=0)},
        "pixel_mean": mean,
        "pixel_std": [math.sqrt(v) for v in var],
    }
    if sums["labels"]:
        out["class_counts"] = {_name(class_names, k): v for k, v in sorted(sums["labels"].items())}
        out["label_counts"] = {str(k): v for k, v in sorted(sums["labels"].items())}
    if sums["boxes_per_image"]:
        out["num_boxes"] = sum(sums["box_labels"].values())
        out["box_class_counts"] = {_name(class_names, k): v for k, v in sorted(sums["box_labels"].items())}
        out["box_label_counts"] = {str(k): v for k, v in sorted(sums["box_labels"].items())}
        out["boxes_per_image"] = {str(k): v for k, v in sorted(sums["boxes_per_image"].items())}
    if sums["mask_pixels"]:
        out["mask_pixel_counts"] = {str(k): v for k, v in sorted(sums["mask_pixels"].items())}
        out["mask_class_pixels"] = {_name(mask_class_names, k): v for k, v in sorted(sums["mask_pixels"].items())}
    if sums["frames"]:
        out["num_frames"] = {str(k): v for k, v in sorted(sums["frames"].items())}
    return out


def finalize(accumulator: dict, class_names: list[str], mask_class_names: list[str] | None = None) -> dict:
    """The stats.json document: totals over all splits, then each split."""
    mask_names = mask_class_names if mask_class_names is not None else class_names
    total = _empty_split()
    for sums in accumulator.values():
        _merge_split(total, sums)
    return {
        "total": _finalize_split(total, class_names, mask_names),
        "splits": {split: _finalize_split(sums, class_names, mask_names) for split, sums in sorted(accumulator.items())},
        "features": sorted(total["features"]),
    }
