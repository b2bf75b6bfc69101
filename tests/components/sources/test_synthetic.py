"""The synthetic source: deterministic from (seed, index), boxes equal to the shapes' pixel extents."""
import numpy as np
import pytest

from components.sources.synthetic import Reader, pixel_box, shape_mask, synthetic_record
from pipeline.config import IngestSection, SyntheticSource


def _equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection", "multitask", "video"])
def test_record_is_a_function_of_seed_and_index(task):
    source = SyntheticSource(num_classes=4, max_shapes=3, image_size=16, num_frames=4, seed=3)
    assert _equal(synthetic_record(7, source, task), synthetic_record(7, source, task))
    assert not np.array_equal(synthetic_record(7, source, task).get("image", synthetic_record(7, source, task).get("frames")),
                              synthetic_record(8, source, task).get("image", synthetic_record(8, source, task).get("frames")))
    other_seed = source.model_copy(update={"seed": 4})
    first = synthetic_record(7, source, task)
    second = synthetic_record(7, other_seed, task)
    key = "frames" if task == "video" else "image"
    assert not np.array_equal(first[key], second[key])


def test_pixel_box_is_the_pixel_extent_with_edges():
    mask = np.zeros((8, 10), bool)
    mask[2:5, 3:9] = True  # rows 2..4, cols 3..8
    np.testing.assert_allclose(pixel_box(mask), [3 / 10, 2 / 8, 9 / 10, 5 / 8])


def test_shape_mask_square_covers_its_expected_pixels():
    # side 10 centred at (10, 10): half-extent 0.85 * 5 = 4.25 -> centres 5.75..14.25 -> columns 6..13
    inside = shape_mask("square", 10.0, 10.0, 10.0, 20, 20)
    rows, cols = np.nonzero(inside)
    assert (rows.min(), rows.max(), cols.min(), cols.max()) == (6, 13, 6, 13)
    assert inside.sum() == 64


def test_boxes_are_exact_extents_of_mask_pixels_and_do_not_overlap():
    source = SyntheticSource(num_classes=6, max_shapes=4, image_size=32)
    for index in range(40):
        record = synthetic_record(index, source, "multitask")
        mask, boxes, labels = record["mask"], record["boxes"], record["box_labels"]
        assert record["label"] == labels[0] == index % 6
        covered = np.zeros(mask.shape, bool)
        for box, label in zip(boxes, labels):
            x0, y0, x1, y1 = np.round(box * 32).astype(int)
            assert 0 <= x0 < x1 <= 32 and 0 <= y0 < y1 <= 32
            assert not covered[y0:y1, x0:x1].any(), "boxes overlap"
            covered[y0:y1, x0:x1] = True
            inside = mask[y0:y1, x0:x1] == label + 1
            # the shape touches all four edges of its box
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert not (mask[~covered] != 0).any(), "shape pixels outside every box"
        # detection draws the very same image as multitask
        detection = synthetic_record(index, source, "detection")
        np.testing.assert_array_equal(detection["boxes"], boxes)
        np.testing.assert_array_equal(detection["image"], record["image"])


def test_classification_labels_are_balanced_and_one_shape_per_image():
    source = SyntheticSource(num_classes=3, max_shapes=4, image_size=16)
    labels = [synthetic_record(i, source, "classification")["label"] for i in range(30)]
    assert np.bincount(labels).tolist() == [10, 10, 10]
    segmentation = synthetic_record(4, source.model_copy(update={"max_shapes": 1}), "segmentation")
    assert set(np.unique(segmentation["mask"]).tolist()) == {0, 4 % 3 + 1}


def _centroid(frame: np.ndarray, background: np.ndarray) -> np.ndarray:
    distance = np.linalg.norm(frame.astype(float) - background, axis=-1)
    ys, xs = np.nonzero(distance > 60)
    return np.array([xs.mean(), ys.mean()])


def test_video_shape_moves_in_the_labelled_direction():
    source = SyntheticSource(num_classes=6, image_size=32, num_frames=6, noise=0.0)
    expected = {0: (1, 0), 1: (-1, 0), 2: (0, 1), 3: (0, -1), 4: (1, 1), 5: (-1, -1)}
    for index in range(12):
        record = synthetic_record(index, source, "video")
        frames = record["frames"]
        assert frames.shape == (6, 32, 32, 3) and record["label"] == index % 6
        background = frames[0, 0, 0].astype(float)  # corners stay background (travel < side)
        motion = _centroid(frames[-1], background) - _centroid(frames[0], background)
        dx, dy = expected[record["label"]]
        assert np.allclose(np.sign(np.round(motion)), (dx, dy)), (record["label"], motion)
        assert np.abs(motion).max() == pytest.approx(0.4 * 32, abs=1.0)


def test_reader_lists_chunks_covering_every_index_once():
    source = SyntheticSource(num_examples=150, image_size=8)
    reader = Reader(source, IngestSection(source=source, task="segmentation"))
    ids = [r["id"] for item in reader.list_items() for r in reader.read(item)]
    assert len(ids) == len(set(ids)) == 150
    assert reader.class_names() == ["background", "circle", "square", "triangle"]
    assert reader.fingerprint() != Reader(source.model_copy(update={"seed": 1}), IngestSection(source=source)).fingerprint()


def test_middle_frame_position_does_not_tell_the_direction():
    source = SyntheticSource(num_classes=4, image_size=32, num_frames=5, noise=0.0)
    centres = {d: [] for d in range(4)}
    for index in range(400):
        record = synthetic_record(index, source, "video")
        frames = record["frames"]
        centres[record["label"]].append(_centroid(frames[2], frames[0, 0, 0].astype(float)))
    means = np.array([np.mean(centres[d], axis=0) for d in range(4)])
    spans = np.array([np.ptp(centres[d], axis=0) for d in range(4)])
    # every direction puts its middle frame over the same square: same mean and spread (100 clips each)
    assert np.abs(means - means.mean(axis=0)).max() < 1.0, means
    assert np.abs(spans - spans.mean(axis=0)).max() < 2.0, spans


@pytest.mark.slow
def test_a_small_cnn_learns_the_shapes_at_32px():
    import keras

    source = SyntheticSource(num_classes=3, image_size=32)
    records = [synthetic_record(i, source, "classification") for i in range(1200)]
    x = np.stack([r["image"] for r in records]).astype("float32") / 255.0
    y = np.array([r["label"] for r in records])
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((32, 32, 3))] + [
        layer for filters in (32, 64, 64) for layer in (
            keras.layers.Conv2D(filters, 3, padding="same", activation="relu"), keras.layers.MaxPooling2D())
    ] + [keras.layers.Flatten(), keras.layers.Dense(64, activation="relu"), keras.layers.Dense(3)])
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.fit(x[:900], y[:900], epochs=12, batch_size=32, verbose=0)
    _, accuracy = model.evaluate(x[900:], y[900:], verbose=0)
    assert accuracy > 0.95
