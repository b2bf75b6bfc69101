"""The ingest Beam job: from a source's work items to an Examples artifact.

    source items --read--> records --resize, encode, decode again, check--> (split, Example)
        -> gzip TFRecord shards per split, schema.json, stats.json, dead_letter.jsonl

Every record is encoded, decoded again and checked before it is written: a corrupt record inside a
shard would cost the rest of that shard at read time (tf.data's `ignore_errors`). Items and records
that fail go to dead_letter.jsonl with the reason, and the stage fails only when their share
passes `ingest.max_bad_fraction`. The split is a hash of the example id, so a rerun puts every
example in the same split.

The pipeline is built only from Create, single-output Map/FlatMap/ParDo, GroupByKey and Flatten
(pipeline/beam_portable.py), the part of Beam that the DirectRunner, Dask, Flink, Spark and
Dataflow all run the same way, and nothing it writes depends on how a runner bundles or orders
the work: every record carries its place in the source (item number, record number), and the
statistics and the dead letters are gathered in that order. So the same config writes the same
bytes on every runner and with any number of workers.

Where it writes: `ctx.output_location("examples")`, a local directory or, on a remote root, the
execution's URL (`s3://bucket/prefix/ingest/<id>/examples`); every file is written by the worker
that makes it, through Beam's filesystems (pipeline/beam_files.py), and read back from there.
"""
from __future__ import annotations

import json
import logging
import re
from typing import Optional

import apache_beam as beam

from components import examples as ex
from components.ingest import stats as stats_lib
from components.ingest.records import RecordRules, prepare_in_order
from components.examples import locations
from components.examples.ordered_shards import WriteGroupedShards
from components.sources import make_reader
from pipeline import beam as beam_lib
from pipeline.beam_portable import BAD, OK, CombineInOrder, Guarded, Join, Keep, WriteTextFiles, guarded_map
from pipeline.config import PipelineConfig
from pipeline.progress import use_live_display
from pipeline.stage import ExecutionContext, StageError

PROGRESS_EVERY = 1000
"""Log a progress line every this many records per worker."""
FIRST_REASONS = 5
"""Dead-letter reasons quoted in the error when the stage fails."""


class ReadItem(beam.DoFn):
    """(item number, item) -> ((item number, record number), record) for each of its records.

    Under `Guarded`, the whole item goes to the dead letter if reading fails.
    """

    def __init__(self, reader, log: logging.Logger, live_total: Optional[int] = None):
        """`live_total`: the number of items, when a live count is wanted (one in-process worker
        on a terminal: pipeline/progress.py); else a log line every PROGRESS_EVERY records."""
        self.reader = reader
        self.log = log
        self.live_total = live_total
        self.records = beam.metrics.Metrics.counter("ingest", "records_read")
        self.seen = 0
        self._bar = None

    def __getstate__(self):
        return {**self.__dict__, "_bar": None}

    def process(self, numbered_item):
        index, item = numbered_item
        try:
            for number, record in enumerate(self.reader.read(item)):
                self.records.inc()
                self.seen += 1
                if self.seen % PROGRESS_EVERY == 0 and self.live_total is None:
                    self.log.info("ingest: %d records read by this worker", self.seen)
                yield (index, number), record
        finally:
            if self.live_total is not None:
                self._count_item()

    def _count_item(self) -> None:
        from tqdm import tqdm

        if self._bar is None:
            self._bar = tqdm(total=self.live_total, desc="ingest", unit="item", leave=False, dynamic_ncols=True)
        self._bar.set_postfix_str(f"{self.seen} records", refresh=False)
        self._bar.update(1)
        if self._bar.n >= self.live_total:
            self._bar.close()


_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
"""An object's memory address in a message (`<_io.BytesIO object at 0x7f...>`): differs in every process."""


def _dead_letter_line(element, error, stage: str) -> str:
    exc_type, exc_repr, trace = error
    reason = trace[-1].strip() if trace else exc_repr
    reason = _ADDRESS.sub("", reason.removeprefix("components.examples."))
    if isinstance(element, dict):
        entry = {"item": str(element.get("source") or element.get("id")), "id": str(element.get("id")),
                 "stage": stage, "reason": reason}
    else:
        entry = {"item": element if isinstance(element, (str, int, float)) else str(element), "stage": stage,
                 "reason": reason}
    return json.dumps(entry, default=str)


