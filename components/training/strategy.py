"""Which `tf.distribute` strategy trains, chosen from `train.distribution`, the devices and `TF_CONFIG`.

One training loop serves every strategy (see loop.py), so this module only decides *which* one:

    auto        multi_worker when TF_CONFIG names more than one task, mirrored when there are
                several GPUs (or the CPU was split with train.logical_cpu_devices), else default
    default     tf.distribute.get_strategy(): no distribution, one device
    one_device  OneDeviceStrategy on the first GPU, else the CPU
    mirrored    MirroredStrategy over every GPU, else over the logical CPU devices
    multi_worker MultiWorkerMirroredStrategy from TF_CONFIG

Logical CPU devices must be declared before TensorFlow initialises its devices (the first op
does that), so `configure_logical_cpus` runs before anything else touches TF in a trial; when a
process has already initialised them differently, the caller trains in a fresh process instead.
A multi-worker trial always trains in a fresh process: the coordination service and collective
ops can only be configured before TensorFlow initialises its context.

Across workers, nothing may wait forever: the coordination service declares a worker dead after
`train.cluster.heartbeat_timeout_s` without a heartbeat and aborts every collective in the
cluster, and a collective that waits longer than `train.cluster.collective_timeout_s` fails (a
worker alive but stuck). Either way the surviving workers raise and exit instead of hanging.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Optional


class DeviceSetupError(RuntimeError):
    """The devices this process has cannot be changed to what the config asks for."""


def tf_config() -> dict:
    """The parsed TF_CONFIG environment variable ({} when unset)."""
    raw = os.environ.get("TF_CONFIG", "")
    if not raw.strip():
        return {}
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise DeviceSetupError(f"TF_CONFIG: expected JSON, got {raw[:80]!r} ({exc.msg})") from None
    if not isinstance(value, dict):
        raise DeviceSetupError(f"TF_CONFIG: expected a JSON object, got {type(value).__name__}")
    return value


def cluster_size(config: Optional[dict] = None) -> int:
    """Number of tasks (chief + workers) in TF_CONFIG's cluster; 1 when there is none."""
    cluster = (tf_config() if config is None else config).get("cluster", {})
    return sum(len(cluster.get(role, [])) for role in ("chief", "worker")) or 1


def is_chief_task(config: Optional[dict] = None) -> bool:
    """The chief writes backups, logs and artifacts: task type 'chief', or worker 0 without a chief."""
    config = tf_config() if config is None else config
    task = config.get("task", {})
    if not task:
        return True
    if task.get("type") == "chief":
        return True
    has_chief = bool(config.get("cluster", {}).get("chief"))
    return task.get("type") == "worker" and int(task.get("index", 0)) == 0 and not has_chief


def uses_multi_worker(distribution: str) -> bool:
    """Whether `train.distribution` with this process's TF_CONFIG trains across several workers."""
    return distribution == "multi_worker" or (distribution == "auto" and cluster_size() > 1)


def trains_in_this_process(train_section) -> bool:
    """Whether a trial can train in the calling process (else in a fresh one, see the module doc)."""
    return not uses_multi_worker(train_section.distribution) and devices_initialised_as(train_section.logical_cpu_devices)


def fresh_process_reason(train_section) -> str:
    if uses_multi_worker(train_section.distribution):
        return f"multi-worker training ({cluster_size()} workers in TF_CONFIG) configures TensorFlow before it starts"
    return (f"this process already initialised its devices; train.logical_cpu_devices asks for "
            f"{train_section.logical_cpu_devices} logical CPU devices")


def configure_coordination(cluster_section) -> None:
    """Start TF's coordination service with our heartbeat timeout (MultiWorkerMirroredStrategy starts
    it with TF's defaults only when nobody configured it first); call before the strategy is created."""
    from tensorflow.python.distribute import multi_worker_util
    from tensorflow.python.distribute.cluster_resolver import TFConfigClusterResolver
    from tensorflow.python.eager import context
    from tensorflow.compiler.xla.tsl.protobuf import coordination_config_pb2

    cluster_spec = TFConfigClusterResolver().cluster_spec()
    jobs = [coordination_config_pb2.CoordinatedJob(name=job, num_tasks=cluster_spec.num_tasks(job))
            for job in ("chief", "worker") if job in cluster_spec.jobs]
    context.context().configure_coordination_service(
        service_type="standalone", service_leader=multi_worker_util.coordination_leader(cluster_spec),
        coordinated_jobs=jobs, heartbeat_timeout_in_ms=cluster_section.heartbeat_timeout_s * 1000)


