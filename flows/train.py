"""Training stages: optional SFT on the revisions, the reward model, then PPO (or RLOO, GRPO)
against it, or against the judge itself."""

from __future__ import annotations

import hashlib

import pandas as pd
from prefect import flow, task

from constitution import load_constitution
from flows.common import MODEL_TASK, Progress, cached, publish
from flows.config import RunContext
from flows.plots import plot_metrics
from flows.results import PPOResult, RewardResult, SFTResult
from flows.tracking import track_stage
from judges.judge import make_judge
from judges.config import FeedbackConfig
from judges.feedback import judge_reward, tournament_reward
from rlaif.models import load_tokenizer
from rlaif.prompts import assert_no_eval, eval_prompt_ids, fit_to_context, load_prompts
from rlaif.store import Store
from training.config import PPOConfig, RewardConfig, SFTConfig
from training.distributed import run_stage
from training.ppo import train_ppo
from training.reward import train_reward_model
from training.sft import train_sft


def lineage(ctx: RunContext, **extra) -> dict:
    """What a checkpoint's lineage.json records about the run that wrote it."""
    return {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
            "constitution_path": ctx.constitution_path, "judge_model": ctx.judge.model, **extra}


@task(**MODEL_TASK)
def sft_task(ctx: RunContext, cfg: SFTConfig, critiques_paths: list[str]) -> SFTResult:
    store = Store(ctx.data)
    critiques = store.read_parts("critiques", critiques_paths)
    assert_no_eval(critiques, "sft", eval_prompt_ids(ctx.prompts))
    out = ctx.layout.sft
    summary, metrics = run_stage(train_sft, dict(critiques=critiques, policy_model=ctx.policy_model, out_dir=out,
                                                 cfg=cfg, lineage=lineage(ctx, inputs=critiques_paths)),
                                 ctx.train, ctx.runtime, ctx.layout.launch("sft"))
    path = store.write("sft_metrics", pd.DataFrame(metrics).assign(model=str(out)), key=f"{ctx.run_id}/sft_metrics",
                       lineage=ctx.lineage(), metadata={"config": cfg.model_dump(), "inputs": critiques_paths})
    return SFTResult(policy=str(out), sft_metrics=str(path), metrics=summary)


@task(**MODEL_TASK)
def reward_task(ctx: RunContext, cfg: RewardConfig, preferences_paths: list[str],
                responses_paths: list[str]) -> RewardResult:
    store = Store(ctx.data)
    prefs = store.read_parts("preferences", preferences_paths)
    reference = store.read_parts("responses", responses_paths)
    held_out = eval_prompt_ids(ctx.prompts)
    assert_no_eval(prefs, "reward model", held_out)
    assert_no_eval(reference, "reward model", held_out)
    out = ctx.layout.reward_model
    summary, metrics = run_stage(train_reward_model, dict(
        prefs=prefs, reference_responses=reference, base_model=ctx.policy_model, out_dir=out, cfg=cfg,
        lineage=lineage(ctx, inputs=[*preferences_paths, *responses_paths])), ctx.train, ctx.runtime,
        ctx.layout.launch("reward_model"))
    df = pd.DataFrame(metrics).assign(reward_model=str(out))
    path = store.write("rm_metrics", df, key=f"{ctx.run_id}/rm_metrics",
                       lineage=ctx.lineage(judge_model=ctx.judge.model), metadata={"config": cfg.model_dump()})
    plot = plot_metrics(df, ["rm/loss"], ctx.layout.reports / "reward_model.png", f"reward model, run {ctx.run_id}")
    return RewardResult(reward_model=str(out), rm_metrics=str(path), metrics=summary, plots={"plot": plot})


def tournament_pairs_writer(ctx: RunContext, cfg: PPOConfig, feedback: FeedbackConfig):
    """Stores each rollout's judged tournament pairs as `preferences`, one part per batch, keyed
    by its pairs: a resumed run that judges the same batch again replaces its part."""
    store = Store(ctx.data)

    def write(pairs: pd.DataFrame) -> None:
        key = hashlib.sha256("\n".join(pairs["pair_id"]).encode()).hexdigest()[:16]
        store.write("preferences", pairs, key=f"{ctx.run_id}/ppo-tournament/{key}",
                    lineage=ctx.lineage(judge_model=ctx.judge.model),
                    metadata={"source": f"{cfg.algorithm} rollouts judged as a tournament (reward_source tournament)",
                              "config": feedback.model_dump(), "ppo_config": cfg.model_dump()})

    return write


