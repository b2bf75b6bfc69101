"""The TF Serving layout: `<serving_root>/<model_name>/<version>/`, and each version's provenance.

TF Serving loads any numeric directory it sees, so a version is written under a hidden temporary
name and renamed into place only once complete and checked (components/export/). Every reader of
served models (evaluate's comparison with the version served now, predict) finds versions here.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

INFO_FILE = Path("assets.extra") / "convpipe.json"


def versions(model_dir: str | Path) -> list[int]:
    """Numeric version directories, ascending (what TF Serving would consider loading)."""
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def version_dir(model_dir: str | Path, version: Optional[int] = None) -> Path:
    """The directory of `version`, or of the latest version; FileNotFoundError names what exists."""
    model_dir = Path(model_dir)
    found = versions(model_dir)
    if not found:
        raise FileNotFoundError(f"{model_dir}: expected numeric version directories (TF Serving layout), found none")
    if version is None:
        return model_dir / str(found[-1])
    if version not in found:
        raise FileNotFoundError(f"{model_dir}: version {version} not found; versions present: {found}")
    return model_dir / str(version)


def read_info(path: str | Path) -> dict:
    """`assets.extra/convpipe.json` of a version ({} when absent or unreadable)."""
    try:
        return json.loads((Path(path) / INFO_FILE).read_text())
    except (OSError, ValueError):
        return {}
