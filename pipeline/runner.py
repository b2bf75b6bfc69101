"""Runs stages in order, with caching, lineage, resume and a lock on the root.

For each stage the runner resolves its inputs (the outputs of upstream stages in this run),
computes its cache key, and either reuses a COMPLETE execution with the same key (recorded as a
CACHED execution pointing at the same artifacts) or runs the executor:

    1. record the execution RUNNING, with its inputs            (one transaction)
    2. executor writes into <root>/<stage>/.tmp-<id>/<output>/   (work_dir persists across failed attempts)
    3. fingerprint the outputs, rename .tmp-<id> -> <root>/<stage>/<id>/
    4. record the artifacts and mark the execution COMPLETE      (one transaction)

On a remote root (pipeline/filesystem.py) 3 also uploads the execution and then writes its
`_COMPLETE.json` marker last; a `writes_urls` stage (ingest, augment) instead writes the root from
its Beam workers (ctx.output_urls), and 3 downloads its outputs once into the working copy to
fingerprint them, then writes only the marker.

A SIGKILL before 4 leaves an execution RUNNING, which the next run (holding the lock, so the only
writer) marks ABANDONED, removing its directories; nothing but a COMPLETE execution is ever reused.
A failed executor is recorded FAILED with its error and stops the run; the next run reuses every
stage before it and resumes there.

Cache key = sha256 of the stage name, its code version (pipeline.codeversion), its canonical
parameters, its input artifacts' fingerprints and its external fingerprint (data outside the root);
pipeline/cache.py computes it and explains why a stage ran.

Trials. A stage with `expand` (train: `train.sweep` x `train.seeds`, pipeline/sweep.py) runs once
per trial, each trial an execution of its own with the trial's config, parameters, cache key, work
directory and trial name in the store; so a sweep is cached trial by trial, and adding a value to
it runs only the new trials while the others are CACHED. Up to `stage.parallel(config)` trials run
at once, each in a child process (pipeline/parallel.py); only this process writes the store. A
later stage receives a per-trial output (`Trials`) in one of three ways:
    - a `per_trial` stage (evaluate) runs once per trial, with that trial's config;
    - a stage that `gathers` it (compare) gets every trial in `ctx.trials` and may choose one
      (`ctx.chosen_trial`), recorded in its outputs' properties so a cached execution chooses again;
    - any other stage (export) gets the chosen trial's artifact in `ctx.inputs`, or the only
      trial's; with several trials and no choice the run stops and says why.
A failed trial does not stop its siblings: they finish, and are cached for the rerun, and then the
stage is FAILED.
"""
from __future__ import annotations

import logging
import shutil
import time
import traceback
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional, Sequence

