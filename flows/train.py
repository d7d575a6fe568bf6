"""Training stages: optional SFT on the revisions, the reward model, then PPO against it."""

from __future__ import annotations

import pandas as pd
from prefect import flow, task

from constitution import load_constitution
from flows.common import MODEL_TASK, Progress, cached, plot_metrics, publish
from judges.backends import make_judge
from judges.feedback import judge_reward
from rlaif.config import RunContext
from rlaif.paths import checkpoint_dir, report_dir
from rlaif.models import load_tokenizer
from rlaif.prompts import assert_no_eval, fit_to_context, load_prompts
from rlaif.store import Store
from training.ppo import PPOConfig, train_ppo
from training.reward import RewardConfig, train_reward_model
from training.sft import SFTConfig, train_sft


def read_parts(store: Store, table: str, paths: list[str]) -> pd.DataFrame:
    if not paths:
        raise ValueError(f"no {table} parts to read")
    return pd.concat([store.read_part(table, p).to_pandas() for p in paths], ignore_index=True)


@task(**MODEL_TASK)
def sft_task(ctx: RunContext, cfg: SFTConfig, critiques_paths: list[str]) -> dict:
    store = Store(ctx.data)
    critiques = read_parts(store, "critiques", critiques_paths)
    assert_no_eval(critiques, "sft")
    out = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id) / "sft"
    lineage = {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha, "inputs": critiques_paths}
    summary, metrics = train_sft(critiques, ctx.policy_model, out, cfg, lineage)
    df = pd.DataFrame(metrics).assign(model=str(out))
    path = store.write("sft_metrics", df, key=f"{ctx.run_id}/sft_metrics", lineage=ctx.lineage(),
                       metadata={"config": cfg.model_dump(), "inputs": critiques_paths})
    return {"policy": str(out), "sft_metrics": str(path), **summary}


@task(**MODEL_TASK)
def reward_task(ctx: RunContext, cfg: RewardConfig, preferences_paths: list[str],
                responses_paths: list[str]) -> dict:
    store = Store(ctx.data)
    prefs = read_parts(store, "preferences", preferences_paths)
    reference = read_parts(store, "responses", responses_paths)
    assert_no_eval(reference, "reward model")
    out = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id) / "reward_model"
    lineage = {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
               "inputs": [*preferences_paths, *responses_paths]}
    summary, metrics = train_reward_model(prefs, reference, ctx.policy_model, out, cfg, lineage)
    df = pd.DataFrame(metrics).assign(text=None, reward_model=str(out))
    path = store.write("rm_metrics", df, key=f"{ctx.run_id}/rm_metrics",
                       lineage=ctx.lineage(judge_model=ctx.judge.model), metadata={"config": cfg.model_dump()})
    plot = plot_metrics(df, ["rm/loss"], report_dir(ctx.data, ctx.run_id) / "reward_model.png",
                        f"reward model, run {ctx.run_id}")
    return {"reward_model": str(out), "rm_metrics": str(path), "plot": plot, **summary}


@task(**MODEL_TASK)
def ppo_task(ctx: RunContext, cfg: PPOConfig, reward_model: str) -> dict:
    prompts = fit_to_context(load_prompts(ctx.prompts, split="train"), load_tokenizer(ctx.policy_model))
    assert_no_eval(prompts, "ppo")
    out = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id) / "policy"
    lineage = {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
               "reward_source": cfg.reward_source}
    scorer, judge_model = None, ""
    if cfg.reward_source == "judge":  # d-RLAIF: the judge's direct rating is the reward
        scorer = judge_reward(make_judge(ctx.judge), load_constitution(ctx.constitution_path), cfg.seed)
        judge_model = lineage["judge_model"] = ctx.judge.model
    progress = Progress("ppo-progress", cfg.steps, "PPO steps", ("objective/scores", "objective/kl"))
    metrics = train_ppo(prompts, ctx.policy_model, reward_model, out, cfg, lineage, scorer=scorer, on_step=progress)
    df = pd.DataFrame(metrics).assign(reward_model=reward_model)
    path = Store(ctx.data).write("ppo_metrics", df, key=f"{ctx.run_id}/ppo_metrics",
                                 lineage=ctx.lineage(judge_model=judge_model),
                                 metadata={"config": cfg.model_dump()})
    plot = plot_metrics(df, ["objective/scores", "objective/kl", "objective/kl_coef", "objective/rlhf_reward"],
                        report_dir(ctx.data, ctx.run_id) / "ppo.png", f"PPO, run {ctx.run_id}")
    last = df[(df["step"] == df["step"].max()) & (df["metric"].str.startswith(("objective/", "ppo/")))]
    return {"policy": str(out), "ppo_metrics": str(path), "plot": plot, **dict(zip(last["metric"], last["value"]))}


@flow(name="rlaif-sft", log_prints=True)
def sft_flow(ctx: RunContext, critiques_paths: list[str], cfg: SFTConfig = SFTConfig()) -> dict:
    result = cached(sft_task, ctx)(ctx, cfg, critiques_paths)
    publish("sft-summary", "SFT on the final revisions", {k: v for k, v in result.items() if k.startswith("sft/")},
            {"model": result["policy"], "metrics": result["sft_metrics"]})
    return result


@flow(name="rlaif-reward-model", log_prints=True)
def reward_flow(ctx: RunContext, preferences_paths: list[str], responses_paths: list[str],
                cfg: RewardConfig = RewardConfig()) -> dict:
    result = cached(reward_task, ctx)(ctx, cfg, preferences_paths, responses_paths)
    publish("reward-model-summary", "Reward model", {k: v for k, v in result.items() if k.startswith("rm/")},
            {"checkpoint": result["reward_model"], "metrics": result["rm_metrics"], "plot": result["plot"]})
    return result


@flow(name="rlaif-ppo", log_prints=True)
def ppo_flow(ctx: RunContext, reward_model: str, cfg: PPOConfig = PPOConfig()) -> dict:
    result = cached(ppo_task, ctx)(ctx, cfg, reward_model)
    publish("ppo-summary", "PPO (last step)", {k: v for k, v in result.items() if "/" in k},
            {"policy": result["policy"], "metrics": result["ppo_metrics"], "plot": result["plot"]})
    return result
