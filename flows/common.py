"""Helpers shared by the stage flows."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import INPUTS, TASK_SOURCE, CachePolicy

from flows.reports import fmt, summary_markdown

# Model-heavy tasks carry this tag; a concurrency limit on it keeps two from running at once.
MODEL_TAG = "rlaif-model"
# Retries and a generous timeout on every task that calls a model.
MODEL_TASK = dict(retries=1, retry_delay_seconds=5, timeout_seconds=4 * 3600, tags=[MODEL_TAG])


def publish(key: str, title: str, summary: dict, paths: dict | None = None) -> None:
    create_markdown_artifact(key=key, markdown=summary_markdown(title, summary, paths),
                             description=title)


class Progress:
    """A progress artifact for a long stage, shown on the flow run's page in the Prefect UI and
    updated as the stage goes: `progress(done, metrics)`."""

    def __init__(self, key: str, total: int, title: str, metrics: tuple[str, ...] = ()):
        self.total, self.title, self.metrics = total, title, metrics
        self.id = create_progress_artifact(0.0, key=key, description=f"{title}: starting")

    def __call__(self, done: int, metrics: dict | None = None) -> None:
        shown = ", ".join(f"{k} {fmt(float(metrics[k]))}" for k in self.metrics if metrics and k in metrics)
        update_progress_artifact(self.id, 100.0 * done / max(self.total, 1),
                                 description=f"{self.title}: {done}/{self.total}" + (f" ({shown})" if shown else ""))


def publish_samples(key: str, title: str, df, columns: list[str], n: int = 5, width: int = 300) -> None:
    """A table artifact with the first n rows, long texts cut to `width` characters."""
    def cell(v):
        v = v.tolist() if hasattr(v, "tolist") else v  # numpy scalars and arrays -> JSON types
        return v[:width] + "…" if isinstance(v, str) and len(v) > width else v

    cut = [{k: cell(v) for k, v in r.items()} for r in df[columns].head(n).to_dict("records")]
    create_table_artifact(key=key, table=cut, description=title)


def _code_version() -> str:
    """A hash of the project's Python sources: any code change invalidates every cached step."""
    root = Path(__file__).resolve().parent.parent
    h = hashlib.sha256()
    for pkg in ("rlaif", "constitution", "judges", "training", "evaluation", "flows"):
        for f in sorted((root / pkg).rglob("*.py")):
            h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


CODE_VERSION = _code_version()


@dataclass
class _CodeVersion(CachePolicy):
    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        return CODE_VERSION


@dataclass
class _Inputs(CachePolicy):
    """Prefect's INPUTS, blind to where the run reports to (RunContext.mlflow_tracking_uri):
    turning MLflow on for a rerun must not recompute its finished steps."""

    def compute_key(self, task_ctx, inputs, flow_parameters, **kwargs) -> str:
        inputs = {k: v.model_copy(update={"mlflow_tracking_uri": None}) if hasattr(v, "mlflow_tracking_uri") else v
                  for k, v in inputs.items()}
        return INPUTS.compute_key(task_ctx, inputs, flow_parameters, **kwargs)


# A step's cache key: its inputs (the RunContext carries run_id, constitution_sha and the model
# ids; then the stage config and the Parquet paths read), the task's source and the code
# version. Re-running a run id skips the steps that finished; a changed constitution, model,
# config or code recomputes them.
STEP_CACHE = _Inputs() + TASK_SOURCE + _CodeVersion()


def cached(task, ctx):
    """`task` with its cache records kept under the run's data root (`.cache/<key>`), so deleting
    the data root deletes the cache with it: a hit never points at deleted files.

    Each record holds the step's result itself (Prefect's result record: metadata and pickled
    result in one file), not a pointer into Prefect's result storage (`~/.prefect/storage`): a
    wiped PREFECT_HOME, another worker or a moved PREFECT_LOCAL_STORAGE_PATH keeps every hit.
    A record Prefect cannot read back whole (truncated, or an older metadata-only record whose
    result is gone) is not a hit: the step runs again and replaces it."""
    return task.with_options(cache_policy=STEP_CACHE, result_storage=ctx.layout.cache.resolve(),
                             persist_result=True)
