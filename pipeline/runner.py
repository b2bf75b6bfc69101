"""Runs stages in order, with caching, lineage, resume and a lock on the root.

For each stage the runner resolves its inputs (the outputs of upstream stages in this run),
computes its cache key, and either reuses a COMPLETE execution with the same key (recorded as a
CACHED execution pointing at the same artifacts) or runs the executor:

    1. record the execution RUNNING, with its inputs            (one transaction)
    2. executor writes into <root>/<stage>/.tmp-<id>/<output>/   (work_dir persists across failed attempts)
    3. fingerprint the outputs, rename .tmp-<id> -> <root>/<stage>/<id>/
    4. record the artifacts and mark the execution COMPLETE      (one transaction)

A SIGKILL before 4 leaves an execution RUNNING, which the next run (holding the lock, so the only
writer) marks ABANDONED, removing its directories; nothing but a COMPLETE execution is ever reused.
A failed executor is recorded FAILED with its error and stops the run; the next run reuses every
stage before it and resumes there.

Cache key = sha256 of the stage name, its code version (pipeline.codeversion), its canonical
parameters, its input artifacts' fingerprints and its external fingerprint (data outside the root).
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline import artifacts as layout
from pipeline import metadata as md
from pipeline.codeversion import stage_code_version
from pipeline.config import ConfigError, PipelineConfig
from pipeline.lock import RootLock
from pipeline.metadata import MetadataStore, NewArtifact
from pipeline.stage import Artifact, ExecutionContext, Stage, StageError

log = logging.getLogger("convpipe.runner")


class RunError(RuntimeError):
    """The run cannot go on for a reason the user can act on (e.g. --from with no upstream outputs)."""


class Interrupted(BaseException):
    """Raised in the main thread by a SIGTERM handler, so the running execution is recorded FAILED."""


@dataclass
class StageOutcome:
    stage: str
    state: str
    execution_id: Optional[int]
    reason: dict
    seconds: float = 0.0
    error: Optional[str] = None


@dataclass
class RunResult:
    run_id: int
    state: str
    outcomes: list[StageOutcome] = field(default_factory=list)
    error: Optional[str] = None
    log_file: Optional[Path] = None

    @property
    def ok(self) -> bool:
        return self.state == md.COMPLETE

    def to_dict(self) -> dict:
        data = asdict(self)
        data["log_file"] = str(self.log_file) if self.log_file else None
        return data


def canonical_json(value) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StageError(f"stage parameters must be plain JSON (numbers, strings, lists, dicts): {exc}") from None


def cache_key(stage: str, code_version: str, params: dict, inputs: dict[str, Artifact],
              external: Optional[str]) -> str:
    payload = {"stage": stage, "code_version": code_version, "params": params,
               "inputs": {name: a.fingerprint for name, a in sorted(inputs.items())}, "external": external}
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
        parts.append("inputs changed: " + ", ".join(inputs_changed))
    if code_changed:
        parts.append("code changed")
    if external_changed:
        parts.append("external data changed")
    if not parts:
        parts.append(f"outputs of execution {previous.id} are missing from disk")
    return {"kind": "ran", "summary": "; ".join(parts), "previous_execution": previous.id,
            "params_changed": params_changed, "inputs_changed": inputs_changed,
            "code_changed": code_changed, "external_changed": external_changed}


class _RunLogFile:
    """Copies the run's log records (ours at INFO, everyone else's at WARNING) to <root>/logs/run-<id>.log."""

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.handler = logging.FileHandler(path)
        self.handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.handler.addFilter(lambda r: r.name.startswith("convpipe") or r.levelno >= logging.WARNING)
        self.handler.setLevel(logging.INFO)
        self._previous_level = logging.getLogger("convpipe").level

    def __enter__(self):
        logging.getLogger().addHandler(self.handler)
        convpipe = logging.getLogger("convpipe")
        if convpipe.getEffectiveLevel() > logging.INFO:
            convpipe.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        logging.getLogger().removeHandler(self.handler)
        logging.getLogger("convpipe").setLevel(self._previous_level)
        self.handler.close()


class Runner:
    """Runs `stages` (in the given order) on `config`, under `root` (default `config.pipeline.root`)."""

    def __init__(self, config: PipelineConfig, stages: Sequence[Stage], root: Path | str | None = None,
                 code_version: Callable[[Stage], str] = stage_code_version, argv: Sequence[str] = ()):
        self.root = Path(root if root is not None else config.pipeline.root).resolve()
        self.config = config.model_copy(deep=True)
        self.config.pipeline.root = str(self.root)
        self.stages = list(stages)
        self.code_version = code_version
        self.argv = list(argv)
        self._by_name = {s.name: s for s in self.stages}
        if len(self._by_name) != len(self.stages):
            raise ConfigError(f"stage names must be unique, got {[s.name for s in self.stages]}")

    # ------------------------------------------------------------------------------ planning
    def select(self, from_stage: Optional[str], to_stage: Optional[str]) -> tuple[list[Stage], list[Stage]]:
        """(stages to run, earlier stages whose outputs they need)."""
        names = [s.name for s in self.stages]
        for option, name in (("--from", from_stage), ("--to", to_stage)):
            if name is not None and name not in self._by_name:
                raise ConfigError(f"{option} {name}: expected one of the stages {', '.join(names)}")
        start = names.index(from_stage) if from_stage else 0
        stop = names.index(to_stage) if to_stage else len(names) - 1
        if start > stop:
            raise ConfigError(f"--from {from_stage} comes after --to {to_stage} (stage order: {', '.join(names)})")
        selected = self.stages[start:stop + 1]
        needed: set[str] = set()
        pending = list(selected)
        while pending:
            stage = pending.pop()
            for ref in stage.inputs.values():
                upstream, _, output = ref.partition(".")
                producer = self._by_name.get(upstream)
                if producer is None or names.index(upstream) >= names.index(stage.name):
                    raise ConfigError(f"stage {stage.name} reads {ref}, but stage {upstream} is not an earlier "
                                      f"stage of this pipeline (stages: {', '.join(names)})")
                if output not in producer.outputs:
                    raise ConfigError(f"stage {stage.name} reads {ref}, but {upstream} writes only "
                                      f"{', '.join(producer.outputs)}")
                if names.index(upstream) < start and upstream not in needed:
                    needed.add(upstream)
                    pending.append(producer)
        return selected, [s for s in self.stages[:start] if s.name in needed]

    def check(self) -> None:
        """Every stage's `check(config)`, before anything runs; all problems reported together."""
        problems = []
        for stage in self.stages:
            if not stage.enabled(self.config) and (len(stage.inputs) != 1 or len(stage.outputs) != 1):
                problems.append(f"stage {stage.name} is disabled, but only a stage with one input and one "
                                f"output can pass its input through (inputs {list(stage.inputs)}, "
                                f"outputs {list(stage.outputs)})")
            if stage.check is None:
                continue
            try:
                stage.check(self.config)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))

    # -------------------------------------------------------------------------------- running
    def run(self, from_stage: Optional[str] = None, to_stage: Optional[str] = None, force: bool = False,
            wait: bool = False, locked: bool = False) -> RunResult:
        """Runs the selected stages; `locked=True` when the caller already holds the root's RootLock."""
        selected, upstream = self.select(from_stage, to_stage)
        self.check()
        with (nullcontext() if locked else RootLock(self.root, wait=wait)), MetadataStore(self.root) as store:
            cleaned = self._recover(store)
            options = {"from": from_stage, "to": to_stage, "force": force}
            run_id = store.start_run(self.config.to_dict(), self.argv, options)
            result = RunResult(run_id, md.RUNNING, log_file=layout.log_path(self.root, run_id))
            with _RunLogFile(result.log_file):
                log.info("run %d on %s: %s", run_id, self.root, ", ".join(s.name for s in selected))
                for line in cleaned:
                    log.info("%s", line)
                available: dict[str, Artifact] = {}
                try:
                    for stage in upstream:
                        available.update(self._reuse_upstream(store, stage, available))
                    for stage in selected:
                        outcome = self._run_stage(store, run_id, stage, available, force)
                        result.outcomes.append(outcome)
                        if outcome.state == md.FAILED:
                            result.state, result.error = md.FAILED, f"{stage.name}: {outcome.error}"
                            break
                    else:
                        result.state = md.COMPLETE
                except RunError as exc:
                    result.state, result.error = md.FAILED, str(exc)
                    log.error("%s", exc)
                except BaseException as exc:
                    interrupted = not isinstance(exc, Exception)
                    error = f"{'interrupted: ' if interrupted else ''}{type(exc).__name__}: {exc}"
                    store.end_run(run_id, md.FAILED, error)
                    log.error("run %d FAILED: %s", run_id, error)
                    raise
                store.end_run(run_id, result.state, result.error)
                log.info("run %d %s", run_id, result.state)
        return result

    def _recover(self, store: MetadataStore) -> list[str]:
        """Clear what dead runs left: RUNNING executions become ABANDONED, their directories go."""
        lines = []
        for execution in store.abandon_unfinished():
            for path in (layout.temporary_dir(self.root, execution.stage, execution.id),
                         layout.execution_dir(self.root, execution.stage, execution.id)):
                shutil.rmtree(path, ignore_errors=True)
            lines.append(f"execution {execution.id} ({execution.stage}) of run {execution.run_id} "
                         "was left RUNNING by a process that died: marked ABANDONED")
        for path in layout.remove_stale_temporaries(self.root):
            lines.append(f"removed stale temporary directory {path}")
        return lines

    def _inputs(self, stage: Stage, available: dict[str, Artifact]) -> dict[str, Artifact]:
        missing = [ref for ref in stage.inputs.values() if ref not in available]
        if missing:
            raise RunError(f"stage {stage.name}: no artifact for {', '.join(missing)} (has the upstream stage run?)")
        return {name: available[ref] for name, ref in stage.inputs.items()}

    def _passthrough(self, stage: Stage, inputs: dict[str, Artifact]) -> dict[str, Artifact]:
        if len(inputs) != 1 or len(stage.outputs) != 1:
            raise ConfigError(f"stage {stage.name} is disabled, but only a stage with one input and one "
                              f"output can pass its input through (inputs {list(inputs)}, outputs {list(stage.outputs)})")
        return {next(iter(stage.outputs)): next(iter(inputs.values()))}

    def _identity(self, stage: Stage, inputs: dict[str, Artifact]) -> tuple[dict, str, Optional[str], str]:
        params = stage.parameters(self.config)
        canonical_json(params)
        code = self.code_version(stage)
        external = stage.external_fingerprint(self.config) if stage.external_fingerprint else None
        return params, code, external, cache_key(stage.name, code, params, inputs, external)

    def _publish_names(self, stage: Stage, outputs: dict[str, Artifact], available: dict[str, Artifact]) -> None:
        for name, artifact in outputs.items():
            available[f"{stage.name}.{name}"] = artifact

    def _reuse_upstream(self, store: MetadataStore, stage: Stage, available: dict[str, Artifact]) -> dict:
        """Outputs of a stage before --from: what the cache holds for the current config, else its latest."""
        inputs = self._inputs(stage, available)
        if not stage.enabled(self.config):
            outputs = self._passthrough(stage, inputs)
        else:
            try:
                params, code, external, key = self._identity(stage, inputs)
            except Exception as exc:
                raise RunError(f"stage {stage.name} (before --from): {type(exc).__name__}: {exc}") from exc
            hit = store.find_complete(stage.name, key) or store.latest_execution(stage.name)
            if hit is None:
                raise RunError(f"stage {stage.name} has never completed under {self.root}; "
                               f"run it first (convpipe run --to {stage.name})")
            outputs = store.outputs(hit.id)
            if not all(a.uri.is_dir() for a in outputs.values()):
                raise RunError(f"stage {stage.name}: the outputs of its latest execution {hit.id} are gone "
                               f"from disk; run it again (convpipe run --from {stage.name})")
            if hit.cache_key != key:
                log.warning("%s: no execution matches the current config and code (%s); using its latest, "
                            "execution %d of run %d", stage.name,
                            explain(hit, params, inputs, code, external)["summary"], hit.id, hit.run_id)
        return {f"{stage.name}.{name}": a for name, a in outputs.items()}

    def _run_stage(self, store: MetadataStore, run_id: int, stage: Stage, available: dict[str, Artifact],
                   force: bool) -> StageOutcome:
        started = time.monotonic()
        inputs = self._inputs(stage, available)
        if not stage.enabled(self.config):
            outputs = self._passthrough(stage, inputs)
            reason = {"kind": "skipped", "summary": "disabled by config: its input passes through"}
            execution_id = store.start_execution(
                run_id, stage.name, params={}, cache_key="", code_version="", inputs=inputs,
                external_fingerprint=None, reason=reason, state=md.SKIPPED, outputs=outputs)
            self._publish_names(stage, outputs, available)
            log.info("%s: disabled, passing %s through", stage.name, next(iter(inputs)))
            return StageOutcome(stage.name, md.SKIPPED, execution_id, reason)
        try:
            params, code, external, key = self._identity(stage, inputs)
        except Exception as exc:  # a source folder that is gone, parameters that are not JSON
            error = str(exc) if isinstance(exc, (StageError, ConfigError)) else f"{type(exc).__name__}: {exc}"
            reason = {"kind": "failed", "summary": "could not compute the cache key"}
            execution_id = store.start_execution(
                run_id, stage.name, params={}, cache_key="", code_version="", inputs=inputs,
                external_fingerprint=None, reason=reason)
            store.fail_execution(execution_id, error, traceback.format_exc())
            log.error("%s: FAILED: %s", stage.name, error)
            return StageOutcome(stage.name, md.FAILED, execution_id, reason, time.monotonic() - started, error)

        hit = None if force else store.find_complete(stage.name, key)
        if hit is not None:
            outputs = store.outputs(hit.id)
            reason = {"kind": "cached", "summary": f"reused execution {hit.id} of run {hit.run_id} (same cache key)",
                      "execution_id": hit.id, "run_id": hit.run_id}
            execution_id = store.start_execution(
                run_id, stage.name, params=params, cache_key=key, code_version=code, inputs=inputs,
                external_fingerprint=external, reason=reason, state=md.CACHED, reused_execution_id=hit.id,
                outputs=outputs)
            self._publish_names(stage, outputs, available)
            log.info("%s: cached (execution %d of run %d)", stage.name, hit.id, hit.run_id)
            return StageOutcome(stage.name, md.CACHED, execution_id, reason, time.monotonic() - started)

        reason = explain(store.latest_execution(stage.name), params, inputs, code, external)
        if force:
            reason["summary"] = "forced (--force); " + reason["summary"]
            reason["forced"] = True
        retry = store.latest_execution(stage.name, (md.FAILED, md.ABANDONED), cache_key=key)
        if retry is not None:
            reason["retry_of"] = retry.id
            reason["summary"] += f"; retrying after execution {retry.id} {retry.state.lower()}"
        execution_id = store.start_execution(
            run_id, stage.name, params=params, cache_key=key, code_version=code, inputs=inputs,
            external_fingerprint=external, reason=reason)
        log.info("%s: running execution %d (%s)", stage.name, execution_id, reason["summary"])
        outputs, error = self._execute(store, run_id, execution_id, stage, params, inputs, key)
        seconds = time.monotonic() - started
        if error is not None:
            return StageOutcome(stage.name, md.FAILED, execution_id, reason, seconds, error)
        self._publish_names(stage, outputs, available)
        log.info("%s: COMPLETE in %.1f s", stage.name, seconds)
        return StageOutcome(stage.name, md.COMPLETE, execution_id, reason, seconds)

    def _execute(self, store: MetadataStore, run_id: int, execution_id: int, stage: Stage, params: dict,
                 inputs: dict[str, Artifact], key: str) -> tuple[dict[str, Artifact], Optional[str]]:
        tmp = layout.temporary_dir(self.root, stage.name, execution_id)
        final = layout.execution_dir(self.root, stage.name, execution_id)
        work = layout.work_dir(self.root, stage.name, key)
        ctx = ExecutionContext(
            config=self.config, params=params, inputs=inputs,
            outputs={name: tmp / name for name in stage.outputs}, work_dir=work, root=self.root,
            run_id=run_id, execution_id=execution_id, log=logging.getLogger(f"convpipe.{stage.name}"))
        try:
            for path in ctx.outputs.values():
                path.mkdir(parents=True)
            work.mkdir(parents=True, exist_ok=True)
            stage.executor(ctx)
            new = {}
            for name, type_ in stage.outputs.items():
                if not ctx.outputs[name].is_dir():
                    raise StageError(f"the executor removed its output directory {ctx.outputs[name]}")
                new[name] = NewArtifact(type_, final / name, layout.fingerprint_dir(ctx.outputs[name]),
                                        dict(ctx.properties.get(name, {})))
            layout.publish(tmp, final)
            outputs = store.complete_execution(execution_id, new)
        except BaseException as exc:
            if isinstance(exc, (StageError, ConfigError)):
                error = str(exc)
            elif isinstance(exc, (KeyboardInterrupt, Interrupted)):
                error = f"interrupted ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
            else:
                error = f"{type(exc).__name__}: {exc}"
            details = traceback.format_exc()
            store.fail_execution(execution_id, error, details)
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(final, ignore_errors=True)
            log.error("%s: FAILED: %s", stage.name, error)
            if not isinstance(exc, Exception):
                raise
            if not isinstance(exc, (StageError, ConfigError)):
                logging.getLogger(f"convpipe.{stage.name}").error("%s", details)
            return {}, error
        shutil.rmtree(work, ignore_errors=True)
        return outputs, None
