"""Labelled image grids of sample predictions, drawn with Pillow and numpy: fast enough for every epoch.

The trainer logs one grid to TensorBoard after each epoch and the evaluate stage puts one in
report.html; matplotlib took 0.4-1.6 s a grid (figure, layout, savefig), longer than an epoch of the
default model, where this takes milliseconds. Each sample image is upscaled by a whole factor with
nearest neighbour (pixels stay sharp squares, a box's edge falls on a pixel's border), captioned
in Pillow's built-in bitmap font (nothing depends on installed fonts), and the tiles are laid out
row by row on a dark background.

Colours: a caption is green when the prediction is right, red when wrong, light grey when there
is nothing to judge. Mask classes and box classes take components/reports/mask_pictures.py's class colours
(box label k is mask class k + 1: the same shape, the same colour); true boxes are dashed white,
crowd regions dotted grey, detections solid in their class's colour, labelled "class score".
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence

import numpy as np

from components.reports.mask_pictures import as_rgb, class_colour, overlay

TILE_SIDE = 128
"""Pictures are upscaled to at least this many pixels on their longer side."""
PAD = 4
"""Pixels around the grid and between cells."""
LINE = 12
"""Pixels per caption line (the bitmap font is 11 high)."""
SEPARATOR = 2
"""Pixels between the panels of one tile (image | true mask | predicted mask)."""
BACKGROUND = (24, 24, 24)
RIGHT = (40, 210, 40)
WRONG = (240, 50, 50)
NEUTRAL = (225, 225, 225)
TRUE_BOX = (255, 255, 255)
CROWD_BOX = (150, 150, 150)


@dataclass
class Tile:
    """One cell of a grid: its picture and the caption lines under it, (text, RGB) each."""
    pixels: np.ndarray
    caption: list = field(default_factory=list)


def _font():
    from PIL import ImageFont

    # Pillow >= 10.1 returns a FreeType font from load_default(); the bitmap one draws exact colours
    return getattr(ImageFont, "load_default_imagefont", ImageFont.load_default)()


def scale_factor(height: int, width: int, side: int = TILE_SIDE) -> int:
    """The smallest whole factor that brings the longer side to at least `side` pixels (1 if it is already)."""
    return max(1, -(-side // max(height, width, 1)))


def picture(image: np.ndarray, factor: int) -> np.ndarray:
    """uint8 RGB [H*factor, W*factor, 3] of a grey or RGB image (floats in [0, 1] or uint8)."""
    rgb = np.round(as_rgb(image) * 255.0).astype(np.uint8)
    return np.repeat(np.repeat(rgb, factor, axis=0), factor, axis=1)


def rgb8(colour: Sequence[float]) -> tuple:
    """An RGB tuple of bytes from mask_pictures' float colours in [0, 1]."""
    return tuple(int(round(float(v) * 255.0)) for v in colour[:3])


def box_colour(label: int) -> tuple:
    return rgb8(class_colour(int(label) + 1))


