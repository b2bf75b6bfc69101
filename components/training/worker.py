"""Run one training trial in this process: `python -m components.training.worker SPEC.json`.

The train stage starts this in a fresh process when its own process already initialised its
devices differently from `train.logical_cpu_devices`; a cluster manager starts it once per worker
(each with its TF_CONFIG) for multi-worker training. Log lines go to stderr prefixed with
`convpipe:`; a failure the user can act on prints `convpipe-error: <message>` and exits with 3.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

LOG_PREFIX = "convpipe: "
ERROR_PREFIX = "convpipe-error: "
USER_ERROR_EXIT = 3


def main(argv: list[str]) -> int:
    import os
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if len(argv) != 1:
        print("usage: python -m components.training.worker SPEC.json", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(LOG_PREFIX + "%(levelname)s %(message)s"))
    log = logging.getLogger("convpipe.train.worker")
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    log.propagate = False

    from components.training.errors import user_message
    from components.training.trial import TrialSpec, train_trial

    spec = TrialSpec.from_json(Path(argv[0]).read_text())
    try:
        train_trial(spec, log)
    except Exception as exc:
        message = user_message(exc, spec.work_dir)
        if message is None:
            raise
        print(ERROR_PREFIX + message.replace("\n", " "), file=sys.stderr, flush=True)
        return USER_ERROR_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
