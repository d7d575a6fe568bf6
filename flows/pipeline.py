"""The parent flow: generate -> feedback -> [SFT] -> reward model -> PPO -> evaluate, as subflows."""

from __future__ import annotations

import json
import os
from pathlib import Path

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import check_markers, load_constitution
from constitution.loader import check_allowed, resolve_path
from flows.config import PipelineConfig, RunContext, RunError, new_run_id
from flows.evaluate import evaluate_flow
from flows.feedback import feedback_flow
from flows.generate import generate_flow
from flows.policies import collected_parts, promotion_gate, sample_champion
from flows.reports import headline, report_markdown
from flows.results import RunResult, Stages
from flows.tracking import track_report, track_stage
from flows.train import ppo_flow, reward_flow, sft_flow
from evaluation.probes import load_refusal_patterns
from judges.human_eval import read_hh_pairs
from judges.templates import prompt_markers
from rlaif.io import write_text_atomic
from rlaif.models import load_tokenizer, resolve_model
from rlaif.prompts import load_prompts
from rlaif.runtime import resolve
from rlaif.store import Store


@task
def prepare_run(config: PipelineConfig) -> RunContext:
    """Fail fast on bad inputs before any model work: constitution, prompts, models, data root."""
    from prefect.runtime import deployment

    if deployment.id:  # the parameters came through the Prefect API: files from allowed folders only
        from evaluation.probes import ProbeError
        from judges.human_eval import PairsFileError
        from rlaif.paths import INPUT_DIRS_ENV, check_allowed as check_input
        from rlaif.prompts import PromptError, default_prompts_path
        from training.config import SHIPPED_ACCELERATE_CONFIGS

        check_allowed(config.constitution)
        for parameter, path, shipped, error in (
                ("prompts", config.prompts, [default_prompts_path().parent], PromptError),
                ("feedback.calibration", config.feedback.calibration, [], PairsFileError),
                ("eval.refusal_patterns", config.eval.refusal_patterns, [], ProbeError),
                ("train.accelerate_config", config.train.accelerate_config, [SHIPPED_ACCELERATE_CONFIGS], RunError)):
            if path:
                check_input(path, parameter=parameter, env=INPUT_DIRS_ENV, shipped=shipped, error=error)
        # nor may they pick what the worker sends where: its environment's secrets, its tracking
        check_deployment_parameters(config)
    constitution = load_constitution(config.constitution)
    load_prompts(config.prompts, split="train")
    load_prompts(config.prompts, split="eval")
    for name in {config.policy_model, config.judge.model}:
        resolve_model(name)
    # A principle must not carry the prompt markers of the models that read it: the judge's, and
    # the critic's (critiques and revisions use its chat template).
    critic = config.judge.model if config.feedback.critic == "judge" else config.policy_model
    for name in {config.judge.model, critic}:
        check_markers(constitution, resolve_path(config.constitution), prompt_markers(load_tokenizer(name)), name)
    if config.ray_address:
        try:
            import prefect_ray  # noqa: F401
        except ImportError:
            raise RunError(f"--ray-address {config.ray_address!r} needs prefect-ray: "
                           "pip install -e '.[ray]' (make setup installs it)") from None
    if config.feedback.calibration:  # a missing or malformed calibration file fails here, not after labelling
        read_hh_pairs(config.feedback.calibration, limit=1)
    load_refusal_patterns(config.eval.refusal_patterns)
    Store(config.data).check_writable()
    Store(config.data).sweep_stale()  # what killed writes left; never a part another run is writing
    resolve(config.device, config.dtype)  # a device this machine lacks fails here, before any work
    check_launch(config)
    return RunContext(
        run_id=config.run_id or new_run_id(), data=str(config.data),
        constitution_path=str(resolve_path(config.constitution).resolve()),
        constitution_sha=constitution.sha, prompts=config.prompts,
        policy_model=config.policy_model, judge=config.judge, policy_engine=config.policy_engine,
        device=config.device, dtype=config.dtype, train=config.train,
        mlflow_tracking_uri=config.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or None,
    )