def configure_logical_cpus(count: Optional[int]) -> None:
    """Split the first physical CPU into `count` logical devices (for MirroredStrategy on CPU).

    Raises DeviceSetupError when TensorFlow already initialised its devices with fewer.
    """
    if not count or count <= 1:
        return
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(cpus[0], [tf.config.LogicalDeviceConfiguration()] * count)
    except RuntimeError:
        have = len(tf.config.list_logical_devices("CPU"))
        if have != count:
            raise DeviceSetupError(
                f"train.logical_cpu_devices: expected {count} logical CPU devices, but TensorFlow already "
                f"initialised this process with {have}") from None


def devices_initialised_as(count: Optional[int]) -> bool:
    """Whether `configure_logical_cpus(count)` can succeed in this process."""
    try:
        configure_logical_cpus(count)
        return True
    except DeviceSetupError:
        return False


@dataclass
class Placement:
    strategy: object
    kind: str
    """The strategy actually used: default, one_device, mirrored or multi_worker."""
    on_gpu: bool
    is_chief: bool

    @property
    def num_replicas(self) -> int:
        return self.strategy.num_replicas_in_sync


def resolve_kind(distribution: str, num_gpus: int, num_cpus: int, workers: int) -> str:
    """The strategy kind for `auto`; other values pass through."""
    if distribution != "auto":
        return distribution
    if workers > 1:
        return "multi_worker"
    if num_gpus > 1 or (num_gpus == 0 and num_cpus > 1):
        return "mirrored"
    return "default"


def make_strategy(distribution: str, logical_cpu_devices: Optional[int] = None, cluster=None) -> Placement:
    """Configure devices and create the strategy; call before building any model or dataset.

    MultiWorkerMirroredStrategy must configure collective ops before TensorFlow initialises its
    context, so it is created first, before any device is listed. `cluster` is the
    `train.cluster` section (timeouts); None keeps TensorFlow's defaults.
    """
    import tensorflow as tf

    workers = cluster_size()
    if uses_multi_worker(distribution):
        if not tf_config():
            raise DeviceSetupError(
                "train.distribution=multi_worker: expected TF_CONFIG to describe the cluster "
                "({\"cluster\": {\"worker\": [host:port, ...]}, \"task\": {...}}), got no TF_CONFIG")
        options = tf.distribute.experimental.CommunicationOptions()
        if cluster is not None:
            configure_coordination(cluster)
            options = tf.distribute.experimental.CommunicationOptions(timeout_seconds=cluster.collective_timeout_s)
        strategy = tf.distribute.MultiWorkerMirroredStrategy(communication_options=options)
        on_gpu = bool(tf.config.list_physical_devices("GPU"))
        return Placement(strategy=strategy, kind="multi_worker", on_gpu=on_gpu, is_chief=is_chief_task())

    configure_logical_cpus(logical_cpu_devices)
    gpus = tf.config.list_logical_devices("GPU")
    cpus = tf.config.list_logical_devices("CPU")
    kind = resolve_kind(distribution, len(gpus), len(cpus) if logical_cpu_devices else 1, workers)
    if kind == "default":
        strategy = tf.distribute.get_strategy()
    elif kind == "one_device":
        strategy = tf.distribute.OneDeviceStrategy((gpus or cpus)[0].name)
    elif kind == "mirrored":
        strategy = tf.distribute.MirroredStrategy([d.name for d in (gpus or cpus)])
    else:
        raise DeviceSetupError(
            f"train.distribution: expected auto, default, one_device, mirrored or multi_worker, got {distribution!r}")
    return Placement(strategy=strategy, kind=kind, on_gpu=bool(gpus), is_chief=is_chief_task())


def use_jit(setting, on_gpu: bool) -> bool:
    """`auto` compiles with XLA on a GPU only: on CPU the compile time outweighs the gain for small CNNs."""
    if setting == "auto":
        return on_gpu
    return bool(setting)
