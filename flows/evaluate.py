"""Stage 5: held-out evaluation of the trained policy and PPO's snapshots against the reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from evaluation.config import EvalConfig
from evaluation.evaluate import evaluate
from flows.common import MODEL_TASK, cached, publish_samples
from flows.config import RunContext
from flows.plots import plot_eval, plot_ladder, plot_reward_kl
from flows.reports import curve_markdown, ladder_markdown, probes_markdown, summary_markdown
from flows.results import EvalResult
from flows.tracking import track_stage
from judges.judge import make_judge
from rlaif.models import load_tokenizer
from rlaif.paths import snapshot_dirs
from rlaif.prompts import fit_to_context, load_prompts
from rlaif.store import Store


def policy_step(policy: str) -> int:
    """PPO steps behind a saved policy (-1: not a PPO output)."""
    kl = Path(policy) / "kl_controller.json"
    return int(json.loads(kl.read_text())["steps"]) if kl.exists() else -1


@task(**MODEL_TASK)
def evaluate_task(ctx: RunContext, cfg: EvalConfig, policy: str, reward_model: str) -> EvalResult:
    prompts = fit_to_context(load_prompts(ctx.prompts, split="eval", limit=cfg.n_prompts),
                             load_tokenizer(ctx.policy_model))
    snapshots = [(step, str(p)) for step, p in snapshot_dirs(policy)] if cfg.snapshots else []
    rows, summary, curve, probes, ladder, matches = evaluate(
        prompts, ctx.policy_model, [*snapshots, (policy_step(policy), policy)],
        lambda: make_judge(ctx.judge, ctx.runtime), load_constitution(ctx.constitution_path),
        reward_model, cfg, ctx.policy_engine, ctx.runtime)
    # one part per (run, policy, settings): evaluating a run again with other settings adds a
    # part beside the first; the same settings replace it
    what = json.dumps([cfg.model_dump(), policy, reward_model, ctx.judge.model_dump(), ctx.constitution_sha],
                      sort_keys=True, default=str)
    digest, store = hashlib.sha256(what.encode()).hexdigest()[:12], Store(ctx.data)
    lineage = ctx.lineage(policy_model=policy, judge_model=ctx.judge.model)
    ladder = ladder.to_dict("records")
    path = store.write("eval", rows, key=f"{ctx.run_id}/eval/{digest}", lineage=lineage,
                       metadata={"config": cfg.model_dump(), "curve": curve.to_dict("records"),
                                 "probes": probes.to_dict("records"), "ladder": ladder})
    # the ladder's policy-against-policy judgements, beside the eval part (none: no part)
    matches_path = (store.write("matches", matches, key=f"{ctx.run_id}/matches/{digest}", lineage=lineage,
                                metadata={"config": cfg.model_dump(), "eval": str(path)}) if len(matches) else None)
    return EvalResult(eval=str(path), metrics=summary, curve=curve.to_dict("records"),
                      probes=probes.to_dict("records"), ladder=ladder,
                      matches=str(matches_path) if matches_path else None)


@task
def evaluation_plots(ctx: RunContext, result: EvalResult) -> EvalResult:
    """The PNGs, outside the model task: a plotting error never throws the evaluation away."""
    rows = Store(ctx.data).read_part("eval", result.eval).to_pandas()
    curve, flagged = pd.DataFrame(result.curve), bool(result.get("eval/overoptimisation"))
    out = ctx.layout.reports
    return result.model_copy(update={"plots": {
        "plot": plot_eval(rows[rows["final"]], out / "eval.png", f"held-out evaluation, run {ctx.run_id}"),
        "plot_reward_kl": plot_reward_kl(curve, out / "reward_kl.png", f"reward vs KL across PPO, run {ctx.run_id}",
                                         flagged),
        **({"plot_ladder": plot_ladder(pd.DataFrame(result.ladder), out / "ladder.png",
                                       f"ladder of policies, run {ctx.run_id}, {rows['prompt_id'].nunique()} "
                                       "held-out prompts")} if result.ladder else {})}})


@task
def publish_evaluation(ctx: RunContext, result: EvalResult) -> None:
    markdown = summary_markdown("Evaluation on held-out prompts", result.metrics, {"eval": result.eval, **result.plots})
    curve = curve_markdown(pd.DataFrame(result.curve), bool(result.get("eval/overoptimisation")))
    probes = probes_markdown(pd.DataFrame(result.probes))
    ladder = ladder_markdown(pd.DataFrame(result.ladder)) if result.ladder else ""
    create_markdown_artifact(key="evaluate-summary", markdown="\n\n".join(filter(None, [probes, curve, ladder, markdown])),
                             description="Evaluation on held-out prompts")
    rows = Store(ctx.data).read_part("eval", result.eval).to_pandas()
    publish_samples("evaluate-samples", "Policy vs reference on held-out prompts", rows[rows["final"]],
                    ["prompt", "policy_response", "reference_response", "p_policy_better",
                     "policy_score", "reference_score", "policy_adherence", "reference_adherence",
                     "policy_refused", "reference_refused", "category"])


@flow(name="rlaif-evaluate", log_prints=True)
def evaluate_flow(ctx: RunContext, policy: str, reward_model: str, cfg: EvalConfig = EvalConfig()) -> EvalResult:
    result = evaluation_plots(ctx, cached(evaluate_task, ctx)(ctx, cfg, policy, reward_model))
    publish_evaluation(ctx, result)
    track_stage(ctx, "evaluate", result, cfg, judge=ctx.judge, policy=policy, reward_model=reward_model)
    return result
