"""Video fusion models: shapes, shared towers, temporal receptive fields, training, safe loading."""
import keras
import numpy as np
import pytest

from models import build_model
from models.layers.select_frame import SelectFrame
from models.video.fusion import FUSIONS, slow_fusion_schedule

FRAMES, SIDE = 4, 12
TINY = dict(filters=(4, 8), dense_units=8)


def motion_batch(count: int = 8, frames: int = FRAMES, side: int = SIDE):
    """A bright 3x3 square moving right (label 0) or left (label 1) on black; the middle frames
    of both classes cover the same positions, so only motion separates them."""
    rng = np.random.default_rng(0)
    clips = np.zeros((count, frames, side, side, 1), np.float32)
    labels = np.arange(count) % 2
    for i, label in enumerate(labels):
        row = int(rng.integers(0, side - 3))
        start = int(rng.integers(0, side - 3 - (frames - 1)))
        for t in range(frames):
            col = start + t if label == 0 else start + frames - 1 - t
            clips[i, t, row:row + 3, col:col + 3] = 1.0
    return clips, keras.utils.to_categorical(labels, 2)


def temporal_trace(model):
    """(time size, temporal receptive field) after each layer of a chain, by r += (F - 1) * j, j *= S."""
    size, field, jump, trace = model.input_shape[1], 1, 1, []
    for layer in model.layers:
        if isinstance(layer, (keras.layers.Conv3D, keras.layers.MaxPooling3D)):
            kernel = layer.kernel_size[0] if isinstance(layer, keras.layers.Conv3D) else layer.pool_size[0]
            stride = layer.strides[0]
            assert layer.padding == "valid", f"{layer.name}: time arithmetic below assumes valid padding"
            size = (size - kernel) // stride + 1
            field += (kernel - 1) * jump
            jump *= stride
            trace.append((layer.name, size, field))
    return trace


# ------------------------------------------------------------------------------------------------
# building
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_outputs_float32_logits_per_class(fusion):
    model = build_model("video", (FRAMES, SIDE, SIDE, 1), 3, fusion=fusion, **TINY)
    clips, _ = motion_batch(5)
    logits = model(clips)
    assert tuple(logits.shape) == (5, 3)
    assert logits.dtype == "float32"
    assert model.output_shape == (None, 3)


def test_default_model_on_the_synthetic_task_size_has_the_hand_counted_parameters():
    # slow, filters (16, 32, 32), kernel 3, 8x32x32x3, time 8 -> 3 -> 1 -> 1, space 32 -> 16 -> 8 -> 4
    model = build_model("video", (8, 32, 32, 3), 4)
    conv = (4 * 9 * 3 * 16 + 16) + (3 * 9 * 16 * 32 + 32) + (1 * 9 * 32 * 32 + 32)
    head = (4 * 4 * 32 * 64 + 64) + (64 * 4 + 4)
    assert model.count_params() == conv + head == 57940


def test_late_fusion_towers_share_one_set_of_weights():
    single = build_model("video", (FRAMES, 8, 8, 1), 2, fusion="single_frame", filters=(4,), dense_units=8)
    late = build_model("video", (FRAMES, 8, 8, 1), 2, fusion="late", filters=(4,), dense_units=8)
    tower = (1 * 9 * 4 + 4)  # one conv, 8x8 -> pool -> 4x4x4 = 64 features per frame
    assert single.count_params() == tower + (64 * 8 + 8) + (8 * 2 + 2) == 578
    assert late.count_params() == tower + (2 * 64 * 8 + 8) + (8 * 2 + 2) == 1090
    convs = [layer for layer in late.layers if isinstance(layer, keras.layers.Conv2D)]
    assert [len(layer._inbound_nodes) for layer in convs] == [2], "one conv layer, applied to both frames"
    conv_kernels = [w for w in late.weights if w.path.endswith("kernel") and len(w.shape) == 4]
    assert len(conv_kernels) == 1


def test_late_fusion_sees_first_and_last_frame_only():
    model = build_model("video", (FRAMES, 8, 8, 1), 2, fusion="late", filters=(4,), dense_units=8)
    clips = np.random.default_rng(1).random((2, FRAMES, 8, 8, 1)).astype(np.float32)
    changed = clips.copy()
    changed[:, 1:-1] = 0.0
    np.testing.assert_allclose(model(clips), model(changed), atol=1e-6)
    changed[:, -1] = 0.0
    assert not np.allclose(model(clips), model(changed), atol=1e-6)