def check_deployment_parameters(config: PipelineConfig) -> None:
    """What a run's parameters may not choose when they come through the Prefect API: which of
    the worker's environment variables is sent as a judge's API key (only RLAIF_* ones), and
    where the worker logs its runs (MLFLOW_TRACKING_URI where it runs, not a parameter)."""
    for who, engine in (("judge", config.judge.engine), ("policy-engine", config.policy_engine)):
        env = getattr(engine, "api_key_env", None)
        if env and not env.startswith("RLAIF_"):
            raise RunError(f"{who}.engine.api-key-env {env!r}: a deployment run may send only an RLAIF_* variable "
                           "of the worker's environment as an API key; name the key RLAIF_... where the flow runs")
    if config.mlflow_tracking_uri:
        raise RunError("--mlflow-tracking-uri: a deployment run logs where MLFLOW_TRACKING_URI points on the "
                       "machine that runs it; its parameters may not choose another destination")


def check_launch(config: PipelineConfig) -> None:
    """Settings that training across processes, or one process's engines, cannot honour fail
    before any model work."""
    if (config.ppo.reward_source != "reward_model" and config.policy_engine.kind == "vllm"
            and config.judge.engine.kind == "vllm"):
        raise RunError(f"--ppo.reward-source {config.ppo.reward_source} needs the judge during PPO's vLLM rollouts, "
                       "and vLLM runs one engine per process: put the judge on judge.engine:transformers (or "
                       "openai), or the policy on policy-engine:transformers")
    train = config.train
    if train.accelerate_config and not Path(train.accelerate_config).is_file():
        raise RunError(f"--train.accelerate-config {train.accelerate_config!r}: no such file")
    if not train.launched:
        return
    if config.ppo.reward_source != "reward_model":
        raise RunError(f"--ppo.reward-source {config.ppo.reward_source} runs in one process: the judge lives in "
                       "the flow's process; use --train.num-processes 1, or the reward model")
    if config.policy_engine.kind != "transformers":
        raise RunError(f"PPO across processes rolls out with the transformers engine in each rank, not "
                       f"policy-engine:{config.policy_engine.kind}; use policy-engine:transformers "
                       "or --train.num-processes 1")


@task
def write_report(ctx: RunContext, stages: Stages, name: str = "report.md") -> str:
    lines = report_markdown(ctx, Path(ctx.constitution_path).stem, stages)
    out = write_text_atomic(ctx.layout.reports / name, "\n".join(lines) + "\n")
    in_ui = "\n".join(line for line in lines if not line.startswith("![")) + "\n"  # the UI cannot show a local PNG
    create_markdown_artifact(key="pipeline-report", markdown=in_ui, description=f"run {ctx.run_id}")
    return str(out)


@task
def judge_gate(cfg, feedback) -> None:
    """--feedback.judge-gate stop: no training on the labels of a judge that cannot be told
    apart from chance or from the length rule (the feedback stage's data stays)."""
    reasons = str(feedback.get("judge/gate_reasons"))
    if cfg.judge_gate == "stop" and reasons and reasons != "nan":
        raise RunError(f"judge gate: the judge cannot be told apart from {reasons}; stopping before training "
                       "(the generated responses and labels are kept; --feedback.judge-gate warn trains anyway)")


@task
def locate_run(ctx: RunContext, policy: str | None, reward_model: str | None) -> tuple[RunContext, str, str]:
    """The policy and reward model to evaluate (the run's own by default), and the reference:
    what PPO started from (the SFT model, if any), read from the policy's lineage."""
    policy, reward_model = policy or str(ctx.layout.policy), reward_model or str(ctx.layout.reward_model)
    for what, path in (("policy", policy), ("reward model", reward_model)):
        if not Path(path).is_dir():
            raise RunError(f"evaluate: no {what} at {path} (run {ctx.run_id}, constitution "
                           f"{Path(ctx.constitution_path).stem}); did that run finish?")
    lineage = Path(policy) / "lineage.json"
    if lineage.exists():
        ctx = ctx.model_copy(update={"policy_model": json.loads(lineage.read_text())["policy_model"]})
    return ctx, policy, reward_model


@flow(name="rlaif-feedback-collection", log_prints=True)
def feedback_pipeline(config: PipelineConfig = PipelineConfig()) -> RunResult:
    """Generate and label only (stages 1-2): the nightly collection job. It samples the
    constitution's champion (the base model until one is promoted)."""
    ctx = sample_champion(prepare_run(config))
    return finish(ctx, collect_stages(ctx, config))


