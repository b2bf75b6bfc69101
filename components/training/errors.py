"""Training failures phrased for the person running the pipeline (shared by the stage and the worker)."""
from __future__ import annotations

from pathlib import Path
from typing import Optional


def user_message(exc: BaseException, work_dir: str | Path) -> Optional[str]:
    """The message for a failure the user can act on, or None for a bug (let it propagate)."""
    from components.training.backups import BackupError
    from components.training.loop import NonFiniteLoss
    from components.training.strategy import DeviceSetupError

    if isinstance(exc, NonFiniteLoss):
        return (f"train: the loss became {exc.value} (NaN or infinite) at epoch {exc.epoch}, step {exc.step} "
                f"(global step {exc.global_step}); no model was written, the backups before that step are kept "
                f"under {Path(work_dir) / 'backups'}. Lower train.optimizer.learning_rate or set "
                f"train.optimizer.clipnorm.")
    if isinstance(exc, (BackupError, DeviceSetupError)):
        return f"train: {exc}"
    return None
