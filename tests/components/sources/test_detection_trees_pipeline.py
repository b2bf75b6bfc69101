"""configs/detection_voc.json and configs/detection_yolo.json, run from ingest to evaluate on the
small VOC and YOLO trees the tests write: the same detection config trains from either source,
and VOC's difficult objects reach evaluation as ignore regions."""
import json
from pathlib import Path

import pytest

from convpipe.cli import main
from tests.components.sources.trees import write_voc, write_yolo
from tests.models.detection.coco_reference import SUMMARY_KEYS, pycocotools_eval

REPO = Path(__file__).resolve().parents[3]
FAST = ["train.batch_size=16", "train.num_sample_images=0", "augment.enabled=false",
        "evaluate.num_sample_images=0", 'evaluate.thresholds={"mAP": 0.0}', "ingest.num_shards=1"]


def _run(capsys, config: str, tree: Path, tmp_path: Path, epochs: int) -> dict:
    root = tmp_path / "root"
    capsys.readouterr()
    code = main(["run", "--config", str(REPO / "configs" / config), "--root", str(root), "--to", "evaluate",
                 "--set", f"ingest.source.path={tree}",
                 "--set", f"train.epochs={epochs}", *[arg for item in FAST for arg in ("--set", item)]])
    out = capsys.readouterr().out
    assert code == 0, out
    assert main(["show", "--json", "--root", str(root)]) == 0
    details = json.loads(capsys.readouterr().out)
    return {e["stage"]: e for e in details["executions"]}


@pytest.mark.slow
@pytest.mark.parametrize("source, count, epochs", [("voc", 48, 12), ("yolo", 24, 1)])
def test_the_detection_config_trains_from_a_small_tree(tmp_path, capsys, monkeypatch, source, count, epochs):
    """voc trains long enough to detect something, so its evaluation set is also scored by
    pycocotools; yolo only shows the same config going through every stage."""
    monkeypatch.delenv("TF_CONFIG", raising=False)
    tree = (write_voc if source == "voc" else write_yolo)(tmp_path / source, count=count)
    stages = _run(capsys, f"detection_{source}.json", tree, tmp_path, epochs)
    assert [s for s in ("ingest", "validate", "train", "evaluate") if stages[s]["state"] != "COMPLETE"] == []
    examples = Path(stages["ingest"]["outputs"][0]["uri"])
    schema = json.loads((examples / "schema.json").read_text())
    assert schema["class_names"] == ["circle", "square", "triangle"] and sum(schema["split_counts"].values()) == count
    assert (examples / "dead_letter.jsonl").read_text() == ""
    evaluation = Path(stages["evaluate"]["outputs"][0]["uri"])
    metrics = json.loads((evaluation / "metrics.json").read_text())
    assert 0.0 <= metrics["mAP"] <= 1.0
    if source != "voc":
        return
    assert metrics["num_crowd"] >= 1  # every 5th object is difficult: ignore regions, counted apart from the boxes
    # the trained detector's evaluation set, scored again by pycocotools (difficult objects as iscrowd)
    size = tuple(schema["image_size"][:2])
    lines = [json.loads(line) for line in (evaluation / "predictions.jsonl").read_text().splitlines()]
    images = [(size, p["true_boxes"], p["true_classes"], p["true_crowd"], p["boxes"], p["scores"], p["classes"])
              for p in lines]
    reference = pycocotools_eval(images, len(schema["class_names"]))
    assert sum(len(p["boxes"]) for p in lines) > 0
    for key, value in zip(SUMMARY_KEYS, reference.stats):
        assert abs(metrics[key] - value) <= 0.005, (key, metrics[key], value)
