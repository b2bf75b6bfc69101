"""Beam transforms that every runner we support executes the same way, DaskRunner included.

Beam 2.77's DaskRunner translates only a core of the model into dask.bag operations, and the
rest quietly does something else:
- `Read` (so `ReadFromTFRecord`) becomes a no-op: nothing is read;
- a ParDo's tagged outputs (`Partition`, `with_outputs`, `with_exception_handling`) are not kept
  apart: every consumer receives every output of every tag;
- side inputs are computed again inside a worker task (`CombineGlobally` with its default value,
  `Count.Globally`, and the file sinks `WriteToText`/`WriteToTFRecord`, which also fail there);
- a DoFn's `finish_bundle` output is dropped;
- only the graph under the last transform applied is computed: a branch that does not lead to it
  never runs.
What it does translate faithfully is `Create`, single-output `ParDo`/`Map`/`FlatMap`,
`GroupByKey` and `Flatten`. The transforms here are built from those alone, so a data stage
written with them runs on the DirectRunner, Dask, Flink, Spark and Dataflow and, because none of
them depends on how the runner bundles or orders the work, writes the same bytes on each:
- `Guarded`: a DoFn's failures as ("bad", (element, (type, repr, traceback))) rows in the same
  stream as its ("ok", output) rows, as `with_exception_handling` would have tagged them;
- `Keep`: one tag of such a stream;
- `CombineInOrder`: a CombineFn over all elements, added in the order of a key carried with
  each, so floating-point sums come out bit for bit the same on every runner;
- `WriteTextFiles`: text files of lines, in a given order, every named file written (empty too),
  at local paths or URLs (pipeline/beam_files.py);
- `Join`: one small PCollection downstream of all the stage's writes, applied last.
Group keys are integers: a str key's `hash` differs between worker processes unless they share
PYTHONHASHSEED, and dask.bag groups by `hash`.
"""
from __future__ import annotations

import sys
import traceback
from typing import Iterable, Sequence

import apache_beam as beam

from pipeline import beam_files

OK, BAD = "ok", "bad"


# ------------------------------------------------------------------------------------------------
# failures as data
# ------------------------------------------------------------------------------------------------
class Guarded(beam.DoFn):
    """Wrap a DoFn: its outputs become (OK, output); an exception becomes one (BAD, (element, error)) row.

    Only the wrapped DoFn's `setup`, `process` and `teardown` are called (the DaskRunner drops
    what `finish_bundle` emits, so the stage DoFns have none).

    `error` is (type, repr, formatted traceback lines), as Beam's `with_exception_handling` gives
    it. An element's outputs are gathered before any is emitted, so a failure part-way through
    emits none of them.
    """

    def __init__(self, fn: beam.DoFn):
        super().__init__()
        self.fn = fn

    def setup(self):
        self.fn.setup()

    def process(self, element, *args, **kwargs):
        try:
            outputs = list(self.fn.process(element, *args, **kwargs) or ())
        except Exception as exc:
            yield BAD, (element, (type(exc), repr(exc), traceback.format_exception(*sys.exc_info())))
            return
        for output in outputs:
            yield OK, output

    def teardown(self):
        self.fn.teardown()


class _Call(beam.DoFn):
    """A plain function as a one-output DoFn (what `beam.Map` would make of it)."""

    def __init__(self, fn):
        super().__init__()
        self.call = fn

    def process(self, element, *args, **kwargs):
        yield self.call(element, *args, **kwargs)


def guarded_map(fn) -> Guarded:
    """`beam.Map(fn).with_exception_handling()` as one stream of (OK | BAD, value) rows."""
    return Guarded(_Call(fn))


def _keep(row, tag: str):
    if row[0] == tag:
        yield row[1]


def Keep(tag: str) -> beam.PTransform:
    """The values of one tag of a (tag, value) stream."""
    return beam.FlatMap(_keep, tag)


