"""Stage 5: held-out evaluation of the trained policy against the reference."""

from __future__ import annotations

from prefect import flow, task

from constitution import load_constitution
from flows.common import MODEL_TASK, cached, publish
from judges.backends import make_judge
from rlaif.config import RunContext
from rlaif.evaluate import EvalConfig, evaluate
from rlaif.prompts import load_prompts
from rlaif.store import Store


@task(**MODEL_TASK)
def evaluate_task(ctx: RunContext, cfg: EvalConfig, policy: str, reward_model: str) -> dict:
    prompts = load_prompts(ctx.prompts, split="eval", limit=cfg.n_prompts)
    judge = make_judge(ctx.judge)
    rows, summary = evaluate(prompts, ctx.policy_model, policy, judge,
                             load_constitution(ctx.constitution_path), reward_model, cfg)
    path = Store(ctx.data).write("eval", rows, key=f"{ctx.run_id}/eval",
                                 lineage=ctx.lineage(policy_model=policy, judge_model=ctx.judge.model),
                                 metadata={"config": cfg.model_dump()})
    return {"eval": str(path), **summary}


@flow(name="rlaif-evaluate", log_prints=True)
def evaluate_flow(ctx: RunContext, policy: str, reward_model: str, cfg: EvalConfig = EvalConfig()) -> dict:
    result = cached(evaluate_task, ctx)(ctx, cfg, policy, reward_model)
    publish("evaluate-summary", "Evaluation on held-out prompts",
            {k: v for k, v in result.items() if k.startswith("eval/")}, {"eval": result["eval"]})
    return result
