"""The framework: configuration, the stage contract, the runner, metadata, artifacts, lock, schedule.

It runs whatever stages it is handed (`Runner(config, stages)`) and imports none of them: the
stage list and the CLI that names stages are the composition's (convpipe/). Modules:
config.py (typed config, JSON Schema), stage.py (Stage, ExecutionContext, Artifact), runner.py
(order, caching, resume, trials), cache.py (cache keys, why a stage ran), metadata.py (the lineage
store), artifacts.py (root layout), lock.py (one writer per root), parallel.py (trials in child
processes), sweep.py, codeversion.py, beam.py (runner options), progress.py, console.py (exit
codes, console logging), history.py (`convpipe runs` / `show`), schedule.py and cron.py.
"""
