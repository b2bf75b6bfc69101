"""The composition: which stages make the pipeline, in which order, and the `convpipe` command.

This is the one room that imports both the framework (pipeline/) and the stages (components/),
as a TFX pipeline definition composes standard components the orchestrator only runs.
- stages.py: the stage list, in pipeline order.
- cli.py: the `convpipe` command; commands that name stages or tasks live here, the rest
  (runs, show, schedule) are the framework's own and are only wired up here.
"""
