"""Stage 5: held-out evaluation of the trained policy and PPO's snapshots against the reference."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from flows.common import MODEL_TASK, cached, figure, fmt, publish_samples, save_figure, summary_markdown
from judges.backends import make_judge
from rlaif.config import RunContext
from rlaif.evaluate import EvalConfig, evaluate
from rlaif.paths import report_dir
from rlaif.models import load_tokenizer
from rlaif.prompts import fit_to_context, load_prompts
from rlaif.store import Store
from training.ppo import snapshot_dirs


def policy_step(policy: str) -> int:
    """PPO steps behind a saved policy (-1: not a PPO output)."""
    kl = Path(policy) / "kl_controller.json"
    return int(json.loads(kl.read_text())["steps"]) if kl.exists() else -1


def plot_eval(rows: pd.DataFrame, path: Path, title: str) -> str:
    """Reward-model score and response length, reference vs policy, on the same prompts."""
    fig, (ax_rm, ax_len) = figure(2, width=4.5)
    for who, colour in (("reference", "tab:gray"), ("policy", "tab:blue")):
        ax_rm.hist(rows[f"{who}_score"], bins=12, alpha=0.6, color=colour, label=who)
        ax_len.hist(rows[f"{who}_n_tokens"], bins=12, alpha=0.6, color=colour, label=who)
    ax_rm.set(title="reward-model score", xlabel="score (std units on the reference)", ylabel="responses")
    ax_len.set(title="response length", xlabel="tokens", ylabel="responses")
    for ax in (ax_rm, ax_len):
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def plot_reward_kl(curve: pd.DataFrame, path: Path, title: str, flagged: bool) -> str:
    """The over-optimisation curve: the proxy (reward-model score) and the judged win rate
    against KL, one point per policy, labelled by PPO step."""
    fig, (ax_rm, ax_win) = figure(2, width=4.5)
    ax_rm.plot(curve["kl"], curve["rm_score"], marker="o", color="tab:blue", label="reward model (proxy)")
    # (2, N); NaN (the reference point) drawn without a bar, rounding never a negative length
    err = np.clip(np.nan_to_num([curve["win_rate"] - curve["ci_low"], curve["ci_high"] - curve["win_rate"]]), 0, None)
    ax_win.errorbar(curve["kl"], curve["win_rate"], yerr=err, marker="o", color="tab:orange",
                    capsize=3, label="judge win rate vs reference (95% CI)")
    ax_win.axhline(0.5, color="gray", lw=0.8, ls="--", label="parity")
    for ax in (ax_rm, ax_win):
        for _, r in curve.iterrows():
            ax.annotate(f"step {r['step']}", (r["kl"], r["rm_score"] if ax is ax_rm else r["win_rate"]),
                        fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("KL to reference (nats per response)")
        ax.legend(fontsize=7)
    ax_rm.set(title="proxy reward", ylabel="mean RM score (std units)")
    ax_win.set(title="judged quality" + (" - OVER-OPTIMISED" if flagged else ""), ylabel="win rate")
    return save_figure(fig, path, title)


def curve_markdown(curve: pd.DataFrame, flagged: bool) -> str:
    lines = ["| PPO step | KL (nats) | RM score | win rate | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r.step} | {fmt(r.kl)} | {fmt(r.rm_score)} | {fmt(r.win_rate)} | {fmt(r.ci_low)}-{fmt(r.ci_high)} |"
              for r in curve.itertuples()]
    verdict = ("**Over-optimisation:** the reward-model score rose while the judged win rate fell; "
               "the policy is gaming the reward model." if flagged else
               "No over-optimisation flagged (the proxy did not rise while the judged win rate fell).")
    return "\n".join(["### Reward-model score and win rate against KL", "", *lines, "", verdict])


@task(**MODEL_TASK)
def evaluate_task(ctx: RunContext, cfg: EvalConfig, policy: str, reward_model: str) -> dict:
    prompts = fit_to_context(load_prompts(ctx.prompts, split="eval", limit=cfg.n_prompts),
                             load_tokenizer(ctx.policy_model))
    snapshots = [(step, str(p)) for step, p in snapshot_dirs(policy)] if cfg.snapshots else []
    rows, summary, curve = evaluate(prompts, ctx.policy_model, [*snapshots, (policy_step(policy), policy)],
                                    make_judge(ctx.judge), load_constitution(ctx.constitution_path),
                                    reward_model, cfg)
    # one part per (run, policy, settings): evaluating a run again with other settings adds a
    # part beside the first; the same settings replace it
    what = json.dumps([cfg.model_dump(), policy, reward_model, ctx.judge.model_dump(), ctx.constitution_sha],
                      sort_keys=True, default=str)
    path = Store(ctx.data).write("eval", rows, key=f"{ctx.run_id}/eval/{hashlib.sha256(what.encode()).hexdigest()[:12]}",
                                 lineage=ctx.lineage(policy_model=policy, judge_model=ctx.judge.model),
                                 metadata={"config": cfg.model_dump(), "curve": curve.to_dict("records")})
    return {"eval": str(path), **summary, "curve": curve.to_dict("records")}


@task
def evaluation_plots(ctx: RunContext, result: dict) -> dict:
    """The PNGs and the curve table, outside the model task: a plotting error never throws
    the evaluation away."""
    rows = Store(ctx.data).read_part("eval", result["eval"]).to_pandas()
    curve, flagged = pd.DataFrame(result["curve"]), bool(result["eval/overoptimisation"])
    out = report_dir(ctx.data, ctx.run_id)
    return {"plot": plot_eval(rows[rows["final"]], out / "eval.png", f"held-out evaluation, run {ctx.run_id}"),
            "plot_reward_kl": plot_reward_kl(curve, out / "reward_kl.png",
                                             f"reward vs KL across PPO, run {ctx.run_id}", flagged),
            "curve_markdown": curve_markdown(curve, flagged)}


@flow(name="rlaif-evaluate", log_prints=True)
def evaluate_flow(ctx: RunContext, policy: str, reward_model: str, cfg: EvalConfig = EvalConfig()) -> dict:
    evaluation = cached(evaluate_task, ctx)(ctx, cfg, policy, reward_model)
    result = {k: v for k, v in evaluation.items() if k != "curve"} | evaluation_plots(ctx, evaluation)
    markdown = summary_markdown("Evaluation on held-out prompts",
                                {k: v for k, v in result.items() if k.startswith("eval/")},
                                {k: result[k] for k in ("eval", "plot", "plot_reward_kl")})
    create_markdown_artifact(key="evaluate-summary", markdown=markdown + "\n\n" + result["curve_markdown"],
                             description="Evaluation on held-out prompts")
    rows = Store(ctx.data).read_part("eval", result["eval"]).to_pandas()
    publish_samples("evaluate-samples", "Policy vs reference on held-out prompts", rows[rows["final"]],
                    ["prompt", "policy_response", "reference_response", "p_policy_better",
                     "policy_score", "reference_score", "policy_harmless", "reference_harmless"])
    return result