from pipeline import artifacts as layout
from pipeline import database
from pipeline import metadata as md
from pipeline import parallel
from pipeline.sweep import DEFAULT_NAME
from pipeline.cache import cache_key, canonical_json, explain
from pipeline.codeversion import stage_code_version
from pipeline.config import ConfigError, PipelineConfig
from pipeline.filesystem import AWS_ENVIRONMENT, RemoteRoot, beam_s3_flags, is_url, root_label
from pipeline.lock import run_lock
from pipeline.metadata import MetadataStore, NewArtifact
from pipeline.stage import Artifact, ExecutionContext, Stage, StageError, Trials

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
    """The stage's execution; None for a stage that ran several trials (see `trials`)."""
    reason: dict
    seconds: float = 0.0
    error: Optional[str] = None
    trials: list[dict] = field(default_factory=list)
    """Per trial: trial, state, execution_id, seconds, summary, error (stages that run per trial)."""


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
        root_text = str(root if root is not None else config.pipeline.root)
        self.remote = RemoteRoot(root_text) if is_url(root_text) else None
        """A URL root: stages work in its local copy (`self.root`); outputs are published to the URL."""
        self.root = self.remote.local if self.remote else Path(root_text).resolve()
        self.config = config.model_copy(deep=True)
        self.config.pipeline.root = self.remote.url if self.remote else str(self.root)
        self.stages = list(stages)
        self.code_version = code_version
        self.argv = list(argv)
        self._by_name = {s.name: s for s in self.stages}
        self._trial_configs: dict[str, dict[str, PipelineConfig]] = {}
        """Stage that expanded -> trial name -> the trial's config (for its per-trial successors)."""
        self._choices: dict[str, str] = {}
        """Stage that expanded -> the trial a gathering stage chose."""
        self._code_versions: dict[str, str] = {}
        """Stage -> its code version, read once per run: the sources the run started with, the same
        for every trial, though the checkout may change while a long sweep runs."""
        if len(self._by_name) != len(self.stages):
            raise ConfigError(f"stage names must be unique, got {[s.name for s in self.stages]}")
        self.metadata_url = self.config.pipeline.metadata
        self.root_label = root_label(root_text)
        self._preflighted = False
        """How this root's runs are named in a shared store: its URL or resolved path."""

    def open_store(self, create: bool = True) -> MetadataStore:
        """The metadata store of this root: `pipeline.metadata`, else the SQLite file in the root."""
        return MetadataStore(self.root, create=create, url=self.metadata_url, root_label=self.root_label,
                             exists=self._artifact_exists)

    def _artifact_exists(self, artifact: Artifact) -> bool:
        return self.remote.has_artifact(artifact) if self.remote else Path(artifact.uri).is_dir()

    def preflight(self) -> None:
        """Reach the artifact root and the metadata database before any work; each failure is one line.
        (The database itself is reached when the lock or the store first connects, before any stage.)"""
        if self._preflighted:
            return
        flags = beam_s3_flags(self.config.beam.args)
        if flags:
            raise ConfigError(f"beam.args: {', '.join(flags)}: the S3 endpoint and credentials of Beam's filesystem "
                              f"come from the AWS environment ({AWS_ENVIRONMENT}), as for the rest of the root; "
                              f"expected no --s3_* option in the config, which the lineage store records")
        if self.remote is not None:
            if not self.metadata_url:
                raise ConfigError(f"--root {self.remote.url}: a remote root needs a metadata store outside it; pass "
                               f"--metadata postgresql+psycopg://user:password@host:5432/db (or set pipeline.metadata)")
            self.remote.check()
        if self.metadata_url:
            database.check_url(self.metadata_url)
        self._preflighted = True

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
            refs = list(stage.inputs.values())
            # A stage that gathers trials may choose one, which later readers of those trials get:
            # it is upstream of them though they do not read its outputs.
            readers = {r.partition(".")[0] for r in refs}
            refs += [f"{s.name}.{next(iter(s.outputs))}" for s in self.stages[:names.index(stage.name)]
                     if s.gathers and s.outputs and readers & {s.inputs[g].partition(".")[0] for g in s.gathers}]
            for ref in refs:
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

    def check(self) -> dict[str, int]:
        """Every stage's `check(config)`, before anything runs; all problems reported together.
        Returns the number of trials of each stage that expands into a sweep."""
        problems, trial_counts = [], {}
        for stage in self.stages:
            if not stage.enabled(self.config) and (len(stage.inputs) != 1 or len(stage.outputs) != 1):
                problems.append(f"stage {stage.name} is disabled, but only a stage with one input and one "
                                f"output can pass its input through (inputs {list(stage.inputs)}, "
                                f"outputs {list(stage.outputs)})")
            unknown = [name for name in stage.gathers if name not in stage.inputs]
            if unknown:
                problems.append(f"stage {stage.name} gathers {unknown}, which are not among its inputs "
                                f"{list(stage.inputs)}")
            try:
                if stage.check is not None:
                    stage.check(self.config)
                if stage.expand is not None and stage.enabled(self.config):
                    trials = stage.expand(self.config)
                    trial_counts[stage.name] = len(trials)
                    if not trials:
                        problems.append(f"stage {stage.name}: its sweep expands into no trials")
                    for _, trial_config in trials:
                        if stage.check is not None:
                            stage.check(trial_config)
            except ConfigError as exc:
                problems.append(str(exc))
        if problems:
            raise ConfigError("\n".join(problems))
        return trial_counts

    # -------------------------------------------------------------------------------- running
    def run(self, from_stage: Optional[str] = None, to_stage: Optional[str] = None, force: bool = False,
            wait: bool = False, locked: bool = False) -> RunResult:
        """Runs the selected stages; `locked=True` when the caller already holds the root's run lock."""
        selected, upstream = self.select(from_stage, to_stage)
        self.check()
        self.preflight()
        lock = nullcontext() if locked else run_lock(self.root, self.metadata_url, self.root_label, wait=wait)
        with lock, self.open_store() as store:
            cleaned = self._recover(store)
            options = {"from": from_stage, "to": to_stage, "force": force}
            recorded = self.config.to_dict()
            if self.metadata_url:
                recorded["pipeline"]["metadata"] = database.shown(self.metadata_url)
            run_id = store.start_run(recorded, self.argv, options)
            result = RunResult(run_id, md.RUNNING, log_file=layout.log_path(self.root, run_id))
            with _RunLogFile(result.log_file):
                log.info("run %d on %s: %s", run_id, self.root, ", ".join(s.name for s in selected))
                for line in cleaned:
                    log.info("%s", line)
                available: dict[str, Artifact | Trials] = {}
                self._trial_configs, self._choices = {}, {}
                self._code_versions = {}
                self._read_code_versions([*upstream, *selected])
                try:
                    for stage in upstream:
                        self._reuse_upstream(store, stage, available)
                    for stage in selected:
                        outcome = self._run_stage(store, run_id, stage, available, force)
                        result.outcomes.append(outcome)
                        if outcome.state == md.FAILED:
                            error = outcome.error or ""
                            result.state = md.FAILED
                            result.error = error if error.startswith(f"{stage.name}:") else f"{stage.name}: {error}"
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
                    if self.remote:
                        try:
                            self.remote.copy_logs((layout.LOGS_DIR, "tensorboard"))
                        except Exception as copy_error:  # the run's own error is the one to raise
                            log.warning("the run's logs were not copied to %s: %s", self.remote.url, copy_error)
                    raise
                store.end_run(run_id, result.state, result.error)
                log.info("run %d %s", run_id, result.state)
                if self.remote:  # after the run's last line, so the bucket's log is whole
                    self.remote.copy_logs((layout.LOGS_DIR, "tensorboard"))
        return result

    def _read_code_versions(self, stages: list[Stage]) -> None:
        """Every stage's code version before any runs, as close as can be to the imports; one that
        cannot be read now is tried again (and its error recorded) when its stage runs."""
        for stage in stages:
            try:
                self._code_versions[stage.name] = self.code_version(stage)
            except Exception:
                pass

    def _recover(self, store: MetadataStore) -> list[str]:
        """Clear what dead runs left: RUNNING executions become ABANDONED, their directories go."""
        lines = []
        for execution in store.abandon_unfinished():
            for path in (layout.temporary_dir(self.root, execution.stage, execution.id),
                         layout.execution_dir(self.root, execution.stage, execution.id)):
                shutil.rmtree(path, ignore_errors=True)
            if self.remote:
                self.remote.remove_execution(execution.stage, execution.id)
            lines.append(f"execution {execution.id} ({execution.stage}) of run {execution.run_id} "
                         "was left RUNNING by a process that died: marked ABANDONED")
        for path in layout.remove_stale_temporaries(self.root):
            lines.append(f"removed stale temporary directory {path}")
        return lines

    # ------------------------------------------------------------------------- trials and inputs
    def _plan(self, stage: Stage, available: dict) -> tuple[list["_Job"], Optional[str]]:
        """The executions `stage` needs in this run, and the stage whose trials they run (or None)."""
        missing = [ref for ref in stage.inputs.values() if ref not in available]
        if missing:
            raise RunError(f"stage {stage.name}: no artifact for {', '.join(missing)} (has the upstream stage run?)")
        singles: dict[str, Artifact] = {}
        gathered: dict[str, Trials] = {}
        mapped: dict[str, Trials] = {}
        for name, ref in stage.inputs.items():
            value = available[ref]
            if not isinstance(value, Trials):
                if name in stage.gathers:
                    gathered[name] = Trials(ref.partition(".")[0], {DEFAULT_NAME: value})
                else:
                    singles[name] = value
            elif name in stage.gathers:
                gathered[name] = value
            elif value.origin in self._choices:
                singles[name] = value.artifacts[self._choices[value.origin]]
            elif stage.per_trial:
                mapped[name] = value
            elif len(value.artifacts) == 1:
                singles[name] = next(iter(value.artifacts.values()))
            else:
                raise RunError(f"stage {stage.name} reads {ref}, which holds {len(value.artifacts)} trials, and no "
                               f"earlier stage chose one; expected a stage that gathers the trials and chooses one "
                               f"(e.g. compare) before {stage.name}")
        if stage.expand is not None and (mapped or gathered):
            raise RunError(f"stage {stage.name} expands into trials but reads {', '.join({**mapped, **gathered})}, "
                           f"which already hold trials; expected one sweep per pipeline")
        if mapped and gathered:
            raise RunError(f"stage {stage.name} runs per trial of {', '.join(mapped)} and gathers "
                           f"{', '.join(gathered)}; expected one or the other")
        if stage.expand is not None:
            trials = list(stage.expand(self.config))
            self._trial_configs[stage.name] = dict(trials)
            return [_Job(name, config, dict(singles)) for name, config in trials], stage.name
        if mapped:
            origins = {t.origin for t in mapped.values()}
            names = {tuple(t.artifacts) for t in mapped.values()}
            if len(origins) > 1 or len(names) > 1:
                raise RunError(f"stage {stage.name} runs per trial of {', '.join(mapped)}, which hold different "
                               f"trials (from {', '.join(sorted(origins))}); expected the trials of one sweep")
            origin = origins.pop()
            configs = self._trial_configs.get(origin, {})
            return [_Job(trial, configs.get(trial, self.config),
                         {**singles, **{name: t.artifacts[trial] for name, t in mapped.items()}})
                    for trial in names.pop()], origin
        return [_Job(None, self.config, singles, gathered)], None

    def _passthrough(self, stage: Stage, available: dict) -> dict:
        if len(stage.inputs) != 1 or len(stage.outputs) != 1:
            raise ConfigError(f"stage {stage.name} is disabled, but only a stage with one input and one "
                              f"output can pass its input through (inputs {list(stage.inputs)}, "
                              f"outputs {list(stage.outputs)})")
        ref = next(iter(stage.inputs.values()))
        if ref not in available:
            raise RunError(f"stage {stage.name}: no artifact for {ref} (has the upstream stage run?)")
        return {next(iter(stage.outputs)): available[ref]}

    def _identity(self, stage: Stage, job: "_Job") -> tuple[dict, str, Optional[str], str]:
        params = stage.parameters(job.config)
        canonical_json(params)
        if stage.name not in self._code_versions:
            self._code_versions[stage.name] = self.code_version(stage)
        code = self._code_versions[stage.name]
        external = stage.external_fingerprint(job.config) if stage.external_fingerprint else None
        return params, code, external, cache_key(stage.name, code, params, job.inputs, external, job.gathered)

    def _publish_names(self, stage: Stage, jobs: list["_Job"], origin: Optional[str], results: list["_Result"],
                       available: dict) -> None:
        """Make the outputs visible to later stages: one artifact each, or `Trials`; note a choice."""
        if origin is None:
            outputs = results[0].outputs
            for name, artifact in outputs.items():
                available[f"{stage.name}.{name}"] = artifact
            chosen = next((a.properties.get("chosen_trial") for a in outputs.values()
                           if a.properties.get("chosen_trial")), None)
            if chosen is not None:
                for trials in jobs[0].gathered.values():
                    self._choices[trials.origin] = chosen
                log.info("%s: chose trial %s", stage.name, chosen)
            return
        for name in stage.outputs:
            available[f"{stage.name}.{name}"] = Trials(origin, {r.trial: r.outputs[name] for r in results})

    def _reuse_upstream(self, store: MetadataStore, stage: Stage, available: dict) -> None:
        """Outputs of a stage before --from: what the cache holds for the current config, else its latest."""
        if not stage.enabled(self.config):
            for name, value in self._passthrough(stage, available).items():
                available[f"{stage.name}.{name}"] = value
            return
        jobs, origin = self._plan(stage, available)
        results = []
        for job in jobs:
            label = stage.name + (f" (trial {job.trial})" if job.trial else "")
            try:
                params, code, external, key = self._identity(stage, job)
            except Exception as exc:
                raise RunError(f"stage {label} (before --from): {type(exc).__name__}: {exc}") from exc
            hit = store.find_complete(stage.name, key) or store.latest_execution(stage.name, trial=job.trial)
            if hit is None:
                raise RunError(f"stage {label} has never completed under {self.root}; "
                               f"run it first (convpipe run --to {stage.name})")
            outputs = store.outputs(hit.id)
            if not all(self._artifact_exists(a) for a in outputs.values()):
                raise RunError(f"stage {label}: the outputs of its latest execution {hit.id} are gone "
                               f"from disk; run it again (convpipe run --from {stage.name})")
            if hit.cache_key != key:
                log.warning("%s: no execution matches the current config and code (%s); using its latest, "
                            "execution %d of run %d", label,
                            explain(hit, params, _recorded(job), code, external)["summary"], hit.id, hit.run_id)
            results.append(_Result(job.trial, md.CACHED, hit.id, {}, outputs=outputs))
        self._publish_names(stage, jobs, origin, results, available)

    # -------------------------------------------------------------------------------- running
    def _run_stage(self, store: MetadataStore, run_id: int, stage: Stage, available: dict,
                   force: bool) -> StageOutcome:
        started = time.monotonic()
        if not stage.enabled(self.config):
            outputs = self._passthrough(stage, available)
            inputs = {name: available[ref] for name, ref in stage.inputs.items()}
            reason = {"kind": "skipped", "summary": "disabled by config: its input passes through"}
            execution_id = store.start_execution(
                run_id, stage.name, params={}, cache_key="", code_version="", inputs=_flat(inputs),
                external_fingerprint=None, reason=reason, state=md.SKIPPED, outputs=_flat(outputs))
            for name, value in outputs.items():
                available[f"{stage.name}.{name}"] = value
            log.info("%s: disabled, passing %s through", stage.name, next(iter(inputs)))
            return StageOutcome(stage.name, md.SKIPPED, execution_id, reason)
        try:
            jobs, origin = self._plan(stage, available)
        except ConfigError as exc:  # a sweep that expands into configs that do not validate
            raise RunError(f"stage {stage.name}: {exc}") from None

        width = min(stage.parallel(self.config), len(jobs)) if len(jobs) > 1 else 1
        if width > 1:
            results = self._run_in_children(store, run_id, stage, jobs, width, force)
        else:
            results = []
            for job in jobs:
                first = self._start(store, run_id, stage, job, force)
                results.append(self._execute(store, stage, self._begin(store, run_id, stage, first))
                               if isinstance(first, _Ready) else first)

        if all(r.state != md.FAILED for r in results):
            self._publish_names(stage, jobs, origin, results, available)
        return _outcome(stage.name, results, time.monotonic() - started)

    def _start(self, store: MetadataStore, run_id: int, stage: Stage, job: "_Job", force: bool):
        """A CACHED (or, without a cache key, FAILED) execution recorded as a `_Result`; else `_Ready`."""
        started = time.monotonic()
        trial_note = f"trial {job.trial}: " if job.trial else ""
        label = stage.name + (f" [{job.trial}]" if job.trial else "")
        try:
            params, code, external, key = self._identity(stage, job)
        except Exception as exc:  # a source folder that is gone, parameters that are not JSON
            error = str(exc) if isinstance(exc, (StageError, ConfigError)) else f"{type(exc).__name__}: {exc}"
            reason = {"kind": "failed", "summary": trial_note + "could not compute the cache key", "trial": job.trial}
            execution_id = store.start_execution(
                run_id, stage.name, params={}, cache_key="", code_version="", inputs=_recorded(job),
                external_fingerprint=None, reason=reason, trial=job.trial)
            store.fail_execution(execution_id, error, traceback.format_exc())
            log.error("%s: FAILED: %s", label, error)
            return _Result(job.trial, md.FAILED, execution_id, reason, time.monotonic() - started, error)

        hit = None if force else store.find_complete(stage.name, key)
        if hit is not None:
            outputs = store.outputs(hit.id)
            reason = {"kind": "cached", "summary": f"{trial_note}reused execution {hit.id} of run {hit.run_id} "
                      "(same cache key)", "execution_id": hit.id, "run_id": hit.run_id, "trial": job.trial}
            execution_id = store.start_execution(
                run_id, stage.name, params=params, cache_key=key, code_version=code, inputs=_recorded(job),
                external_fingerprint=external, reason=reason, state=md.CACHED, reused_execution_id=hit.id,
                outputs=outputs, trial=job.trial)
            log.info("%s: cached (execution %d of run %d)", label, hit.id, hit.run_id)
            return _Result(job.trial, md.CACHED, execution_id, reason, time.monotonic() - started, outputs=outputs)
        return _Ready(job, params, code, external, key, force)

    def _begin(self, store: MetadataStore, run_id: int, stage: Stage, ready: "_Ready") -> "_Pending":
        """Record the execution RUNNING (with why it runs) and build its context."""
        started = time.monotonic()
        job, params, code, external, key = ready.job, ready.params, ready.code, ready.external, ready.key
        trial_note = f"trial {job.trial}: " if job.trial else ""
        label = stage.name + (f" [{job.trial}]" if job.trial else "")
        previous = store.latest_execution(stage.name, trial=job.trial)
        reason = explain(previous, params, _recorded(job), code, external)
        if job.trial and previous is None:
            reason["summary"] = "new trial"
        if ready.force:
            reason["summary"] = "forced (--force); " + reason["summary"]
            reason["forced"] = True
        retry = store.latest_execution(stage.name, (md.FAILED, md.ABANDONED), cache_key=key)
        if retry is not None:
            reason["retry_of"] = retry.id
            reason["summary"] += f"; retrying after execution {retry.id} {retry.state.lower()}"
        reason["summary"] = trial_note + reason["summary"]
        reason["trial"] = job.trial
        execution_id = store.start_execution(
            run_id, stage.name, params=params, cache_key=key, code_version=code, inputs=_recorded(job),
            external_fingerprint=external, reason=reason, trial=job.trial)
        log.info("%s: running execution %d (%s)", label, execution_id, reason["summary"])
        tmp = layout.temporary_dir(self.root, stage.name, execution_id)
        ctx = ExecutionContext(
            config=job.config, params=params, inputs=dict(job.inputs),
            outputs={name: tmp / name for name in stage.outputs}, work_dir=layout.work_dir(self.root, stage.name, key),
            root=self.root, run_id=run_id, execution_id=execution_id, log=logging.getLogger(f"convpipe.{stage.name}"),
            trial=job.trial, trials={name: dict(t.artifacts) for name, t in job.gathered.items()})
        if self._writes_urls(stage):  # its workers read and write the root themselves (pipeline/beam_files.py)
            ctx.input_urls = {name: self.remote.artifact_url(a) for name, a in job.inputs.items()}
            ctx.output_urls = {name: self.remote.url_of(f"{stage.name}/{execution_id}/{name}") for name in stage.outputs}
        return _Pending(job, execution_id, reason, ctx, started)

    def _writes_urls(self, stage: Stage) -> bool:
        """A stage that reads and writes the remote root itself: no fetch before it, no upload after it."""
        return self.remote is not None and stage.writes_urls

    def _run_in_children(self, store: MetadataStore, run_id: int, stage: Stage, jobs: list["_Job"], width: int,
                         force: bool) -> list["_Result"]:
        """Cached trials are recorded at once; the others run `width` at a time in child processes,
        each recorded RUNNING when its child starts and COMPLETE or FAILED when it ends."""
        results: dict[int, _Result] = {}
        ready: dict[int, _Ready] = {}
        for index, job in enumerate(jobs):
            started = self._start(store, run_id, stage, job, force)
            if isinstance(started, _Ready):
                ready[index] = started
            else:
                results[index] = started
        order = sorted(ready)
        if order:
            log.info("%s: %d of %d trials to run, %d at a time in child processes", stage.name, len(order),
                     len(jobs), min(width, len(order)))
        pending: dict[int, _Pending] = {}

        def launch(slot: int):
            item = pending[slot] = self._begin(store, run_id, stage, ready[order[slot]])
            self._prepare(stage, item.ctx)
            return stage, item.ctx

        def finished(slot: int, child: parallel.ChildResult) -> None:
            item = pending[slot]
            if child.error is not None:
                results[order[slot]] = self._fail(store, stage, item, child.error, child.details)
                return
            item.ctx.properties.update(child.properties)
            item.ctx.chosen_trial = child.chosen_trial
            try:
                results[order[slot]] = self._finish(store, stage, item)
            except Exception as exc:
                results[order[slot]] = self._fail(store, stage, item, _error_text(exc), traceback.format_exc())

        try:
            parallel.run_children(len(order), launch, width, finished)
        except BaseException as exc:
            for slot, item in pending.items():
                if order[slot] not in results:
                    self._fail(store, stage, item, f"interrupted ({type(exc).__name__}"
                               f"{': ' + str(exc) if str(exc) else ''})", traceback.format_exc())
            raise
        return [results[i] for i in range(len(jobs))]

    def _prepare(self, stage: Stage, ctx: ExecutionContext) -> None:
        if self.remote and not self._writes_urls(stage):  # every input in the local copy (once: later stages reuse it)
            self.remote.fetch_artifacts([*ctx.inputs.values(), *(a for trials in ctx.trials.values() for a in trials.values())])
        for path in ctx.outputs.values():
            path.mkdir(parents=True)
        ctx.work_dir.mkdir(parents=True, exist_ok=True)

    def _execute(self, store: MetadataStore, stage: Stage, item: "_Pending") -> "_Result":
        ctx = item.ctx
        try:
            self._prepare(stage, ctx)
            stage.executor(ctx)
            return self._finish(store, stage, item)
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, Interrupted)):
                error = f"interrupted ({type(exc).__name__}{': ' + str(exc) if str(exc) else ''})"
            else:
                error = _error_text(exc)
            details = traceback.format_exc()
            result = self._fail(store, stage, item, error, details)
            if not isinstance(exc, Exception):
                raise
            if not isinstance(exc, (StageError, ConfigError)):
                logging.getLogger(f"convpipe.{stage.name}").error("%s", details)
            return result

    def _finish(self, store: MetadataStore, stage: Stage, item: "_Pending") -> "_Result":
        """Fingerprint the outputs, rename them into place, record them and mark the execution COMPLETE."""
        ctx = item.ctx
        tmp = layout.temporary_dir(self.root, stage.name, item.execution_id)
        final = layout.execution_dir(self.root, stage.name, item.execution_id)
        if ctx.chosen_trial is not None:
            names = sorted({t for trials in ctx.trials.values() for t in trials})
            if ctx.chosen_trial not in names:
                raise StageError(f"{stage.name} chose trial {ctx.chosen_trial!r}; expected one of the trials it "
                                 f"gathered: {', '.join(names)}")
        written_there = self._writes_urls(stage)
        if written_there:  # one download into the local copy: the fingerprint needs the bytes, and train reads them
            self._receive(stage, item)
        new = {}
        for name, type_ in stage.outputs.items():
            if not ctx.outputs[name].is_dir():
                raise StageError(f"the executor removed its output directory {ctx.outputs[name]}")
            properties = dict(ctx.properties.get(name, {}))
            if ctx.chosen_trial is not None:
                properties["chosen_trial"] = ctx.chosen_trial
            new[name] = NewArtifact(type_, final / name, layout.fingerprint_dir(ctx.outputs[name]), properties)
        layout.publish(tmp, final)
        if self.remote is not None:  # uploaded, then its marker: visible to readers only when whole
            self.remote.publish(final, f"{stage.name}/{item.execution_id}",
                                {name: artifact.fingerprint for name, artifact in new.items()}, uploaded=written_there)
        outputs = store.complete_execution(item.execution_id, new)
        shutil.rmtree(ctx.work_dir, ignore_errors=True)
        seconds = time.monotonic() - item.started
        log.info("%s: COMPLETE in %.1f s", stage.name + (f" [{ctx.trial}]" if ctx.trial else ""), seconds)
        return _Result(ctx.trial, md.COMPLETE, item.execution_id, item.reason, seconds, outputs=outputs)

    def _receive(self, stage: Stage, item: "_Pending") -> None:
        """Download the outputs a `writes_urls` stage wrote on the root into its (empty) local output directories."""
        started, total = time.monotonic(), 0
        for name, local in item.ctx.outputs.items():
            stray = next((p for p in local.rglob("*") if p.is_file()), None) if local.is_dir() else None
            if stray is not None:
                raise StageError(f"{stage.name} writes its outputs at their URLs on {self.remote.url}, but it wrote "
                                 f"{stray} into its local output directory; expected nothing there")
            total += self.remote.receive(f"{stage.name}/{item.execution_id}/{name}", local)
        log.info("%s: %.1f MiB written by the Beam workers on %s, downloaded in %.1f s to fingerprint them",
                 stage.name, total / 2 ** 20, self.remote.url, time.monotonic() - started)

    def _fail(self, store: MetadataStore, stage: Stage, item: "_Pending", error: str,
              details: Optional[str]) -> "_Result":
        store.fail_execution(item.execution_id, error, details)
        shutil.rmtree(layout.temporary_dir(self.root, stage.name, item.execution_id), ignore_errors=True)
        shutil.rmtree(layout.execution_dir(self.root, stage.name, item.execution_id), ignore_errors=True)
        if self.remote:
            self.remote.remove_execution(stage.name, item.execution_id)
        log.error("%s: FAILED: %s", stage.name + (f" [{item.job.trial}]" if item.job.trial else ""), error)
        return _Result(item.job.trial, md.FAILED, item.execution_id, item.reason,
                       time.monotonic() - item.started, error)


