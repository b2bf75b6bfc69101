"""Task adapters: dispatch by name, schema shapes, the loop's per-replica loss and metric sums,
sliding-window averaging for long clips, and the fresh-process probe's byte-string packing."""
from __future__ import annotations

import numpy as np
import pytest


def test_get_task_dispatches_by_name_and_names_the_choices():
    from components.tasks import get_task
    from components.tasks.classification import ClassificationTask
    from components.tasks.video import VideoTask

    assert isinstance(get_task("classification"), ClassificationTask) and get_task("classification").name == "classification"
    assert isinstance(get_task("video"), VideoTask) and get_task("video").name == "video"
    with pytest.raises(ValueError, match=r"expected one of \[.*'classification'.*\], got 'audio'"):
        get_task("audio")


def test_input_shape_and_num_classes_come_from_the_schema():
    from components.tasks import get_task

    schema = {"task": "video", "class_names": ["a", "b", "c"], "image_size": [16, 12, 3], "num_frames": 8}
    assert get_task("video").input_shape(schema) == (8, 16, 12, 3)
    assert get_task("classification").input_shape(schema) == (16, 12, 3)
    assert get_task("video").num_classes(schema) == 3
    with pytest.raises(ValueError, match="num_frames"):
        get_task("video").input_shape({"image_size": [16, 12, 3], "class_names": ["a"]})


def test_window_starts_cover_every_frame():
    from components.tasks.video import window_starts

    assert window_starts(8, 8) == [0]
    assert window_starts(12, 8) == [0, 4]
    assert window_starts(13, 8) == [0, 4, 5]           # a last window flush with the end
    assert window_starts(5, 2, stride=2) == [0, 2, 3]
    with pytest.raises(ValueError, match="clip of 7 frames: expected at least 8"):
        window_starts(7, 8)


def _two_frame_identity():
    """Logits of a [2, 1, 1, 1] clip are its two pixel values: softmax(a, b)."""
    import keras

    inputs = keras.Input((2, 1, 1, 1))
    logits = keras.layers.Dense(2, use_bias=False, name="logits")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, logits)
    model.get_layer("logits").set_weights([np.eye(2, dtype=np.float32)])
    return model


def test_clip_probabilities_average_the_windows_of_a_long_clip():
    from components.tasks.video import clip_probabilities

    model = _two_frame_identity()
    exact = np.array([0, 1], np.float32).reshape(2, 1, 1, 1)
    longer = np.array([0, 1, 0], np.float32).reshape(3, 1, 1, 1)   # windows [0, 1] and [1, 0]
    probabilities = clip_probabilities(model, [exact, longer], num_frames=2)
    low, high = 1 / (1 + np.e), np.e / (1 + np.e)
    np.testing.assert_allclose(probabilities[0], [low, high], atol=1e-6)
    np.testing.assert_allclose(probabilities[1], [0.5, 0.5], atol=1e-6)


def test_replica_loss_undoes_keras_scaling_and_defers_to_model_defined_losses():
    import tensorflow as tf

    from components.tasks.base import keras_replica_loss
    from models import get_loss

    model = _two_frame_identity()
    x = tf.constant(np.array([0, 1], np.float32).reshape(1, 2, 1, 1, 1))
    y = tf.constant([[0.0, 1.0]])
    cross_entropy = -np.log(np.e / (1 + np.e))
    _, value = keras_replica_loss(model, get_loss("softmax_cross_entropy"), x, y, False, num_replicas=1)
    assert float(value) == pytest.approx(cross_entropy, rel=1e-5)

    def plain(y_true, y_pred):  # not a Keras Loss: never divided by the replicas, so never multiplied
        return tf.constant(3.0)
    assert float(keras_replica_loss(model, plain, x, y, False, num_replicas=2)[1]) == 3.0

    class Marker:
        model_defined = True

    class OwnLoss:
        def compute_loss(self, batch, training=True):
            return {"loss": tf.reduce_sum(batch[0]) + 10.0, "terms": tf.constant(1.0)}

    outputs, value = keras_replica_loss(OwnLoss(), Marker(), x, y, True, num_replicas=2)
    assert float(value) == 11.0 and set(outputs) == {"loss", "terms"}


def test_classification_metric_sums_count_correct_argmax():
    import tensorflow as tf

    from components.tasks import get_task

    logits = tf.constant([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [1.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    targets = tf.one_hot([0, 1, 0, 1], 3)
    assert float(get_task("classification").metric_sums(targets, logits)["accuracy"]) == 2.0


def test_the_loop_takes_loss_and_metric_sums_from_the_adapter():
    import keras
    import tensorflow as tf

    from components.tasks.base import TaskAdapter
    from components.training.loop import StepFunctions

    class Counting(TaskAdapter):
        name = "counting"
        metric_names = ("positive_logit",)

        def replica_loss(self, model, loss, x, y, training, num_replicas):
            outputs = model(x, training=training)
            return outputs, tf.reduce_mean(tf.square(outputs))

        def metric_sums(self, y, outputs):
            return {"positive_logit": tf.reduce_sum(tf.cast(outputs[:, 0] > 0, tf.float32))}

    model = _two_frame_identity()
    steps = StepFunctions(tf.distribute.get_strategy(), model, keras.optimizers.SGD(0.0), loss_fn=None, task=Counting())
    x = np.array([[0, 1], [2, 0], [3, 1], [-1, 0]], np.float32).reshape(4, 2, 1, 1, 1)
    y = np.zeros((4, 2), np.float32)
    result = steps.evaluate(tf.data.Dataset.from_tensor_slices((x, y)).batch(3))
    assert result["positive_logit"] == pytest.approx(2 / 4)
    assert result["loss"] == pytest.approx(np.mean(np.square(x.reshape(4, 2))), rel=1e-5)


def test_probe_packing_round_trips_byte_strings_with_shape():
    from components.serving.probe import pack, unpack

    values = np.empty((2, 3), dtype=object)
    values[:] = [[b"a", b"", b"\x00\x01\x00"], [b"png\x00", b"xyz", b"\xff"]]
    floats = np.arange(6, dtype=np.float32).reshape(2, 3)
    back = unpack(pack({"sig::frame_bytes": values, "sig::clips": floats}))
    assert back["sig::frame_bytes"].shape == (2, 3) and back["sig::frame_bytes"].tolist() == values.tolist()
    np.testing.assert_array_equal(back["sig::clips"], floats)