def _schema_document(stats: dict, static: dict) -> str:
    total = stats["total"]
    sizes = sorted(total["image_sizes"].items(), key=lambda kv: -kv[1])
    image_size = [int(v) for v in sizes[0][0].split("x")] if sizes else None
    schema = dict(static)
    schema["image_size"] = image_size
    if len(sizes) > 1:
        schema["image_sizes"] = dict(sizes)  # mixed sizes: validate reports it
    schema["split_counts"] = {split: stats["splits"].get(split, {}).get("num_examples", 0) for split in ex.SPLITS}
    schema["features"] = stats["features"]
    return json.dumps(schema, indent=2, sort_keys=True)


# ------------------------------------------------------------------------------------------------
# the pipeline
# ------------------------------------------------------------------------------------------------
def _bad_read(bad, path: str) -> tuple:
    """A failed item as a dead-letter line, placed before any record of a later item."""
    (index, item), error = bad
    return path, (index,), _dead_letter_line(item, error, "read")


def _bad_record(bad, path: str) -> tuple:
    (place, record), error = bad
    return path, place, _dead_letter_line(record, error, "check")


def build(pipeline: beam.Pipeline, reader, items: list, rules: RecordRules, out: str, *, num_shards: int,
          static_schema: dict, mask_class_names: list[str], log: logging.Logger,
          live_total: Optional[int] = None) -> None:
    """Add the ingest transforms to `pipeline`, writing the Examples layout under `out` (a path or a URL)."""
    class_names = static_schema["class_names"]
    dead_letter, stats_file, schema_file = (locations.join(out, name) for name in (ex.DEAD_LETTER_FILE,
                                                                                   ex.STATS_FILE, ex.SCHEMA_FILE))
    read = (pipeline
            | "ListItems" >> beam.Create(list(enumerate(items)), reshuffle=False)
            | "Spread" >> beam.Reshuffle()
            | "Read" >> beam.ParDo(Guarded(ReadItem(reader, log, live_total))))
    prepared = (read
                | "ReadOk" >> Keep(OK)
                | "Check" >> beam.ParDo(guarded_map(prepare_in_order), rules))
    good = prepared | "CheckOk" >> Keep(OK)

    bad_reads = read | "ReadBad" >> Keep(BAD) | "ReadReason" >> beam.Map(_bad_read, dead_letter)
    bad_records = prepared | "CheckBad" >> Keep(BAD) | "CheckReason" >> beam.Map(_bad_record, dead_letter)

    shards = (good
              | "BySplit" >> beam.Map(lambda row: (ex.SPLITS.index(row[1][0]), row[1][1]))
              | "WriteShards" >> WriteGroupedShards([locations.join(out, split, "data") for split in ex.SPLITS],
                                                    num_shards))

    stats = (good
             | "Summaries" >> beam.Map(lambda row: (row[0], row[1][2]))
             | "Combine" >> CombineInOrder(stats_lib.StatsCombineFn())
             | "Finalize" >> beam.Map(stats_lib.finalize, class_names, mask_class_names))
    stats_json = stats | "StatsJson" >> beam.Map(lambda s: (stats_file, 0, json.dumps(s, indent=2, sort_keys=True)))
    schema_json = stats | "SchemaJson" >> beam.Map(lambda s: (schema_file, 0, _schema_document(s, static_schema)))
    texts = ((bad_reads, bad_records, stats_json, schema_json)
             | "AllText" >> beam.Flatten()
             | "WriteText" >> WriteTextFiles([dead_letter, stats_file, schema_file]))
    _ = (shards, texts) | "Done" >> Join()


def _rules(config: PipelineConfig, class_names: list[str], extras: dict) -> RecordRules:
    ingest = config.ingest
    if ingest.task == "multitask":
        num_mask_classes = len(extras.get("mask_class_names", [])) or len(class_names) + 1
    else:
        num_mask_classes = len(class_names)
    splits = ingest.splits
    return RecordRules(
        task=ingest.task, num_classes=len(class_names), num_mask_classes=num_mask_classes,
        ignore_value=extras.get("ignore_value"),
        image_size=tuple(ingest.image_size) if ingest.image_size else None, image_format=ingest.image_format,
        split_bounds=(splits.train, splits.train + splits.eval))


