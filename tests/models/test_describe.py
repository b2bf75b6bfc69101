"""describe-model: the formula's sizes agree with what Keras computes for every layer call, and
receptive fields match hand sums and impulse responses (which input rows reach which output rows)."""
import itertools
from fractions import Fraction

import keras
import numpy as np
import pytest

from models import arithmetic
from models.describe import describe_keras_model, describe_model, format_table, output_geometries, trace_calls
from models.layers.bed_of_nails import BedOfNails2D
from models.layers.nearest_upsampling import NearestUpsampling2D


def _qualified(path, name):
    return f"{path}/{name}" if path else name


def assert_sizes_match_keras(rows, model, input_shape=None):
    """Every call's formula size equals the spatial shape Keras gave each of its outputs (in a run of
    its own); every call has a row; the parameters add up to the model's."""
    measured = {}
    for call in trace_calls(model, input_shape).calls:
        name = call.layer.name if call.number == 1 else f"{call.layer.name}#{call.number}"
        measured[_qualified("/".join(call.path), name)] = {tuple(t.shape[1:-1]) for t in call.outputs}
    by_name = {_qualified(r["path"], r["name"]): r for r in rows if r["kind"] != "InputLayer"}
    called = {name: row for name, row in by_name.items() if row["call"] > 0}
    assert sorted(called) == sorted(measured)
    for name, row in called.items():
        if row["output_size"] is not None:
            assert measured[name] == {row["output_size"]}, (name, row)
        else:
            assert row["receptive_field"] is None
    for row in rows:
        if row["kind"] == "InputLayer":
            assert row["output_size"] == row["input_size"] and row["receptive_field"] == (1,) * len(row["input_size"])
    assert sum(r["parameters"] for r in rows) == model.count_params()


def _assert_rows_match_static_keras(rows, model):
    """For a plain functional model: each layer's static output shape (layer.output) too."""
    for row in rows:
        if row["output_size"] is not None:
            assert row["output_size"] == tuple(model.get_layer(row["layer"]).output.shape[1:-1]), row


def _divisible_pads(size, kernel, stride, top):
    """Asymmetric (top, bottom) with bottom chosen so the stride divides evenly (the builder's strict mode)."""
    bottom = (-(size - kernel + top)) % stride
    return [top, bottom]


@pytest.mark.parametrize("stride", [1, 2, 3])
def test_every_layer_matches_keras_for_kernels_1_to_7_and_asymmetric_padding(stride):
    from models import build_model

    size = 23
    for kernel in range(1, 8):
        pads = [_divisible_pads(size, kernel, stride, top=kernel % 3), _divisible_pads(size + 2, kernel, stride, top=1)]
        blocks = [
            {"filters": 2, "kernel_size": kernel, "strides": stride, "padding": pads, "pool": "max",
             "pool_size": 3, "pool_stride": 2, "pool_padding": "same" if kernel % 2 else "valid"},
            {"filters": 2, "kernel_size": [min(kernel, 3), 2], "strides": [stride, 1], "padding": "valid",
             "pool": "sum" if kernel % 2 else "avg", "pool_size": 1, "pool_stride": 1},
            {"filters": 2, "kernel_size": 1, "padding": "same", "batch_norm": True},
        ]
        params = {"blocks": blocks, "dense_units": [3]}
        model = build_model("cnn", (size, size + 2, 1), 3, **params)
        rows = describe_keras_model(model)
        assert [r["name"] for r in rows] == [layer.name for layer in model.layers]
        assert_sizes_match_keras(rows, model)
        _assert_rows_match_static_keras(rows, model)


def test_dilation_same_padding_and_conv1x1_head_match_keras():
    from models import build_model

    for kernel, dilation, padding in itertools.product((2, 3, 5), (1, 2, 3), ("same", "valid")):
        params = {"blocks": [{"filters": 2, "kernel_size": kernel, "dilation_rate": dilation, "padding": padding},
                             {"filters": 2, "kernel_size": 3, "strides": 2, "padding": "same", "pool": "avg"}],
                  "head": "conv1x1", "global_pool": "max"}
        model = build_model("cnn", (21, 20, 3), 2, **params)
        rows = describe_keras_model(model)
        assert_sizes_match_keras(rows, model)
        _assert_rows_match_static_keras(rows, model)


