"""The Pillow sample grids: layout arithmetic, caption colours, box pixels and mask colours."""
import io

import numpy as np
import pytest
from PIL import Image

from components.reports import sample_grids as g
from components.reports.mask_pictures import class_colour

NAMES = ["circle", "square", "triangle"]


def decode(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def grey(count: int, side: int = 8) -> np.ndarray:
    return np.full((count, side, side, 3), 0.5, np.float32)


def count_colour(pixels: np.ndarray, colour) -> int:
    return int(np.all(pixels == np.array(colour, np.uint8), axis=-1).sum())


def test_scale_factor_brings_the_longer_side_to_the_tile_side():
    assert g.scale_factor(8, 8) == 16            # 128 / 8
    assert g.scale_factor(28, 28) == 5           # ceil(128 / 28): 140 px
    assert g.scale_factor(32, 96) == 2           # a strip of three 32 px frames: 64 x 192
    assert g.scale_factor(200, 150) == 1


def test_grid_size_follows_tile_count_and_columns():
    # 5 tiles, 2 to a row -> 3 rows; each cell 32 px + 2 caption lines of 12 px, 4 px apart
    assert g.grid_size(5, 2, 32, 32, caption_lines=2) == (4 + 3 * (32 + 24 + 4), 4 + 2 * (32 + 4))
    assert g.grid_size(3, 4, 32, 32, caption_lines=0) == (4 + 36, 4 + 3 * 36)   # fewer tiles than columns
    png = g.classification_grid_png(grey(5), [0] * 5, [0] * 5, [0.9] * 5, NAMES, columns=2)
    assert decode(png).shape == (472, 268, 3)    # 8 px images upscaled x16: 4 + 3 * (128 + 24 + 4), 4 + 2 * 132
    png = g.mask_grid_png(grey(3), np.zeros((3, 8, 8), int), np.zeros((3, 8, 8), int), ["bg", *NAMES], columns=2)
    assert decode(png).shape == (12 + 4 + 2 * (128 + 4), 4 + 2 * (3 * 128 + 2 * 2 + 4), 3)   # one header line
    assert g.classification_grid_png(grey(0), [], [], [], NAMES) is None


def test_right_prediction_is_captioned_green_and_wrong_red():
    assert g.RIGHT[1] > 2 * max(g.RIGHT[0], g.RIGHT[2])    # green
    assert g.WRONG[0] > 2 * max(g.WRONG[1], g.WRONG[2])    # red
    png = g.classification_grid_png(grey(2), true=[1, 1], predicted=[1, 2], probabilities=[0.8, 0.6],
                                    class_names=NAMES, columns=2)
    pixels = decode(png)
    captions = pixels[4 + 128:4 + 128 + 24]          # the two caption lines under the pictures
    right, wrong = captions[:, :4 + 128 + 2], captions[:, 4 + 128 + 2:]
    assert count_colour(right, g.RIGHT) > 50 and count_colour(right, g.WRONG) == 0
    assert count_colour(wrong, g.WRONG) > 50 and count_colour(wrong, g.RIGHT) == 0
    assert count_colour(pixels[:4 + 128], g.RIGHT) == 0   # no caption colour above the captions


def test_long_captions_are_cut_to_the_tile_width():
    tile = g.classification_tile(grey(1)[0], 0, 0.5, 0, ["a-very-long-class-name-that-does-not-fit"])
    pixels = decode(g.grid_png([tile, tile], columns=2))
    gap = pixels[4 + 128:, 4 + 128:4 + 128 + 4]          # the 4 px between the two cells
    assert count_colour(gap, g.RIGHT) == 0


def test_a_detection_box_lands_on_its_pixels():
    image = np.zeros((8, 8, 3), np.float32)                # upscaled x16 to 128 x 128
    truth = {"boxes": np.array([[0.0, 0.0, 0.5, 0.5]]), "labels": np.array([1])}
    found = {"boxes": np.array([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 1.0, 1.0]]), "scores": np.array([0.9, 0.2]),
             "classes": np.array([0, 2])}
    tile = g.boxes_tile(image, truth, found, NAMES, min_score=0.3)
    pixels = tile.pixels
    colour = np.array(g.box_colour(0), np.uint8)
    assert tuple(colour) == (230, 25, 75)                 # class 0 takes mask class 1's colour
    # rel_xyxy (0.25, 0.5, 0.75, 1.0) covers columns 32..95 and rows 64..127; the outline is 2 px inside
    for column in (32, 33, 94, 95):
        assert np.all(pixels[64:128, column] == colour)
    for row in (64, 65, 126, 127):
        assert np.all(pixels[row, 32:96] == colour)
    assert np.all(pixels[66:126, 34:94] == 0)             # inside untouched
    assert np.all(pixels[64:128, 31] == 0) and np.all(pixels[64:128, 96] == 0)
    label = pixels[52:64, 32:96]                          # 'circle 0.90' on the class colour, right above the box
    assert np.all(label[:, 0] == colour) and count_colour(label, (0, 0, 0)) > 20
    # the true box (0, 0, 0.5, 0.5): dashed white from (0, 0) to (63, 63), 4 on and 3 off
    white = np.array(g.TRUE_BOX, np.uint8)
    assert [bool(np.all(pixels[0, x] == white)) for x in range(8)] == [True] * 4 + [False] * 3 + [True]
    assert np.all(pixels[63, 0:4] == white) and np.all(pixels[0:4, 63] == white)
    assert tile.caption == [("1 found, 1 true", g.NEUTRAL)]  # the 0.2 detection is not drawn


