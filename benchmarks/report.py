"""What a benchmark hands back: figures, ratios and targets, printed for people and saved as JSON.

A figure is an absolute number with its unit (images/s, ms); a ratio compares two sides measured
in turn in the same run; a target is a ratio (or share) with the bound the issue asks for and
whether this run met it. Targets are reported, never asserted: the machine is shared.
"""
from __future__ import annotations

import json
import math
import operator
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

_OPERATORS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass
class Result:
    name: str
    description: str
    settings: dict = field(default_factory=dict)
    figures: dict = field(default_factory=dict)
    ratios: dict = field(default_factory=dict)
    targets: list = field(default_factory=list)
    samples: dict = field(default_factory=dict)
    notes: list = field(default_factory=list)
    seconds: float = 0.0

    def figure(self, name: str, value: float, unit: str, about: str = "") -> float:
        self.figures[name] = {"value": _round(value), "unit": unit, **({"about": about} if about else {})}
        return value

    def ratio(self, name: str, value: float, about: str) -> float:
        self.ratios[name] = {"value": _round(value), "about": about}
        return value

    def target(self, name: str, measured: float, op: str, bound: float) -> bool:
        met = bool(_OPERATORS[op](measured, bound)) if math.isfinite(measured) else False
        self.targets.append({"name": name, "measured": _round(measured), "target": f"{op} {bound:g}", "met": met})
        return met

    def sample(self, name: str, seconds: list[float]) -> None:
        """Raw per-run seconds, so a reader can see the spread behind a median."""
        self.samples[name] = [_round(s, 5) for s in seconds]

    def note(self, text: str) -> None:
        self.notes.append(text)

    def to_dict(self) -> dict:
        return {"name": self.name, "description": self.description, "settings": self.settings,
                "figures": self.figures, "ratios": self.ratios, "targets": self.targets, "notes": self.notes,
                "samples": self.samples, "seconds": _round(self.seconds, 2)}

    def lines(self) -> list[str]:
        out = [f"== {self.name}: {self.description} ({self.seconds:.0f} s)"]
        if self.settings:
            out.append("   settings: " + ", ".join(f"{k}={v}" for k, v in self.settings.items()))
        for name, f in self.figures.items():
            out.append(f"   {name:<44} {_fmt(f['value']):>12} {f['unit']}")
        for name, r in self.ratios.items():
            out.append(f"   {name:<44} {_fmt(r['value']):>12} x   ({r['about']})")
        for t in self.targets:
            out.append(f"   target {t['name']:<37} {_fmt(t['measured']):>12}   want {t['target']:<8} "
                       f"{'met' if t['met'] else 'MISSED'}")
        for text in self.notes:
            out.append(f"   note: {text}")
        return out


def _round(value: float, digits: int = 4) -> Any:
    """`digits` significant digits: the noise here is larger than that anyway."""
    if isinstance(value, float) and math.isfinite(value):
        return float(f"{value:.{digits}g}")
    return value


def _fmt(value) -> str:
    if not isinstance(value, (int, float)) or not math.isfinite(value):
        return str(value)
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


# ------------------------------------------------------------------------------------------------
# the machine
# ------------------------------------------------------------------------------------------------
def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> Optional[float]:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    return None


def _cpu_flags() -> list[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                return sorted(f for f in flags if f.startswith(("avx", "fma", "amx")))
    except OSError:
        pass
    return []


def machine() -> dict:
    """The machine and software the figures were measured on (load averages: how shared it was)."""
    import apache_beam
    import keras
    import tensorflow as tf

    return {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "memory_gib": _memory_gib(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "apache_beam": apache_beam.__version__,
        "gpus": len(tf.config.list_physical_devices("GPU")),
        "load_average": [round(v, 2) for v in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def write_json(path: str | Path, document: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(temporary, path)
