"""`convpipe`: run the pipeline, read its history, check its config, look at its models.

    convpipe run [--config F] [--set key=value]... [--root DIR] [--from S] [--to S] [--force] [--wait]
    convpipe runs [--json]                 one line per run: id, start, state, stages run or cached
    convpipe show [RUN] [--json]           executions, why each ran or was reused, artifacts, lineage
    convpipe config schema [--output F]    JSON Schema generated from the config models
    convpipe config check FILE             validate a config (and every stage's checks) without running
    convpipe tensorboard                   TensorBoard on every run's logs
    convpipe predict --model DIR/NAME|URL [--version V] [--heatmap OUT [--metadata DB]] IMAGE...
    convpipe describe-model [--config C]   per-layer sizes and receptive fields by the formula
    convpipe schedule --cron EXPR [--print crontab|systemd] [--once]   the pipeline on a cron schedule
    convpipe train-worker [--config C] [--set ...] [--root DIR]   one more worker of a multi-worker train stage
    convpipe cache prune --root URL --metadata DB [--keep-runs N] [--max-bytes B] [--dry-run]
                                           bound a remote root's local working copy ($CONVPIPE_CACHE)

`--config` defaults to ./pipeline_config.json when it exists, else the built-in defaults; `--root`
(every command) overrides `pipeline.root`. A relative root is relative to the current directory.

Exit codes: see pipeline/console.py (0 ok, 1 failed, 2 usage, 75 locked, 130/143 interrupted).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from pipeline.config import ConfigError, PipelineConfig, json_schema, load_config
from pipeline.console import (DEFAULT_CONFIG, EXIT_FAILED, EXIT_LOCKED, EXIT_OK, EXIT_SIGINT, EXIT_SIGTERM,  # noqa: F401
                              EXIT_USAGE, console_logging, load, print_json, sigterm_interrupts)
from pipeline import console, native_stderr
from pipeline.history import cmd_runs, cmd_show
from pipeline.database import DatabaseError
from pipeline.filesystem import RootError
from pipeline.lock import LockHeld, run_lock
from pipeline.runner import Interrupted, Runner

# The stages, tasks and models are imported by the commands that need them, not here: `convpipe
# runs` or `show` should not pay for TensorFlow's import.


# ------------------------------------------------------------------------------------ run
def cmd_run(args, stages=None) -> int:
    config = load(args)
    try:
        with console_logging(args.verbose, args.quiet), sigterm_interrupts():
            if stages is None:
                from convpipe.stages import load_stages
                stages = load_stages()
            runner = Runner(config, stages, config.pipeline.root, argv=["convpipe", *args.argv])
            runner.preflight()  # the bucket and the database, before the lock and before any work
            with run_lock(runner.root, runner.metadata_url, runner.root_label, wait=args.wait):
                result = runner.run(args.from_stage, args.to_stage, force=args.force, locked=True)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_SIGINT
    except Interrupted:
        print("interrupted by SIGTERM", file=sys.stderr)
        return EXIT_SIGTERM
    if args.json:
        print_json(result.to_dict())
    else:
        for outcome in result.outcomes:
            print(f"{outcome.stage:<10} {outcome.state:<9} {outcome.seconds:7.1f} s  {outcome.reason.get('summary', '')}")
            if outcome.error:
                print(f"{'':<10} error: {outcome.error}")
        print(f"run {result.run_id} {result.state}" + (f": {result.error}" if result.error else "")
              + f" (log: {result.log_file})")
    return EXIT_OK if result.ok else EXIT_FAILED


# ------------------------------------------------------------------------------------ config
def cmd_config_schema(args) -> int:
    text = json.dumps(json_schema(), indent=2) + "\n"
    if args.output:
        Path(args.output).write_text(text)
        print(f"wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_config_check(args, stages=None) -> int:
    config = load_config(args.file, args.set or [])
    if stages is None and not args.no_stage_checks:
        from convpipe.stages import load_stages
        stages = load_stages()
    # The runner's own check: every stage, and every trial a sweep expands into, as a run would.
    trials = max(Runner(config, stages or []).check().values(), default=1)
    print(f"{args.file}: valid" + (f" ({trials} trials)" if trials > 1 else ""))
    return EXIT_OK


# ------------------------------------------------------------------- tensorboard, models
def cmd_tensorboard(args, extra: Sequence[str]) -> int:
    from pipeline.artifacts import tensorboard_dir

    logdir = tensorboard_dir(load(args))
    logdir.mkdir(parents=True, exist_ok=True)
    beside = Path(sys.executable).with_name("tensorboard")
    program = [str(beside)] if beside.exists() else ([shutil.which("tensorboard")] if shutil.which("tensorboard")
                                                      else [sys.executable, "-m", "tensorboard.main"])
    command = [*program, "--logdir", str(logdir), *extra]
    print(" ".join(command), file=sys.stderr)
    try:
        return subprocess.call(command)
    except KeyboardInterrupt:
        return EXIT_OK


def model_input(config: PipelineConfig, input_shape: Optional[str], num_classes: Optional[int]) -> tuple:
    """(input_shape, num_classes) of the model the config trains, as far as the config alone says."""
    source, ingest = config.ingest.source, config.ingest
    if input_shape:
        try:
            shape = tuple(int(v) for v in input_shape.split(","))
        except ValueError:
            raise ConfigError(f"--input-shape {input_shape}: expected comma-separated integers, e.g. 32,32,3") from None
    else:
        size = ingest.image_size or ((source.image_size,) * 2 if hasattr(source, "image_size") else None)
        if size is None:
            raise ConfigError(f"describe-model: ingest.source {source.name} does not fix the image size; "
                              "set ingest.image_size or pass --input-shape H,W,C")
        shape = (*size, 3)
        if ingest.task == "video":
            shape = (getattr(source, "num_frames", 8), *shape)
    if num_classes is None:
        num_classes = getattr(source, "num_classes", None)
        if num_classes is None and getattr(source, "class_names", None):
            num_classes = len(source.class_names)
        if num_classes is None:
            raise ConfigError(f"describe-model: ingest.source {source.name} does not fix the number of "
                              "classes; pass --num-classes N")
        if source.name == "synthetic" and ingest.task == "segmentation":
            num_classes += 1  # background is class 0
    return shape, num_classes


def cmd_describe_model(args) -> int:
    config = load(args)
    shape, num_classes = model_input(config, args.input_shape, args.num_classes)
    from components.tasks import get_task
    from models.describe import describe_model, format_table

    try:
        # the parameters the trial's builder receives, resolved by the task as training resolves them
        params = get_task(config.ingest.task).builder_params(config.model, config.train)
        rows = describe_model(config.model.name, shape, num_classes, params)
    except ValueError as exc:   # the checks of model.params, or a layer with no formula
        raise ConfigError(f"describe-model: {exc}") from None
    if args.json:
        print_json(rows)
    else:
        print(f"{config.model.name}: input {shape}, {num_classes} classes")
        print(format_table(rows))
    return EXIT_OK


def cmd_predict(args) -> int:
    try:
        from components.serving import predict
    except ImportError as exc:
        raise ConfigError(f"convpipe predict: components.serving.predict cannot be imported here ({exc})") from None
    return predict.main(args)


def _add_predict_arguments(parser: argparse.ArgumentParser) -> None:
    """The options are components.serving.predict's own (`add_arguments`), so they always match its `main`."""
    try:
        from components.serving.predict import add_arguments
    except ImportError:
        parser.add_argument("--model", required=True, metavar="SERVING_DIR/NAME")
        parser.add_argument("--version", type=int, default=None)
        parser.add_argument("--heatmap", metavar="OUT", default=None)
        parser.add_argument("--metadata", metavar="URL", default=None)
        parser.add_argument("images", nargs="+", metavar="IMAGE")
    else:
        add_arguments(parser)