def test_receptive_field_and_jump_by_hand():
    params = {"blocks": [
        {"filters": 4, "kernel_size": 3, "padding": "same", "pool": "max", "pool_size": 2},
        {"filters": 4, "kernel_size": 3, "padding": "same", "pool": "max", "pool_size": 3, "pool_stride": 2},
        {"filters": 4, "kernel_size": 3, "dilation_rate": 2, "padding": "same"}]}
    rows = {r["name"]: r for r in describe_model("cnn", (32, 32, 3), 3, params)}
    # r: 1 -> 3 (conv3, j1) -> 4 (pool2, j1 -> 2) -> 8 (conv3, j2) -> 12 (pool3, j2 -> 4) -> 28 (conv3 d2: F_eff 5, j4)
    assert [rows[n]["receptive_field"] for n in ("block1_conv", "block1_pool", "block2_conv", "block2_pool",
                                                "block3_conv")] == [(3, 3), (4, 4), (8, 8), (12, 12), (28, 28)]
    assert rows["block2_pool"]["jump"] == (4, 4) and rows["block2_pool"]["output_size"] == (7, 7)
    assert rows["block2_pool"]["remainder"] == (1, 1)        # (16 - 3) / 2 leaves one row and column
    assert rows["block3_conv"]["pads"] == ((2, 2), (2, 2))
    assert rows["global_avg_pool"]["receptive_field"] == (28 + 6 * 4,) * 2
    assert rows["block1_conv"]["parameters"] == 3 * 3 * 3 * 4 + 4


def test_format_table_lists_layers_padding_and_flooring():
    params = {"blocks": [{"filters": 2, "kernel_size": 4, "padding": [[1, 2], [0, 1]], "pool": "max",
                          "pool_size": 3, "pool_stride": 2}]}
    table = format_table(describe_model("cnn", (10, 9, 1), 2, params))
    lines = table.splitlines()
    assert lines[0].split() == ["layer", "kind", "input", "output", "ch", "padding", "stride", "kernel", "rf",
                                "jump", "params"]
    pad_line = next(line for line in lines if line.startswith("block1_pad"))
    assert "10x9" in pad_line and "13x10" in pad_line and "explicit 1+2,0+1" in pad_line
    pool_line = next(line for line in lines if line.startswith("block1_pool"))
    assert "10x7" in pool_line and "4x3" in pool_line
    assert "note: block1_pool floors its output size and ignores the last 1 px on axis 0" in table
    assert "total parameters: " in table


class _Doubling(keras.layers.Layer):
    """A layer with no formula in describe that doubles the time axis."""

    def call(self, inputs):
        return keras.ops.repeat(inputs, 2, axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], 2 * input_shape[1], *input_shape[2:])


def test_three_dimensional_layers_and_a_resizing_layer_with_no_formula():
    inputs = keras.Input((6, 16, 15, 1))
    x = keras.layers.ZeroPadding3D(((0, 0), (1, 1), (0, 1)))(inputs)
    x = keras.layers.Conv3D(2, (3, 3, 3), strides=(1, 2, 2))(x)
    x = keras.layers.MaxPooling3D((1, 2, 2), padding="same")(x)
    x = keras.layers.UpSampling3D((2, 1, 1))(x)
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling3D()(x))
    rows = describe_keras_model(model)
    assert_sizes_match_keras(rows, model)
    assert rows[2]["receptive_field"] == (3, 3, 3) and rows[3]["jump"] == (1, 4, 4)
    assert rows[4]["output_size"] == (8, 4, 4) and rows[4]["jump"] == (Fraction(1, 2), 4, 4)

    odd = keras.Model(inputs, _Doubling(name="doubling")(inputs))
    with pytest.raises(ValueError, match=r"layer 'doubling' \(_Doubling\) changes the spatial size "
                                         r"\(6, 16, 15\) -> \(12, 16, 15\) and has no formula here"):
        describe_keras_model(odd)


