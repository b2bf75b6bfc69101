"""Beam options from config, the local runner, and errors that name their cause."""
import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import DirectOptions, StandardOptions

from pipeline import beam as beam_lib
from pipeline.config import parse_config


def test_options_name_the_runner_and_direct_settings():
    config = parse_config({"beam": {"direct_num_workers": 3, "direct_running_mode": "multi_threading"}})
    options = beam_lib.pipeline_options(config, job_name="Ingest 7")
    assert options.view_as(StandardOptions).runner == "DirectRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 3
    assert options.view_as(DirectOptions).direct_running_mode == "multi_threading"
    assert options.get_all_options()["job_name"] == "ingest-7"


def test_args_override_the_typed_keys():
    config = parse_config({"beam": {"args": ["--runner=FlinkRunner", "--flink_master=host:8081",
                                             "--direct_num_workers=5"]}})
    options = beam_lib.pipeline_options(config)
    assert beam_lib.runner_name(options) == "FlinkRunner"
    assert options.view_as(DirectOptions).direct_num_workers == 5
    assert options.get_all_options()["flink_master"] == "host:8081"


def test_direct_runner_is_run_in_process_without_prism():
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    pipeline = beam_lib.make_pipeline(parse_config({}))
    assert isinstance(pipeline.runner, FnApiRunner)


def test_run_completes_and_writes(tmp_path):
    pipeline = beam_lib.make_pipeline(parse_config({}))
    _ = (pipeline | beam.Create([3, 1, 2]) | beam.CombineGlobally(sum) | beam.Map(str)
         | beam.io.WriteToText(str(tmp_path / "sum"), shard_name_template="", file_name_suffix=".txt"))
    beam_lib.run(pipeline, "test")
    assert (tmp_path / "sum.txt").read_text() == "6\n"


def _explode(value):
    raise ValueError(f"record {value}: expected a cat, got a dog")


def test_failure_names_the_pipeline_runner_and_cause():
    pipeline = beam_lib.make_pipeline(parse_config({}))
    _ = pipeline | beam.Create([1]) | beam.Map(_explode)
    with pytest.raises(beam_lib.BeamError) as error:
        beam_lib.run(pipeline, "ingest")
    assert str(error.value) == "ingest: Beam pipeline failed on DirectRunner: ValueError: record 1: expected a cat, got a dog"