@dataclass
class _Job:
    """One execution a stage needs: its trial (None for an ordinary execution), config and inputs."""
    trial: Optional[str]
    config: PipelineConfig
    inputs: dict[str, Artifact]
    gathered: dict[str, Trials] = field(default_factory=dict)


@dataclass
class _Ready:
    """An execution to run: its job and identity, not yet recorded."""
    job: _Job
    params: dict
    code: str
    external: Optional[str]
    key: str
    force: bool


@dataclass
class _Pending:
    """An execution recorded RUNNING, with the context its executor gets."""
    job: _Job
    execution_id: int
    reason: dict
    ctx: ExecutionContext
    started: float


@dataclass
class _Result:
    trial: Optional[str]
    state: str
    execution_id: int
    reason: dict
    seconds: float = 0.0
    error: Optional[str] = None
    outputs: dict[str, Artifact] = field(default_factory=dict)


def _recorded(job: _Job) -> dict[str, Artifact]:
    """The inputs as the store records them: gathered trials as `name[trial]`."""
    return {**job.inputs, **{f"{name}[{trial}]": a for name, trials in job.gathered.items()
                             for trial, a in trials.artifacts.items()}}


def _flat(values: dict) -> dict[str, Artifact]:
    flat = {}
    for name, value in values.items():
        if isinstance(value, Trials):
            flat.update({f"{name}[{trial}]": a for trial, a in value.artifacts.items()})
        else:
            flat[name] = value
    return flat


