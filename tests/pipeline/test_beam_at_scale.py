"""The README's "Running Beam at scale" configs: valid, every flag known to Beam, and the runner they name
is the one `pipeline/beam.py` builds (our in-process FnApiRunner only for DirectRunner, Beam's DaskRunner
for dask)."""
import json
import re

import pytest
from apache_beam.options.pipeline_options import DirectOptions

from pipeline import beam as beam_lib
from pipeline import beam_dask
from pipeline.config import parse_config
from tests.pipeline.conftest import REPO


def readme_section(title: str) -> str:
    text = (REPO / "README.md").read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end > 0 else None]


BLOCKS: dict[str, list[dict]] = {}
for _block in re.findall(r"```json\n(.*?)\n```", readme_section("Running Beam at scale"), re.S):
    _config = json.loads(_block)
    BLOCKS.setdefault(beam_dask.canonical_runner(_config["beam"].get("runner", "DirectRunner")), []).append(_config)
CONFIGS = {runner: blocks[0] for runner, blocks in BLOCKS.items()}
EVERY_BLOCK = [(runner, i) for runner, blocks in sorted(BLOCKS.items()) for i in range(len(blocks))]


def test_the_section_has_one_config_per_runner_and_two_for_dask():
    assert sorted(BLOCKS) == ["DaskRunner", "DataflowRunner", "DirectRunner", "FlinkRunner", "SparkRunner"]
    assert {runner: len(blocks) for runner, blocks in BLOCKS.items()} == {
        "DaskRunner": 2, "DataflowRunner": 1, "DirectRunner": 1, "FlinkRunner": 1, "SparkRunner": 1}


DESTS = {"dask_client_address": "address", "dask_connection_timeout": "timeout"}
"""Flags that Beam's DaskOptions stores under another name."""


@pytest.mark.parametrize("runner, index", EVERY_BLOCK)
def test_every_flag_reaches_beam(runner, index):
    """Beam drops flags it does not know; each README flag must come out with its value."""
    block = BLOCKS[runner][index]
    options = beam_lib.pipeline_options(parse_config(block), job_name="ingest-7").get_all_options()
    assert options["runner"] == runner and options["job_name"] == "ingest-7"
    for flag in block["beam"].get("args", []):
        key, value = flag[2:].split("=", 1)
        assert str(options[DESTS.get(key, key)]) == value, flag


def test_the_dask_configs_are_a_local_cluster_and_a_scheduler_on_beams_dask_runner():
    from apache_beam.runners.dask.dask_runner import DaskRunner

    local, remote = (beam_lib.make_pipeline(parse_config(block)) for block in BLOCKS["DaskRunner"])
    assert isinstance(local.runner, DaskRunner) and isinstance(remote.runner, DaskRunner)  # ours: capped shuffles
    assert beam_dask.describe(local.options) == "LocalCluster x2 workers"
    assert beam_dask.describe(remote.options) == "scheduler tcp://scheduler:8786"


def test_direct_multi_processing_runs_in_our_fnapi_runner():
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    pipeline = beam_lib.make_pipeline(parse_config(CONFIGS["DirectRunner"]))
    assert isinstance(pipeline.runner, FnApiRunner)
    direct = pipeline.options.view_as(DirectOptions)
    assert (direct.direct_running_mode, direct.direct_num_workers) == ("multi_processing", 4)
    typed = parse_config({"beam": {"direct_running_mode": "multi_processing", "direct_num_workers": 4}})
    assert beam_lib.pipeline_options(typed).view_as(DirectOptions).direct_running_mode == "multi_processing"


@pytest.mark.parametrize("runner, module", [("FlinkRunner", "flink_runner"), ("SparkRunner", "spark_runner")])
def test_cluster_runners_are_beams_own(runner, module):
    """Building the pipeline starts nothing (no job server, no download); Beam's runner class is used."""
    import importlib

    pipeline = beam_lib.make_pipeline(parse_config(CONFIGS[runner]))
    cls = getattr(importlib.import_module(f"apache_beam.runners.portability.{module}"), runner)
    assert type(pipeline.runner) is cls
