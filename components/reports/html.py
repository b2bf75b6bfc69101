"""A self-contained `report.html`: plots embedded as PNG data URIs (matplotlib, Agg; sample grids from
components/reports/sample_grids.py), tables in plain HTML.

One file that opens anywhere, mailed or archived, with nothing to fetch: the training curves, the
confusion matrix, the metric table, the blessing and a grid of sample predictions.
"""
from __future__ import annotations

import base64
import html
import io
from typing import Optional, Sequence

import numpy as np

from components.reports.sample_grids import classification_grid_png


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _png(figure) -> bytes:
    plt = _pyplot()
    buffer = io.BytesIO()
    figure.tight_layout()
    figure.savefig(buffer, format="png", dpi=90)
    plt.close(figure)
    return buffer.getvalue()


def data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def training_curves_png(history: dict) -> Optional[bytes]:
    """Loss and accuracy per epoch, train and eval, from history.json's Keras-layout `history`."""
    epochs = history.get("epoch")
    if not epochs:
        return None
    plt = _pyplot()
    metrics = [m for m in ("loss", "accuracy") if m in history]
    figure, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.5), squeeze=False)
    for axis, metric in zip(axes[0], metrics):
        axis.plot(epochs, history[metric], marker="o", label="train")
        if f"val_{metric}" in history:
            axis.plot(epochs, history[f"val_{metric}"], marker="o", label="eval")
        axis.set_xlabel("epoch")
        axis.set_title(metric)
        axis.grid(alpha=0.3)
        axis.legend()
    return _png(figure)


def confusion_matrix_png(matrix: Sequence[Sequence[int]], class_names: Sequence[str]) -> bytes:
    plt = _pyplot()
    matrix = np.asarray(matrix)
    size = max(3.5, 0.6 * len(class_names) + 2)
    figure, axis = plt.subplots(figsize=(size, size))
    axis.imshow(matrix, cmap="Blues")
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("predicted")
    axis.set_ylabel("true")
    threshold = matrix.max() / 2 if matrix.size else 0
    for (row, column), count in np.ndenumerate(matrix):
        axis.text(column, row, str(count), ha="center", va="center", color="white" if count > threshold else "black")
    return _png(figure)


_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th { background: #f3f3f3; } td.name { text-align: left; }
.blessed { color: #1a7f37; font-weight: bold; } .not-blessed { color: #b42318; font-weight: bold; }
img { max-width: 100%; }
"""


def _table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    def cell(value, first):
        text = f"{value:.4f}" if isinstance(value, float) else html.escape(str(value))
        return f'<td class="name">{text}</td>' if first else f"<td>{text}</td>"
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(cell(v, i == 0) for i, v in enumerate(row)) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _image(png: Optional[bytes], alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="{data_uri(png)}">' if png else f"<p>({html.escape(alt)}: no data)</p>"


def table_html(header: Sequence[str], rows: Sequence[Sequence]) -> str:
    return _table(header, rows)


def image_html(png: Optional[bytes], alt: str) -> str:
    return _image(png, alt)


def metrics_sections(metrics: dict) -> list[tuple[str, str]]:
    """The scalar metrics table: every float in `metrics`, and the number of examples."""
    rows = [(name, metrics[name]) for name in metrics if isinstance(metrics[name], float)]
    if "num_examples" in metrics:
        rows.append(("examples", metrics["num_examples"]))
    return [("Test metrics", _table(["metric", "value"], rows))]


def classification_sections(metrics: dict, samples: Optional[dict] = None,
                            sample_images: Optional[np.ndarray] = None) -> list[tuple[str, str]]:
    """Test metrics, per-class table, confusion matrix and (optionally) the sample grid.
    `sample_images` replaces `samples["images"]` in the grid (e.g. frames side by side for clips)."""
    class_names = metrics["class_names"]
    per_class = [(name, v["precision"], v["recall"], v["f1"], v["support"]) for name, v in metrics["per_class"].items()]
    sections = metrics_sections(metrics) + [
        ("Per class", _table(["class", "precision", "recall", "f1", "support"], per_class)),
        ("Confusion matrix", _image(confusion_matrix_png(metrics["confusion_matrix"], class_names), "confusion matrix")),
    ]
    if samples and len(samples.get("images", [])):
        images = samples["images"] if sample_images is None else sample_images
        sections.append(("Sample predictions", _image(classification_grid_png(
            images, samples["true"], samples["predicted"], samples["probability"], class_names), "sample predictions")))
    return sections


def render_page(title: str, blessing: dict, sections: Sequence[tuple[str, str]], history: dict,
                trial: Optional[dict] = None) -> str:
    """The report as one HTML string: the blessing, the task's `sections` (heading, HTML fragment)
    in order, the training curves and the trial's parameters."""
    checks = [(c.get("kind", ""), c.get("metric", ""), c.get("value", ""), c.get("reference", ""),
               "pass" if c.get("passed") else "fail", c.get("detail", "")) for c in blessing.get("checks", [])]
    verdict = ('<p class="blessed">Blessed</p>' if blessing.get("blessed")
               else '<p class="not-blessed">Not blessed</p>')
    parts = [
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_STYLE}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
        "<h2>Blessing</h2>", verdict,
        _table(["check", "metric", "value", "reference", "result", "detail"], checks) if checks else "",
    ]
    for heading, fragment in sections:
        parts += [f"<h2>{html.escape(heading)}</h2>", fragment]
    parts += ["<h2>Training curves</h2>", _image(training_curves_png(history.get("history", {})), "training curves")]
    if history.get("best_epoch"):
        parts.append(f"<p>Best epoch {history['best_epoch']} by {html.escape(str(history.get('monitor')))} "
                     f"= {history.get('best_value'):.4f}; {history.get('epochs_run')} epoch(s) run"
                     f"{', stopped early' if history.get('stopped_early') else ''}"
                     f"{', resumed ' + str(len(history.get('resumes', []))) + ' time(s)' if history.get('resumes') else ''}.</p>")
    if trial:
        params = trial.get("params", {})
        rows = [(k, json_text(v)) for k, v in params.items() if k not in ("model", "train")]
        rows += [("model", json_text(params.get("model"))), ("train", json_text(params.get("train")))]
        parts += ["<h2>Trial</h2>", _table(["parameter", "value"], rows)]
    parts.append("</body></html>")
    return "\n".join(parts)


def render_report(title: str, metrics: dict, history: dict, blessing: dict, samples: Optional[dict] = None,
                  trial: Optional[dict] = None) -> str:
    """The classification report (sections from `classification_sections`). `samples`: images, true,
    predicted, probability."""
    return render_page(title, blessing, classification_sections(metrics, samples), history, trial)


def json_text(value) -> str:
    import json
    return json.dumps(value, sort_keys=True)