def test_single_frame_sees_the_middle_frame_only():
    model = build_model("video", (FRAMES, 8, 8, 1), 2, fusion="single_frame", filters=(4,), dense_units=8)
    clips = np.random.default_rng(2).random((2, FRAMES, 8, 8, 1)).astype(np.float32)
    others = clips.copy()
    others[:, [0, 1, 3]] = 0.0  # T=4: the middle frame is T // 2 = 2
    np.testing.assert_allclose(model(clips), model(others), atol=1e-6)


def test_early_fusion_first_convolution_spans_all_frames():
    model = build_model("video", (6, SIDE, SIDE, 1), 2, fusion="early", **TINY)
    assert model.get_layer("block1_conv").kernel_size == (6, 3, 3)
    assert model.get_layer("block2_conv").kernel_size == (1, 3, 3)
    assert [(n, s, f) for n, s, f in temporal_trace(model) if n.endswith("_conv")] == [
        ("block1_conv", 1, 6), ("block2_conv", 1, 6)]


# ------------------------------------------------------------------------------------------------
# temporal arithmetic
# ------------------------------------------------------------------------------------------------
def test_slow_fusion_schedule_for_eight_and_ten_frames():
    # T=8: (8 - 4)/2 + 1 = 3, then the rest (3) at once -> 1; receptive field 4 + (3 - 1) * 2 = 8
    assert slow_fusion_schedule(8, 3) == [(4, 2), (3, 1), (1, 1)]
    # T=10 (Karpathy's clip length): (10 - 4)/2 + 1 = 4 -> 1; field 4 + 3 * 2 = 10
    assert slow_fusion_schedule(10, 3) == [(4, 2), (4, 1), (1, 1)]
    # T=9: (9 - 4) mod 2 = 1 would skip the last frame, so the kernel widens to 5: (9 - 5)/2 + 1 = 3
    assert slow_fusion_schedule(9, 2) == [(5, 2), (3, 1)]


@pytest.mark.parametrize("frames", [4, 8, 9, 10, 16])
def test_slow_fusion_top_layer_sees_exactly_all_frames(frames):
    model = build_model("video", (frames, 8, 8, 1), 2, fusion="slow", filters=(4, 4, 4), dense_units=8)
    trace = temporal_trace(model)
    sizes = [size for _, size, _ in trace]
    assert sizes[-1] == 1
    assert trace[-1][2] == frames
    convs = [(name, size, field) for name, size, field in trace if name.endswith("_conv")]
    assert convs[0][2] <= 5, "the first layer must see only a few frames (slow, not early fusion)"
    assert [f for _, _, f in convs] == sorted(f for _, _, f in convs)


def test_slow_fusion_time_sizes_per_layer_for_eight_frames():
    model = build_model("video", (8, 8, 8, 1), 2, fusion="slow", filters=(4, 4, 4), dense_units=8)
    assert [(n, s, f) for n, s, f in temporal_trace(model) if n.endswith("_conv")] == [
        ("block1_conv", 3, 4), ("block2_conv", 1, 8), ("block3_conv", 1, 8)]


def test_conv3d_pools_through_time_height_and_width():
    model = build_model("video", (8, 16, 16, 1), 2, fusion="conv3d", filters=(4, 4, 4), dense_units=8)
    shapes = [tuple(model.get_layer(f"block{i}_pool").output.shape[1:4]) for i in (1, 2, 3)]
    assert shapes == [(4, 8, 8), (2, 4, 4), (1, 2, 2)]


@pytest.mark.parametrize("fusion", ["early", "slow", "conv3d"])
def test_describe_model_prints_time_height_width_matching_keras(fusion):
    from models.describe import describe_model, format_table

    model_rows = describe_model("video", (8, 16, 16, 1), 2, {"fusion": fusion, "filters": [4, 4, 4], "dense_units": 8})
    model = build_model("video", (8, 16, 16, 1), 2, fusion=fusion, filters=[4, 4, 4], dense_units=8)
    for row in model_rows:
        if row["output_size"]:
            assert row["output_size"] == tuple(model.get_layer(row["name"]).output.shape[1:4]), row["name"]
    (top,) = [row for row in model_rows if row["name"] == "block3_pool"]
    assert top["output_size"][0] == 1
    assert top["receptive_field"][0] >= 8, "the top layer sees every frame"
    assert "8x16x16" in format_table(model_rows)


