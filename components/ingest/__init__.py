"""The ingest stage (stage.py): a Beam pipeline from a source (components/sources/) to Examples.

stats.py computes the Examples artifact's `stats.json`; only ingest writes it.
"""
