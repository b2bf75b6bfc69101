"""Training failures phrased for the person running the pipeline (shared by the stage and the worker)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def user_message(exc: BaseException, work_dir: str | Path) -> Optional[str]:
    """The message for a failure the user can act on, or None for a bug (let it propagate)."""
    from components.training.backups import BackupError
    from components.training.divergence import LossDiverged, NonFiniteLoss
    from components.training.strategy import DeviceSetupError
    from models.backbones.weights import BackboneWeightsError

    if isinstance(exc, NonFiniteLoss):
        return (f"train: the loss became {exc.value} (NaN or infinite) at epoch {exc.epoch}, step {exc.step} "
                f"(global step {exc.global_step}); {_kept(work_dir)} Lower train.optimizer.learning_rate or set "
                f"train.optimizer.clipnorm.")
    if isinstance(exc, LossDiverged):
        return (f"train: the loss diverged at epoch {exc.epoch}, step {exc.step} (global step {exc.global_step}): "
                f"its mean over the last {exc.window} steps, {exc.mean:.4g}, is more than {exc.factor:g}x the first "
                f"step's loss, {exc.reference:.4g}; {_kept(work_dir)} Lower train.optimizer.learning_rate or set "
                f"train.optimizer.clipnorm (train.divergence.factor: null turns this check off).")
    if isinstance(exc, (BackupError, DeviceSetupError, BackboneWeightsError)):
        return f"train: {exc}"
    return None


def _kept(work_dir: str | Path) -> str:
    """What a failed run leaves: never a model; the backups made before the failure, if any."""
    backups = Path(work_dir) / "backups"
    if any(backups.glob("ckpt-*.index")):
        return f"no model was written, the backups from before that step are kept under {backups}."
    return "no model was written (no backup had been made before that step)."