@pytest.mark.parametrize("fusion", ["single_frame", "late"])
def test_describe_model_handles_frame_selection(fusion):
    from models.describe import describe_model

    rows = describe_model("video", (8, 16, 16, 1), 2, {"fusion": fusion, "filters": [4], "dense_units": 8})
    assert [row["output_size"] for row in rows if row["name"] == "tower_block1_pool"] == [(8, 8)]


# ------------------------------------------------------------------------------------------------
# training and saving
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_learns_a_tiny_motion_batch(fusion):
    keras.utils.set_random_seed(0)
    model = build_model("video", (FRAMES, SIDE, SIDE, 1), 2, fusion=fusion, **TINY)
    model.compile(optimizer=keras.optimizers.Adam(1e-2),
                  loss=keras.losses.CategoricalCrossentropy(from_logits=True), jit_compile=False)
    clips, targets = motion_batch()
    losses = [float(model.train_on_batch(clips, targets)) for _ in range(12)]
    assert losses[-1] < 0.7 * losses[0], losses


@pytest.mark.parametrize("fusion", FUSIONS)
def test_keras_file_round_trips_with_safe_mode(fusion, tmp_path):
    model = build_model("video", (FRAMES, SIDE, SIDE, 1), 3, fusion=fusion, **TINY)
    clips, _ = motion_batch(3)
    path = tmp_path / f"{fusion}.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    np.testing.assert_allclose(loaded.predict(clips, verbose=0), model.predict(clips, verbose=0), atol=1e-6)


# ------------------------------------------------------------------------------------------------
# arguments
# ------------------------------------------------------------------------------------------------
def test_unknown_fusion_names_the_choices():
    with pytest.raises(ValueError, match=r"Expected one of single_frame, late, early, slow, conv3d. Received fusion='fast'"):
        build_model("video", (FRAMES, SIDE, SIDE, 1), 2, fusion="fast")


@pytest.mark.parametrize("shape", [(SIDE, SIDE, 1), (FRAMES, SIDE, SIDE, 1, 1), (0, SIDE, SIDE, 1)])
def test_input_must_be_a_clip(shape):
    with pytest.raises(ValueError, match=r"expected input_shape \[T, H, W, C\]"):
        build_model("video", shape, 2)


@pytest.mark.parametrize("params", [dict(filters=[]), dict(filters=[4, 0]), dict(filters="16"),
                                    dict(temporal_stride=0), dict(dropout=1.0)])
def test_bad_arguments_are_refused(params):
    with pytest.raises(ValueError, match="invalid value for argument"):
        build_model("video", (FRAMES, SIDE, SIDE, 1), 2, **params)


def test_select_frame_picks_by_index_and_round_trips_its_config():
    clips = np.arange(2 * 3 * 2 * 2 * 1, dtype=np.float32).reshape(2, 3, 2, 2, 1)
    np.testing.assert_array_equal(SelectFrame(1)(clips), clips[:, 1])
    np.testing.assert_array_equal(SelectFrame(-1)(clips), clips[:, 2])
    layer = SelectFrame.from_config(SelectFrame(-1, name="last").get_config())
    assert (layer.index, layer.name) == (-1, "last")
    assert SelectFrame(0).compute_output_shape((None, 3, 2, 2, 1)) == (None, 2, 2, 1)
    with pytest.raises(ValueError, match=r"Expected -3 <= index < 3 .* Received index=3"):
        SelectFrame(3)(clips)
    with pytest.raises(ValueError, match="Expected an integer"):
        SelectFrame(1.5)


def test_video_config_loads_and_every_swept_fusion_builds_for_its_clips():
    from pathlib import Path

    from pipeline.config import load_config

    config = load_config(Path(__file__).resolve().parents[3] / "configs" / "video.json")
    source = config.ingest.source
    assert (config.ingest.task, source.name, source.num_frames) == ("video", "synthetic", 8)
    assert source.image_size <= 32 and config.model.name == "video" and config.model.params["fusion"] == "slow"
    assert config.train.sweep == {"model.params.fusion": list(FUSIONS)}
    assert not config.augment.enabled, "a horizontal flip would swap the labels left and right"
    shape = (source.num_frames, source.image_size, source.image_size, 3)
    for fusion in config.train.sweep["model.params.fusion"]:
        params = {**config.model.params, "fusion": fusion}
        assert build_model("video", shape, source.num_classes, **params).output_shape == (None, source.num_classes)
