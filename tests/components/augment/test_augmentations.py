"""Augmentation ops: boxes and masks move exactly with the pixels; copies are seeded from the id."""
from dataclasses import replace

import numpy as np
import pytest

from components.augment.augmentations import (
    Plan, apply_plan, augment_record, copy_id, copy_seed, crop_boxes, nearest_source_index, pixel_extent,
    sample_crop, sample_plan)
from components.sources.synthetic import pixel_box, synthetic_record
from pipeline.config import AugmentSection, SyntheticSource

ALL_GEOMETRIC = AugmentSection(
    horizontal_flip=True, vertical_flip=True, rotate90=True,
    random_resized_crop={"enabled": True, "scale": (0.3, 1.0), "ratio": (0.6, 1.6)},
    brightness=0.0, contrast=0.0, min_visible_fraction=0.0)


def rectangles_record(height, width, rects):
    """Rectangles (top, left, bottom, right inclusive) drawn on an image; mask id i + 1 for rectangle i."""
    image = np.full((height, width, 3), 20, np.uint8)
    mask = np.zeros((height, width), np.uint8)
    boxes = []
    for i, (top, left, bottom, right) in enumerate(rects):
        image[top:bottom + 1, left:right + 1] = (200, 40 * i, 90)
        mask[top:bottom + 1, left:right + 1] = i + 1
        boxes.append([left / width, top / height, (right + 1) / width, (bottom + 1) / height])
    return {"id": "rects", "source": "test", "image": image, "mask": mask,
            "boxes": np.array(boxes, np.float32), "box_labels": np.arange(1, len(rects) + 1, dtype=np.int64)}


def instance_record(index, size=24):
    """A synthetic detection scene whose mask holds one id per shape (box i -> id i + 1), so every
    box can be compared with its own shape's pixels. Shapes never overlap (synthetic.py), so the
    shape pixels inside box i are shape i's."""
    source = SyntheticSource(image_size=size, max_shapes=3, min_shape_size=0.2, max_shape_size=0.4)
    record = synthetic_record(index, source, "multitask")
    instances = np.zeros((size, size), np.uint8)
    for i, box in enumerate(record["boxes"]):
        (c0,), (c1,) = pixel_extent(box[[0]], box[[2]], size)
        (r0,), (r1,) = pixel_extent(box[[1]], box[[3]], size)
        window = instances[r0:r1 + 1, c0:c1 + 1]
        window[record["mask"][r0:r1 + 1, c0:c1 + 1] > 0] = i + 1
    record["mask"] = instances
    record["box_labels"] = np.arange(1, len(record["boxes"]) + 1, dtype=np.int64)
    return record


def assert_boxes_frame_shapes(record):
    assert len(record["boxes"]) == len(record["box_labels"])
    for box, shape_id in zip(record["boxes"], record["box_labels"]):
        np.testing.assert_allclose(box, pixel_box(record["mask"] == shape_id), atol=1e-6,
                                   err_msg=f"box of shape {shape_id}")


# ------------------------------------------------------------------------------------------------
# flips, turns, crops on synthetic detection scenes
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("index", range(4))
def test_flipped_copy_boxes_frame_the_shapes(index):
    record = instance_record(index)
    assert_boxes_frame_shapes(record)
    for plan in (Plan(horizontal_flip=True), Plan(vertical_flip=True), Plan(horizontal_flip=True, vertical_flip=True)):
        flipped = apply_plan(record, plan)
        assert_boxes_frame_shapes(flipped)
    flipped = apply_plan(record, Plan(horizontal_flip=True))
    np.testing.assert_array_equal(flipped["image"], record["image"][:, ::-1])
    np.testing.assert_allclose(flipped["boxes"][:, 0], 1.0 - record["boxes"][:, 2], atol=1e-6)


