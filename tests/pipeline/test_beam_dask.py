"""beam.runner=dask: the options it makes, the runner it builds, and an unreachable scheduler named in the error."""
import apache_beam as beam
import pytest
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner

from pipeline import beam as beam_lib
from pipeline import beam_dask
from pipeline.config import ConfigError, parse_config
from tests.servers import free_port


def test_dask_and_its_spellings_name_beams_dask_runner():
    for name in ("dask", "Dask", "DaskRunner"):
        options = beam_lib.pipeline_options(parse_config({"beam": {"runner": name}}))
        assert beam_lib.runner_name(options) == "DaskRunner"
        assert options.get_all_options()["runner"] == "DaskRunner"
    assert beam_dask.canonical_runner("FlinkRunner") == "FlinkRunner"


def test_local_cluster_by_default_sized_from_the_config_with_the_stages_work_items():
    config = parse_config({"beam": {"runner": "dask", "dask": {"workers": 3, "threads_per_worker": 2}}})
    options = beam_lib.pipeline_options(config, parallelism=16)
    local = options.view_as(beam_dask.ClusterOptions)
    assert (local.dask_local_workers, local.dask_local_threads_per_worker, local.dask_work_items) == (3, 2, 16)
    assert options.view_as(DaskOptions).address is None
    assert options.view_as(DaskOptions).npartitions is None  # chosen from the cluster's threads at run time
    assert beam_dask.describe(options) == "LocalCluster x3 workers"


def test_default_partitions_are_two_per_cluster_thread_and_at_most_one_per_work_item():
    assert beam_dask.default_partitions(threads=2, work_items=157) == 4
    assert beam_dask.default_partitions(threads=6, work_items=5) == 5
    assert beam_dask.default_partitions(threads=1, work_items=None) == 2


def test_an_address_and_partitions_from_the_config_and_args_win():
    config = parse_config({"beam": {"runner": "dask", "dask": {"address": "tcp://scheduler:8786", "partitions": 4},
                                    "args": ["--dask_npartitions=9"]}})
    options = beam_lib.pipeline_options(config, parallelism=16)
    assert options.view_as(DaskOptions).address == "tcp://scheduler:8786"
    assert options.get_all_options()["npartitions"] == 9
    assert beam_dask.describe(options) == "scheduler tcp://scheduler:8786"


def test_the_direct_runner_gets_no_dask_flags():
    args = beam_lib.option_args(parse_config({"beam": {"dask": {"address": "tcp://x:1"}}}), parallelism=8)
    assert not [a for a in args if "dask" in a]


def test_unknown_dask_keys_are_refused():
    with pytest.raises(ConfigError, match=r"beam\.dask\.worker"):
        parse_config({"beam": {"runner": "dask", "dask": {"worker": 2}}})
    with pytest.raises(ConfigError, match=r"beam\.dask\.workers"):
        parse_config({"beam": {"runner": "dask", "dask": {"workers": 0}}})


def test_make_pipeline_builds_beams_dask_runner_and_starts_nothing():
    pipeline = beam_lib.make_pipeline(parse_config({"beam": {"runner": "dask"}}))
    assert type(pipeline.runner) is DaskRunner


def test_an_unreachable_scheduler_fails_naming_its_address():
    address = f"tcp://127.0.0.1:{free_port()}"
    config = parse_config({"beam": {"runner": "dask", "dask": {"address": address},
                                    "args": ["--dask_connection_timeout=2"]}})
    pipeline = beam_lib.make_pipeline(config)
    _ = pipeline | beam.Create([1, 2]) | beam.Map(str)
    with pytest.raises(beam_lib.BeamError) as error:
        beam_lib.run(pipeline, "ingest")
    message = str(error.value)
    assert message.startswith(f"ingest: Beam pipeline failed on DaskRunner ({address}): ")
    assert "\n" not in message