def test_mask_overlay_pixels_take_the_class_colour():
    image = np.full((8, 8, 3), 0.5, np.float32)
    true = np.zeros((8, 8), np.uint8)
    true[:4, :4] = 2
    predicted = np.ones((8, 8), np.uint8)
    predicted[7, 7] = 255                                  # an ignore value is drawn white
    tile = g.mask_tile(image, true, predicted, num_classes=3, title="synthetic-0\nIoU 0.50")
    pixels = tile.pixels
    assert pixels.shape == (128, 3 * 128 + 2 * g.SEPARATOR, 3)
    true_panel, predicted_panel = pixels[:, 130:258], pixels[:, 260:388]

    def blend(colour):  # overlay's alpha 0.55 over the grey image
        return np.round(255 * (0.45 * 0.5 + 0.55 * np.asarray(colour))).astype(np.uint8)

    assert np.all(true_panel[:64, :64] == blend(class_colour(2)))
    assert np.all(true_panel[64:, :] == 128) and np.all(true_panel[:, 64:] == 128)   # background: the image
    assert np.all(predicted_panel[:112, :] == blend(class_colour(1)))
    assert np.all(predicted_panel[112:, 112:] == blend(np.ones(3)))
    assert np.all(pixels[:, :128] == 128)                  # the image itself, uncoloured
    assert np.all(pixels[:, 128:130] == g.BACKGROUND)
    assert tile.caption == [("synthetic-0", g.NEUTRAL), ("IoU 0.50", g.NEUTRAL)]   # a line each


def test_multitask_tile_shows_every_head():
    image = np.full((8, 8, 3), 0.5, np.float32)
    outputs = {"classification_probabilities": np.array([[0.1, 0.7, 0.2]]),
               "segmentation_class_id": np.full((1, 8, 8), 3),
               "detection_boxes": np.array([[[0.0, 0.5, 0.5, 1.0], [0, 0, 1, 1]]]),
               "detection_scores": np.array([[0.9, 0.1]]), "detection_classes": np.array([[1, 1]]),
               "detection_num_detections": np.array([1]), "regression_values": np.array([[2.0]])}
    tile = g.multitask_tile(image, outputs, 0, NAMES, label=2, min_score=0.5)
    assert tile.caption == [("square (0.70)", g.WRONG), ("true: triangle", g.WRONG), ("count 2.0", g.WRONG)]
    mask_colour = np.round(255 * (0.45 * 0.5 + 0.55 * class_colour(3))).astype(np.uint8)
    assert np.all(tile.pixels[70:120, 70:120] == mask_colour)   # mask class 3 = object class 2 + 1
    assert np.all(tile.pixels[64:128, 0] == g.box_colour(1))
    right = g.multitask_tile(image, outputs, 0, NAMES, label=1, min_score=0.5)
    assert right.caption[0] == ("square (0.70)", g.RIGHT)


@pytest.mark.parametrize("columns", [1, 3])
def test_every_tile_lands_in_its_cell(columns):
    images = np.zeros((4, 8, 8, 3), np.float32)
    images[2] = 1.0                                        # the third tile white, the others black
    pixels = decode(g.classification_grid_png(images, [0] * 4, [0] * 4, [0.5] * 4, NAMES, columns=columns))
    row, column = divmod(2, columns)
    top, left = 4 + row * (128 + 24 + 4), 4 + column * (128 + 4)
    assert np.all(pixels[top:top + 128, left:left + 128] == 255)
    assert count_colour(pixels, (255, 255, 255)) == 128 * 128