def grid_size(count: int, columns: int, tile_height: int, tile_width: int, caption_lines: int,
              header_lines: int = 0) -> tuple[int, int]:
    """(height, width) in pixels of a grid of `count` cells, `min(columns, count)` to a row."""
    columns = max(1, min(columns, count))
    rows = -(-count // columns)
    width = PAD + columns * (tile_width + PAD)
    height = header_lines * LINE + PAD + rows * (tile_height + caption_lines * LINE + PAD)
    return height, width


def _fit(text: str, width: int, font) -> str:
    """`text` cut (ending in "..") to fit `width` pixels."""
    if font.getlength(text) <= width:
        return text
    while text and font.getlength(text + "..") > width:
        text = text[:-1]
    return text + ".."


def _wrap(text: str, width: int, font) -> list[str]:
    lines, line = [], ""
    for word in text.split():
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width:
            lines.append(line)
            candidate = word
        line = candidate
    return lines + ([line] if line else [])


def grid_png(tiles: Sequence[Tile], columns: int = 4, header: str = "") -> Optional[bytes]:
    """The tiles row by row, `min(columns, len(tiles))` to a row, captions under each picture and
    `header` (wrapped) above them all, as PNG bytes; None for no tiles."""
    from PIL import Image, ImageDraw

    if not tiles:
        return None
    font = _font()
    tile_height = max(t.pixels.shape[0] for t in tiles)
    tile_width = max(t.pixels.shape[1] for t in tiles)
    caption_lines = max(len(t.caption) for t in tiles)
    columns = max(1, min(columns, len(tiles)))
    header_text = _wrap(header, PAD + columns * (tile_width + PAD) - 2 * PAD, font) if header else []
    height, width = grid_size(len(tiles), columns, tile_height, tile_width, caption_lines, len(header_text))
    canvas = np.empty((height, width, 3), np.uint8)
    canvas[:] = BACKGROUND
    top = len(header_text) * LINE + PAD
    for index, tile in enumerate(tiles):
        y = top + (index // columns) * (tile_height + caption_lines * LINE + PAD)
        x = PAD + (index % columns) * (tile_width + PAD)
        h, w = tile.pixels.shape[:2]
        canvas[y:y + h, x:x + w] = tile.pixels
    image = Image.fromarray(canvas)
    draw = ImageDraw.Draw(image)
    for line, text in enumerate(header_text):
        draw.text((PAD, PAD // 2 + line * LINE), text, fill=NEUTRAL, font=font)
    for index, tile in enumerate(tiles):
        y = top + (index // columns) * (tile_height + caption_lines * LINE + PAD) + tile_height
        x = PAD + (index % columns) * (tile_width + PAD)
        for line, (text, colour) in enumerate(tile.caption):
            draw.text((x, y + line * LINE), _fit(text, tile_width, font), fill=tuple(colour), font=font)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------
# classification (and clips, shown as a strip of frames)
# ------------------------------------------------------------------------------------------------
def classification_tile(image: np.ndarray, predicted: int, probability: float, true: int,
                        class_names: Sequence[str]) -> Tile:
    colour = RIGHT if int(predicted) == int(true) else WRONG
    factor = scale_factor(*np.asarray(image).shape[:2])
    return Tile(picture(image, factor), [(f"{class_names[int(predicted)]} ({float(probability):.2f})", colour),
                                         (f"true: {class_names[int(true)]}", colour)])


def classification_grid_png(images: Sequence[np.ndarray], true: Sequence[int], predicted: Sequence[int],
                            probabilities: Sequence[float], class_names: Sequence[str],
                            columns: int = 4) -> Optional[bytes]:
    """Each image captioned 'predicted (probability)' and 'true: class', green when right, red when wrong."""
    return grid_png([classification_tile(images[i], predicted[i], probabilities[i], true[i], class_names)
                     for i in range(len(images))], columns)


# ------------------------------------------------------------------------------------------------
# segmentation
# ------------------------------------------------------------------------------------------------
def mask_tile(image: np.ndarray, true_mask: np.ndarray, predicted_mask: np.ndarray, num_classes: int,
              title: str = "") -> Tile:
    """The image, the true mask over it and the predicted mask over it, side by side."""
    factor = scale_factor(*np.asarray(image).shape[:2])
    panels = [picture(image, factor), picture(overlay(image, true_mask, num_classes), factor),
              picture(overlay(image, predicted_mask, num_classes), factor)]
    gap = np.empty((panels[0].shape[0], SEPARATOR, 3), np.uint8)
    gap[:] = BACKGROUND
    return Tile(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1),
                [(line, NEUTRAL) for line in title.splitlines()])


def mask_grid_png(images: Sequence[np.ndarray], true_masks: Sequence[np.ndarray],
                  predicted_masks: Sequence[np.ndarray], class_names: Sequence[str],
                  titles: Optional[Sequence[str]] = None, columns: int = 2) -> Optional[bytes]:
    """Image | true mask | predicted mask for each example, the background left uncoloured."""
    tiles = [mask_tile(images[i], true_masks[i], predicted_masks[i], len(class_names), titles[i] if titles else "")
             for i in range(len(images))]
    return grid_png(tiles, columns, header="each: image | true mask | predicted mask")


# ------------------------------------------------------------------------------------------------
# boxes
# ------------------------------------------------------------------------------------------------
def box_pixels(box: Sequence[float], height: int, width: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom), inclusive pixel columns and rows of a rel_xyxy box (whose
    right and bottom edges are exclusive) in a picture of `height` x `width`."""
    x0, y0, x1, y1 = (float(v) for v in box)
    left, top = int(round(x0 * width)), int(round(y0 * height))
    right, bottom = int(round(x1 * width)) - 1, int(round(y1 * height)) - 1
    left, right = min(max(left, 0), width - 1), min(max(right, 0), width - 1)
    top, bottom = min(max(top, 0), height - 1), min(max(bottom, 0), height - 1)
    return left, top, max(left, right), max(top, bottom)


def _dashed(draw, corners: tuple, colour: tuple, dash: int, gap: int) -> None:
    left, top, right, bottom = corners
    for start in range(left, right + 1, dash + gap):
        end = min(start + dash - 1, right)
        draw.line([(start, top), (end, top)], fill=colour)
        draw.line([(start, bottom), (end, bottom)], fill=colour)
    for start in range(top, bottom + 1, dash + gap):
        end = min(start + dash - 1, bottom)
        draw.line([(left, start), (left, end)], fill=colour)
        draw.line([(right, start), (right, end)], fill=colour)


def draw_boxes(pixels: np.ndarray, truth: Optional[Mapping], detections: Optional[Mapping],
               class_names: Sequence[str], min_score: float) -> tuple[np.ndarray, int]:
    """(a copy of `pixels` with the boxes drawn, the number of detections drawn).

    truth: {"boxes" [G, 4], "labels" [G], "crowd" [G] bool (optional)} or None;
    detections: {"boxes" [D, 4], "scores" [D], "classes" [D]} or None; boxes rel_xyxy.
    """
    from PIL import Image, ImageDraw

    image = Image.fromarray(pixels)
    draw = ImageDraw.Draw(image)
    height, width = pixels.shape[:2]
    if truth is not None:
        boxes = np.asarray(truth["boxes"], np.float32).reshape(-1, 4)
        crowd = np.asarray(truth.get("crowd", np.zeros(len(boxes), bool)), bool)
        for box, is_crowd in zip(boxes, crowd):
            corners = box_pixels(box, height, width)
            _dashed(draw, corners, CROWD_BOX if is_crowd else TRUE_BOX, *((1, 2) if is_crowd else (4, 3)))
    shown = 0
    if detections is not None:
        font = _font()
        boxes = np.asarray(detections["boxes"], np.float32).reshape(-1, 4)
        for box, score, label in zip(boxes, detections["scores"], detections["classes"]):
            if float(score) < min_score:
                continue
            shown += 1
            left, top, right, bottom = box_pixels(box, height, width)
            colour = box_colour(label)
            draw.rectangle([left, top, right, bottom], outline=colour, width=2)
            text = f"{class_names[int(label)]} {float(score):.2f}"
            text_width = int(font.getlength(text)) + 2
            x = max(0, min(left, width - text_width))  # kept inside the picture where it fits
            y = top - LINE if top >= LINE else top + 2
            draw.rectangle([x, y, x + text_width - 1, y + LINE - 1], fill=colour)
            draw.text((x + 1, y), text, fill=(0, 0, 0), font=font)
    return np.asarray(image), shown


def boxes_tile(image: np.ndarray, truth: Mapping, detections: Mapping, class_names: Sequence[str],
               min_score: float) -> Tile:
    factor = scale_factor(*np.asarray(image).shape[:2])
    pixels, shown = draw_boxes(picture(image, factor), truth, detections, class_names, min_score)
    crowd = np.asarray(truth.get("crowd", np.zeros(len(truth["labels"]), bool)), bool)
    return Tile(pixels, [(f"{shown} found, {int((~crowd).sum())} true", NEUTRAL)])


def boxes_grid_png(images: Sequence[np.ndarray], truths: Sequence[Mapping], detections: Sequence[Mapping],
                   class_names: Sequence[str], min_score: float = 0.3, columns: int = 4) -> Optional[bytes]:
    """Each image with its true boxes and the detections scoring at least `min_score`."""
    tiles = [boxes_tile(images[i], truths[i], detections[i], class_names, min_score) for i in range(len(images))]
    return grid_png(tiles, columns, header=f"solid: detections scoring >= {min_score:g}; dashed white: true boxes; "
                                           "dotted grey: crowd")


# ------------------------------------------------------------------------------------------------
# multitask
# ------------------------------------------------------------------------------------------------
def multitask_tile(image: np.ndarray, outputs: Mapping, index: int, class_names: Sequence[str],
                   label: Optional[int], min_score: float) -> Tile:
    """The heads' predictions on one image: the mask over it, the boxes, the class and the count."""
    shown = overlay(image, outputs["segmentation_class_id"][index], len(class_names) + 1) \
        if "segmentation_class_id" in outputs else image
    pixels = picture(shown, scale_factor(*np.asarray(image).shape[:2]))
    if "detection_boxes" in outputs:
        count = int(outputs["detection_num_detections"][index])
        found = {key: outputs[f"detection_{key}"][index][:count] for key in ("boxes", "scores", "classes")}
        pixels, _ = draw_boxes(pixels, None, found, class_names, min_score)
    caption, colour = [], NEUTRAL
    if "classification_probabilities" in outputs:
        p = np.asarray(outputs["classification_probabilities"][index])
        caption.append(f"{class_names[int(p.argmax())]} ({float(p.max()):.2f})")
        if label is not None and int(label) >= 0:
            caption.append(f"true: {class_names[int(label)]}")
            colour = RIGHT if int(p.argmax()) == int(label) else WRONG
    if "regression_values" in outputs:
        caption.append(f"count {float(outputs['regression_values'][index][0]):.1f}")
    return Tile(pixels, [(text, colour) for text in caption])


def multitask_grid_png(images: Sequence[np.ndarray], outputs: Mapping, class_names: Sequence[str],
                       labels: Optional[Sequence[int]] = None, columns: int = 4,
                       min_score: float = 0.5) -> Optional[bytes]:
    """Each image with the predicted mask laid over it, the boxes scoring >= `min_score`, and the
    predicted class (and the true one) and count under it."""
    tiles = [multitask_tile(images[i], outputs, i, class_names, None if labels is None else labels[i], min_score)
             for i in range(len(images))]
    return grid_png(tiles, columns)
