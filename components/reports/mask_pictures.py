"""Pictures of class-id masks: colour overlays on the image, and the report's colour legend.

components/reports/sample_grids.py draws the image / truth / prediction grids (TensorBoard's sample
predictions and report.html's) from these overlays, and colours boxes by the same classes. Class 0
(the background) is left uncoloured so the image shows through; every other class gets a fixed
colour, the same in every picture; ignored pixels (e.g. 255) are drawn white.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

PALETTE = np.array([
    (0, 0, 0), (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40),
], np.float32) / 255.0
"""Colour of class k is PALETTE[k % len(PALETTE)] (k >= 1); class 0 is not drawn."""
IGNORED_COLOUR = np.ones(3, np.float32)


def class_colour(class_id: int) -> np.ndarray:
    return PALETTE[1 + (int(class_id) - 1) % (len(PALETTE) - 1)] if class_id else PALETTE[0]


def as_rgb(image: np.ndarray) -> np.ndarray:
    """float32 [H, W, 3] in [0, 1] from a grey or RGB image (floats in [0, 1] or uint8)."""
    image = np.asarray(image)
    image = image.astype(np.float32) / 255.0 if image.dtype == np.uint8 else image.astype(np.float32)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    return np.clip(image[..., :3], 0.0, 1.0)


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.55) -> np.ndarray:
    """The image with each non-background class painted in its colour at `alpha`; ids outside
    0..num_classes-1 (the ignore value) in white. float32 [H, W, 3]."""
    rgb = as_rgb(image)
    mask = np.asarray(mask)
    if mask.shape != rgb.shape[:2]:
        raise ValueError(f"overlay: expected a mask of size {rgb.shape[:2]} like the image, got {mask.shape}")
    out = rgb.copy()
    for class_id in np.unique(mask):
        where = mask == class_id
        if class_id == 0:
            continue
        colour = class_colour(class_id) if class_id < num_classes else IGNORED_COLOUR
        out[where] = (1 - alpha) * rgb[where] + alpha * colour
    return out


def legend_html(class_names: Sequence[str]) -> str:
    """One coloured swatch per class, for the report beside the overlay grid."""
    import html

    items = []
    for k, name in enumerate(class_names):
        colour = "transparent" if k == 0 else "#" + "".join(f"{int(round(v * 255)):02x}" for v in class_colour(k))
        items.append(f'<span style="display:inline-block;width:1em;height:1em;border:1px solid #999;'
                     f'background:{colour};margin:0 4px 0 12px"></span>{html.escape(name)}')
    return "<p>" + "".join(items) + " (background not coloured; ignored pixels white)</p>"