def _counter(result, name: str) -> Optional[int]:
    """A Beam counter's committed value (None where the runner does not report metrics)."""
    try:
        query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace("ingest").with_name(name))
        return sum(c.committed or 0 for c in query["counters"])
    except Exception:  # metrics are best effort on some runners
        return None


def _fail_if_too_bad(out: str, ingest, log: logging.Logger) -> dict:
    stats = json.loads(locations.read_text(out, ex.STATS_FILE))
    lines = locations.read_text(out, ex.DEAD_LETTER_FILE).splitlines()
    bad = [json.loads(line) for line in lines if line.strip()]
    good = stats["total"]["num_examples"]
    total = good + len(bad)
    fraction = len(bad) / total if total else 0.0
    if bad:
        log.warning("ingest: %d of %d records or items are bad (%.1f%%), listed in %s", len(bad), total,
                    100 * fraction, ex.DEAD_LETTER_FILE)
    if total == 0:
        raise StageError("ingest: the source yielded no records (check ingest.source)")
    if bad and fraction > ingest.max_bad_fraction:
        reasons = "\n".join(f"  {b['item']}: {b['reason']}" for b in bad[:FIRST_REASONS])
        more = f"\n  ... and {len(bad) - FIRST_REASONS} more" if len(bad) > FIRST_REASONS else ""
        raise StageError(
            f"ingest: {len(bad)} of {total} records are bad ({fraction:.1%}), more than "
            f"ingest.max_bad_fraction={ingest.max_bad_fraction:g}; first reasons:\n{reasons}{more}")
    if good == 0:
        raise StageError("ingest: no valid records were read; see the reasons above")
    return {"num_examples": good, "num_bad": len(bad), "bad_fraction": fraction}


def run_ingest(ctx: ExecutionContext) -> None:
    ingest = ctx.config.ingest
    out = ctx.output_location("examples")
    reader = make_reader(ingest.source, ingest)
    class_names = list(reader.class_names())
    extras = dict(reader.schema_extras())
    items = list(reader.list_items())
    ctx.log.info("ingest: %s source, task %s, %d work items for the Beam workers", ingest.source.name,
                 ingest.task, len(items))
    static_schema = {
        **extras,
        "task": ingest.task,
        "class_names": class_names,
        "image_format": ingest.image_format,
        "source": ingest.source.model_dump(mode="json"),
        "source_fingerprint": reader.fingerprint(),
        "splits": ingest.splits.model_dump(mode="json"),
    }
    rules = _rules(ctx.config, class_names, extras)
    mask_class_names = extras.get("mask_class_names", class_names)
    pipeline = beam_lib.make_pipeline(ctx.config, job_name=f"ingest-{ctx.execution_id}", parallelism=len(items))
    beam_section = ctx.config.beam
    in_process = (beam_section.runner == "DirectRunner" and beam_section.direct_running_mode == "in_memory"
                  and beam_section.direct_num_workers == 1 and not beam_section.args)
    live_total = len(items) if in_process and use_live_display() else None
    build(pipeline, reader, items, rules, out, num_shards=ingest.num_shards, static_schema=static_schema,
          mask_class_names=mask_class_names, log=ctx.log, live_total=live_total)
    try:
        result = beam_lib.run(pipeline, "ingest", ctx.log)
    except beam_lib.BeamError as exc:
        raise StageError(str(exc)) from exc
    read = _counter(result, "records_read")
    if read is not None:
        ctx.log.info("ingest: %d records read from %d items", read, len(items))

    summary = _fail_if_too_bad(out, ingest, ctx.log)
    schema = locations.read_schema(out)
    for split in ex.SPLITS:
        ctx.log.info("ingest: %s: %d records in %d shards", split, schema["split_counts"][split],
                     len(locations.shard_paths(out, split)))
    ctx.properties["examples"] = {**summary, "split_counts": schema["split_counts"], "task": ingest.task,
                                  "class_names": class_names}
