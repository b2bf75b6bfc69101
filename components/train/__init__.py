"""The train stage (stage.py): one trial per sweep combination, each trained by
components/training/. join.py lets another machine join the stage as a multi-worker worker
(`convpipe train-worker`).
"""