def _error_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, (StageError, ConfigError)) else f"{type(exc).__name__}: {exc}"


def _outcome(stage: str, results: list[_Result], seconds: float) -> StageOutcome:
    """One outcome for the stage; with trials, the counts and each trial's result."""
    trials = [{"trial": r.trial, "state": r.state, "execution_id": r.execution_id, "seconds": round(r.seconds, 3),
               "summary": r.reason.get("summary"), "error": r.error} for r in results if r.trial is not None]
    if len(results) == 1:
        r = results[0]
        return StageOutcome(stage, r.state, r.execution_id, r.reason, seconds, r.error, trials)
    failed = [r for r in results if r.state == md.FAILED]
    ran = [r for r in results if r.state == md.COMPLETE]
    cached = [r for r in results if r.state == md.CACHED]
    state = md.FAILED if failed else md.COMPLETE if ran else md.CACHED
    counts = [f"{len(ran)} ran"] + ([f"{len(cached)} cached"] if cached else []) + \
             ([f"{len(failed)} failed"] if failed else [])
    summary = f"{len(results)} trials: {', '.join(counts)}"
    if ran and len(ran) <= 4:
        summary += f" (ran {', '.join(r.trial for r in ran)})"
    error = "; ".join(f"trial {r.trial}: {r.error}" for r in failed) or None
    return StageOutcome(stage, state, None, {"kind": state.lower(), "summary": summary}, seconds, error, trials)
