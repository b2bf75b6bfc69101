"""The sample-prediction grid reaches TensorBoard as the image plugin reads it, its PNG bytes unchanged."""
import io

import numpy as np
import pytest
from PIL import Image

from components.training.tensorboard import TrainingLogs, png_size


def _png(width: int, height: int) -> bytes:
    pixels = (np.arange(height * width * 3) % 251).astype(np.uint8).reshape(height, width, 3)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_png_size_reads_width_and_height_from_the_header():
    assert png_size(_png(37, 11)) == (37, 11)
    with pytest.raises(ValueError, match="expected PNG bytes"):
        png_size(b"GIF89a" + bytes(30))


def test_the_grid_is_an_image_summary_whose_bytes_are_the_png(tmp_path):
    """Read back as TensorBoard's image dashboard does: a tensor of the image plugin, [width, height, png]."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_accumulator

    png = _png(40, 24)
    logs = TrainingLogs(tmp_path)
    logs.sample_predictions(3, png)
    logs.close()
    accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path / "eval"))
    accumulator.Reload()
    assert accumulator.PluginTagToContent("images").keys() == {"sample_predictions"}
    (event,) = accumulator.Tensors("sample_predictions")
    assert event.step == 3
    assert list(tf.make_ndarray(event.tensor_proto)) == [b"40", b"24", png]


def test_the_same_tensor_as_tf_summary_image_writes(tmp_path):
    """Byte for byte what `tf.summary.image` stores for the decoded grid, but for the PNG encoder's own bytes."""
    import tensorflow as tf
    from tensorboard.backend.event_processing import plugin_event_accumulator

    png = _png(16, 8)
    ours, theirs = TrainingLogs(tmp_path / "ours"), tf.summary.create_file_writer(str(tmp_path / "theirs" / "eval"))
    ours.sample_predictions(1, png)
    ours.close()
    with theirs.as_default(step=1):
        tf.summary.image("sample_predictions", tf.io.decode_png(png)[None])
    theirs.close()
    read = []
    for side in ("ours", "theirs"):
        accumulator = plugin_event_accumulator.EventAccumulator(str(tmp_path / side / "eval"))
        accumulator.Reload()
        (event,) = accumulator.Tensors("sample_predictions")
        values = list(tf.make_ndarray(event.tensor_proto))
        read.append((values[:2], tf.io.decode_png(values[2]).numpy()))
    assert read[0][0] == read[1][0]
    np.testing.assert_array_equal(read[0][1], read[1][1])