@task(**MODEL_TASK)
def ppo_task(ctx: RunContext, cfg: PPOConfig, reward_model: str, feedback: FeedbackConfig = FeedbackConfig()) -> PPOResult:
    prompts = fit_to_context(load_prompts(ctx.prompts, split="train"), load_tokenizer(ctx.policy_model))
    assert_no_eval(prompts, "ppo")
    out = ctx.layout.policy
    extra, scorer, judge, judge_model = {"reward_source": cfg.reward_source}, None, None, ""
    if cfg.reward_source != "reward_model":  # the judge's rewards, passed in
        judge = make_judge(ctx.judge, ctx.runtime)
        constitution = load_constitution(ctx.constitution_path)
        if cfg.reward_source == "judge":  # d-RLAIF: its direct rating
            scorer = judge_reward(judge, constitution, cfg.seed)
        else:  # head to head within each group, the pairs stored as preferences
            scorer = tournament_reward(judge, constitution, feedback, cfg.group_size,
                                       dict(zip(prompts["prompt"], prompts["prompt_id"])),
                                       on_pairs=tournament_pairs_writer(ctx, cfg, feedback))
        judge_model = extra["judge_model"] = ctx.judge.model
    # across processes the ranks report to their own terminal: no per-step artifact, no judge;
    # and PPO shards with DDP only (its reference pass reaches inside the model FSDP would shard)
    train = ctx.train.model_copy(update={"strategy": "ddp"})
    if ctx.train.strategy != "ddp" and train.launched:
        print(f"ppo: --train.strategy {ctx.train.strategy} applies to SFT and the reward model; PPO runs with DDP")
    progress = (None if ctx.train.launched else
                Progress("ppo-progress", cfg.steps, "PPO steps", ("objective/scores", "objective/kl")))
    try:
        metrics = run_stage(train_ppo, dict(prompts=prompts, policy_model=ctx.policy_model, reward_model=reward_model,
                                            out_dir=out, cfg=cfg, lineage=lineage(ctx, **extra), scorer=scorer,
                                            on_step=progress, engine=ctx.policy_engine),
                            train, ctx.runtime, ctx.layout.launch("ppo"))
    finally:
        if judge is not None:
            judge.close()
    df = pd.DataFrame(metrics).assign(reward_model=reward_model)
    path = Store(ctx.data).write("ppo_metrics", df, key=f"{ctx.run_id}/ppo_metrics",
                                 lineage=ctx.lineage(judge_model=judge_model), metadata={"config": cfg.model_dump()})
    plot = plot_metrics(df, ["objective/scores", "objective/kl", "objective/kl_coef", "objective/rlhf_reward"],
                        ctx.layout.reports / "ppo.png", f"PPO, run {ctx.run_id}")
    last = df[(df["step"] == df["step"].max()) & (df["metric"].str.startswith(("objective/", "ppo/")))]
    return PPOResult(policy=str(out), ppo_metrics=str(path), plots={"plot": plot}, algorithm=cfg.algorithm,
                     reward_source=cfg.reward_source, metrics=dict(zip(last["metric"], last["value"])))


@flow(name="rlaif-sft", log_prints=True)
def sft_flow(ctx: RunContext, critiques_paths: list[str], cfg: SFTConfig = SFTConfig()) -> SFTResult:
    result = cached(sft_task, ctx)(ctx, cfg, critiques_paths)
    publish("sft-summary", "SFT on the final revisions", result.metrics,
            {"model": result.policy, "metrics": result.sft_metrics})
    track_stage(ctx, "sft", result, cfg)
    return result


@flow(name="rlaif-reward-model", log_prints=True)
def reward_flow(ctx: RunContext, preferences_paths: list[str], responses_paths: list[str],
                cfg: RewardConfig = RewardConfig()) -> RewardResult:
    result = cached(reward_task, ctx)(ctx, cfg, preferences_paths, responses_paths)
    publish("reward-model-summary", "Reward model", result.metrics,
            {"checkpoint": result.reward_model, "metrics": result.rm_metrics, **result.plots})
    track_stage(ctx, "reward", result, cfg)
    return result


@flow(name="rlaif-ppo", log_prints=True)
def ppo_flow(ctx: RunContext, reward_model: str, cfg: PPOConfig = PPOConfig(),
             feedback: FeedbackConfig = FeedbackConfig()) -> PPOResult:
    """`feedback`: the judging settings of a tournament reward (cfg.reward_source tournament)."""
    result = cached(ppo_task, ctx)(ctx, cfg, reward_model, feedback)
    publish("ppo-summary", f"{cfg.algorithm.upper()} (last step)", result.metrics,
            {"policy": result.policy, "metrics": result.ppo_metrics, **result.plots})
    track_stage(ctx, "ppo", result, cfg, reward_model=reward_model)
    return result
