"""Conv arithmetic against hand-computed cases and against what TensorFlow's conv and pooling ops produce."""
import itertools
from fractions import Fraction

import numpy as np
import pytest

from models import arithmetic as A


def test_output_size_hand_cases():
    assert A.output_size(32, 3, 1, "valid") == 30
    assert A.output_size(32, 3, 1, "same") == 32
    assert A.output_size(32, 3, 2, "same") == 16
    assert A.output_size(7, 3, 2, "valid") == 3            # (7 - 3) / 2 + 1
    assert A.output_size(5, 3, 1, [(1, 1)]) == 5
    assert A.output_size(6, 3, 2, [(0, 1)]) == 3           # (6 - 3 + 1) / 2 + 1 = 3
    assert A.output_size(10, 3, 1, "valid", dilation=2) == 6   # F_eff = 5
    assert A.effective_kernel(3, 2) == 5 and A.effective_kernel(7, 3) == 19


def test_same_padding_puts_the_extra_pixel_at_the_end():
    assert A.same_padding(32, 3, 1) == (1, 1)
    assert A.same_padding(32, 4, 1) == (1, 2)
    assert A.same_padding(32, 3, 2) == (0, 1)              # O = 16: (15 * 2 + 3 - 32) = 1
    assert A.same_padding(7, 3, 2, dilation=2) == (2, 2)   # O = 4: 3 * 2 + 5 - 7 = 4
    assert A.same_padding(5, 1, 3) == (0, 0)


def test_strict_refuses_a_stride_that_does_not_divide():
    with pytest.raises(A.ConvArithmeticError) as err:
        A.output_size(16, 3, 2, [(1, 1), (1, 1)], strict=True, layer="block2_conv", axis=1, rank=2)
    message = str(err.value)
    assert "block2_conv" in message and "width" in message
    assert "(16 - 3 + 1 + 1) = 15" in message and "remainder 1" in message
    assert A.output_size(16, 3, 2, [(1, 1), (1, 1)], axis=1, rank=2) == 8   # floored when not strict
    assert A.remainder(16, 3, 2, [(1, 1)]) == 1
    assert A.output_size(16, 3, 2, [(1, 0)], strict=True) == 8


def test_a_window_that_does_not_fit_always_fails():
    with pytest.raises(A.ConvArithmeticError, match="does not fit"):
        A.output_size(2, 3, 1, "valid", layer="block5_pool")


def test_receptive_field_and_jump_through_a_stack():
    # conv3 s1 -> pool2 s2 -> conv3 s1 -> conv3 s2 dilation 2 : the textbook recurrence by hand
    r, j = 1, 1
    r, j = A.receptive_field(r, j, 3, 1)
    assert (r, j) == (3, 1)
    r, j = A.receptive_field(r, j, 2, 2)
    assert (r, j) == (4, 2)
    r, j = A.receptive_field(r, j, 3, 1)
    assert (r, j) == (8, 2)
    r, j = A.receptive_field(r, j, 3, 2, dilation=2)
    assert (r, j) == (16, 4)


def test_apply_window_per_axis_for_3d():
    g = A.Geometry.of_input((8, 32, 30))
    out = A.apply_window(g, kernel=(3, 5, 3), stride=(1, 2, 3), padding=[(1, 1), (2, 2), (0, 0)])
    assert out.geometry.size == (8, 16, 10)
    assert out.geometry.receptive_field == (3, 5, 3) and out.geometry.jump == (1, 2, 3)
    assert out.remainder == (0, 1, 0)
    glob = A.apply_global(out.geometry)
    assert glob.size == () and glob.receptive_field == (3 + 7 * 1, 5 + 15 * 2, 3 + 9 * 3)


def test_unknown_sizes_pass_through():
    out = A.apply_window(A.Geometry.of_input((None, 16)), 3, 2, "same")
    assert out.geometry.size == (None, 8) and out.geometry.receptive_field == (3, 3)


def test_invalid_padding_is_named():
    with pytest.raises(A.ConvArithmeticError, match="Expected 2"):
        A.apply_window(A.Geometry.of_input((8, 8)), 3, 1, [(1, 1)])
    with pytest.raises(A.ConvArithmeticError, match="'full'"):
        A.output_size(8, 3, 1, "full")


