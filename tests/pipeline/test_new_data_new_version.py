"""New data, new version: files added to an image_folder source make the next run re-ingest,
retrain, evaluate against the version served now, and export a new version only when blessed;
the served version stays in place until the new one is complete, and `runs`/`show` say why."""
import json
from pathlib import Path

import numpy as np
import pytest

from convpipe.cli import main
from tests.components.classification_fixtures import TINY_CNN

CLASSES = ("blue", "red")
SIZE = 16


def add_images(folder: Path, start: int, count: int) -> None:
    """`count` 16x16 PNGs, alternating classes; class k is bright in channel 2 - 2k (blue, red)."""
    from PIL import Image

    for index in range(start, start + count):
        label = index % 2
        rng = np.random.default_rng(index)
        pixels = rng.integers(0, 70, size=(SIZE, SIZE, 3))
        pixels[..., 2 - 2 * label] += 160
        directory = folder / CLASSES[label]
        directory.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels.astype(np.uint8)).save(directory / f"{index:03d}.png")


def tree_digest(path: Path) -> dict:
    return {p.relative_to(path).as_posix(): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def convpipe(capsys, *argv) -> tuple[int, str]:
    capsys.readouterr()
    code = main(list(argv))
    return code, capsys.readouterr().out


@pytest.mark.slow
def test_added_images_retrain_and_export_a_new_version_only_when_blessed(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    folder, root, serving = tmp_path / "images", tmp_path / "root", tmp_path / "serving"
    add_images(folder, 0, 40)
    config = {
        "pipeline": {"root": str(root)},
        "ingest": {"source": {"name": "image_folder", "path": str(folder)}, "num_shards": 1},
        "augment": {"enabled": False},
        "model": {"name": "cnn", "params": TINY_CNN},
        "train": {"epochs": 2, "batch_size": 8, "optimizer": {"name": "adam", "learning_rate": 0.05},
                  "num_sample_images": 0},
        "evaluate": {"metric": "accuracy", "thresholds": {"accuracy": 0.8}, "num_sample_images": 0},
        "export": {"serving_root": str(serving), "model_name": "tiny"},
    }
    config_file = tmp_path / "pipeline_config.json"
    config_file.write_text(json.dumps(config))
    run = ["run", "--config", str(config_file)]

    code, out = convpipe(capsys, *run)
    assert code == 0, out
    assert sorted(p.name for p in (serving / "tiny").iterdir()) == ["1"]
    version_1 = tree_digest(serving / "tiny" / "1")

    add_images(folder, 40, 20)  # new data: 20 more images, 10 per class
    code, out = convpipe(capsys, *run)
    assert code == 0, out
    details = {e["stage"]: e for e in json.loads(convpipe(capsys, "show", "2", "--json", "--root", str(root))[1])["executions"]}
    for stage in ("ingest", "validate", "train", "evaluate", "export"):
        assert details[stage]["state"] == "COMPLETE", details[stage]
    # the folder's fingerprint changed, not the config ("code changed" too when the checkout was edited in between)
    assert "external data changed" in details["ingest"]["why"] and details["ingest"]["reason"]["params_changed"] == {}
    assert "inputs changed: examples" in details["train"]["why"]
    assert "inputs changed: examples, model" in details["evaluate"]["why"]
    assert "inputs changed: evaluation, model" in details["export"]["why"]
    examples = Path(details["ingest"]["outputs"][0]["uri"])
    assert sum(json.loads((examples / "schema.json").read_text())["split_counts"].values()) == 60

    evaluation = Path(details["evaluate"]["outputs"][0]["uri"])
    blessing = json.loads((evaluation / "blessing.json").read_text())
    served = [c for c in blessing["checks"] if c["kind"] == "served"]
    assert served and "served version 1" in served[0]["detail"]  # compared with the version served then
    assert blessing["blessed"] == all(c["passed"] for c in blessing["checks"])
    pushed = details["export"]["outputs"][0]["properties"]
    versions = sorted(p.name for p in (serving / "tiny").iterdir())
    if blessing["blessed"]:
        assert pushed["pushed"] and pushed["version"] == 2 and versions == ["1", "2"]
    else:
        assert not pushed["pushed"] and pushed["reason"].startswith("not blessed") and versions == ["1"]
    assert tree_digest(serving / "tiny" / "1") == version_1  # the served version was never touched


    # more new data, and a model that misses its (raised) threshold: nothing exported, the served version stays
    served_before = {name: tree_digest(serving / "tiny" / name) for name in versions}
    add_images(folder, 60, 20)
    code, out = convpipe(capsys, *run, "--set", 'evaluate.thresholds={"accuracy": 1.01}')
    assert code == 0, out
    details = {e["stage"]: e for e in json.loads(convpipe(capsys, "show", "3", "--json", "--root", str(root))[1])["executions"]}
    assert "external data changed" in details["ingest"]["why"] and details["train"]["state"] == "COMPLETE"
    pushed = details["export"]["outputs"][0]["properties"]
    assert not pushed["pushed"] and pushed["reason"] == "not blessed: failed threshold accuracy"
    assert {name: tree_digest(serving / "tiny" / name) for name in versions} == served_before
    assert sorted(p.name for p in (serving / "tiny").iterdir()) == versions  # no new version, no temporary left

    code, out = convpipe(capsys, "runs", "--root", str(root))
    lines = out.strip().splitlines()
    assert len(lines) == 3 and all("ingest=ran" in line and "export=ran" in line for line in lines)
    code, out = convpipe(capsys, "show", "--root", str(root))
    assert "why: external data changed" in out and "inputs changed: examples" in out
