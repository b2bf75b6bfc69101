"""The model half of training: strategy choice, the one custom loop, backups, TensorBoard, history.

`components/train/stage.py` is the stage; `trial.train_trial` trains one trial from a config;
`worker.py` runs a trial in a fresh process; the rest are the pieces it assembles (see each
module's docstring). `model_artifact.py` is the Model artifact's files, which training writes and
evaluate, compare and export read.
"""
