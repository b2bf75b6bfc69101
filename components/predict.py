"""`convpipe predict --model SERVING_DIR/NAME [--version V] IMAGE...`: an exported model on image files.

Runs the version's `serving_default` signature on the files' bytes as they are (the SavedModel
decodes and resizes them itself, as it would behind TF Serving) and prints one line per file:
`<path>\t<class name>\t<probability>`.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SERVING_DIR/NAME",
                        help="model directory holding numeric versions (<export.serving_root>/<export.model_name>)")
    parser.add_argument("--version", type=int, default=None, help="version to use (default: the latest)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, GIF or BMP files")


def main(args: argparse.Namespace, out=None) -> int:
    from components import serving

    out = out or sys.stdout
    try:
        path = serving.version_dir(args.model, args.version)
    except FileNotFoundError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    files = [Path(p) for p in args.images]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        print(f"predict: image file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    served = serving.ServedModel(path)
    try:
        outputs = served.classify_bytes([p.read_bytes() for p in files])
    except Exception as exc:  # tf raises InvalidArgumentError for undecodable bytes
        print(f"predict: {path} could not classify the files (expected PNG, JPEG, GIF or BMP images): "
              f"{str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 1
    for i, file in enumerate(files):
        name = outputs["class_name"][i].decode()
        probability = float(outputs["probabilities"][i].max())
        print(f"{file}\t{name}\t{probability:.4f}", file=out)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="convpipe predict", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
