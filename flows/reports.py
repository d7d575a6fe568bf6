"""The Markdown a run publishes: the headline, report.md and the stage summaries (Prefect
artifacts), the reward-KL table and compare.md. Pure text from typed results; the flows
write and publish it."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from flows.config import RunContext
from flows.results import Stages

# label -> (stage, metric): the numbers a run opens with
HEADLINE = {
    "pairs labelled": ("feedback", "judge/valid_pairs"),
    "position consistency": ("feedback", "judge/position_consistency"),
    "reward model held-out accuracy": ("reward", "rm/accuracy"),
    "PPO score (last step)": ("ppo", "objective/scores"),
    "PPO KL (last step)": ("ppo", "objective/kl"),
    "PPO RLHF reward (last step)": ("ppo", "objective/rlhf_reward"),
    "held-out win rate vs reference": ("evaluate", "eval/win_rate"),
    "win rate 95% CI low": ("evaluate", "eval/win_rate_ci_low"),
    "win rate 95% CI high": ("evaluate", "eval/win_rate_ci_high"),
    "held-out ties (the judge's two orders disagree)": ("evaluate", "eval/ties"),
    "win rate at equal length": ("evaluate", "eval/win_rate_length_corrected"),
    "harmlessness rate, policy": ("evaluate", "eval/policy_harmless_rate"),
    "harmlessness rate, reference": ("evaluate", "eval/reference_harmless_rate"),
    "KL to reference (held-out)": ("evaluate", "eval/kl"),
    "over-optimisation flagged": ("evaluate", "eval/overoptimisation"),
}


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def headline(stages: Stages) -> dict:
    """The headline figures of the stages that ran (the feedback and training flows run some only)."""
    ran = stages.ran()
    return {label: ran[stage].get(metric) for label, (stage, metric) in HEADLINE.items() if stage in ran}


def aligned(rows: dict, indent: str = "  ") -> list[str]:
    """`label  value` lines with the values in one column, whatever the labels' lengths."""
    width = max(map(len, rows), default=0) + 2
    return [f"{indent}{k:<{width}}{fmt(v)}" for k, v in rows.items()]


def summary_markdown(title: str, summary: dict, paths: dict | None = None) -> str:
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt(v)} |" for k, v in summary.items()]
    if paths:
        lines += ["", *[f"- {k}: `{v}`" for k, v in paths.items()]]
    return "\n".join(lines)


def curve_markdown(curve: pd.DataFrame, flagged: bool) -> str:
    lines = ["| PPO step | KL (nats) | RM score | win rate | 95% CI |", "|---|---|---|---|---|"]
    lines += [f"| {r.step} | {fmt(r.kl)} | {fmt(r.rm_score)} | {fmt(r.win_rate)} | {fmt(r.ci_low)}-{fmt(r.ci_high)} |"
              for r in curve.itertuples()]
    verdict = ("**Over-optimisation:** the reward-model score rose while the judged win rate fell; "
               "the policy is gaming the reward model." if flagged else
               "No over-optimisation flagged (the proxy did not rise while the judged win rate fell).")
    return "\n".join(["### Reward-model score and win rate against KL", "", *lines, "", verdict])


def report_markdown(ctx: RunContext, constitution_name: str, stages: Stages) -> list[str]:
    """report.md's lines: the run, the headline, then each stage's figures, tables and plots."""
    lines = [
        f"# RLAIF run `{ctx.run_id}`", "",
        f"- constitution: **{constitution_name}** (`{ctx.constitution_path}`)",
        f"- constitution_sha: `{ctx.constitution_sha}`",
        f"- policy / reference: `{ctx.policy_model}` ({ctx.policy_engine.kind} engine); judge: `{ctx.judge.model}` "
        f"({ctx.judge.engine.kind} engine); device: {ctx.runtime.device}, {ctx.runtime.dtype_name}",
        f"- finished: {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
        "## Headline", "", "| | |", "|---|---|",
        *[f"| {k} | {fmt(v)} |" for k, v in headline(stages).items()],
    ]
    for name, result in stages.ran().items():
        paths = {k: v for k, v in result.model_dump().items() if isinstance(v, str)}
        lines += ["", f"## {name}", "", "| | |", "|---|---|",
                  *[f"| `{k}` | {fmt(v)} |" for k, v in {**result.metrics, **paths}.items()]]
        if name == "evaluate" and result.curve:
            lines += ["", curve_markdown(pd.DataFrame(result.curve), bool(result.get("eval/overoptimisation")))]
        # the PNGs sit next to report.md; the UI cannot show a local file
        lines += ["", *[f"![{name}: {k}]({Path(v).name})" for k, v in result.plots.items()]]
    return lines


def compare_markdown(cid: str, names: dict[str, str], table: pd.DataFrame, agreement: dict,
                     differ: dict, samples: pd.DataFrame) -> str:
    lines = [f"# Constitution A/B `{cid}`", "",
             *[f"- **{n}**: `{path}`" for n, path in names.items()], "",
             "## How each trained policy fares under each constitution", "",
             "Each trained policy against the shared reference, on the same held-out prompts and seeds,",
             "judged under each constitution (its judge prompts and its principles; the reward-model",
             "score is that constitution's reward model). A pair is a win or a loss only when the judge",
             "picks the same answer in both orders; otherwise it is a tie, counted as half a win.", "",
             "| trained under | judged under | compared | wins / losses / ties | win rate | 95% CI | at equal length "
             "| harmless (policy) | harmless (reference) | RM score | length (tokens) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.trained_under} | {r.judged_under} | {r.compared} | {r.wins} / {r.losses} / {r.ties} "
              f"| {fmt(r.win_rate)} | {fmt(r.win_rate_ci_low)}-{fmt(r.win_rate_ci_high)} "
              f"| {fmt(r.win_rate_length_corrected)} | {fmt(r.policy_harmless_rate)} "
              f"| {fmt(r.reference_harmless_rate)} | {fmt(r.policy_score)} | {fmt(r.policy_length)} |"
              for r in table.itertuples()]
    lines += ["", "## What the swap changed", ""]
    lines += [f"- Feedback: on the {a['pairs']} pairs both judged, the **{x}** and **{y}** judges chose the same "
              f"response on {a['same']} ({a['same_choice']:.0%}); the correlation of their P(a better) is "
              f"{fmt(a['p_correlation'])}."
              for (x, y), a in agreement.items()]
    lines += [f"- Behaviour: the policies trained under **{x}** and **{y}** answer differently on {k} of {n} "
              "held-out prompts (same sampling seeds)." for (x, y), (k, n) in differ.items()]
    lines += ["", "## Sample responses to the same prompts", ""]
    for prompt, group in samples.groupby("prompt", sort=False):
        lines += [f"**Prompt:** {prompt}", ""]
        lines += [f"- *{who}:* {text[:400]}" for who, text in zip(group["who"], group["response"])]
        lines += [""]
    return "\n".join(lines) + "\n"

