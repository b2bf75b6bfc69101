"""export.formats: TFLite and ONNX files converted from the float signature, run in a fresh process
by LiteRT and onnxruntime, compared with the Keras model; a detector's NMS kept in ONNX and left
out of TFLite; a format refused above its tolerance; a whole run writing all three."""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from pipeline.config import ConfigError, load_config
from tests.components.classification_fixtures import TINY_CNN

LOG = logging.getLogger("test.export_formats")


def _section(**overrides):
    sets = [f"export.{k}={json.dumps(v)}" for k, v in overrides.items()]
    return load_config(None, ['export.formats=["saved_model", "tflite", "onnx"]', *sets]).export


def _classifier(tmp_path, filters: int = 4):
    import keras

    from components import serving
    from components.tasks import get_task
    from models import build_model

    keras.utils.set_random_seed(1)
    params = {**TINY_CNN, "blocks": [{**TINY_CNN["blocks"][0], "filters": filters}]}
    model = build_model("cnn", (8, 8, 3), 3, **params)
    info = {"task": "classification", "class_names": ["a", "b", "c"], "input_shape": [8, 8, 3]}
    task = get_task("classification")
    serving.write_archive(task.export_archive(model, info), tmp_path / "version", info)
    images = np.random.default_rng(0).random((5, 8, 8, 3)).astype(np.float32)
    return model, task, info, images


@pytest.mark.slow
def test_a_classifier_in_both_formats_matches_keras(tmp_path):
    from components.export.formats import write_formats

    model, task, info, images = _classifier(tmp_path)
    described = write_formats(["saved_model", "tflite", "onnx"], tmp_path / "version", model, task, info, images,
                              _section(), tmp_path / "scratch", LOG)
    assert sorted(described) == ["onnx", "tflite"]
    for kind, name in (("tflite", "model.tflite"), ("onnx", "model.onnx")):
        entry = described[kind]
        assert (tmp_path / "version" / name).stat().st_size == entry["bytes"] > 0
        assert entry["signature"] == "serving_images" and entry["outputs"] == ["class_id", "class_name", "probabilities"]
        assert 0.0 <= entry["max_abs_difference"] <= 1e-4 and entry["probe_images"] == 5
    assert described["tflite"]["runtime"].startswith("ai-edge-litert")
    assert described["onnx"]["runtime"].startswith("onnxruntime")


@pytest.mark.slow
def test_dynamic_int8_is_smaller_and_a_format_past_its_tolerance_is_refused(tmp_path):
    from components.export.formats import FormatRefused, write_formats

    model, task, info, images = _classifier(tmp_path, filters=64)  # 1728 weights: quantized (over 1024)
    float_size = len(__import__("components.export.tflite", fromlist=["convert"]).convert(
        tmp_path / "version", "serving_images"))
    section = _section(formats=["saved_model", "tflite"], tflite_quantization="dynamic_int8")
    described = write_formats(section.formats, tmp_path / "version", model, task, info, images, section,
                              tmp_path / "scratch", LOG)
    entry = described["tflite"]
    assert entry["quantization"] == "dynamic_int8" and entry["tolerance"] == 0.1
    assert entry["bytes"] < float_size and entry["max_abs_difference"] <= 0.1
    strict = _section(formats=["saved_model", "tflite"], tflite_quantization="dynamic_int8",
                      format_tolerance={"tflite_int8": 0.0})
    if entry["max_abs_difference"] > 0:
        with pytest.raises(FormatRefused, match=r"tflite: model.tflite run by .* differs from the Keras model on the "
                                                r"5 probe images by up to .* export.format_tolerance.tflite_int8 = 0"):
            write_formats(strict.formats, tmp_path / "version", model, task, info, images, strict,
                          tmp_path / "scratch2", LOG)


@pytest.mark.slow
def test_a_detector_keeps_nms_in_onnx_and_leaves_it_out_of_tflite(tmp_path):
    from components import serving
    from components.export.formats import write_formats
    from components.tasks import get_task
    from tests.components.tasks.test_detection_task import CLASS_NAMES, SIZE, tiny_detector

    task = get_task("detection")
    model = tiny_detector()
    info = {"task": "detection", "class_names": CLASS_NAMES, "input_shape": [SIZE, SIZE, 1], "max_detections": 5}
    info.update(task.serving_info(info))
    serving.write_archive(task.export_archive(model, info), tmp_path / "version", info)
    images = np.random.default_rng(2).random((4, SIZE, SIZE, 1)).astype(np.float32)
    described = write_formats(["saved_model", "tflite", "onnx"], tmp_path / "version", model, task, info, images,
                              _section(), tmp_path / "scratch", LOG)
    onnx, tflite = described["onnx"], described["tflite"]
    assert onnx["signature"] == "serving_images" and "NonMaxSuppression" in onnx["graph"]
    assert onnx["outputs"] == ["boxes_xyxy", "classes", "num_detections", "scores"]
    assert tflite["signature"] == "network" and "CombinedNonMaxSuppression" in tflite["graph"]
    assert tflite["outputs"] == ["anchors", "box_deltas", "class_logits"]
    assert max(onnx["max_abs_difference"], tflite["max_abs_difference"]) <= 1e-4


def test_formats_need_the_saved_model_and_an_image_task():
    from components.export.stage import check

    with pytest.raises(ConfigError, match='export.formats: expected a list holding "saved_model"'):
        load_config(None, ['export.formats=["onnx"]'])
    assert load_config().export.formats == ["saved_model"]
    with pytest.raises(ConfigError, match=r"export.formats: \['tflite'\] convert image models .* ingest.task is 'video'"):
        check(load_config(None, ["ingest.task=video", 'export.formats=["saved_model", "tflite"]']))


@pytest.mark.slow
def test_a_default_run_with_every_format_writes_all_three(tmp_path, capsys, monkeypatch):
    from convpipe.cli import main

    monkeypatch.delenv("TF_CONFIG", raising=False)
    serving_root = tmp_path / "serving"
    code = main(["run", "--root", str(tmp_path / "root"), "--set", f"export.serving_root={serving_root}",
                 "--set", 'export.formats=["saved_model", "tflite", "onnx"]',
                 "--set", "ingest.source.num_examples=120", "--set", "train.epochs=1", "--set", "augment.enabled=false",
                 "--set", 'evaluate.thresholds={"accuracy": 0.0}', "--set", "train.num_sample_images=0",
                 "--set", "evaluate.num_sample_images=0"])
    assert code == 0, capsys.readouterr().out
    version = serving_root / "convpipe" / "1"
    assert all((version / name).is_file() for name in ("saved_model.pb", "model.tflite", "model.onnx"))
    formats = json.loads((version / "assets.extra" / "convpipe.json").read_text())["formats"]
    assert sorted(formats) == ["onnx", "saved_model", "tflite"]
    for kind in ("tflite", "onnx"):
        assert formats[kind]["max_abs_difference"] <= formats[kind]["tolerance"] == 1e-4
        assert formats[kind]["probe_images"] >= 1
