"""An execution's cache key, and the "why it ran" when a key changed.

Key = sha256 of the stage name, its code version (pipeline/codeversion.py), its canonical
parameters, its input artifacts' fingerprints and its external fingerprint (data outside the
root): a completed execution with the same key is reused. `explain` compares a new execution with
the stage's most recent completed one, so `convpipe show` can say what changed.
"""
from __future__ import annotations

import hashlib
import json
from typing import Optional

from pipeline import metadata as md
from pipeline.stage import Artifact, StageError, Trials


def canonical_json(value) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StageError(f"stage parameters must be plain JSON (numbers, strings, lists, dicts): {exc}") from None


def cache_key(stage: str, code_version: str, params: dict, inputs: dict[str, Artifact],
              external: Optional[str], gathered: Optional[dict[str, Trials]] = None) -> str:
    """`gathered`: inputs that hold every trial; they enter as trial name -> fingerprint."""
    fingerprints: dict = {name: a.fingerprint for name, a in inputs.items()}
    for name, trials in (gathered or {}).items():
        fingerprints[name] = {trial: a.fingerprint for trial, a in trials.artifacts.items()}
    payload = {"stage": stage, "code_version": code_version, "params": params,
               "inputs": dict(sorted(fingerprints.items())), "external": external}
    return hashlib.sha256(canonical_json(payload).encode()).hexdigest()


def _flatten(params, prefix: str = "") -> dict:
    if isinstance(params, dict) and params:
        flat = {}
        for key, value in params.items():
            flat.update(_flatten(value, f"{prefix}.{key}" if prefix else str(key)))
        return flat
    return {prefix: params}


def _short(value) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def explain(previous: Optional[md.ExecutionRecord], params: dict, inputs: dict[str, Artifact],
            code_version: str, external: Optional[str]) -> dict:
    """What differs from the stage's most recent COMPLETE execution: the "why it ran"."""
    if previous is None:
        return {"kind": "ran", "summary": "no previous execution", "previous_execution": None}
    old, new = _flatten(previous.params), _flatten(params)
    params_changed = {k: [old.get(k), new.get(k)] for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}
    current = {name: a.fingerprint for name, a in inputs.items()}
    inputs_changed = sorted(k for k in set(current) | set(previous.inputs) if current.get(k) != previous.inputs.get(k))
    code_changed = previous.code_version != code_version
    external_changed = previous.external_fingerprint != external
    parts = []
    if params_changed:
        parts.append("params changed: " + ", ".join(
            f"{k} ({_short(a)} -> {_short(b)})" for k, (a, b) in params_changed.items()))
    if inputs_changed:
        shown = inputs_changed if len(inputs_changed) <= 4 else inputs_changed[:3] + [
            f"and {len(inputs_changed) - 3} more"]
        parts.append("inputs changed: " + ", ".join(shown))
    if code_changed:
        parts.append("code changed")
    if external_changed:
        parts.append("external data changed")
    if not parts:
        parts.append(f"outputs of execution {previous.id} are missing from disk")
    return {"kind": "ran", "summary": "; ".join(parts), "previous_execution": previous.id,
            "params_changed": params_changed, "inputs_changed": inputs_changed,
            "code_changed": code_changed, "external_changed": external_changed}
