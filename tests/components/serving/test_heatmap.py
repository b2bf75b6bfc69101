"""predict --heatmap: the served classifier's Keras model found through the metadata store, turned fully
convolutional, one class distribution per window position, a PNG per image."""
from __future__ import annotations

import argparse
import io
from types import SimpleNamespace

import numpy as np
import pytest

from tests.components import classification_fixtures as fx


def served_classifier(base, fingerprint: str = "fp-model", record_fingerprint: str | None = None):
    """A pipeline root whose metadata says: train wrote the oracle's Model artifact, export (execution 2)
    read it; and version 1 of the served model, exported by that execution."""
    from components import serving
    from pipeline.metadata import MetadataStore, NewArtifact

    root = base / "root"
    model_dir = fx.write_model_artifact(root / "train" / "1" / "model")
    with MetadataStore(root) as store:
        run = store.start_run({}, [])
        train = store.start_execution(run, "train", params={}, cache_key="t", code_version="c", inputs={},
                                      external_fingerprint=None, reason={})
        model = store.complete_execution(train, {"model": NewArtifact("Model", model_dir, fingerprint)})["model"]
        export = store.start_execution(run, "export", params={}, cache_key="e", code_version="c",
                                       inputs={"model": model}, external_fingerprint=None, reason={})
    info = {"task": "classification", "class_names": fx.CLASS_NAMES, "input_shape": [8, 8, 3],
            "pipeline_root": str(root.resolve()), "execution_id": export,
            "model_fingerprint": record_fingerprint or fingerprint}
    version = base / "serving" / "tiny" / "1"
    serving.write_saved_model(fx.oracle_model(), fx.CLASS_NAMES, (8, 8, 3), version, info)
    return SimpleNamespace(root=root, model_dir=model_dir, version=version)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    return served_classifier(tmp_path_factory.mktemp("heatmap"))


def halves_image() -> np.ndarray:
    """16x24: the left 12 columns red, the right 12 blue (uint8)."""
    image = np.full((16, 24, 3), 20, np.uint8)
    image[:, :12, 0] = 220
    image[:, 12:, 2] = 220
    return image


def test_the_served_versions_keras_model_is_found_through_the_metadata_store(served, tmp_path):
    from components.serving.heatmap import HeatmapError, locate_keras_model

    assert locate_keras_model(served.version) == served.model_dir / "model.keras"
    other = served_classifier(tmp_path / "other", fingerprint="fp-new", record_fingerprint="fp-old")
    with pytest.raises(HeatmapError, match="fingerprint fp-new, but .* records fp-old"):
        locate_keras_model(other.version)
    gone = served_classifier(tmp_path / "gone")
    import shutil
    shutil.rmtree(gone.root)
    with pytest.raises(HeatmapError, match="which is gone"):
        locate_keras_model(gone.version)


def test_each_position_is_the_classifier_on_one_window():
    from components.serving.heatmap import probability_map
    from models.segmentation.fcn import to_fully_convolutional

    classifier = fx.oracle_model()
    image = halves_image().astype(np.float32) / 255.0
    probabilities = probability_map(to_fully_convolutional(classifier), image, (8, 8, 3))
    assert probabilities.shape == (9, 17, 3)                                  # (16-8)+1, (24-8)+1 windows
    crops = np.stack([image[i:i + 8, j:j + 8] for i in range(9) for j in range(17)])
    expected = classifier.predict(crops, verbose=0)
    expected = np.exp(expected) / np.exp(expected).sum(-1, keepdims=True)
    assert np.abs(probabilities.reshape(-1, 3) - expected).max() < 1e-5
    assert probabilities[:, 0].argmax(-1).tolist() == [0] * 9                # left edge: red
    assert probabilities[:, -1].argmax(-1).tolist() == [2] * 9               # right edge: blue


def test_window_centres_span_the_image():
    from components.serving.heatmap import window_centres

    np.testing.assert_allclose(window_centres(24, 8, 17), 4 + np.arange(17))
    np.testing.assert_allclose(window_centres(44, 20, 7), [10, 14, 18, 22, 26, 30, 34])
    assert window_centres(8, 8, 1).tolist() == [4.0]


def predict(args_list):
    from components.serving.predict import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    return main(parser.parse_args(args_list), out=out), out.getvalue()


def test_predict_heatmap_writes_one_png_per_image(served, tmp_path, capsys):
    from components.examples import encode_image

    big, exact = tmp_path / "halves.png", tmp_path / "exact.png"
    big.write_bytes(encode_image(halves_image()))
    exact.write_bytes(encode_image(halves_image()[:8, :8]))
    out_dir = tmp_path / "maps"
    code, printed = predict(["--model", str(served.version.parent), "--heatmap", str(out_dir), str(big), str(exact)])
    assert code == 0
    assert [line.split("\t")[0] for line in printed.splitlines()] == [str(big), str(exact)]
    assert sorted(p.name for p in out_dir.iterdir()) == ["exact.png", "halves.png"]
    assert (out_dir / "halves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "heatmap written to" in capsys.readouterr().err


def test_an_image_smaller_than_the_classifier_input_is_refused(served, tmp_path, capsys):
    from components.examples import encode_image

    small = tmp_path / "small.png"
    small.write_bytes(encode_image(halves_image()[:4, :4]))
    code, _ = predict(["--model", str(served.version.parent), "--heatmap", str(tmp_path / "maps"), str(small)])
    assert code == 1
    assert "expected at least 8x8 pixels with 3 channel(s)" in capsys.readouterr().err