def cmd_train_worker(args) -> int:
    """A non-chief worker of the train stage the chief's `convpipe run` is running (see README)."""
    config = None if args.spec else load(args)
    from components.train.join import train_worker

    with console_logging(args.verbose):
        code, message = train_worker(config, args.spec, args.timeout, logging.getLogger("convpipe.train-worker"))
    if message:
        print(f"convpipe {message}", file=sys.stderr)
    return code


def cmd_cache_prune(args) -> int:
    """Delete what the bucket also holds (or nobody reads) from a remote root's local working copy."""
    from pipeline.cache_prune import parse_bytes, prune

    config = load(args)
    max_bytes = parse_bytes(args.max_bytes) if args.max_bytes is not None else None
    plan = prune(config.pipeline.root, config.pipeline.metadata, args.keep_runs, max_bytes,
                 dry_run=args.dry_run, wait=args.wait)
    if args.json:
        print_json(plan.to_dict())
        return EXIT_OK
    verb = "would delete" if args.dry_run else "deleted"
    for item in plan.delete:
        print(f"{verb} {item.rel} ({item.size} bytes: {item.why})")
    for item in plan.items:
        if not item.removable:
            print(f"kept {item.rel} ({item.size} bytes: {item.why})")
    print(f"{plan.local} (working copy of {plan.url}): {plan.total} bytes, {verb} {plan.freed}, "
          f"{plan.total - plan.freed} left")
    return EXIT_OK


