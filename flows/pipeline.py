"""The parent flow: generate -> feedback -> [SFT] -> reward model -> PPO -> evaluate, as subflows."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from constitution.loader import check_allowed, resolve_path
from flows.common import fmt, write_text_atomic
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
    "win rate 95% CI low": ("evaluate", "eval/win_rate_ci_low"),
    "win rate 95% CI high": ("evaluate", "eval/win_rate_ci_high"),
    "held-out ties (the judge's two orders disagree)": ("evaluate", "eval/ties"),
    "win rate at equal length": ("evaluate", "eval/win_rate_length_corrected"),
    "harmlessness rate, policy": ("evaluate", "eval/policy_harmless_rate"),
    "harmlessness rate, reference": ("evaluate", "eval/reference_harmless_rate"),
    "KL to reference (held-out)": ("evaluate", "eval/kl"),
    "over-optimisation flagged": ("evaluate", "eval/overoptimisation"),
}


@task
def prepare_run(config: PipelineConfig) -> RunContext:
    """Fail fast on bad inputs before any model work: constitution, prompts, models, data root."""
    from prefect.runtime import deployment

    if deployment.id:  # the constitution came as a parameter through the Prefect API
        check_allowed(config.constitution)
    constitution = load_constitution(config.constitution)
    load_prompts(config.prompts, split="train")
    load_prompts(config.prompts, split="eval")
    for name in {config.policy_model, config.judge.model}:
        resolve_model(name)
    if config.ray_address:
        try:
            import prefect_ray  # noqa: F401
        except ImportError:
            raise ValueError(f"--ray-address {config.ray_address!r} needs prefect-ray: "
                             "pip install -e '.[ray]' (make setup installs it)") from None
    Store(config.data).check_writable()
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
def write_report(ctx: RunContext, constitution_name: str, stages: dict, name: str = "report.md") -> str:
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
                  *[f"| `{k}` | {fmt(v)} |" for k, v in result.items() if not k.endswith("markdown")]]
        lines += [v for k, v in result.items() if k.endswith("markdown")]  # e.g. the reward-KL table
        # the PNGs sit next to report.md; the UI cannot show a local file
        lines += ["", *[f"![{stage}: {k}]({Path(v).name})" for k, v in result.items() if k.startswith("plot")]]
    markdown = "\n".join(lines) + "\n"
    out = write_text_atomic(report_dir(ctx.data, ctx.run_id) / name, markdown)
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


@flow(name="rlaif-evaluation", log_prints=True)
def evaluation_pipeline(config: PipelineConfig, policy: str | None = None, reward_model: str | None = None) -> dict:
    """Evaluate a finished run again (`config.run_id`; its checkpoints under the data root), or
    any policy and reward model folders. Writes `evaluation.md` beside the run's report."""
    if not config.run_id and not (policy and reward_model):
        raise ValueError("evaluate: name the run (--run-id) or both --policy and --reward-model")
    ctx = prepare_run(config)
    run = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id)
    policy, reward_model = policy or str(run / "policy"), reward_model or str(run / "reward_model")
    for what, path in (("policy", policy), ("reward model", reward_model)):
        if not Path(path).is_dir():
            raise FileNotFoundError(f"evaluate: no {what} at {path} (run {ctx.run_id}, constitution "
                                    f"{Path(ctx.constitution_path).stem}); did that run finish?")
    lineage = Path(policy) / "lineage.json"
    if lineage.exists():  # the reference is what PPO started from (the SFT model, if any)
        ctx = ctx.model_copy(update={"policy_model": json.loads(lineage.read_text())["policy_model"]})
    stages = {"evaluate": evaluate_flow(ctx, policy, reward_model, config.eval)}
    return finish(ctx, stages, report_name="evaluation.md")


def collect_stages(ctx: RunContext, config: PipelineConfig) -> dict:
    """generate -> feedback; returns each stage's result."""
    stages: dict[str, dict] = {}
    stages["generate"] = generate_flow(ctx, config.generate)
    labelling = feedback_flow
    if config.ray_address:
        from prefect_ray import RayTaskRunner  # the `ray` extra

        labelling = feedback_flow.with_options(task_runner=RayTaskRunner(
            address=None if config.ray_address == "local" else config.ray_address))
    stages["feedback"] = labelling(ctx, stages["generate"]["responses"], config.feedback,
                                   on_ray=bool(config.ray_address))
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


def finish(ctx: RunContext, stages: dict, report_name: str = "report.md") -> dict:
    report = write_report(ctx, Path(ctx.constitution_path).stem, stages, report_name)
    return {
        "run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
        "data": str(Path(ctx.data).resolve()),
        "checkpoints": str(checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id).resolve()),
        "report": str(Path(report).resolve()), "headline": headline(stages), "stages": stages,
    }
