"""The runner-independent transforms on the DirectRunner: failures as rows, sums in order, text files."""
import apache_beam as beam

from pipeline import beam as beam_lib
from pipeline.beam_portable import BAD, OK, CombineInOrder, Guarded, Join, Keep, WriteTextFiles, guarded_map
from pipeline.config import parse_config


def run(build):
    pipeline = beam_lib.make_pipeline(parse_config({}))
    build(pipeline)
    beam_lib.run(pipeline, "test")


class Halves(beam.DoFn):
    """Yields x/2 twice, then fails on odd x: a failure after outputs were produced."""

    def process(self, x):
        yield x / 2
        yield x / 2
        if x % 2:
            raise ValueError(f"record {x}: expected an even number")


def _line(row, path):
    return path, row, repr(row)


def test_guarded_failures_are_rows_and_a_failed_element_emits_nothing(tmp_path):
    good, bad = str(tmp_path / "good.txt"), str(tmp_path / "bad.txt")

    def build(p):
        rows = p | beam.Create([1, 2, 3, 4], reshuffle=False) | beam.ParDo(Guarded(Halves()))
        oks = rows | "Ok" >> Keep(OK) | "OkLine" >> beam.Map(lambda v: (good, v, repr(v)))
        bads = rows | "Bad" >> Keep(BAD) | "BadLine" >> beam.Map(
            lambda b: (bad, b[0], f"{b[0]} {b[1][0].__name__} {b[1][2][-1].strip()}"))
        written = (oks, bads) | beam.Flatten() | WriteTextFiles([good, bad])
        _ = (written,) | Join()

    run(build)
    assert (tmp_path / "good.txt").read_text() == "1.0\n1.0\n2.0\n2.0\n"
    assert (tmp_path / "bad.txt").read_text() == ("1 ValueError ValueError: record 1: expected an even number\n"
                                                  "3 ValueError ValueError: record 3: expected an even number\n")


def test_guarded_map_is_a_map_with_failures_as_rows(tmp_path):
    out = str(tmp_path / "out.txt")

    def build(p):
        rows = p | beam.Create(["1", "x", "3"], reshuffle=False) | beam.ParDo(guarded_map(int))
        lines = rows | beam.Map(lambda r: (out, (r[0], str(r[1][0]) if r[0] == BAD else str(r[1])),
                                           f"{r[0]} {r[1] if r[0] == OK else r[1][0]}"))
        _ = lines | WriteTextFiles([out])

    run(build)
    assert (tmp_path / "out.txt").read_text() == "bad x\nok 1\nok 3\n"


class Sum(beam.CombineFn):
    def create_accumulator(self):
        return 0.0

    def add_input(self, accumulator, value):
        return accumulator + value

    def merge_accumulators(self, accumulators):
        return sum(accumulators)

    def extract_output(self, accumulator):
        return accumulator


def test_combine_in_order_adds_in_the_keys_order_whatever_the_input_order(tmp_path):
    values = [0.1 * (i % 7) + 1e-9 * i for i in range(200)]
    expected, backwards = 0.0, 0.0
    for v in values:
        expected += v
    for v in reversed(values):
        backwards += v
    assert expected != backwards  # these floats sum differently in the other order: the test can fail
    out = str(tmp_path / "sum.txt")

    def build(p):
        rows = p | beam.Create([(i, v) for i, v in enumerate(values)][::-1], reshuffle=False)
        total = rows | CombineInOrder(Sum())
        _ = total | beam.Map(lambda t: (out, 0, repr(t))) | WriteTextFiles([out])

    run(build)
    assert (tmp_path / "sum.txt").read_text() == repr(expected) + "\n"


def test_combine_in_order_of_nothing_is_the_empty_accumulator(tmp_path):
    out = str(tmp_path / "sum.txt")

    def build(p):
        rows = p | beam.Create([(0, 1.0)], reshuffle=False) | beam.Filter(lambda _: False)
        _ = rows | CombineInOrder(Sum()) | beam.Map(lambda t: (out, 0, repr(t))) | WriteTextFiles([out])

    run(build)
    assert (tmp_path / "sum.txt").read_text() == "0.0\n"


def test_every_named_file_is_written_empty_or_not_and_no_temporary_is_left(tmp_path):
    paths = [str(tmp_path / "a.jsonl"), str(tmp_path / "b.json")]

    def build(p):
        _ = (p | beam.Create([(paths[1], (2,), "second"), (paths[1], (1,), "first")], reshuffle=False)
             | WriteTextFiles(paths))

    run(build)
    assert (tmp_path / "a.jsonl").read_bytes() == b""
    assert (tmp_path / "b.json").read_text() == "first\nsecond\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.jsonl", "b.json"]


def test_a_line_for_a_file_not_named_fails_naming_it(tmp_path):
    import pytest

    def build(p):
        _ = p | beam.Create([("elsewhere.txt", 0, "x")]) | WriteTextFiles([str(tmp_path / "a.txt")])

    with pytest.raises(beam_lib.BeamError, match=r"a line for 'elsewhere.txt', which is not one of the files"):
        run(build)
