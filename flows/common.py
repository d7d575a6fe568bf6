"""Helpers shared by the stage flows."""

from __future__ import annotations

import math
import os
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact

# Model-heavy tasks carry this tag; a concurrency limit on it keeps two from running at once.
MODEL_TAG = "rlaif-model"
# Retries and a generous timeout on every task that calls a model.
MODEL_TASK = dict(retries=1, retry_delay_seconds=5, timeout_seconds=4 * 3600, tags=[MODEL_TAG])


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def summary_markdown(title: str, summary: dict, paths: dict | None = None) -> str:
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt(v)} |" for k, v in summary.items()]
    if paths:
        lines += ["", *[f"- {k}: `{v}`" for k, v in paths.items()]]
    return "\n".join(lines)


def publish(key: str, title: str, summary: dict, paths: dict | None = None) -> None:
    create_markdown_artifact(key=key, markdown=summary_markdown(title, summary, paths),
                             description=title)


def publish_samples(key: str, title: str, df, columns: list[str], n: int = 5, width: int = 300) -> None:
    """A table artifact with the first n rows, long texts cut to `width` characters."""
    def cell(v):
        v = v.tolist() if hasattr(v, "tolist") else v  # numpy scalars and arrays -> JSON types
        return v[:width] + "…" if isinstance(v, str) and len(v) > width else v

    cut = [{k: cell(v) for k, v in r.items()} for r in df[columns].head(n).to_dict("records")]
    create_table_artifact(key=key, table=cut, description=title)


def plot_metrics(metrics, names: list[str], path: Path, title: str) -> str:
    """One panel per metric against `step` (a metrics table: step, metric, value), saved as a
    PNG; written to a temporary file, then renamed."""
    import matplotlib

    matplotlib.use("Agg")  # no display on a server
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3), squeeze=False)
    for ax, name in zip(axes[0], names):
        m = metrics[metrics["metric"] == name].sort_values("step")
        ax.plot(m["step"], m["value"], marker=".")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return str(path)
