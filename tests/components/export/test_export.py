"""export: only blessed models, an atomic numeric version checked in a fresh process, TF Serving's REST mapping."""
import base64
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipeline.stage import StageError
from tests.components import classification_fixtures as fx


def evaluation_artifact(directory: Path, blessed: bool, examples_dir: Path) -> Path:
    from components.evaluate.stage import read_split

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "blessing.json").write_text(json.dumps({
        "blessed": blessed, "metric": "accuracy", "value": 1.0 if blessed else 0.0,
        "checks": [{"kind": "threshold", "metric": "accuracy", "value": 1.0, "reference": 0.5, "passed": blessed}]}))
    (directory / "probe").mkdir(exist_ok=True)
    for i, data in enumerate(read_split(examples_dir, "test")["encoded"][:6]):
        (directory / "probe" / f"{i:03d}.png").write_bytes(data)
    return directory


def run_export(tmp_path, blessed=True, execution_id=1, model=None, model_fingerprint="fp-model"):
    from components.export.stage import STAGE
    from pipeline.stage import Artifact

    examples_dir = tmp_path / "examples"
    if not examples_dir.exists():
        fx.write_examples(examples_dir)
    model_dir = fx.write_model_artifact(tmp_path / f"model-{execution_id}", model)
    evaluation_dir = evaluation_artifact(tmp_path / f"evaluation-{execution_id}", blessed, examples_dir)
    config = fx.tiny_config(tmp_path)
    ctx = fx.context(config, tmp_path, "export", {"model": model_dir, "evaluation": evaluation_dir}, ["pushed"],
                     execution_id=execution_id)
    ctx.inputs["model"] = Artifact(id=1, type="Model", uri=model_dir, fingerprint=model_fingerprint)
    STAGE.executor(ctx)
    return ctx, json.loads((ctx.outputs["pushed"] / "pushed.json").read_text())


def test_blessed_model_becomes_version_1_and_matches_keras_in_a_fresh_process(tmp_path):
    from components import serving

    ctx, pushed = run_export(tmp_path)
    model_dir = tmp_path / "serving" / "tiny"
    assert pushed["pushed"] is True and pushed["version"] == 1 and pushed["path"] == str(model_dir / "1")
    assert sorted(p.name for p in model_dir.iterdir()) == ["1"]  # no temporary directory left
    assert max(pushed["max_abs_difference"].values()) < 1e-4
    assert (model_dir / "1" / "saved_model.pb").is_file()
    info = serving.read_info(model_dir / "1")
    assert info["model_fingerprint"] == "fp-model" and info["class_names"] == fx.CLASS_NAMES

    # TF Serving's REST body through the adapter: the same classes as the Keras model.
    from components.evaluate.stage import read_split
    test = read_split(tmp_path / "examples", "test")
    request = {"instances": [{"b64": base64.b64encode(data).decode()} for data in test["encoded"][:5]]}
    served = serving.ServedModel(model_dir / "1")
    predictions = serving.rest_predict(served.loaded.signatures["serving_default"], request)["predictions"]
    assert [p["class_name"] for p in predictions] == [fx.CLASS_NAMES[label] for label in test["label"][:5]]
    assert all(len(p["probabilities"]) == 3 and abs(sum(p["probabilities"]) - 1) < 1e-5 for p in predictions)
    assert [p["class_id"] for p in predictions] == test["label"][:5]


def in_process_probe(saved_model, encoded, images, scratch, timeout=0):
    """The fresh-process probe's outputs, computed here (for tests about something else: faster)."""
    from components import serving

    served = serving.ServedModel(saved_model)
    from_bytes, from_images = served.classify_bytes(encoded), served.classify_images(images)
    return {"bytes_probabilities": from_bytes["probabilities"], "bytes_class_id": from_bytes["class_id"],
            "bytes_class_name": np.array([n.decode() for n in from_bytes["class_name"]]),
            "images_probabilities": from_images["probabilities"], "images_class_id": from_images["class_id"]}


