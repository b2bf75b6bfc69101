"""`convpipe predict --model SERVING_DIR/NAME [--version V] INPUT...`: an exported model on files.

Runs the version's `serving_default` signature on the files as they are (the SavedModel decodes
and resizes them itself, as it would behind TF Serving) and prints one line per file; the task
recorded in the version's convpipe.json picks the adapter (components/tasks/) that reads the
inputs and formats the lines. Classification: `<path>\t<class name>\t<probability>` per image;
video: the same per clip (an animated GIF or a folder of numbered frames); segmentation:
`<path>\t<h>x<w>\t<class> <share of pixels>, ...`.

`--heatmap OUT` (classifiers): also writes `OUT/<image stem>.png`, each class's probability at every
window position of the image, from the classifier turned fully convolutional (components/serving/heatmap.py);
images may be larger than the training size.

`--model` may be a URL (`s3://bucket/serving/convpipe`): the version (whole ones only: those
holding saved_model.pb) is downloaded once into $CONVPIPE_CACHE/serving/. A heatmap of a version
exported from a remote root also needs that root's store, `--metadata postgresql+psycopg://...`;
the Model artifact then streams in from the root's bucket.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import filesystem


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, metavar="SERVING_DIR/NAME",
                        help="model directory holding numeric versions (<export.serving_root>/<export.model_name>), "
                             "or its URL (s3://bucket/serving/convpipe: the version is downloaded once)")
    parser.add_argument("--version", type=int, default=None, help="version to use (default: the latest)")
    parser.add_argument("--heatmap", metavar="OUT", default=None,
                        help="classifiers: write OUT/<image stem>.png, the class probability map over each image")
    parser.add_argument("--metadata", metavar="URL", default=None,
                        help="--heatmap: the metadata store of the pipeline root the version was exported from, when "
                             "it is not that root's metadata.sqlite (a remote root's always is not)")
    parser.add_argument("images", nargs="+", metavar="IMAGE", help="PNG, JPEG, GIF or BMP files (video: animated GIFs or folders of numbered frames)")


def main(args: argparse.Namespace, out=None) -> int:
    from components import serving
    from components.tasks import get_task

    out = out or sys.stdout
    try:
        path = filesystem.served_version(args.model, args.version) if filesystem.is_url(args.model) \
            else serving.version_dir(args.model, args.version)
    except FileNotFoundError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 2
    except filesystem.RootError as exc:
        print(f"predict: {exc}", file=sys.stderr)
        return 1
    files = [Path(p) for p in args.images]
    missing = [str(p) for p in files if not p.exists()]
    if missing:
        print(f"predict: input file(s) not found: {', '.join(missing)}", file=sys.stderr)
        return 2
    task = get_task(serving.read_info(path).get("task", "classification"))
    try:
        lines = task.predict_lines(path, files)
    except Exception as exc:  # tf raises InvalidArgumentError for undecodable bytes
        print(f"predict: {path} could not classify the files (expected {task.name} inputs: PNG, JPEG, GIF or BMP "
              f"images): {str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}", file=sys.stderr)
        return 1
    for line in lines:
        print(line, file=out)
    if getattr(args, "heatmap", None):
        from components.serving.heatmap import HeatmapError, write_heatmaps

        try:
            written = write_heatmaps(path, files, args.heatmap, getattr(args, "metadata", None))
        except HeatmapError as exc:
            print(f"predict: --heatmap: {exc}", file=sys.stderr)
            return 1
        for target in written:
            print(f"predict: heatmap written to {target}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="convpipe predict", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(main(parser.parse_args()))
