"""ingest and augment on Beam's DaskRunner against a real dask.distributed LocalCluster of 2 worker processes.

The cluster comes from the `distributed` package in setup.py's requirements, started here on
127.0.0.1 (no mocks); a test is skipped only when the cluster cannot start, with the reason.
Each worker imports TensorFlow on its first task, so the module shares one cluster, and one test
also lets ingest start the process's LocalCluster (`beam.dask.workers`) and augment reuse it, as
a user's run does.
"""
import io
import json
import logging
import sys
from pathlib import Path

import apache_beam as beam
import pytest
from PIL import Image

from components import examples as ex
from components.augment import stage as augment
from components.ingest import stage as ingest
from pipeline import beam as beam_lib
from pipeline import beam_dask
from pipeline.artifacts import fingerprint_dir
from pipeline.config import parse_config
from pipeline.stage import Artifact, ExecutionContext

SYNTHETIC = {"ingest": {"task": "classification", "num_shards": 2,
                        "source": {"name": "synthetic", "num_examples": 40, "image_size": 12, "num_classes": 3},
                        "splits": {"train": 0.6, "eval": 0.2, "test": 0.2}},
             "augment": {"enabled": True, "copies": 1, "horizontal_flip": True, "brightness": 0.1}}


@pytest.fixture(scope="module")
def cluster():
    try:
        import distributed

        local = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                         dashboard_address=None, silence_logs=logging.ERROR)
    except Exception as exc:  # no mocks: without a cluster there is nothing to test
        reason = f"dask LocalCluster could not start: {type(exc).__name__}: {exc}"
        print(f"\nSKIPPING: {reason}", file=sys.stderr)
        pytest.skip(reason)
    with local:
        yield local


def _with_runner(config: dict, beam_section: dict) -> dict:
    config = json.loads(json.dumps(config))
    config["beam"] = beam_section
    return config


def _dask(address: str) -> dict:
    return {"runner": "dask", "dask": {"address": address}}


def run_ingest(tmp_path: Path, config: dict, name: str) -> Path:
    cfg = parse_config(config)
    out = tmp_path / name
    ctx = ExecutionContext(config=cfg, params=ingest.STAGE.parameters(cfg), inputs={}, outputs={"examples": out},
                           work_dir=tmp_path / f"{name}-work", root=tmp_path, run_id=1, execution_id=1,
                           log=logging.getLogger("test_dask_runner"))
    ingest.STAGE.executor(ctx)
    return out


def run_augment(tmp_path: Path, config: dict, examples: Path, name: str) -> Path:
    cfg = parse_config(config)
    out = tmp_path / name
    out.mkdir()
    ctx = ExecutionContext(config=cfg, params=augment.STAGE.parameters(cfg),
                           inputs={"examples": Artifact(id=1, type="Examples", uri=examples, fingerprint="f")},
                           outputs={"examples": out}, work_dir=tmp_path / f"{name}-work", root=tmp_path, run_id=1,
                           execution_id=2, log=logging.getLogger("test_dask_runner"))
    augment.STAGE.executor(ctx)
    return out


@pytest.fixture(scope="module")
def direct(tmp_path_factory):
    """The DirectRunner's ingest and augment of SYNTHETIC: the bytes the cluster must match."""
    tmp = tmp_path_factory.mktemp("direct")
    config = _with_runner(SYNTHETIC, {"runner": "DirectRunner"})
    examples = run_ingest(tmp, config, "ingest")
    return examples, run_augment(tmp, config, examples, "augment")


@pytest.mark.slow  # two worker processes import TensorFlow: 10 to 40 s here
def test_ingest_and_augment_on_a_2_worker_cluster_write_the_direct_runners_examples(tmp_path, cluster, direct):
    direct_ingest, direct_augment = direct
    config = _with_runner(SYNTHETIC, _dask(cluster.scheduler_address))
    examples = run_ingest(tmp_path, config, "ingest")
    assert fingerprint_dir(examples) == fingerprint_dir(direct_ingest)
    assert ex.read_schema(examples)["split_counts"] == ex.read_schema(direct_ingest)["split_counts"]
    assert sum(ex.read_schema(examples)["split_counts"].values()) == 40
    augmented = run_augment(tmp_path, config, examples, "augment")
    assert fingerprint_dir(augmented) == fingerprint_dir(direct_augment)
    train = ex.read_schema(augmented)["split_counts"]["train"]
    assert train == 2 * ex.read_schema(examples)["split_counts"]["train"] > 0
    workers = cluster.scheduler_info["workers"]
    assert len(workers) == 2


