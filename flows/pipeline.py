"""The parent flow: generate -> feedback -> [SFT] -> reward model -> PPO -> evaluate, as subflows."""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from constitution.loader import resolve_path
from flows.common import fmt
from flows.evaluate import evaluate_flow
from flows.feedback import feedback_flow
from flows.generate import generate_flow
from flows.train import ppo_flow, reward_flow, sft_flow
from rlaif.config import PipelineConfig, RunContext, new_run_id
from rlaif.models import resolve_model
from rlaif.paths import checkpoint_dir, report_dir
from rlaif.prompts import load_prompts
from rlaif.store import Store

HEADLINE = {
    "pairs labelled": ("feedback", "judge/valid_pairs"),
    "position consistency": ("feedback", "judge/position_consistency"),
    "reward model held-out accuracy": ("reward", "rm/accuracy"),
    "PPO score (last step)": ("ppo", "objective/scores"),
    "PPO KL (last step)": ("ppo", "objective/kl"),
    "PPO RLHF reward (last step)": ("ppo", "objective/rlhf_reward"),
    "held-out win rate vs reference": ("evaluate", "eval/win_rate"),
}


@task
def prepare_run(config: PipelineConfig) -> RunContext:
    """Fail fast on bad inputs before any model work: constitution, prompts, models."""
    constitution = load_constitution(config.constitution)
    load_prompts(config.prompts, split="train")
    load_prompts(config.prompts, split="eval")
    for name in {config.policy_model, config.judge.model}:
        resolve_model(name)
    return RunContext(
        run_id=config.run_id or new_run_id(), data=str(config.data),
        constitution_path=str(resolve_path(config.constitution).resolve()),
        constitution_sha=constitution.sha, prompts=config.prompts,
        policy_model=config.policy_model, judge=config.judge,
    )


def headline(stages: dict) -> dict:
    return {label: stages[stage].get(key, float("nan")) for label, (stage, key) in HEADLINE.items()
            if stage in stages}  # the feedback and training flows run some stages only


@task
def write_report(ctx: RunContext, constitution_name: str, stages: dict) -> str:
    lines = [
        f"# RLAIF run `{ctx.run_id}`", "",
        f"- constitution: **{constitution_name}** (`{ctx.constitution_path}`)",
        f"- constitution_sha: `{ctx.constitution_sha}`",
        f"- policy / reference: `{ctx.policy_model}`; judge: `{ctx.judge.model}` ({ctx.judge.backend})",
        f"- finished: {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
        "## Headline", "", "| | |", "|---|---|",
        *[f"| {k} | {fmt(v)} |" for k, v in headline(stages).items()],
    ]
    for stage, result in stages.items():
        lines += ["", f"## {stage}", "", "| | |", "|---|---|",
                  *[f"| `{k}` | {fmt(v)} |" for k, v in result.items()]]
        if "plot" in result:  # the PNG sits next to report.md; the UI cannot show a local file
            lines += ["", f"![{stage}]({Path(result['plot']).name})"]
    markdown = "\n".join(lines) + "\n"
    out = report_dir(ctx.data, ctx.run_id) / "report.md"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(".report.md.tmp")
    tmp.write_text(markdown)
    os.replace(tmp, out)
    in_ui = "\n".join(line for line in lines if not line.startswith("![")) + "\n"
    create_markdown_artifact(key="pipeline-report", markdown=in_ui, description=f"run {ctx.run_id}")
    return str(out)


@flow(name="rlaif-feedback-collection", log_prints=True)
def feedback_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """Generate and label only (stages 1-2): the nightly collection job."""
    ctx = prepare_run(config)
    return finish(ctx, collect_stages(ctx, config))


@flow(name="rlaif-pipeline", log_prints=True)
def pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    ctx = prepare_run(config)
    stages = collect_stages(ctx, config)
    ctx = train_stages(ctx, config, stages, [stages["feedback"]["preferences"]],
                       [stages["generate"]["responses"]], [stages["feedback"]["critiques"]])
    return finish(ctx, stages)


@flow(name="rlaif-training", log_prints=True)
def training_pipeline(config: PipelineConfig = PipelineConfig()) -> dict:
    """[SFT ->] reward model -> PPO -> evaluate on everything collected so far for this
    constitution (every run's parts): the weekly retraining job."""
    ctx = prepare_run(config)
    parts = {t: [str(p) for p in Store(ctx.data).parts(t, ctx.constitution_sha)]
             for t in ("preferences", "responses", "critiques")}
    if not parts["preferences"]:
        raise ValueError(f"no preferences collected yet for constitution {ctx.constitution_path} "
                         f"(sha {ctx.constitution_sha[:12]}) under {ctx.data}; run the feedback flow first")
    stages: dict[str, dict] = {}
    ctx = train_stages(ctx, config, stages, parts["preferences"], parts["responses"], parts["critiques"])
    return finish(ctx, stages)


def collect_stages(ctx: RunContext, config: PipelineConfig) -> dict:
    """generate -> feedback; returns each stage's result."""
    stages: dict[str, dict] = {}
    stages["generate"] = generate_flow(ctx, config.generate)
    stages["feedback"] = feedback_flow(ctx, stages["generate"]["responses"], config.feedback)
    return stages


def train_stages(ctx: RunContext, config: PipelineConfig, stages: dict, preferences: list[str],
                 responses: list[str], critiques: list[str]) -> RunContext:
    """[SFT ->] reward model -> PPO -> evaluate, recording each stage's result in `stages`."""
    if config.sft.enabled:  # SL-CAI: later stages start from (and stay near) the SFT model
        stages["sft"] = sft_flow(ctx, critiques, config.sft)
        ctx = ctx.model_copy(update={"policy_model": stages["sft"]["policy"]})
    stages["reward"] = reward_flow(ctx, preferences, responses, config.reward)
    stages["ppo"] = ppo_flow(ctx, stages["reward"]["reward_model"], config.ppo)
    stages["evaluate"] = evaluate_flow(ctx, stages["ppo"]["policy"], stages["reward"]["reward_model"],
                                       config.eval)
    return ctx


def finish(ctx: RunContext, stages: dict) -> dict:
    report = write_report(ctx, Path(ctx.constitution_path).stem, stages)
    return {
        "run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
        "data": str(Path(ctx.data).resolve()),
        "checkpoints": str(checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id).resolve()),
        "report": str(Path(report).resolve()), "headline": headline(stages), "stages": stages,
    }
