"""beam.runner=dask: the options it makes, the runner it builds, and an unreachable scheduler named in the error."""
import apache_beam as beam
import pytest
from apache_beam.runners.dask.dask_runner import DaskOptions, DaskRunner

from pipeline import beam as beam_lib
from pipeline import beam_dask, beam_dask_runner
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
    assert type(pipeline.runner) is beam_dask_runner.DaskRunner and isinstance(pipeline.runner, DaskRunner)
    assert beam_dask.SHARED.addresses() == {}


def test_a_group_by_key_shuffles_at_most_the_pipelines_partitions():
    """A Flatten adds up partitions; the GroupByKey after it merges them back to npartitions first.

    (That it groups the same values is checked on a real cluster: tests/components/ingest/test_dask_runner.py
    writes the DirectRunner's bytes. Beam's ParDo translation shares its receivers between the partitions
    of one process, so dask's in-process scheduler cannot compute these bags.)"""
    from apache_beam.runners.dask.dask_runner import DaskOptions
    from apache_beam.runners.dask.overrides import dask_overrides

    options = beam_lib.pipeline_options(parse_config({"beam": {"runner": "dask", "dask": {"partitions": 3}}}))
    pipeline = beam.Pipeline(runner=beam_dask_runner.DaskRunner(), options=options)
    pieces = [pipeline | f"Create{i}" >> beam.Create([(k % 4, 10 * i + k) for k in range(6)]) for i in range(5)]
    _ = (pieces | beam.Flatten() | beam.GroupByKey() | beam.MapTuple(lambda key, values: (key, sorted(values))))
    pipeline.replace_all(dask_overrides())
    bag_kwargs = DaskOptions._extract_bag_kwargs(options.view_as(DaskOptions).get_all_options(drop_default=True,
                                                                                             current_only=True))
    visitor = beam_dask_runner.DaskRunner.to_dask_bag_visitor(bag_kwargs)
    pipeline.visit(visitor)
    flattened = next(bag for node, bag in visitor.bags.items() if node.transform.__class__.__name__ == "_Flatten")
    grouped = list(visitor.bags.values())[-1]
    assert (flattened.npartitions, grouped.npartitions) == (15, 3)  # 5 Creates of 3 partitions; then 3
    assert len([key for key in dict(grouped.__dask_graph__()) if str(key[0]).startswith("repartition")]) == 3


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