@pytest.mark.parametrize("index", range(4))
def test_cropped_copy_boxes_frame_the_shapes(index):
    record = instance_record(index)
    # the smallest window holding every shape, widened by one pixel where it can be: no shape is cut
    rows, cols = np.nonzero(record["mask"])
    top, left = max(0, rows.min() - 1), max(0, cols.min() - 1)
    bottom, right = min(23, rows.max() + 1), min(23, cols.max() + 1)
    crop = (int(top), int(left), int(bottom - top + 1), int(right - left + 1))
    cropped = apply_plan(record, Plan(crop=crop))
    assert cropped["image"].shape == record["image"].shape
    assert len(cropped["boxes"]) == len(record["boxes"])
    assert_boxes_frame_shapes(cropped)


def test_crop_resize_box_by_hand():
    # 8x8, a square over rows/cols 2..3; crop rows/cols 1..6 (6 px) back to 8 px.
    # nearest source of output i: floor((i + 1/2) * 6 / 8) = 0 1 1 2 3 4 4 5, so crop pixels 1..2
    # (image pixels 2..3) land on output pixels 1..3: box [1/8, 4/8].
    record = rectangles_record(8, 8, [(2, 2, 3, 3)])
    np.testing.assert_array_equal(nearest_source_index(8, 6), [0, 1, 1, 2, 3, 4, 4, 5])
    cropped = apply_plan(record, Plan(crop=(1, 1, 6, 6)))
    np.testing.assert_allclose(cropped["boxes"], [[1 / 8, 1 / 8, 4 / 8, 4 / 8]])
    assert_boxes_frame_shapes(cropped)


def test_cut_box_is_clipped_and_dropped_below_visible_fraction():
    # 16x16: rectangle A cols 0..9 (10 px wide), B cols 12..15; crop cols 5..14 keeps 5/10 of A
    # and 3/4 of B; crop cols 8..15 keeps 2/10 of A (dropped at 0.3) and all of B.
    record = rectangles_record(16, 16, [(2, 0, 5, 9), (8, 12, 11, 15)])
    half = apply_plan(record, Plan(crop=(0, 5, 16, 10), min_visible_fraction=0.3))
    np.testing.assert_array_equal(half["box_labels"], [1, 2])
    assert_boxes_frame_shapes(half)  # rectangles: the clipped box is the visible rectangle
    np.testing.assert_allclose(half["boxes"][0], [0.0, 2 / 16, 8 / 16, 6 / 16])  # 5 of 10 columns -> 8 of 16

    sliver = apply_plan(record, Plan(crop=(0, 8, 16, 8), min_visible_fraction=0.3))
    np.testing.assert_array_equal(sliver["box_labels"], [2])
    assert sliver["boxes"].shape == (1, 4)
    assert_boxes_frame_shapes(sliver)
    kept_at_lower_threshold = apply_plan(record, Plan(crop=(0, 8, 16, 8), min_visible_fraction=0.2))
    np.testing.assert_array_equal(kept_at_lower_threshold["box_labels"], [1, 2])


def test_box_outside_crop_is_dropped_even_at_zero_fraction():
    boxes = np.array([[0.0, 0.0, 0.25, 0.25]], np.float32)
    kept, labels = crop_boxes(boxes, np.array([7]), 8, 8, (4, 4, 4, 4), 0.0)
    assert kept.shape == (0, 4) and labels.shape == (0,)


@pytest.mark.parametrize("turns", range(4))
def test_quarter_turns_move_boxes_with_pixels(turns):
    record = rectangles_record(12, 12, [(0, 1, 2, 6), (7, 8, 11, 10)])
    turned = apply_plan(record, Plan(rotate90=turns))
    np.testing.assert_array_equal(turned["image"], np.rot90(record["image"], turns))
    assert_boxes_frame_shapes(turned)