# ------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="convpipe", description="A computer-vision training pipeline.",
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=console.__doc__[console.__doc__.index("Exit codes"):])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p, config=True):
        p.add_argument("--root", help="pipeline root: a directory or a URL such as s3://bucket/prefix "
                                      "(overrides pipeline.root)")
        p.add_argument("--metadata", metavar="URL", help="metadata store database URL, e.g. "
                       "postgresql+psycopg://user:password@host:5432/db (overrides pipeline.metadata; "
                       "default sqlite:///<root>/metadata.sqlite)")
        if config:
            p.add_argument("--config", help=f"config file (default: ./{DEFAULT_CONFIG} when present)")
            p.add_argument("--set", action="append", metavar="KEY=VALUE",
                           help="override one key, e.g. train.epochs=3 (value parsed as JSON, else a string)")

    p = sub.add_parser("run", help="run the pipeline (or --from/--to part of it)")
    common(p)
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="first stage to run")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="last stage to run")
    p.add_argument("--force", action="store_true", help="run the selected stages even when cached")
    p.add_argument("--wait", action="store_true", help="wait for another run holding the root instead of exiting 75")
    p.add_argument("--json", action="store_true", help="print the run's outcome as JSON")
    loudness = p.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true",
                          help="debug log lines, and TensorFlow's start-up notices as often as it prints them")
    loudness.add_argument("-q", "--quiet", action="store_true",
                          help="warnings and errors only, no progress bars, no TensorFlow start-up notices; the "
                               "outcome lines on stdout stay")

    p = sub.add_parser("runs", help="one line per run: id, start, state, stages run or cached")
    common(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("show", help="a run's executions, why each ran or was reused, artifacts and lineage")
    common(p)
    p.add_argument("run", nargs="?", type=int, help="run id (default: the latest)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("config", help="the configuration's schema, or check a config file")
    config_sub = p.add_subparsers(dest="config_command", required=True, metavar="ACTION")
    q = config_sub.add_parser("schema", help="write the JSON Schema generated from the config models")
    q.add_argument("--output", "-o", metavar="FILE", help="file to write (default: stdout)")
    q = config_sub.add_parser("check", help="validate a config file (and every stage's checks) without running")
    q.add_argument("file", metavar="FILE")
    q.add_argument("--set", action="append", metavar="KEY=VALUE")
    q.add_argument("--no-stage-checks", action="store_true", help="only the schema (no stage modules imported)")

    p = sub.add_parser("tensorboard", help="TensorBoard on every run's logs (extra arguments go to tensorboard)")
    common(p)

    p = sub.add_parser("predict", help="an exported model on image files")
    _add_predict_arguments(p)

    p = sub.add_parser("describe-model", help="per-layer sizes, padding, stride and receptive fields")
    common(p)
    p.add_argument("--input-shape", metavar="H,W,C", help="default: from ingest.image_size or the source")
    p.add_argument("--num-classes", type=int, help="default: from the source config")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("schedule", help="run the pipeline on a cron schedule (a service), or print the "
                                        "equivalent crontab line or systemd units")
    common(p)
    p.add_argument("--cron", metavar="EXPR", help='cron expression, e.g. "0 3 * * *" (local time) or @daily')
    p.add_argument("--print", choices=("crontab", "systemd"), help="print the crontab line or systemd units instead")
    p.add_argument("--once", action="store_true", help="fire once now and exit with the run's exit code")
    p.add_argument("--now", action="store_true", help="also fire once at start, then on the schedule")
    p.add_argument("--grace", type=float, default=3600, metavar="SECONDS",
                   help="run a firing up to this late (missed firings are coalesced into one); default 3600")
    p.add_argument("--from", dest="from_stage", metavar="STAGE", help="first stage of each run")
    p.add_argument("--to", dest="to_stage", metavar="STAGE", help="last stage of each run")

    p = sub.add_parser("train-worker", help="one more worker of a multi-worker train stage, started with its "
                                            "TF_CONFIG beside the chief's `convpipe run`")
    common(p)
    p.add_argument("--spec", metavar="SPEC.json", help="train this trial spec instead of joining the chief's run")
    p.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                   help="how long to wait for the chief's run to reach its train stage; default 3600")
    p.add_argument("-v", "--verbose", action="store_true")

    p = sub.add_parser("cache", help="the local working copies of remote roots ($CONVPIPE_CACHE)")
    cache_sub = p.add_subparsers(dest="cache_command", required=True, metavar="ACTION")
    q = cache_sub.add_parser("prune", help="delete from a remote root's working copy what the bucket also holds "
                                           "(or nobody reads); never an object of the bucket")
    common(q)
    q.add_argument("--keep-runs", type=int, metavar="N", help="keep what the newest N runs ran, reused or read")
    q.add_argument("--max-bytes", metavar="B", help="delete, oldest run first, until the working copy holds at most "
                                                   "B bytes (500M, 2G, ...)")
    q.add_argument("--dry-run", action="store_true", help="print what would be deleted, delete nothing")
    q.add_argument("--wait", action="store_true", help="wait for a run holding the root instead of exiting 75")
    q.add_argument("--json", action="store_true")
    return parser


def _drop_beam_bigquery_notice(record: logging.LogRecord) -> bool:
    """Importing apache_beam logs "apitools not found, and bigquery client libraries are not
    available" on the root logger; convpipe never uses BigQuery, and the line reads like a fault."""
    return not (record.name == "root" and str(record.msg).startswith("apitools not found"))


def main(argv: Optional[Sequence[str]] = None, *, stages=None) -> int:
    """The `convpipe` command; `stages` replaces the component list (tests use fake stages)."""
    # Before anything imports TensorFlow (building the parser imports components.serving.predict), for every
    # command: TensorFlow's C++ INFO and WARNING logging is noise to a pipeline user (=0 shows it).
    # The few lines TF 2.21 prints while loading, before absl::InitializeLog, ignore this setting.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    logging.getLogger().addFilter(_drop_beam_bigquery_notice)
    argv = list(sys.argv[1:] if argv is None else argv)
    # Read before the parser is built (it imports TensorFlow): the notices it prints while loading
    # pass through native_stderr's filter, once, or not at all with --quiet.
    quiet = bool({"-q", "--quiet"} & set(argv)) and "run" in argv
    verbose = bool({"-v", "--verbose"} & set(argv))
    previous = os.environ.get("CONVPIPE_PROGRESS")
    if quiet:
        os.environ["CONVPIPE_PROGRESS"] = "plain"  # no bars (pipeline/progress.py), here and in child processes
    try:
        with native_stderr.once(quiet=quiet, enabled=not verbose):
            return _main(argv, stages)
    finally:
        if quiet:
            os.environ.pop("CONVPIPE_PROGRESS", None) if previous is None else os.environ.update(CONVPIPE_PROGRESS=previous)


def _main(argv: list, stages) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "tensorboard":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.argv = argv
    try:
        if args.command == "run":
            return cmd_run(args, stages)
        if args.command == "runs":
            return cmd_runs(args)
        if args.command == "show":
            return cmd_show(args)
        if args.command == "config":
            return cmd_config_schema(args) if args.config_command == "schema" else cmd_config_check(args, stages)
        if args.command == "tensorboard":
            return cmd_tensorboard(args, extra)
        if args.command == "predict":
            return cmd_predict(args)
        if args.command == "describe-model":
            return cmd_describe_model(args)
        if args.command == "train-worker":
            return cmd_train_worker(args)
        if args.command == "cache":
            return cmd_cache_prune(args)
        if args.command == "schedule":
            from pipeline.schedule import cmd_schedule
            return cmd_schedule(args)
    except ConfigError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USAGE
    except LockHeld as exc:
        print(f"convpipe: {exc}", file=sys.stderr)
        return EXIT_LOCKED
    except (RootError, DatabaseError) as exc:  # the bucket or the database: one line, before any work
        print(f"convpipe: {exc}", file=sys.stderr)
        return EXIT_FAILED
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
