"""`convpipe describe-model` on every shipped config: it describes the model training would build
(the task adapter resolves model.params as the trial does), and every row's formula size equals
the shape Keras gives that layer call."""
import json

import pytest

from convpipe import cli
from models.backbones import architecture_only
from tests.models.test_describe import assert_sizes_match_keras
from tests.pipeline.conftest import REPO

CONFIGS = sorted((REPO / "configs").glob("*.json")) + [REPO / "pipeline_config.json"]


def _describe(capsys, *argv):
    code = cli.main(["describe-model", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def _as_tuples(row):
    return {key: tuple(value) if isinstance(value, list) else value for key, value in row.items()}


NUM_CLASSES_FROM_DATA = {"detection_yolo.json": 3}
"""Configs whose class names live in the dataset (YOLO's data.yaml), so describe-model is told the count."""


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_described_as_training_builds_it(path, capsys):
    from components.tasks import get_task
    from models import build_model

    given = NUM_CLASSES_FROM_DATA.get(path.name)
    code, out, _ = _describe(capsys, "--config", str(path), "--json", *(["--num-classes", str(given)] if given else []))
    assert code == 0
    rows = [_as_tuples(row) for row in json.loads(out)]
    config = cli.load_config(str(path), [])
    shape, num_classes = cli.model_input(config, None, given)
    params = architecture_only(get_task(config.ingest.task).builder_params(config.model, config.train))
    model = build_model(config.model.name, shape, num_classes, **params)
    assert_sizes_match_keras(rows, model, shape)
    assert rows[0]["kind"] == "InputLayer" and rows[0]["output_size"] == tuple(shape[:-1])
    assert any(row["receptive_field"] for row in rows[1:])


def _model_sweeps():
    """(config, --set value) for every value of every model.params sweep in the shipped configs."""
    for path in CONFIGS:
        sweep = json.loads(path.read_text()).get("train", {}).get("sweep", {})
        for key, values in sweep.items():
            if key.startswith("model.params.") and isinstance(values, list):
                yield from ((path, f"{key}={json.dumps(value)}") for value in values)


@pytest.mark.parametrize("path,setting", _model_sweeps(), ids=lambda v: v if isinstance(v, str) else v.name)
def test_every_swept_model_is_described(path, setting, capsys):
    from components.tasks import get_task
    from models import build_model

    code, out, _ = _describe(capsys, "--config", str(path), "--set", setting, "--json")
    assert code == 0
    rows = [_as_tuples(row) for row in json.loads(out)]
    config = cli.load_config(str(path), [setting])
    shape, num_classes = cli.model_input(config, None, None)
    params = architecture_only(get_task(config.ingest.task).builder_params(config.model, config.train))
    assert_sizes_match_keras(rows, build_model(config.model.name, shape, num_classes, **params), shape)
    if path.name == "segmentation.json":        # each decoder stage undoes one pool, whatever the method
        ups = [row for row in rows if row["name"].endswith("_up")]
        assert [row["output_size"] for row in ups] == [(8, 8), (16, 16), (32, 32)]
        assert [row["jump"] for row in ups] == [(4, 4), (2, 2), (1, 1)]


def test_the_table_names_nested_layers_shared_calls_and_where_the_walk_ends(capsys):
    code, out, _ = _describe(capsys, "--config", str(REPO / "configs" / "detection.json"))
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == "detector: input (64, 64, 3), 3 classes"
    conv = next(line.split() for line in lines if line.startswith("one_stage_network/features/block1_conv "))
    assert conv[1:5] == ["Conv2D", "64x64", "64x64", "16"] and conv[-3:] == ["3x3", "1x1", "432"]
    shared = next(line.split() for line in lines if line.startswith("one_stage_network/class_head_conv0#2 "))
    assert shared[-1] == "shared"
    assert ("note: one_stage_network/class_level0 reshapes the map into 768x3: not a feature map, "
            "the walk ends on this branch") in lines


def test_by_stage_parameters_are_resolved_as_training_resolves_them(capsys):
    config = str(REPO / "configs" / "detection_compare.json")
    for stage, first_layer in (("two", "features/block1_conv"), ("sliding_window", "window_classifier/window_conv0")):
        code, out, _ = _describe(capsys, "--config", config, "--set", f"model.params.stage={stage}", "--json")
        assert code == 0
        assert _qualified(json.loads(out)[1]) == first_layer


def test_multitask_heads_come_from_train_multitask(capsys):
    config = str(REPO / "configs" / "multitask.json")
    code, out, _ = _describe(capsys, "--config", config, "--set", 'train.multitask.heads=["segmentation"]', "--json")
    assert code == 0
    layers = {row["name"] for row in json.loads(out)}
    assert "segmentation_logits" in layers and "classification_logits" not in layers


def test_a_builder_error_is_a_usage_error_not_a_traceback(capsys):
    code, _, err = _describe(capsys, "--config", str(REPO / "configs" / "detection_compare.json"),
                             "--set", "model.params.stage=three")
    assert code == 2 and err.startswith("describe-model: ") and "stage" in err


def _qualified(row):
    return f"{row['path']}/{row['name']}" if row["path"] else row["name"]
