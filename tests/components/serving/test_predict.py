"""predict: an exported version on image files prints one class and probability per file."""
import argparse
import io

import pytest

from tests.components import classification_fixtures as fx


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Version 1 classifies right, version 2 shifts every class by one."""
    from components import serving

    model_dir = tmp_path_factory.mktemp("serving") / "tiny"
    serving.write_saved_model(fx.oracle_model(), fx.CLASS_NAMES, (8, 8, 3), model_dir / "1", {})
    serving.write_saved_model(fx.oracle_model(wrong=True), fx.CLASS_NAMES, (8, 8, 3), model_dir / "2", {})
    return model_dir


def image_files(directory, count=3):
    from components.examples import encode_image

    paths = []
    for i in range(count):
        record = fx.tiny_record(i, "test")
        path = directory / f"{record['id']}.png"
        path.write_bytes(encode_image(record["image"]))
        paths.append((path, record["label"]))
    return paths


def predict(args_list):
    from components.serving.predict import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = io.StringIO()
    code = main(parser.parse_args(args_list), out=out)
    return code, [line.split("\t") for line in out.getvalue().splitlines()]


def test_prints_the_class_and_probability_of_each_file(served, tmp_path):
    files = image_files(tmp_path)
    code, rows = predict(["--model", str(served), "--version", "1"] + [str(p) for p, _ in files])
    assert code == 0
    assert [row[0] for row in rows] == [str(p) for p, _ in files]
    assert [row[1] for row in rows] == [fx.CLASS_NAMES[label] for _, label in files]
    assert all(0.5 < float(row[2]) <= 1.0 for row in rows)


def test_latest_version_is_the_default(served, tmp_path):
    files = image_files(tmp_path, count=2)
    code, rows = predict(["--model", str(served)] + [str(p) for p, _ in files])
    assert code == 0
    assert [row[1] for row in rows] == [fx.CLASS_NAMES[(label + 1) % 3] for _, label in files]  # version 2 shifts


def test_missing_version_and_missing_file_are_reported(served, tmp_path, capsys):
    code, _ = predict(["--model", str(served), "--version", "7", str(tmp_path / "x.png")])
    assert code == 2 and "version 7 not found; versions present: [1, 2]" in capsys.readouterr().err
    code, _ = predict(["--model", str(served), str(tmp_path / "absent.png")])
    assert code == 2 and "absent.png" in capsys.readouterr().err
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    code, _ = predict(["--model", str(served), str(broken)])
    assert code == 1 and "could not classify" in capsys.readouterr().err