def test_second_blessed_model_becomes_version_2_and_the_same_model_is_not_pushed_twice(tmp_path, monkeypatch):
    from components import serving

    monkeypatch.setattr(serving, "probe_in_fresh_process", in_process_probe)
    run_export(tmp_path)
    _, again = run_export(tmp_path, execution_id=2)
    assert again == {"pushed": False, "version": 1, "path": str(tmp_path / "serving" / "tiny" / "1"),
                     "reason": "already served as version 1"}
    _, second = run_export(tmp_path, execution_id=3, model_fingerprint="fp-other")
    assert second["pushed"] is True and second["version"] == 2


def test_not_blessed_records_not_pushed_without_error(tmp_path):
    ctx, pushed = run_export(tmp_path, blessed=False)
    assert pushed == {"pushed": False, "reason": "not blessed: failed threshold accuracy"}
    assert not (tmp_path / "serving" / "tiny").exists()
    assert ctx.properties["pushed"]["pushed"] is False


def test_disagreement_in_the_fresh_process_fails_and_removes_the_temporary_directory(tmp_path, monkeypatch):
    from components import serving

    def perturbed(*args, **kwargs):
        outputs = in_process_probe(*args, **kwargs)
        outputs["images_probabilities"] = outputs["images_probabilities"] + 1e-3
        return outputs

    monkeypatch.setattr(serving, "probe_in_fresh_process", perturbed)
    with pytest.raises(StageError, match=r"disagrees with the Keras model.*export.tolerance = 0.0001"):
        run_export(tmp_path)
    assert list((tmp_path / "serving" / "tiny").iterdir()) == []


def test_rest_adapter_maps_instances_and_columns_like_tf_serving(tmp_path):
    import tensorflow as tf

    from components import serving

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")])
    def signature(image_bytes):
        lengths = tf.strings.length(image_bytes)
        return {"length": lengths, "twice": tf.strings.join([image_bytes, image_bytes])}

    concrete = signature.get_concrete_function()
    row = serving.rest_predict(concrete, {"instances": [{"b64": base64.b64encode(b"ab").decode()},
                                                        {"b64": base64.b64encode(b"\xff\x00\x01").decode()}]})
    assert row == {"predictions": [{"length": 2, "twice": "abab"},
                                   {"length": 3, "twice": {"b64": base64.b64encode(b"\xff\x00\x01" * 2).decode()}}]}
    named = serving.rest_predict(concrete, {"instances": [{"image_bytes": {"b64": base64.b64encode(b"xyz").decode()}}]})
    assert named["predictions"][0]["length"] == 3
    columnar = serving.rest_predict(concrete, {"inputs": {"image_bytes": [{"b64": base64.b64encode(b"q").decode()}]}})
    assert columnar == {"outputs": {"length": [1], "twice": ["qq"]}}
    with pytest.raises(serving.RestError, match="exactly one of"):
        serving.rest_predict(concrete, {"instances": [], "inputs": []})
    with pytest.raises(serving.RestError, match="not valid base64"):
        serving.rest_predict(concrete, {"instances": [{"b64": "***"}]})


@pytest.mark.slow
def test_saved_model_cli_show_and_scan_run_clean(tmp_path):
    run_export(tmp_path)
    version = tmp_path / "serving" / "tiny" / "1"
    cli = Path(sys.executable).parent / "saved_model_cli"
    show = subprocess.run([str(cli), "show", "--dir", str(version), "--all"], capture_output=True, text=True)
    assert show.returncode == 0, show.stderr
    assert "signature_def['serving_default']" in show.stdout and "signature_def['serving_images']" in show.stdout
    assert "image_bytes" in show.stdout and "class_name" in show.stdout
    scan = subprocess.run([str(cli), "scan", "--dir", str(version)], capture_output=True, text=True)
    assert scan.returncode == 0, scan.stderr
    assert "does not contain the default denylisted ops" in scan.stdout
