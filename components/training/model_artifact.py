"""The Model artifact on disk, as train writes it and evaluate and export read it.

    model.keras    the trained network (best epoch), loadable with safe_mode=True
    history.json   per-epoch metrics in the Keras layout, the best epoch, resumes
    trial.json     the trial's parameters and results (strategy, batch, best metrics, ...)
"""
from __future__ import annotations

import json
from pathlib import Path

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
TRIAL_FILE = "trial.json"


def load_keras_model(model_dir: str | Path):
    """`model.keras` with safe_mode=True (no Lambda layers, no arbitrary code); our layers registered first."""
    import keras
    import models

    models.load_registrations()
    path = Path(model_dir) / MODEL_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path}: the Model artifact has no {MODEL_FILE}")
    return keras.saving.load_model(path, safe_mode=True, compile=False)


def read_json(model_dir: str | Path, name: str) -> dict:
    path = Path(model_dir) / name
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: the Model artifact has no {name}") from None
