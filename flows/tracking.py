"""Experiment tracking (docs/tracking.md): each stage's parameters, metrics and plots go to
TensorBoard event files under the run's reports folder and, when a tracking URI is set, to
MLflow.

- TensorBoard: one folder per stage, `<data>/reports/<run_id>/tensorboard/<stage>`, rewritten
  whole each time the stage reports, so a rerun never doubles a point.
- MLflow: one run per pipeline run, named after the run id and tagged `rlaif.run_id`, in an
  experiment named after the constitution file. Params are `<stage>.<field>`, metrics keep
  their own names (`objective/kl`, by step), and plots go under `<stage>/`. A stage that was
  already logged with the same figures is skipped (a rerun on cached steps).
- Tracking never fails a run. An error warns once per run and destination, later calls to
  that destination are skipped, and the run goes on.

Only stage configs and the results' figures are logged, never environment variables (the
judge's API key stays in the environment; its config names the variable).
"""

from __future__ import annotations

import hashlib
import json
import re
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from pydantic import BaseModel

from flows.config import RunContext
from flows.results import StageResult
from rlaif.io import write_dir_atomic
from rlaif.prompts import warn
from rlaif.store import Store

ROWS = ["step", "metric", "value", "text"]
_failed: set[tuple[str, str]] = set()  # (run id, destination) that failed once in this process


@task(cache_policy=NO_CACHE)
def track_stage(ctx: RunContext, stage: str, result: StageResult, cfg: BaseModel | None = None, **extra) -> None:
    """Log one stage: `cfg` and `extra` (configs or plain values) as its params, the result's
    figures and plots. Called at the end of each stage flow, outside the cached model task."""
    def figures():  # read inside the guards: a part that cannot be read warns, never fails the flow
        return _figures(ctx, stage, result, cfg, extra)

    _safely(ctx, "TensorBoard", str(ctx.layout.tensorboard), lambda: write_dir_atomic(
        ctx.layout.tensorboard / stage, lambda out: _tensorboard(out, *figures(), result.plots)))
    if ctx.mlflow_tracking_uri:
        _safely(ctx, "MLflow", _shown(ctx.mlflow_tracking_uri),
                lambda: _mlflow_stage(ctx, stage, *figures(), result.plots))


@task(cache_policy=NO_CACHE)
def track_report(ctx: RunContext, report: str) -> None:
    """The run's report (report.md, or evaluation.md of a later evaluation): text in TensorBoard,
    an artifact at the MLflow run's root (replaced on a rerun)."""
    def to_tensorboard(out: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(out)) as w:
            w.add_text("report", Path(report).read_text(encoding="utf-8"))

    def to_mlflow() -> None:
        client, run = _mlflow_run(ctx)
        client.log_artifact(run.info.run_id, report)

    _safely(ctx, "TensorBoard", str(ctx.layout.tensorboard),
            lambda: write_dir_atomic(ctx.layout.tensorboard / Path(report).stem, to_tensorboard))
    if ctx.mlflow_tracking_uri:
        _safely(ctx, "MLflow", _shown(ctx.mlflow_tracking_uri), to_mlflow)


def _figures(ctx: RunContext, stage: str, result: StageResult, cfg: BaseModel | None, extra: dict):
    """(params, rows, summary, step) of a stage: its params flattened and named after it
    (`ppo.sampling.max_new_tokens`), its figures by step, and the figures not in those rows (PPO's
    summary is its last step), to be logged at the stage's last step."""
    params = {"policy_model": ctx.policy_model, **(cfg.model_dump(mode="json") if cfg else {}),
              **{k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in extra.items()}}
    params = pd.json_normalize({stage: params}, sep=".").to_dict("records")[0]
    rows = metric_rows(ctx, result)
    summary = {k: v for k, v in result.metrics.items() if k not in set(rows["metric"])}
    return params, rows, summary, int(rows["step"].max()) if len(rows) else 0


def metric_rows(ctx: RunContext, result: StageResult) -> pd.DataFrame:
    """The stage's figures by step (columns step, metric, value, text): its metrics table (SFT,
    reward model, PPO), or evaluation's reward-KL curve (`curve/kl`, ... by PPO step)."""
    for table in ("sft_metrics", "rm_metrics", "ppo_metrics"):
        if path := getattr(result, table, None):
            return Store(ctx.data).read_part(table, Path(path)).to_pandas()[ROWS]
    curve = pd.DataFrame(getattr(result, "curve", None) or [], columns=["step", "kl", "rm_score", "win_rate"])
    curve = curve[curve["step"] >= 0]  # -1: a policy that is not a PPO output
    rows = curve.melt("step", var_name="metric").assign(metric=lambda d: "curve/" + d["metric"], text=None)
    return rows[ROWS]


def _tensorboard(out: Path, params: dict, rows: pd.DataFrame, summary: dict, step: int, plots: dict) -> None:
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    values, texts = rows[rows["text"].isna()], rows[rows["text"].notna()]
    with SummaryWriter(str(out)) as w:
        for r in values.itertuples():
            w.add_scalar(r.metric, r.value, int(r.step))
        for (s, metric), g in texts.groupby(["step", "metric"]):  # PPO's sampled responses
            w.add_text(metric, "\n\n---\n\n".join(g["text"]), int(s))
        for k, v in summary.items():
            if isinstance(v, str):
                w.add_text(k, v, step)
            else:
                w.add_scalar(k, float(v), step)
        for name, path in plots.items():
            w.add_image(name, imread(path)[..., :3], step, dataformats="HWC")
        # the HParams tab: this stage's params beside its metrics' last values, across runs; not
        # add_hparams, which writes the metrics again in a folder of its own
        names = {m: 0 for m in [*values["metric"].unique(), *(k for k, v in summary.items() if not isinstance(v, str))]}
        for proto in hparams({k: v if isinstance(v, (bool, int, float, str)) else str(v) for k, v in params.items()},
                             names):
            w.file_writer.add_summary(proto)


