"""Stage 2: the judge critiques and revises responses and labels preference pairs."""

from __future__ import annotations

from prefect import flow, task

from constitution import load_constitution
from flows.common import MODEL_TASK, cached, publish, publish_samples
from judges.backends import JudgeConfig, make_judge
from judges.feedback import (FeedbackConfig, critique_and_revise, label_preferences, make_pairs,
                             make_revision_pairs)
from rlaif.config import RunContext
from rlaif.store import Store


def critic_config(ctx: RunContext, cfg: FeedbackConfig) -> JudgeConfig:
    """The model that writes critiques and revisions. The policy runs on the judge's backend,
    unless that is an HTTP endpoint, which serves the judge and not the policy."""
    if cfg.critic == "judge":
        return ctx.judge
    return ctx.judge.model_copy(update={
        "model": ctx.policy_model, "backend": "transformers" if ctx.judge.backend == "openai" else ctx.judge.backend})


@task(**MODEL_TASK)
def critique_task(ctx: RunContext, cfg: FeedbackConfig, responses_path: str) -> str:
    store = Store(ctx.data)
    responses = store.read_part("responses", responses_path).to_pandas()
    critic = critic_config(ctx, cfg)
    rows = critique_and_revise(make_judge(critic), responses, load_constitution(ctx.constitution_path), cfg)
    return str(store.write("critiques", rows, key=f"{ctx.run_id}/critiques",
                           lineage=ctx.lineage(judge_model=critic.model),
                           metadata={"config": cfg.model_dump(), "inputs": [responses_path]}))


@task(**MODEL_TASK)
def preference_task(ctx: RunContext, cfg: FeedbackConfig, responses_path: str, critiques_path: str) -> str:
    store = Store(ctx.data)
    if cfg.pair_source == "revision":
        pairs = make_revision_pairs(store.read_part("critiques", critiques_path).to_pandas())
    else:
        pairs = make_pairs(store.read_part("responses", responses_path).to_pandas())
    rows = label_preferences(make_judge(ctx.judge), pairs, load_constitution(ctx.constitution_path), cfg)
    return str(store.write("preferences", rows, key=f"{ctx.run_id}/preferences",
                           lineage=ctx.lineage(judge_model=ctx.judge.model),
                           metadata={"config": cfg.model_dump(),
                                     "inputs": [responses_path, critiques_path]}))


@flow(name="rlaif-feedback", log_prints=True)
def feedback_flow(ctx: RunContext, responses_path: str, cfg: FeedbackConfig = FeedbackConfig()) -> dict:
    critiques = cached(critique_task, ctx)(ctx, cfg, responses_path)
    preferences = cached(preference_task, ctx)(ctx, cfg, responses_path, critiques)
    store = Store(ctx.data)
    prefs = store.read_part("preferences", preferences).to_pandas()
    n_crit = store.read_part("critiques", critiques).num_rows
    valid = prefs[prefs["valid"]]
    summary = {"judge/critiques": n_crit, "judge/pairs": len(prefs), "judge/valid_pairs": len(valid),
               "judge/position_consistency": float(valid["position_consistent"].mean()) if len(valid) else float("nan"),
               "judge/mean_p_chosen": float(valid["p_chosen"].mean()) if len(valid) else float("nan"),
               "judge/backend": ctx.judge.backend,
               **{f"judge/invalid: {reason}": int(n)
                  for reason, n in prefs["invalid_reason"].dropna().value_counts().items()}}
    if cfg.direct_scores:
        summary["judge/mean_direct_score"] = float(valid[["score_a", "score_b"]].stack().mean())
    publish("feedback-summary", "Feedback: critiques and preferences", summary,
            {"critiques": critiques, "preferences": preferences})
    publish_samples("feedback-critiques", "Sample critiques and revisions",
                    store.read_part("critiques", critiques).to_pandas(),
                    ["prompt", "round", "principle_id", "response", "critique", "revision"])
    publish_samples("feedback-preferences", "Sample preference pairs", prefs,
                    ["prompt", "response_a", "response_b", "p_a_first", "p_a_second", "p_chosen",
                     "principle_ids", "valid", "invalid_reason"])
    return {"critiques": critiques, "preferences": preferences, **summary}