def test_quarter_turn_of_non_square_image_is_refused_and_never_sampled():
    record = rectangles_record(8, 12, [(1, 1, 3, 3)])
    with pytest.raises(ValueError, match="square"):
        apply_plan(record, Plan(rotate90=1))
    turns = {sample_plan(8, 12, ALL_GEOMETRIC, np.random.default_rng(s)).rotate90 for s in range(40)}
    assert turns == {0, 2}
    assert_boxes_frame_shapes(apply_plan(record, Plan(rotate90=2)))


@pytest.mark.parametrize("index", range(6))
def test_random_geometric_copies_keep_whole_shapes_exact_and_cut_ones_inside(index):
    record = instance_record(index)
    for k in range(6):
        plan = sample_plan(24, 24, ALL_GEOMETRIC, np.random.default_rng(copy_seed(record["id"], k)))
        out = apply_plan(record, plan)
        before_crop = apply_plan(record, replace(plan, crop=None))
        top, left, height, width = plan.crop
        for box, shape_id in zip(out["boxes"], out["box_labels"]):
            shape = before_crop["mask"] == shape_id
            whole = shape[top:top + height, left:left + width].sum() == shape.sum()
            rows, cols = np.nonzero(out["mask"] == shape_id)
            (c0,), (c1,) = pixel_extent(box[[0]], box[[2]], 24)
            (r0,), (r1,) = pixel_extent(box[[1]], box[[3]], 24)
            if whole:
                np.testing.assert_allclose(box, pixel_box(out["mask"] == shape_id), atol=1e-6)
            else:  # clipped: the visible pixels lie inside the box
                assert c0 <= cols.min() and cols.max() <= c1 and r0 <= rows.min() and rows.max() <= r1


# ------------------------------------------------------------------------------------------------
# masks, determinism, video
# ------------------------------------------------------------------------------------------------
def test_masks_never_gain_class_ids():
    rng = np.random.default_rng(0)
    mask = rng.choice(np.array([0, 2, 5, 255], np.uint8), size=(20, 20))  # 255: an ignore value
    record = {"id": "m", "image": rng.integers(0, 256, (20, 20, 3), dtype=np.uint8), "mask": mask}
    cfg = ALL_GEOMETRIC.model_copy(update={"brightness": 0.3, "contrast": 0.3, "noise_std": 0.1})
    for k in range(25):
        out = augment_record(record, cfg, copy_seed("m", k))
        assert out["mask"].shape == (20, 20) and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"])) <= {0, 2, 5, 255}


def test_copy_seed_is_stable_and_copies_are_deterministic():
    assert copy_id("synthetic-0000003", 2) == "synthetic-0000003#aug2"
    # sha256("a#aug0"), first 8 bytes little-endian: fixed across processes and Python versions
    assert copy_seed("a", 0) == 9011033241282774664
    record = instance_record(1)
    cfg = ALL_GEOMETRIC.model_copy(update={"brightness": 0.2, "saturation": 0.3, "noise_std": 0.05})
    first = augment_record(record, cfg, copy_seed(record["id"], 0))
    again = augment_record(record, cfg, copy_seed(record["id"], 0))
    other = augment_record(record, cfg, copy_seed(record["id"], 1))
    for key in ("image", "mask", "boxes", "box_labels"):
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["image"], other["image"])
    assert record["image"] is not first["image"] and first["id"] == record["id"]


def test_video_frames_share_one_spatial_transform_and_reverse_only_when_asked():
    rng = np.random.default_rng(3)
    frames = rng.integers(0, 256, (5, 10, 10, 3), dtype=np.uint8)
    clip = {"id": "clip", "frames": frames, "label": 2}
    plan = Plan(horizontal_flip=True, rotate90=1, crop=(1, 2, 7, 6))
    out = apply_plan(clip, plan)
    for t in range(5):
        np.testing.assert_array_equal(out["frames"][t], apply_plan({"image": frames[t]}, plan)["image"])
    reversed_clip = apply_plan(clip, replace(plan, reverse_time=True))
    np.testing.assert_array_equal(reversed_clip["frames"], out["frames"][::-1])
    assert reversed_clip["label"] == 2

    no_reverse = AugmentSection(reverse_time=False)
    with_reverse = AugmentSection(reverse_time=True)
    assert not any(sample_plan(10, 10, no_reverse, np.random.default_rng(s), video=True).reverse_time for s in range(20))
    assert {sample_plan(10, 10, with_reverse, np.random.default_rng(s), video=True).reverse_time for s in range(20)} == {True, False}
    assert not any(sample_plan(10, 10, with_reverse, np.random.default_rng(s), video=False).reverse_time for s in range(20))