@flow(name="rlaif-pipeline", log_prints=True)
def pipeline(config: PipelineConfig = PipelineConfig()) -> RunResult:
    ctx = prepare_run(config)
    stages = collect_stages(ctx, config)
    judge_gate(config.feedback, stages.feedback)
    ctx, stages = train_stages(ctx, config, stages, [stages.feedback.preferences],
                               [stages.generate.responses], [stages.feedback.critiques])
    return finish(ctx, stages)


@flow(name="rlaif-training", log_prints=True)
def training_pipeline(config: PipelineConfig = PipelineConfig()) -> RunResult:
    """The weekly retraining job: from the constitution's champion (the base model until one
    is promoted), [SFT ->] reward model -> PPO on the preferences collected on its samples
    (--promotion.train-on all: every run's), evaluated against the champion; the promotion
    gate then makes the new policy champion or records why not."""
    champion = sample_champion(prepare_run(config))
    parts = collected_parts(champion, config.promotion.train_on)
    ctx, stages = train_stages(champion, config, Stages(), parts["preferences"], parts["responses"],
                               parts["critiques"], eval_reference=champion)
    promotion = promotion_gate(champion, stages, config.promotion)
    track_stage(champion, "promotion", promotion, config.promotion)
    return finish(ctx, stages.model_copy(update={"promotion": promotion}))


@flow(name="rlaif-evaluation", log_prints=True)
def evaluation_pipeline(config: PipelineConfig, policy: str | None = None,
                        reward_model: str | None = None) -> RunResult:
    """Evaluate a finished run again (`config.run_id`; its checkpoints under the data root), or
    any policy and reward model folders. Writes `evaluation.md` beside the run's report."""
    if not config.run_id and not (policy and reward_model):
        raise RunError("evaluate: name the run (--run-id) or both --policy and --reward-model")
    ctx, policy, reward_model = locate_run(prepare_run(config), policy, reward_model)
    stages = Stages(evaluate=evaluate_flow(ctx, policy, reward_model, config.eval))
    return finish(ctx, stages, report_name="evaluation.md")


def collect_stages(ctx: RunContext, config: PipelineConfig) -> Stages:
    """generate -> feedback."""
    generated = generate_flow(ctx, config.generate)
    labelling = feedback_flow
    if config.ray_address:
        from prefect_ray import RayTaskRunner  # the `ray` extra

        labelling = feedback_flow.with_options(task_runner=RayTaskRunner(
            address=None if config.ray_address == "local" else config.ray_address))
    feedback = labelling(ctx, generated.responses, config.feedback, on_ray=bool(config.ray_address))
    return Stages(generate=generated, feedback=feedback)


def train_stages(ctx: RunContext, config: PipelineConfig, stages: Stages, preferences: list[str],
                 responses: list[str], critiques: list[str],
                 eval_reference: RunContext | None = None) -> tuple[RunContext, Stages]:
    """[SFT ->] reward model -> PPO -> evaluate, added to `stages`. The evaluation's reference is
    what PPO started from, or `eval_reference`'s policy (the training flow's champion)."""
    sft = None
    if config.sft.enabled:  # SL-CAI: later stages start from (and stay near) the SFT model
        sft = sft_flow(ctx, critiques, config.sft)
        ctx = ctx.model_copy(update={"policy_model": sft.policy})
    reward = reward_flow(ctx, preferences, responses, config.reward)
    ppo = ppo_flow(ctx, reward.reward_model, config.ppo, config.feedback)
    evaluation = evaluate_flow(ctx if eval_reference is None else ctx.model_copy(
        update={"policy_model": eval_reference.policy_model}), ppo.policy, reward.reward_model, config.eval)
    return ctx, stages.model_copy(update={"sft": sft, "reward": reward, "ppo": ppo, "evaluate": evaluation})


def finish(ctx: RunContext, stages: Stages, report_name: str = "report.md") -> RunResult:
    report = write_report(ctx, stages, report_name)
    track_report(ctx, report)
    return RunResult(run_id=ctx.run_id, constitution_sha=ctx.constitution_sha, data=str(Path(ctx.data).resolve()),
                     checkpoints=str(ctx.layout.checkpoints.resolve()), report=str(Path(report).resolve()),
                     stages=stages, headline=headline(stages))
