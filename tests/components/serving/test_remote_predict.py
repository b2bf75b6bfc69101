"""`convpipe predict --model s3://... [--heatmap OUT --metadata postgresql+psycopg://...]` on another
machine than the exporter's: the version comes down from the bucket (moto's server), and the Keras
model behind a heatmap is found through the Postgres store (pgserver) and fetched from the root's bucket.
"""
from __future__ import annotations

import argparse
import io
import shutil

import pytest

from tests.components import classification_fixtures as fx
from tests.components.serving.test_heatmap import halves_image

ROOT = "s3://convpipe/team"
MODEL = "s3://convpipe/team/serving/tiny"


@pytest.fixture
def exported_from_s3(s3_server, postgres_url, remote_cache, tmp_path):
    """As a team's export leaves it: train/1 published on the root's bucket, the export (execution 2)
    recorded in Postgres, version 1 pushed to the serving root; then an empty cache (another machine)."""
    from components import serving
    from pipeline.filesystem import RemoteRoot, push_version
    from pipeline.metadata import MetadataStore, NewArtifact

    s3_server.make_bucket("convpipe")
    remote = RemoteRoot(ROOT)
    remote.check()
    model_dir = fx.write_model_artifact(remote.local / "train" / "1" / "model")
    from pipeline.artifacts import fingerprint_dir
    fingerprint = fingerprint_dir(model_dir)
    remote.publish(remote.local / "train" / "1", "train/1", {"model": fingerprint})
    with MetadataStore(remote.local, url=postgres_url, root_label=ROOT) as store:
        run = store.start_run({}, [])
        train = store.start_execution(run, "train", params={}, cache_key="t", code_version="c", inputs={},
                                      external_fingerprint=None, reason={})
        model = store.complete_execution(train, {"model": NewArtifact("Model", model_dir, fingerprint)})["model"]
        export = store.start_execution(run, "export", params={}, cache_key="e", code_version="c",
                                       inputs={"model": model}, external_fingerprint=None, reason={})
    info = {"task": "classification", "class_names": fx.CLASS_NAMES, "input_shape": [8, 8, 3],
            "pipeline_root": ROOT, "execution_id": export, "model_fingerprint": fingerprint}
    version = tmp_path / "export" / "version"
    serving.write_saved_model(fx.oracle_model(), fx.CLASS_NAMES, (8, 8, 3), version, info)
    assert push_version(version, MODEL)[0] == 1
    shutil.rmtree(remote_cache)
    return postgres_url


def predict(args_list):
    from components.serving.predict import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    return main(parser.parse_args(args_list), out=out), out.getvalue()


def test_predict_and_heatmap_from_the_bucket(exported_from_s3, remote_cache, tmp_path, capsys):
    from components.examples import encode_image

    image = tmp_path / "halves.png"
    image.write_bytes(encode_image(halves_image()))
    code, printed = predict(["--model", MODEL, str(image)])
    assert code == 0, capsys.readouterr().err
    assert printed.split("\t")[0] == str(image) and printed.split("\t")[1] in fx.CLASS_NAMES

    code, _ = predict(["--model", MODEL, "--heatmap", str(tmp_path / "maps"), str(image)])
    assert code == 1
    err = capsys.readouterr().err
    assert f"exported from the remote root {ROOT}" in err and "pass --metadata" in err and len(err.splitlines()) == 1

    code, _ = predict(["--model", MODEL, "--heatmap", str(tmp_path / "maps"), "--metadata", exported_from_s3,
                       str(image)])
    assert code == 0, capsys.readouterr().err
    assert (tmp_path / "maps" / "halves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(remote_cache.glob("*/train/1/model/model.keras"))  # fetched from the root's bucket


def test_a_missing_version_names_the_url_and_what_exists(exported_from_s3, tmp_path, capsys):
    code, _ = predict(["--model", MODEL, "--version", "7", str(tmp_path)])
    assert code == 2
    assert f"{MODEL}: version 7 not found (or not whole); versions present: [1]" in capsys.readouterr().err
