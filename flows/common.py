"""Helpers shared by the stage flows."""

from __future__ import annotations

import math

from prefect.artifacts import create_markdown_artifact

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