def _png(colour) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (10, 10), colour).save(buffer, "PNG")
    return buffer.getvalue()


@pytest.mark.slow
def test_bad_files_reach_the_same_dead_letter_on_the_cluster(tmp_path, cluster):
    """Failures are rows (no tagged outputs): the same dead letter and records on both runners."""
    root = tmp_path / "images"
    for name, colour in (("cat", (200, 10, 10)), ("dog", (10, 200, 10))):
        (root / name).mkdir(parents=True)
        for i in range(3):
            (root / name / f"{i}.png").write_bytes(_png((colour[0], colour[1], 10 * i)))
        (root / name / "broken.png").write_text("not an image\n")
    config = {"ingest": {"task": "classification", "num_shards": 1, "max_bad_fraction": 0.5,
                         "source": {"name": "image_folder", "path": str(root)}}}
    on_direct = run_ingest(tmp_path, _with_runner(config, {"runner": "DirectRunner"}), "direct")
    on_dask = run_ingest(tmp_path, _with_runner(config, _dask(cluster.scheduler_address)), "dask")
    dead = (on_dask / ex.DEAD_LETTER_FILE).read_text()
    assert dead == (on_direct / ex.DEAD_LETTER_FILE).read_text()
    assert [Path(json.loads(line)["item"]).parent.name for line in dead.splitlines()] == ["cat", "dog"]
    assert " at 0x" not in dead  # object addresses differ per process: dropped from the reasons
    assert fingerprint_dir(on_dask) == fingerprint_dir(on_direct)


def _explode(value):
    raise ValueError(f"record {value}: expected a cat, got a dog")


@pytest.mark.slow
def test_a_failing_transform_on_the_cluster_names_the_runner_the_scheduler_and_the_cause(cluster):
    pipeline = beam_lib.make_pipeline(parse_config({"beam": _dask(cluster.scheduler_address)}))
    _ = pipeline | beam.Create([1]) | beam.Map(_explode)
    with pytest.raises(beam_lib.BeamError) as error:
        beam_lib.run(pipeline, "ingest")
    assert str(error.value) == (f"ingest: Beam pipeline failed on DaskRunner ({cluster.scheduler_address}): "
                                f"ValueError: record 1: expected a cat, got a dog")


@pytest.mark.slow  # the stages start one 2-worker LocalCluster, as a user's run does
def test_without_an_address_ingest_and_augment_share_the_local_cluster_they_start(tmp_path, direct, caplog):
    """`convpipe run --set beam.runner=dask`: ingest starts the LocalCluster, augment reuses it."""
    beam_dask.SHARED.close_all()  # none left from another test of this process
    config = _with_runner(SYNTHETIC, {"runner": "dask", "dask": {"workers": 2}})
    try:
        with caplog.at_level(logging.INFO, logger="test_dask_runner"):
            examples = run_ingest(tmp_path, config, "ingest")
            (address,) = beam_dask.SHARED.addresses().values()
            augmented = run_augment(tmp_path, config, examples, "augment")
        assert list(beam_dask.SHARED.addresses().values()) == [address]
    finally:
        beam_dask.SHARED.close_all()
    assert fingerprint_dir(examples) == fingerprint_dir(direct[0])
    assert fingerprint_dir(augmented) == fingerprint_dir(direct[1])
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("dask: ")]
    assert address.startswith("tcp://127.0.0.1:")
    assert said == [f"dask: LocalCluster of 2 worker process(es) at {address} (kept for this process's later "
                    f"Beam pipelines)",
                    f"dask: reusing the LocalCluster of 2 worker process(es) at {address} (started by an earlier "
                    f"Beam pipeline of this process)"]
