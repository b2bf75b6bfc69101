"""`convpipe runs` and `convpipe show`: a pipeline's history and lineage, read from its metadata store.

Framework commands: they need the store only, never a stage.
"""
from __future__ import annotations

import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Optional

from pipeline.config import ConfigError
from pipeline.console import EXIT_OK, EXIT_USAGE, load, print_json, root_of
from pipeline.filesystem import RemoteRoot, is_url


def _time(seconds: Optional[float]) -> Optional[str]:
    return datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="seconds") if seconds else None


def _open_store(root, metadata: Optional[str] = None):
    from pipeline.metadata import store_for

    if is_url(root) and not metadata:  # its store is never inside it (pipeline/runner.py preflight)
        raise ConfigError(f"--root {root}: a remote root's runs are in the metadata store named by --metadata "
                          "postgresql+psycopg://user:password@host:5432/db (or pipeline.metadata)")
    return store_for(root, metadata, create=False)


def _uri_shower(root):
    """An artifact's place as the user names the root: `s3://bucket/prefix/<stage>/<id>/<output>` for a
    remote root (its local working copy is only this machine's cache), else the local path."""
    if not is_url(root):
        return str
    remote = RemoteRoot(str(root))

    def shown(uri) -> str:
        try:
            return f"{remote.url}/{Path(uri).relative_to(remote.local).as_posix()}"
        except ValueError:
            return str(uri)
    return shown


def runs_summary(root, metadata: Optional[str] = None) -> list[dict]:
    """Every run under `root` (a path or URL): id, times, state, and what each stage did."""
    with _open_store(root, metadata) as store:
        summary = []
        for run in store.runs():
            executions = store.executions(run.id)
            stages = [{"stage": e.stage, "state": e.state, "execution_id": e.id,
                       "reused_execution_id": e.reused_execution_id, "why": e.reason.get("summary")}
                      for e in executions]
            summary.append({
                "id": run.id, "started": _time(run.started), "ended": _time(run.ended), "state": run.state,
                "error": run.error, "argv": run.argv, "options": run.options, "stages": stages,
                "ran": [s["stage"] for s in stages if s["state"] in ("COMPLETE", "FAILED", "RUNNING", "ABANDONED")],
                "failed": [s["stage"] for s in stages if s["state"] in ("FAILED", "ABANDONED")],
                "cached": [s["stage"] for s in stages if s["state"] == "CACHED"],
                "skipped": [s["stage"] for s in stages if s["state"] == "SKIPPED"],
                "seconds": round(run.ended - run.started, 3) if run.ended else None})
        return summary


_VERB = {"COMPLETE": "ran", "CACHED": "cached", "SKIPPED": "skipped", "FAILED": "FAILED",
         "RUNNING": "running", "ABANDONED": "abandoned"}


def stage_words(stages: list[dict]) -> str:
    """`ingest=cached train=ran×3,cached×21 compare=ran`: one word a stage, however many trials a
    sweep gave it, counted by what they did in order of first appearance."""
    verbs: dict[str, list[str]] = {}
    for s in stages:
        verbs.setdefault(s["stage"], []).append(_VERB.get(s["state"], s["state"]))
    words = []
    for stage, done in verbs.items():
        if len(done) == 1:
            words.append(f"{stage}={done[0]}")
        else:
            counts = {verb: done.count(verb) for verb in dict.fromkeys(done)}
            words.append(f"{stage}=" + ",".join(f"{verb}×{n}" for verb, n in counts.items()))
    return " ".join(words)


def cmd_runs(args) -> int:
    root = root_of(args)
    try:
        summary = runs_summary(root, load(args).pipeline.metadata)
    except FileNotFoundError:
        summary = []
    if args.json:
        print_json(summary)
        return EXIT_OK
    if not summary:
        print(f"no runs under {root if isinstance(root, str) else root.resolve()}")
    for run in summary:
        stages = stage_words(run["stages"])
        seconds = f"{run['seconds']:.1f} s" if run["seconds"] is not None else "-"
        print(f"{run['id']:>4}  {run['started']}  {run['state']:<9} {seconds:>9}  {stages}")
    return EXIT_OK


def run_details(root, run_id: Optional[int], metadata: Optional[str] = None) -> dict:
    """One run with its executions, parameters, reasons, and each artifact's producer (lineage)."""
    with _open_store(root, metadata) as store:
        run_id = run_id if run_id is not None else store.latest_run_id()
        if run_id is None:
            raise KeyError(f"no runs under {root}")
        run = store.run(run_id)
        shown = _uri_shower(root)

        def artifact(name, a):
            producer = store.producer(a.id)
            return {"name": name, "id": a.id, "type": a.type, "uri": shown(a.uri), "fingerprint": a.fingerprint,
                    "properties": dict(a.properties),
                    "produced_by": {"execution_id": producer.id, "stage": producer.stage, "run_id": producer.run_id}
                    if producer else None}

        executions = []
        for e in store.executions(run_id):
            executions.append({
                "id": e.id, "stage": e.stage, "state": e.state, "why": e.reason.get("summary"),
                "reason": e.reason, "reused_execution_id": e.reused_execution_id, "params": e.params,
                "cache_key": e.cache_key, "code_version": e.code_version,
                "external_fingerprint": e.external_fingerprint, "error": e.error, "traceback": e.traceback,
                "started": _time(e.started), "ended": _time(e.ended),
                "seconds": round(e.ended - e.started, 3) if e.ended else None,
                "inputs": [artifact(n, a) for n, a in store.inputs(e.id).items()],
                "outputs": [artifact(n, a) for n, a in store.outputs(e.id).items()]})
        return {"run": {"id": run.id, "started": _time(run.started), "ended": _time(run.ended), "state": run.state,
                        "error": run.error, "argv": run.argv, "options": run.options, "pid": run.pid,
                        "host": run.host, "config": run.config},
                "executions": executions}


def cmd_show(args) -> int:
    root = root_of(args)
    try:
        details = run_details(root, args.run, load(args).pipeline.metadata)
    except (FileNotFoundError, KeyError) as exc:
        print(f"show: {exc.args[0] if exc.args else exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.json:
        print_json(details)
        return EXIT_OK
    run = details["run"]
    print(f"run {run['id']}  {run['state']}  started {run['started']}  ended {run['ended'] or '-'}")
    print(f"  command: {' '.join(run['argv'])}")
    if run["error"]:
        print(f"  error: {run['error']}")
    for e in details["executions"]:
        print(f"\n{e['stage']}  execution {e['id']}  {e['state']}  {e['seconds'] or 0:.1f} s")
        print(f"  why: {e['why']}")
        if e["error"]:
            print(f"  error: {e['error']}")
        params = json.dumps(e["params"], sort_keys=True)
        print(f"  params: {params if len(params) <= 300 else params[:297] + '...'}")
        if e["cache_key"]:
            print(f"  cache key: {e['cache_key'][:16]}  code: {e['code_version'][:16]}")
        for a in e["inputs"]:
            by = a["produced_by"]
            origin = f" (from {by['stage']} execution {by['execution_id']}, run {by['run_id']})" if by else ""
            print(f"  in  {a['name']}: {a['type']} #{a['id']} {a['uri']}{origin}")
        for a in e["outputs"]:
            print(f"  out {a['name']}: {a['type']} #{a['id']} {a['uri']} sha256:{a['fingerprint'][:12]}")
    return EXIT_OK
