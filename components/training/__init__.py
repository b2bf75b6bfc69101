"""The model half of training: strategy choice, the one custom loop, backups, TensorBoard, history.

`components/train.py` is the stage; `trial.train_trial` trains one trial from a config; the rest
are the pieces it assembles (see each module's docstring).
"""
