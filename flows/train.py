"""Stages 3 and 4: the reward model, then PPO against it."""

from __future__ import annotations

import pandas as pd
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from flows.common import MODEL_TASK, publish
from rlaif.config import RunContext
from rlaif.paths import checkpoint_dir
from rlaif.prompts import assert_no_eval, load_prompts
from rlaif.store import Store
from training.ppo import PPOConfig, train_ppo
from training.reward import RewardConfig, train_reward_model


@task(**MODEL_TASK, cache_policy=NO_CACHE)
def reward_task(ctx: RunContext, cfg: RewardConfig, preferences_path: str, responses_path: str) -> dict:
    store = Store(ctx.data)
    prefs = store.read_part("preferences", preferences_path).to_pandas()
    reference = store.read_part("responses", responses_path).to_pandas()
    assert_no_eval(reference, "reward model")
    out = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id) / "reward_model"
    lineage = {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha,
               "inputs": [preferences_path, responses_path]}
    summary, metrics = train_reward_model(prefs, reference, ctx.policy_model, out, cfg, lineage)
    df = pd.DataFrame(metrics).assign(text=None, reward_model=str(out))
    path = store.write("rm_metrics", df, key=f"{ctx.run_id}/rm_metrics",
                       lineage=ctx.lineage(judge_model=ctx.judge.model), metadata={"config": cfg.model_dump()})
    return {"reward_model": str(out), "rm_metrics": str(path), **summary}


@task(**MODEL_TASK, cache_policy=NO_CACHE)
def ppo_task(ctx: RunContext, cfg: PPOConfig, reward_model: str) -> dict:
    prompts = load_prompts(ctx.prompts, split="train")
    assert_no_eval(prompts, "ppo")
    out = checkpoint_dir(ctx.data, ctx.constitution_sha, ctx.run_id) / "policy"
    lineage = {"run_id": ctx.run_id, "constitution_sha": ctx.constitution_sha}
    metrics = train_ppo(prompts, ctx.policy_model, reward_model, out, cfg, lineage)
    df = pd.DataFrame(metrics).assign(reward_model=reward_model)
    path = Store(ctx.data).write("ppo_metrics", df, key=f"{ctx.run_id}/ppo_metrics",
                                 lineage=ctx.lineage(), metadata={"config": cfg.model_dump()})
    last = df[(df["step"] == df["step"].max()) & (df["metric"].str.startswith(("objective/", "ppo/")))]
    return {"policy": str(out), "ppo_metrics": str(path), **dict(zip(last["metric"], last["value"]))}


@flow(name="rlaif-reward-model", log_prints=True)
def reward_flow(ctx: RunContext, preferences_path: str, responses_path: str,
                cfg: RewardConfig = RewardConfig()) -> dict:
    result = reward_task(ctx, cfg, preferences_path, responses_path)
    publish("reward-model-summary", "Reward model", {k: v for k, v in result.items() if k.startswith("rm/")},
            {"checkpoint": result["reward_model"], "metrics": result["rm_metrics"]})
    return result


@flow(name="rlaif-ppo", log_prints=True)
def ppo_flow(ctx: RunContext, reward_model: str, cfg: PPOConfig = PPOConfig()) -> dict:
    result = ppo_task(ctx, cfg, reward_model)
    publish("ppo-summary", "PPO (last step)", {k: v for k, v in result.items() if "/" in k},
            {"policy": result["policy"], "metrics": result["ppo_metrics"]})
    return result