def test_matches_tensorflow_ops_for_kernels_strides_dilations_and_padding():
    import tensorflow as tf

    for size, kernel, stride, dilation, padding in itertools.product(
            (9, 12), (1, 2, 3, 5, 7), (1, 2, 3), (1, 2), ("valid", "same")):
        if stride > 1 and dilation > 1 or A.effective_kernel(kernel, dilation) > size:
            continue
        x = tf.zeros((1, size, size + 1, 1))
        y = tf.nn.conv2d(x, tf.zeros((kernel, kernel, 1, 1)), stride, padding.upper(), dilations=dilation)
        expected = [A.output_size(s, kernel, stride, padding, dilation) for s in (size, size + 1)]
        assert list(y.shape[1:3]) == expected, (size, kernel, stride, dilation, padding)
        if dilation == 1:
            pooled = tf.nn.max_pool2d(x, kernel, stride, padding.upper())
            assert list(pooled.shape[1:3]) == expected
    # asymmetric explicit padding, as TensorFlow's EXPLICIT padding applies it
    for (top, bottom), kernel, stride in itertools.product(((0, 1), (2, 0), (1, 3)), (2, 3, 4), (1, 2, 3)):
        x = tf.zeros((1, 11, 11, 1))
        y = tf.nn.conv2d(x, tf.zeros((kernel, kernel, 1, 1)), stride, [[0, 0], [top, bottom], [bottom, top], [0, 0]])
        pads = [(top, bottom), (bottom, top)]
        expected = [A.output_size(11, kernel, stride, pads, axis=a, rank=2) for a in (0, 1)]
        assert list(y.shape[1:3]) == expected
        assert np.all(np.array(A.apply_window(A.Geometry.of_input((11, 11)), kernel, stride, pads).geometry.size)
                      == np.array(expected))


def test_transposed_convolution_sizes_and_crops_by_hand():
    # Keras: 'valid' I * S + max(F - S, 0); 'same' I * S; with output_padding (I - 1) * S + F - 2 * pad + op
    assert A.transposed_output_size(4, 3, 2, "valid") == 9 and A.transposed_output_size(4, 1, 3, "valid") == 12
    assert A.transposed_output_size(4, 4, 2, "same") == 8
    assert A.transposed_output_size(4, 3, 2, "same", output_padding=1) == 8     # 3 * 2 + 3 - 2 + 1
    assert A.transposed_pads(4, 8, 4, 2, "same") == (1, 1)                      # (4 - 1) * 2 + 4 - 8 = 2, split
    assert A.transposed_pads(4, 8, 3, 2, "same") == (0, 1)
    assert A.transposed_pads(4, 12, 1, 3, "valid") == (0, -2)                   # two zero rows added at the end


def test_reads_after_upsampling_by_hand():
    g = A.apply_window(A.Geometry.of_input((16,)), 2, 2).geometry      # cell o reads [2o, 2o + 1]
    up = A.apply_upsampling(g, 2)
    assert [up.reads[0].at(o) for o in range(4)] == [(0, 1), (0, 1), (2, 3), (2, 3)]
    assert up.receptive_field == (2,) and up.jump == (1,)
    nails = A.apply_upsampling(g, 2, position=1)
    assert [nails.reads[0].at(o) for o in range(4)] == [None, (0, 1), None, (2, 3)]
    # a 4-wide kernel, stride 2, crop 1: output o reads input cells (o + 1 - k) / 2 that are whole
    t = A.apply_transposed(A.Geometry.of_input((8,)), 4, 2, "same")
    assert t.geometry.size == (16,) and t.pads == ((1, 1),)
    assert [t.geometry.reads[0].at(o) for o in range(3)] == [(-1, 0), (0, 1), (0, 1)]
    assert t.geometry.receptive_field == (2,) and t.geometry.jump == (Fraction(1, 2),)
    # resizing 2 -> 3 bilinear samples at x = -1/6, 1/2, 7/6: each falls between two cells
    r = A.apply_resize(A.Geometry.of_input((2,)), (3,), "bilinear")
    assert [r.reads[0].at(o) for o in range(3)] == [(-1, 0), (0, 1), (1, 2)]