def _mlflow_run(ctx: RunContext):
    """(client, run): the MLflow run of this pipeline run, found by its tag, else created."""
    from mlflow import MlflowClient

    uri = ctx.mlflow_tracking_uri
    if uri.startswith(("http://", "https://")):  # MLflow retries a server that is down for ~4 minutes
        try:  # any answer will do: nothing is sent, so no credentials and no certificate check
            urllib.request.urlopen(_shown(uri), timeout=10, context=ssl._create_unverified_context()).close()
        except urllib.error.HTTPError:
            pass  # it answered
    client, name = MlflowClient(uri), Path(ctx.constitution_path).stem
    exp = client.get_experiment_by_name(name)
    exp_id = exp.experiment_id if exp else client.create_experiment(name)
    runs = client.search_runs([exp_id], f"tags.`rlaif.run_id` = '{ctx.run_id}'", max_results=1)
    return client, runs[0] if runs else client.create_run(exp_id, run_name=ctx.run_id, tags={
        "rlaif.run_id": ctx.run_id, "rlaif.constitution": ctx.constitution_path,
        "rlaif.constitution_sha": ctx.constitution_sha, "rlaif.data": str(Path(ctx.data).resolve())})


def _mlflow_stage(ctx: RunContext, stage: str, params: dict, rows: pd.DataFrame, summary: dict, step: int,
                  plots: dict) -> None:
    from mlflow.entities import Metric, Param, RunTag

    client, run = _mlflow_run(ctx)
    what = json.dumps([params, rows.values.tolist(), summary, sorted(plots)], default=str)
    digest = hashlib.sha256(what.encode()).hexdigest()[:16]
    tags = run.data.tags
    if tags.get(f"rlaif.stage.{stage}") == digest:  # logged already: a rerun on cached steps
        return
    if f"rlaif.stage.{stage}.keys" in tags:  # logged with other figures, or cut short
        run = _without(client, run, stage)
    now, values, texts = int(time.time() * 1000), rows[rows["text"].isna()], rows[rows["text"].notna()]
    metrics = [*(Metric(_key(r.metric), float(r.value), now, int(r.step)) for r in values.itertuples()),
               *(Metric(_key(k), float(v), now, step) for k, v in summary.items() if not isinstance(v, str))]
    notes = {_key(k): v[:8000] for k, v in summary.items() if isinstance(v, str)}  # MLflow's tag length limit
    run_id = run.info.run_id
    # the keys first, the digest last: a stage cut short is replaced, not doubled, by the next call
    client.set_tag(run_id, f"rlaif.stage.{stage}.keys", "\n".join(sorted({m.key for m in metrics} | set(notes))))
    client.log_batch(run_id, metrics=metrics, tags=[RunTag(k, v) for k, v in notes.items()],
                     params=[Param(k, str(v)[:6000]) for k, v in params.items()])  # MLflow's length limit
    for path in plots.values():
        client.log_artifact(run_id, path, stage)
    if len(texts):
        client.log_table(run_id, texts, f"{stage}/samples.json")
    client.set_tag(run_id, f"rlaif.stage.{stage}", digest)


def _without(client, run, stage: str):
    """MLflow never changes a logged param nor drops a point, so a stage whose figures changed (a
    rerun with a larger --ppo.steps, `rlaif evaluate` with other settings) moves the run's other
    stages to a new run of the same name; the old run is deleted (the UI can restore it)."""
    from mlflow.entities import Param

    old, tags = run.info.run_id, run.data.tags
    mine = set(tags.get(f"rlaif.stage.{stage}.keys", "").split("\n"))
    new = client.create_run(run.info.experiment_id, run_name=run.info.run_name, tags={
        k: v for k, v in tags.items() if not k.startswith(("mlflow.", f"rlaif.stage.{stage}")) and k not in mine})
    client.log_batch(new.info.run_id,
                     params=[Param(k, v) for k, v in run.data.params.items() if not k.startswith(f"{stage}.")],
                     metrics=[m for k in run.data.metrics if k not in mine for m in client.get_metric_history(old, k)])
    with tempfile.TemporaryDirectory() as tmp:
        for a in client.list_artifacts(old):
            if a.path != stage:
                client.log_artifact(new.info.run_id, client.download_artifacts(old, a.path, tmp))
    client.delete_run(old)
    return client.get_run(new.info.run_id)


def _key(name: str) -> str:
    """A figure's name as MLflow takes it (letters, digits, _ - . / : and spaces)."""
    return re.sub(r"[^/\w.\- :]", "_", name)


def _shown(uri: str) -> str:
    """The URI without its credentials (https://user:password@host), for messages."""
    u = urlsplit(uri)
    return u._replace(netloc=u.netloc.rpartition("@")[2]).geturl() if "@" in u.netloc else uri


def _safely(ctx: RunContext, what: str, where: str, log) -> None:
    """Run `log()`; on an error, warn once for this run and destination and skip that
    destination for the rest of the run (a server that is down is not waited on again)."""
    if (ctx.run_id, where) in _failed:
        return
    try:
        log()
    except Exception as e:  # noqa: BLE001 - tracking must never fail the run
        _failed.add((ctx.run_id, where))
        detail = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        warn(f"{what} tracking at {where} failed ({detail}); run {ctx.run_id} goes on without it, and its "
             f"later stages are not sent there")