# ------------------------------------------------------------------------------------------------
# photometric
# ------------------------------------------------------------------------------------------------
def test_brightness_and_contrast_by_hand():
    image = np.array([[[50, 50, 50], [150, 150, 150]]], np.uint8)
    brighter = apply_plan({"image": image}, Plan(brightness=0.2))["image"]
    np.testing.assert_array_equal(brighter[0, :, 0], [101, 201])  # +0.2 * 255 = +51
    stretched = apply_plan({"image": image}, Plan(contrast=2.0))["image"]
    np.testing.assert_array_equal(stretched[0, :, 0], [0, 200])  # mean 100, distances doubled


def test_saturation_zero_gives_grey_and_noise_is_seeded():
    image = np.array([[[255, 0, 0], [0, 0, 255]]], np.uint8)
    grey = apply_plan({"image": image}, Plan(saturation=0.0))["image"]
    np.testing.assert_array_equal(grey[0, 0], [76, 76, 76])  # 0.299 * 255 = 76.2
    np.testing.assert_array_equal(grey[0, 1], [29, 29, 29])  # 0.114 * 255 = 29.1
    flat = {"image": np.full((16, 16, 3), 128, np.uint8)}
    noisy = apply_plan(flat, Plan(noise_std=0.1, noise_seed=5))["image"]
    np.testing.assert_array_equal(noisy, apply_plan(flat, Plan(noise_std=0.1, noise_seed=5))["image"])
    deviation = (noisy.astype(float) - 128) / 255
    assert 0.07 < deviation.std() < 0.13


def test_photometric_ops_leave_masks_and_boxes_alone():
    record = rectangles_record(8, 8, [(1, 1, 4, 5)])
    out = apply_plan(record, Plan(brightness=0.1, contrast=1.5, saturation=0.5, noise_std=0.05, noise_seed=1))
    np.testing.assert_array_equal(out["mask"], record["mask"])
    np.testing.assert_array_equal(out["boxes"], record["boxes"])
    assert not np.array_equal(out["image"], record["image"])


def test_sampled_crops_follow_scale_and_ratio():
    rng = np.random.default_rng(0)
    for _ in range(200):
        top, left, height, width = sample_crop(40, 40, (0.25, 0.5), (0.75, 1.333), rng)
        assert 0 <= top and top + height <= 40 and 0 <= left and left + width <= 40
        assert 0.2 <= height * width / 1600 <= 0.55
        assert 0.6 <= width / height <= 1.5
    # a ratio the image cannot hold at that area falls back to the largest centred window
    assert sample_crop(10, 40, (1.0, 1.0), (1.0, 1.0), rng) == (0, 15, 10, 10)


def test_crowd_regions_move_with_the_pixels_like_boxes():
    from components.augment.augmentations import Plan, apply_plan

    image = np.zeros((8, 8, 3), np.uint8)
    box = np.array([[0.0, 0.25, 0.5, 0.75]], np.float32)
    record = {"id": "c", "image": image, "boxes": box, "box_labels": np.array([1]),
              "crowd_boxes": box.copy(), "crowd_labels": np.array([2])}
    out = apply_plan(record, Plan(horizontal_flip=True))
    np.testing.assert_allclose(out["boxes"], [[0.5, 0.25, 1.0, 0.75]])
    np.testing.assert_allclose(out["crowd_boxes"], out["boxes"])
    assert out["crowd_labels"].tolist() == [2]
