"""The trials of a sweep: `train.sweep` (a grid over config keys) times `train.seeds`.

    "train": {"sweep": {"train.optimizer.name": ["sgd", "adam"], "train.loss": ["hinge", "focal"]},
              "seeds": [0, 1, 2]}

makes 2 x 2 x 3 = 12 trials in grid order (the first key varies slowest, the seed fastest). A
trial's config is the base config with its values set and `train.seed` set to its seed. A value
for a section is merged into it (`"train.optimizer": [{"name": "adadelta", "learning_rate": 1.0}]`
keeps the section's other keys), which pairs an optimizer with its own learning rate.

`train.sweep`, `train.seeds` and `train.parallel_trials` are reset to their defaults in every
trial's config: they say how to run a sweep, not what one trial trains. So adding a value to the
sweep leaves the other trials' configs, and with them their cache keys, as they were (only the new
trials train), and a trial equals a plain run with the same values.

Trial names are stable, made only of each swept key's label and the trial's value, plus the seed:
`optimizer=adam,loss=focal,seed=1`. A key's label is the shortest tail of its path (without a
final `.name`) that no other swept key shares: `train.optimizer.name` -> `optimizer`,
`model.params.fusion` -> `fusion`. A section-valued value reads as its `name` followed by its other
keys, `momentum(learning_rate=0.02)`; other lists and dicts as a short hash of their JSON. A value's
text depends on nothing but the value, so adding values never renames a trial. A trial's group is
its name without the seed: the trials that differ only by seed, which a comparison averages over.
With no sweep the group (and, without seeds, the trial) is called `default`.

Only `train.*` and `model.*` keys can be swept: they are what the train stage's parameters hold.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from typing import Any

from pipeline.config import ConfigError, PipelineConfig, parse_config

SWEEPABLE = ("train.", "model.")
RUN_SETTINGS = ("train.sweep", "train.seeds", "train.parallel_trials", "train.seed")
"""Keys that cannot be swept: they say how the sweep runs (seeds come from train.seeds)."""
DEFAULT_NAME = "default"
_UNSAFE = re.compile(r"[^A-Za-z0-9._+\-()=,]")


@dataclass(frozen=True)
class Trial:
    name: str
    group: str
    seed: int
    values: dict[str, Any]
    """Label -> the value this trial sets, in sweep order (without the seed)."""
    config: PipelineConfig


def expand(config: PipelineConfig) -> list[Trial]:
    """Every trial of `config`'s sweep, in grid order; one trial when nothing is swept."""
    sweep, seeds = config.train.sweep, list(config.train.seeds)
    _check(sweep, seeds)
    labels = key_labels(list(sweep))
    texts = {key: _value_texts(key, values) for key, values in sweep.items()}
    base = config.to_dict()
    base["train"].update(sweep={}, seeds=[], parallel_trials=1)
    trials = []
    for combination in itertools.product(*(range(len(values)) for values in sweep.values())):
        chosen = {key: sweep[key][i] for key, i in zip(sweep, combination)}
        parts = [f"{labels[key]}={texts[key][i]}" for key, i in zip(sweep, combination)]
        group = ",".join(parts) or DEFAULT_NAME
        for seed in seeds or [config.train.seed]:
            name = ",".join(parts + ([f"seed={seed}"] if seeds else [])) or DEFAULT_NAME
            data = copy.deepcopy(base)
            for key, value in chosen.items():
                _set(data, key, value)
            data["train"]["seed"] = seed
            trial_config = parse_config(data, f"train.sweep, trial {name}")
            trials.append(Trial(name, group, seed, {labels[k]: v for k, v in chosen.items()}, trial_config))
    names = [t.name for t in trials]
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise ConfigError(f"train.sweep: trials {clashes} would share a name; expected values that read "
                          f"differently once unsafe characters become '_'")
    return trials


def trial_configs(config: PipelineConfig) -> list[tuple[str, PipelineConfig]]:
    """`Stage.expand` for the train stage: (trial name, trial config) pairs."""
    return [(trial.name, trial.config) for trial in expand(config)]


def parallel_trials(config: PipelineConfig) -> int:
    """`Stage.parallel` for the train stage."""
    return config.train.parallel_trials


def key_labels(keys: list[str]) -> dict[str, str]:
    """Swept key path -> its label: the shortest tail (without a final `name`) no other key shares."""
    stems = {key: key.split(".")[:-1] if key.endswith(".name") and key.count(".") else key.split(".")
             for key in keys}
    labels = {}
    for key, stem in stems.items():
        for length in range(1, len(stem) + 1):
            tail = stem[-length:]
            if all(other[-length:] != tail for k, other in stems.items() if k != key):
                labels[key] = ".".join(tail)
                break
        else:
            labels[key] = key
    return labels


def _check(sweep: dict, seeds: list) -> None:
    for key, values in sweep.items():
        if not key.startswith(SWEEPABLE) or key in RUN_SETTINGS or key.startswith("train.sweep."):
            raise ConfigError(f"train.sweep: key {key!r} cannot be swept; expected a key under "
                              f"{' or '.join(p + '*' for p in SWEEPABLE)} other than {', '.join(RUN_SETTINGS)} "
                              f"(seeds come from train.seeds)")
        if not values:
            raise ConfigError(f"train.sweep.{key}: expected at least one value, got []")
        canonical = [json.dumps(v, sort_keys=True) for v in values]
        repeated = sorted({c for c in canonical if canonical.count(c) > 1})
        if repeated:
            raise ConfigError(f"train.sweep.{key}: values {', '.join(repeated)} appear more than once; "
                              f"expected each value once")
    repeated_seeds = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated_seeds:
        raise ConfigError(f"train.seeds: seeds {repeated_seeds} appear more than once; expected each seed once")


def _value_texts(key: str, values: list) -> list[str]:
    """How each value reads in a trial name (from the value alone)."""
    return [_UNSAFE.sub("_", value_text(value)) for value in values]


def value_text(value: Any) -> str:
    """A swept value as it reads in trial names and reports."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        rest = ",".join(f"{k}={value_text(v) if not isinstance(v, (dict, list)) else _digest(v)}"
                        for k, v in value.items() if k != "name")
        return f"{value['name']}({rest})" if rest else value["name"]
    if isinstance(value, (dict, list)):
        return _digest(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float):
        return format(value, "g")
    return str(value)


def _digest(value: Any) -> str:
    return "h" + hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:6]


def _set(data: dict, key: str, value: Any) -> None:
    """Set `key` (a dotted path) in the config dict; a dict value is merged into a dict section."""
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"train.sweep: key {key!r}: {'.'.join(parts[:i + 1])} is not a section "
                              f"(it holds {json.dumps(child)})")
        node = child
    last = parts[-1]
    if isinstance(value, dict) and isinstance(node.get(last), dict):
        node[last] = _merged(node[last], value)
    else:
        node[last] = copy.deepcopy(value)


def _merged(section: dict, update: dict) -> dict:
    merged = copy.deepcopy(section)
    for key, value in update.items():
        merged[key] = _merged(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) \
            else copy.deepcopy(value)
    return merged