# ------------------------------------------------------------------------------------------------
# graphs: several inputs, dict outputs, nested and shared models, subclassed models
# ------------------------------------------------------------------------------------------------
def test_named_inputs_dict_outputs_nested_and_shared_models():
    inner_in = keras.Input((None, None, 2), name="inner_in")
    inner = keras.Model(inner_in, keras.layers.Conv2D(2, 3, padding="same", name="inner_conv")(inner_in), name="tower")
    image = keras.Input((16, 16, 2), name="image")
    depth = keras.Input((8, 8, 2), name="depth")
    shared = keras.layers.Conv2D(2, 3, padding="same", name="shared_conv")
    a = shared(keras.layers.MaxPooling2D(2, name="pool")(image))
    b = shared(inner(depth))
    fused = keras.layers.Concatenate(name="fuse")([a, b])
    outputs = {"map": keras.layers.Conv2D(1, 1, name="head")(fused),
               "vector": keras.layers.GlobalAveragePooling2D(name="gap")(inner(a))}
    model = keras.Model({"image": image, "depth": depth}, outputs)
    rows = describe_keras_model(model)
    assert_sizes_match_keras(rows, model)
    by_name = {_qualified(r["path"], r["name"]): r for r in rows}
    assert {r["name"] for r in rows if r["kind"] == "InputLayer"} == {"image", "depth"}
    assert by_name["shared_conv"]["receptive_field"] == (6, 6)           # pool 2 (r 2, j 2) + conv 3: 2 + 2 * 2
    assert by_name["shared_conv#2"]["receptive_field"] == (5, 5) and by_name["shared_conv#2"]["parameters"] == 0
    assert by_name["tower/inner_conv"]["receptive_field"] == (3, 3)
    assert by_name["tower/inner_conv#2"]["receptive_field"] == (10, 10)  # after shared_conv, r 6 j 2
    assert by_name["fuse"]["receptive_field"] == (6, 6)                  # the union of 6 and 5, centred alike
    assert by_name["gap"]["receptive_field"] == (10 + 7 * 2,) * 2
    assert "shared" in format_table(rows)


class _CropConcatenate(keras.layers.Concatenate):
    """U-Net's crop-and-concatenate, a merge describe has no formula for: it must say so."""

    def build(self, input_shape):
        self.built = True

    def call(self, inputs):
        small = inputs[1].shape[1]
        return keras.ops.concatenate([inputs[0][:, :small, :small], inputs[1]], axis=-1)

    def compute_output_shape(self, input_shape):
        return (*input_shape[1][:-1], input_shape[0][-1] + input_shape[1][-1])


def test_branches_of_different_sizes_are_named_and_size_one_broadcasts():
    image = keras.Input((16, 16, 1), name="image")
    small = keras.layers.MaxPooling2D(2, name="small")(image)
    join = _CropConcatenate(name="join")([keras.layers.Conv2D(1, 1, name="full")(image), small])
    with pytest.raises(ValueError, match=r"'join' \(_CropConcatenate\) joins feature maps of different spatial "
                                         r"sizes: full \(16, 16\), small \(8, 8\)"):
        describe_keras_model(keras.Model(image, join))

    # squeeze and excitation: a (1, 1) scale from the whole map multiplies every cell
    x = keras.layers.Conv2D(2, 3, padding="same", name="conv")(image)
    scale = keras.layers.Dense(2, name="excite")(keras.layers.GlobalAveragePooling2D(name="squeeze")(x))
    scale = keras.layers.Reshape((1, 1, 2), name="to_map")(scale)
    model = keras.Model(image, keras.layers.Multiply(name="scale")([x, scale]))
    rows = {r["name"]: r for r in describe_keras_model(model)}
    assert_sizes_match_keras(list(rows.values()), model)
    assert rows["to_map"]["receptive_field"] == (18, 18) and rows["to_map"]["output_size"] == (1, 1)
    assert rows["scale"]["receptive_field"] == (18, 18) and rows["scale"]["jump"] == (1, 1)


@pytest.mark.filterwarnings("ignore:`build\\(\\)` was called on layer")
def test_subclassed_model_ends_the_walk_at_maps_made_outside_the_layers_and_at_reshapes():
    class TwoHeads(keras.Model):
        def __init__(self):
            super().__init__(name="two_heads")
            self.conv = keras.layers.Conv2D(3, 3, padding="same", name="conv")
            self.to_rows = keras.layers.Reshape((-1, 3), name="rows")
            self.crop_head = keras.layers.Conv2D(2, 3, name="crop_head")
            self.unused = keras.layers.Dense(2, name="unused")

        def call(self, images):
            features = self.conv(images)
            crops = keras.ops.image.resize(features, (5, 5))      # not a layer: like RoIAlign
            return {"rows": self.to_rows(features), "crops": self.crop_head(crops)}

    model = TwoHeads()
    model(np.zeros((1, 8, 8, 1), "float32"))
    model.unused.build((None, 4))
    with pytest.raises(ValueError, match="pass its input_shape"):
        describe_keras_model(model)
    rows = {r["name"]: r for r in describe_keras_model(model, (8, 8, 1))}
    assert rows["conv"]["receptive_field"] == (3, 3)
    assert rows["rows"]["output_size"] is None and "not a feature map" in rows["rows"]["note"]
    assert rows["crop_head"]["output_size"] == (3, 3) and rows["crop_head"]["receptive_field"] is None
    assert "made outside the layers" in rows["crop_head"]["note"]
    assert rows["unused"]["call"] == 0 and rows["unused"]["parameters"] == 4 * 2 + 2
    assert sum(r["parameters"] for r in rows.values()) == model.count_params()