# ------------------------------------------------------------------------------------------------
# one result from every element, in a fixed order
# ------------------------------------------------------------------------------------------------
def _under_key(order_and_value, key: int):
    return key, order_and_value


def _combine_sorted(key_and_rows, combine_fn: beam.CombineFn):
    _, rows = key_and_rows
    accumulator = combine_fn.create_accumulator()
    for _, value in sorted((row for row in rows if row is not None), key=lambda row: row[0]):
        accumulator = combine_fn.add_input(accumulator, value)
    return combine_fn.extract_output(accumulator)


class CombineInOrder(beam.PTransform):
    """PCollection of (order, value) -> one element: `combine_fn` over the values, added in `order`.

    Beam's CombineGlobally adds values in whatever order and grouping the runner chose, so a sum
    of floats differs in its last bits from runner to runner. Here one worker adds them in the
    order of their keys (any sortable, e.g. a tuple of ints), which is also the order the
    in-memory DirectRunner meets them in. The values are gathered in that worker's memory: keep
    them small (a summary per record, not the record). There is an output for an empty input too:
    the combiner's empty accumulator.
    """

    def __init__(self, combine_fn: beam.CombineFn):
        super().__init__()
        self.combine_fn = combine_fn

    def expand(self, rows):
        every_time = rows.pipeline | "Once" >> beam.Create([(0, None)], reshuffle=False)
        return ((rows | "UnderOneKey" >> beam.Map(_under_key, 0), every_time)
                | "WithOnce" >> beam.Flatten()
                | "Gather" >> beam.GroupByKey()
                | "AddInOrder" >> beam.Map(_combine_sorted, self.combine_fn))


# ------------------------------------------------------------------------------------------------
# text files
# ------------------------------------------------------------------------------------------------
def _file_key(row, index: dict):
    path, order, line = row
    if path not in index:
        raise KeyError(f"WriteTextFiles: a line for {path!r}, which is not one of the files to write {sorted(index)}")
    return index[path], (order, line)


def _write_text(key_and_lines, paths: Sequence[str]) -> str:
    key, rows = key_and_lines
    path = paths[key]
    lines = [line for _, line in sorted((row for row in rows if row is not None), key=lambda row: row[0])]
    beam_files.write_bytes(path, b"".join(line.encode("utf-8") + b"\n" for line in lines), mime_type="text/plain")
    return path


class WriteTextFiles(beam.PTransform):
    """PCollection of (path, order, line) -> each of `paths` written with its lines sorted by `order`.

    Each line ends with a newline, as `WriteToText` writes it; a file with no lines is written
    empty. The file appears under its name only when complete (a local one is written as
    `<path>.writing`, then renamed; a URL, s3:// say, is one object written by the worker itself:
    pipeline/beam_files.py). Yields the paths written.
    """

    def __init__(self, paths: Iterable[str]):
        super().__init__()
        self.paths = [str(p) for p in paths]

    def expand(self, rows):
        index = {path: i for i, path in enumerate(self.paths)}
        every_file = rows.pipeline | "EveryFile" >> beam.Create([(i, None) for i in range(len(self.paths))],
                                                                reshuffle=False)
        return ((rows | "KeyByFile" >> beam.Map(_file_key, index), every_file)
                | "WithEveryFile" >> beam.Flatten()
                | "GroupByFile" >> beam.GroupByKey()
                | "Write" >> beam.Map(_write_text, self.paths))


# ------------------------------------------------------------------------------------------------
# the end of a stage
# ------------------------------------------------------------------------------------------------
class Join(beam.PTransform):
    """`(written_a, written_b, ...) | "Done" >> Join()`: the stage's last transform, downstream of every write.

    The DaskRunner computes only what the last transform applied depends on, and gathers its
    elements into the submitting process: apply this last, to PCollections of a few small values
    (the paths written).
    """

    def expand(self, pcolls):
        return pcolls | "All" >> beam.Flatten()
