"""The export check's fresh process, started ahead so that it imports TensorFlow while the SavedModel is written."""
import numpy as np
import pytest

from components.serving import probe


@pytest.fixture(scope="module")
def doubling_model(tmp_path_factory):
    import tensorflow as tf

    class Double(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None], tf.float32, name="x")])
        def double(self, x):
            return {"y": 2.0 * x}

    path = tmp_path_factory.mktemp("saved") / "double"
    module = Double()
    tf.saved_model.save(module, str(path), signatures={"double": module.double})
    return path


def test_the_process_started_ahead_runs_the_check(doubling_model, tmp_path):
    x = np.array([1.5, -2.0, 0.25], np.float32)
    with probe.started_ahead():
        (ahead,) = probe._ahead
        outputs = probe.run_in_fresh_process(doubling_model, {"double": {"x": x}}, tmp_path)
        assert probe._ahead == [] and ahead.returncode == 0  # it was this process that answered
    np.testing.assert_array_equal(outputs["double"]["y"], 2 * x)


def test_an_unused_process_ends_with_the_block_and_a_later_check_starts_its_own(doubling_model, tmp_path):
    with probe.started_ahead():
        (ahead,) = probe._ahead
    assert ahead.poll() is not None and probe._ahead == []
    outputs = probe.run_in_fresh_process(doubling_model, {"double": {"x": np.ones(2, np.float32)}}, tmp_path)
    np.testing.assert_array_equal(outputs["double"]["y"], [2.0, 2.0])


def test_a_failure_in_the_process_started_ahead_names_the_saved_model(tmp_path):
    with probe.started_ahead(), pytest.raises(RuntimeError, match="missing.*loading in a fresh process failed"):
        probe.run_in_fresh_process(tmp_path / "missing", {"double": {"x": np.ones(1, np.float32)}}, tmp_path)