# ------------------------------------------------------------------------------------------------
# upsampling: sizes against Keras, and which input rows reach which output rows
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("padding", ["valid", "same"])
def test_transposed_convolution_sizes_match_keras(padding):
    for kernel, stride, output_padding in itertools.product((1, 2, 3, 4, 5), (1, 2, 3), (None, 0, 1)):
        if output_padding is not None and output_padding >= stride:
            continue        # Keras requires output_padding < stride
        out = arithmetic.transposed_output_size(5, kernel, stride, padding, 1, output_padding)
        if padding == "same" and -(-out // stride) != 5:
            continue        # TensorFlow refuses a 'same' output that would not conv back to the input size
        inputs = keras.Input((5, 7, 1))
        x = keras.layers.Conv2DTranspose(1, (kernel, 1 if output_padding is not None else 2), strides=(stride, 1),
                                         padding=padding,
                                         output_padding=None if output_padding is None else (output_padding, 0))(inputs)
        model = keras.Model(inputs, x)
        assert_sizes_match_keras(describe_keras_model(model), model)
    sequence = keras.Input((5, 2))
    model = keras.Model(sequence, keras.layers.Conv1DTranspose(1, 3, strides=2, padding=padding)(sequence))
    assert_sizes_match_keras(describe_keras_model(model), model)


def _positive(model):
    """Kernels of positive averages and zero biases: a nonzero output means the input reaches it."""
    for layer in model.layers:
        weights = layer.get_weights()
        if weights:
            layer.set_weights([np.full(w.shape, 1.0 / np.prod(w.shape[:-1]), "float32") if i == 0
                               else np.zeros(w.shape, "float32") for i, w in enumerate(weights)])
    return model


def _impulse_rows(model, height, width=6):
    """For every output row: the (first, last) input row whose impulse reaches it, or None."""
    impulses = np.zeros((height, height, width, 1), "float32")
    for row in range(height):
        impulses[row, row] = 1.0
    reached = np.abs(np.asarray(model(impulses))).max(axis=(2, 3)) > 0     # [input row, output row]
    spans = []
    for out in range(reached.shape[1]):
        rows = np.nonzero(reached[:, out])[0]
        spans.append((int(rows.min()), int(rows.max())) if rows.size else None)
    return spans


def _assert_impulses_match(model, height, width=6):
    """Each output row whose formula span lies inside the image reads exactly that span (padding and
    missing cells only clip spans at the edges), and the widest such span is the row's receptive field."""
    _positive(model)
    last = model.layers[-1].name
    geometry = output_geometries(model)[last]
    row = {r["name"]: r for r in describe_keras_model(model)}[last]
    measured = _impulse_rows(model, height, width)
    assert len(measured) == geometry.size[0]
    checked = []
    for out, span in enumerate(measured):
        expected = geometry.reads[0].at(out)
        if expected is None:
            assert span is None, (out, span)          # a bed-of-nails zero reads nothing
        elif 0 <= expected[0] and expected[1] < height:
            assert span == expected, (out, span, expected)
            checked.append(span[1] - span[0] + 1)
    assert checked and max(checked) == row["receptive_field"][0]
    return geometry


def _stack(height, *layers, width=6):
    inputs = keras.Input((height, width, 1))
    x = inputs
    for layer in layers:
        x = layer(x)
    return keras.Model(inputs, x)


@pytest.mark.parametrize("padding", ["valid", "same"])
def test_transposed_convolution_receptive_field_against_impulses(padding):
    L = keras.layers
    for kernel, stride in itertools.product((1, 2, 3, 4, 5), (1, 2, 3)):
        model = _stack(14, L.AveragePooling2D((2, 1)),
                       L.Conv2DTranspose(1, (kernel, 1), strides=(stride, 1), padding=padding),
                       L.Conv2D(1, (2, 1)))        # an even kernel: cells of one input cell, or of two
        geometry = _assert_impulses_match(model, 14)
        assert geometry.jump[0] == Fraction(2, stride)
    # by hand: F = 4, S = 2 on a jump-1 map reads ceil(4 / 2) = 2 input cells, not (F - 1) / S + 1
    geometry = _assert_impulses_match(_stack(10, L.Conv2DTranspose(1, (4, 1), strides=(2, 1), padding="same")), 10)
    assert geometry.receptive_field[0] == 2 and geometry.jump[0] == Fraction(1, 2)
    _assert_impulses_match(_stack(10, L.Conv2DTranspose(1, (3, 1), strides=(2, 1), padding="same",
                                                        output_padding=(1, 0))), 10)
    _assert_impulses_match(_stack(10, L.Conv2DTranspose(1, (3, 1), dilation_rate=(2, 1))), 10)


def test_upsampling_receptive_fields_against_impulses():
    L = keras.layers
    cases = [
        (L.UpSampling2D((2, 1)), 1, Fraction(1, 2)),
        (L.UpSampling2D((3, 1)), 1, Fraction(1, 3)),
        (NearestUpsampling2D((2, 1)), 1, Fraction(1, 2)),
        (BedOfNails2D((2, 1), position=(1, 0)), 1, Fraction(1, 2)),
        (BedOfNails2D((3, 1), position=(0, 0)), 1, Fraction(1, 3)),
        (L.UpSampling2D((2, 1), interpolation="bilinear"), 2, Fraction(1, 2)),
        (L.UpSampling2D((3, 1), interpolation="bilinear"), 2, Fraction(1, 3)),
        (L.Resizing(18, 6, interpolation="bilinear"), 2, Fraction(2, 3)),
        (L.Resizing(18, 6, interpolation="nearest"), 1, Fraction(2, 3)),
        (L.Resizing(8, 6, interpolation="bilinear"), 2, Fraction(3, 2)),
        (L.Resizing(8, 6, interpolation="nearest"), 1, Fraction(3, 2)),
    ]
    for upsampling, field, jump in cases:
        layer_rows = {r["kind"]: r for r in describe_keras_model(_stack(12, upsampling))}
        row = layer_rows[type(upsampling).__name__]
        assert (row["receptive_field"][0], row["jump"][0]) == (field, jump), type(upsampling).__name__
        for after in ((2, 1), (3, 1)):
            config = upsampling.get_config()
            config.pop("name")
            again = type(upsampling).from_config(config)
            _assert_impulses_match(_stack(12, keras.layers.AveragePooling2D((2, 1), strides=(1, 1)), again,
                                          keras.layers.Conv2D(1, after)), 12)


def test_a_two_by_two_conv_after_nearest_upsampling_reads_one_or_two_cells():
    """The textbook recurrence says r + (2 - 1) * j = 1 + 1/2 input pixels; a cell reads one input
    pixel where it falls inside a copied block and two where it straddles two blocks."""
    model = _stack(8, NearestUpsampling2D((2, 1)), keras.layers.Conv2D(1, (2, 1)))
    geometry = _assert_impulses_match(model, 8)
    assert [geometry.reads[0].at(o) for o in range(4)] == [(0, 0), (0, 1), (1, 1), (1, 2)]
    assert geometry.receptive_field[0] == 2 and geometry.jump[0] == Fraction(1, 2)


@pytest.mark.parametrize("upsampling", ["nearest", "bed_of_nails", "transposed", "bilinear"])
def test_fcn_decoders_against_impulses(upsampling):
    from models import build_model

    model = build_model("fcn", (40, 6, 1), 2, blocks=[{"filters": 1, "kernel_size": [3, 1], "pool_size": [2, 1]},
                                                       {"filters": 1, "kernel_size": [2, 1], "pool_size": [2, 1]}],
                        upsampling=upsampling, skip="add", batch_norm=False)
    assert_sizes_match_keras(describe_keras_model(model), model)
    _assert_impulses_match(model, 40)


def test_max_unpooling_reads_the_windows_that_cover_each_cell():
    from models import build_model

    model = build_model("fcn", (18, 18, 1), 2, blocks=[{"filters": 2, "convs": 1}, {"filters": 2, "pool_size": 3}],
                        upsampling="max_unpool", skip="concat")
    rows = {r["name"]: r for r in describe_keras_model(model)}
    assert_sizes_match_keras(list(rows.values()), model)
    assert rows["decoder2_up"]["jump"] == (2, 2) and rows["decoder1_up"]["jump"] == (1, 1)
    # unpooling by its pooling's window: the receptive field it had before, the jump divided by 3 then 2
    assert rows["decoder2_up"]["receptive_field"] == rows["encoder2_pool"]["receptive_field"]
    assert rows["decoder2_up"]["output_size"] == (9, 9) and rows["decoder1_up"]["output_size"] == (18, 18)
