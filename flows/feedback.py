"""Stage 2: the judge critiques and revises responses and labels preference pairs."""

from __future__ import annotations

import os
import socket

import numpy as np
from prefect import flow, task
from prefect.futures import as_completed

from constitution import load_constitution
from flows.common import MODEL_TASK, Progress, cached, publish, publish_samples
from flows.config import RunContext
from flows.results import FeedbackResult
from flows.tracking import track_stage
from judges.judge import make_judge
from judges.config import FeedbackConfig, JudgeConfig
from judges.feedback import critique_and_revise, label_preferences, make_pairs, make_revision_pairs
from judges.human_eval import judge_agreement, read_hh_pairs
from judges.quality import calibration_metrics, doubts, self_consistency
from judges.rankings import rank_responses
from rlaif.prompts import warn
from rlaif.store import Store


def critic_config(ctx: RunContext, cfg: FeedbackConfig) -> JudgeConfig:
    """The model that writes critiques and revisions, on its own engine: the judge on the
    judge's, or the policy on the policy's."""
    if cfg.critic == "judge":
        return ctx.judge
    return ctx.judge.model_copy(update={"model": ctx.policy_model, "engine": ctx.policy_engine})


@task(**MODEL_TASK)
def critique_task(ctx: RunContext, cfg: FeedbackConfig, responses_path: str) -> str:
    store = Store(ctx.data)
    responses = store.read_part("responses", responses_path).to_pandas()
    critic = critic_config(ctx, cfg)
    with make_judge(critic, ctx.runtime) as judge:
        rows = critique_and_revise(judge, responses, load_constitution(ctx.constitution_path), cfg)
    return str(store.write("critiques", rows, key=f"{ctx.run_id}/critiques",
                           lineage=ctx.lineage(judge_model=critic.model),
                           metadata={"config": cfg.model_dump(), "inputs": [responses_path]}))


# Shards labelled on a Ray cluster carry this tag instead of MODEL_TAG: Ray places them by its
# own resources, and the one-model-at-a-time limit is for one machine.
RAY_TAG = "rlaif-ray"


@task(**MODEL_TASK)
def preference_task(ctx: RunContext, cfg: FeedbackConfig, responses_path: str, critiques_path: str,
                    shard: int = 0) -> dict:
    """Label shard `shard` of `cfg.shards` (contiguous slices of the pairs; all of them when
    there is one shard). One shard writes the `preferences` part itself; several write to
    `preference_shards`, which `merge_shards` joins into it."""
    store = Store(ctx.data)
    if cfg.pair_source == "revision":
        pairs = make_revision_pairs(store.read_part("critiques", critiques_path).to_pandas())
    else:
        pairs = make_pairs(store.read_part("responses", responses_path).to_pandas(), cfg.pairing, cfg.seed)
    pairs = pairs.iloc[np.array_split(np.arange(len(pairs)), cfg.shards)[shard]]
    with make_judge(ctx.judge, ctx.runtime) as judge:
        rows = label_preferences(judge, pairs, load_constitution(ctx.constitution_path), cfg)
    table, key = (("preferences", f"{ctx.run_id}/preferences") if cfg.shards == 1 else
                  ("preference_shards", f"{ctx.run_id}/preferences/{shard}-of-{cfg.shards}"))
    path = store.write(table, rows, key=key, lineage=ctx.lineage(judge_model=ctx.judge.model),
                       metadata={"config": cfg.model_dump(), "inputs": [responses_path, critiques_path]})
    return {"path": str(path), "pairs": len(rows), "worker": f"{socket.gethostname()}:{os.getpid()}"}


@task
def merge_shards(ctx: RunContext, cfg: FeedbackConfig, shard_paths: list[str]) -> str:
    """The labelled shards, in shard order (the pairs' order), as the run's one `preferences`
    part: readers never see a shard, and a changed shard count cannot duplicate rows."""
    store = Store(ctx.data)
    rows = store.read_parts("preference_shards", shard_paths)
    return str(store.write("preferences", rows, key=f"{ctx.run_id}/preferences",
                           lineage=ctx.lineage(judge_model=ctx.judge.model),
                           metadata={"config": cfg.model_dump(), "inputs": shard_paths}))


def label_shards(ctx: RunContext, cfg: FeedbackConfig, responses_path: str, critiques_path: str,
                 on_ray: bool) -> tuple[str, int]:
    """Label the pairs in `cfg.shards` shards; returns the preferences part and the number of
    distinct workers. On Ray the shards run at once, on the flow's RayTaskRunner; otherwise one
    after another, so one machine holds one judge at a time."""
    labeller = cached(preference_task, ctx)
    if cfg.shards == 1:
        return labeller(ctx, cfg, responses_path, critiques_path)["path"], 1
    progress = Progress("labelling-progress", cfg.shards, "Preference shards labelled")
    if on_ray:
        from prefect_ray.context import remote_options

        # Ray places each shard where its judge fits: a GPU each when the judge runs on one.
        with remote_options(num_gpus=1 if ctx.runtime.on_gpu and ctx.judge.engine.kind != "openai" else 0):
            futures = [labeller.with_options(tags=[RAY_TAG]).submit(ctx, cfg, responses_path, critiques_path, k)
                       for k in range(cfg.shards)]
        for done, _ in enumerate(as_completed(futures), 1):
            progress(done)
        shards = [f.result() for f in futures]
    else:
        shards = []
        for k in range(cfg.shards):
            shards.append(labeller(ctx, cfg, responses_path, critiques_path, k))
            progress(k + 1)
    path = merge_shards(ctx, cfg, [s["path"] for s in shards])
    return path, len({s["worker"] for s in shards})


@task
def rankings_task(ctx: RunContext, cfg: FeedbackConfig, responses_path: str, preferences_path: str) -> str | None:
    """Each prompt's tournament (its judged pairs of samples) aggregated per response into
    the `rankings` table: Bradley-Terry strength, Elo with its interval over shuffled orders,
    wins, losses, rank. None when no prompt has one (revision pairs)."""
    store = Store(ctx.data)
    responses = store.read_part("responses", responses_path).to_pandas()
    ranked = rank_responses(store.read_part("preferences", preferences_path).to_pandas(), seed=cfg.seed)
    if ranked.empty:
        return None
    ranked = ranked.merge(responses[["response_id", "prompt", "response"]], on="response_id", how="left")
    ranked = ranked.sort_values(["prompt_id", "rank"], kind="stable")
    publish_samples("feedback-rankings", "Sample rankings: each prompt's samples, strongest first",
                    ranked, ["prompt", "rank", "response", "bt_strength", "elo", "elo_ci_low", "elo_ci_high",
                             "wins", "losses", "comparisons"], n=12)
    return str(store.write("rankings", ranked, key=f"{ctx.run_id}/rankings",
                           lineage=ctx.lineage(judge_model=ctx.judge.model),
                           metadata={"config": cfg.model_dump(), "inputs": [responses_path, preferences_path]}))


@task(**MODEL_TASK)
def calibration_task(ctx: RunContext, cfg: FeedbackConfig) -> dict:
    """The judge's agreement with human labels on the calibration file's first pairs, under
    this run's constitution and labelling settings (judges.human_eval, as `rlaif judge-eval`)."""
    with make_judge(ctx.judge, ctx.runtime) as judge:
        result = judge_agreement(judge, read_hh_pairs(cfg.calibration, cfg.calibration_pairs),
                                 load_constitution(ctx.constitution_path), cfg)
    return calibration_metrics(result)


@task
def summarise_feedback(ctx: RunContext, cfg: FeedbackConfig, critiques: str, preferences: str, workers: int,
                       calibration: dict) -> dict:
    store = Store(ctx.data)
    prefs = store.read_part("preferences", preferences).to_pandas()
    valid = prefs[prefs["valid"]]
    summary = {"judge/critiques": store.read_part("critiques", critiques).num_rows,
               "judge/pairs": len(prefs), "judge/valid_pairs": len(valid),
               **self_consistency(prefs), **calibration,
               "judge/mean_p_chosen": float(valid["p_chosen"].mean()) if len(valid) else float("nan"),
               "judge/injection_suspected": int(prefs["injection_suspected"].fillna(False).sum()),
               "judge/engine": ctx.judge.engine.kind, "judge/shards": cfg.shards, "judge/label_workers": workers,
               **{f"judge/invalid: {reason}": int(n)
                  for reason, n in prefs["invalid_reason"].dropna().value_counts().items()}}
    reasons = doubts(summary) if cfg.judge_gate != "off" else []
    summary |= {"judge/gate_mode": cfg.judge_gate, "judge/gate_reasons": "; ".join(reasons)}
    if reasons:
        warn(f"judge {ctx.judge.model}: cannot be told apart from " + "; ".join(reasons)
             + (" - stopping before training (--feedback.judge-gate stop)" if cfg.judge_gate == "stop" else
                " - every judged figure of this run is marked as from a judge near chance"))
    if cfg.direct_scores:
        summary["judge/mean_direct_score"] = float(valid[["score_a", "score_b"]].stack().mean())
    publish_samples("feedback-critiques", "Sample critiques and revisions",
                    store.read_part("critiques", critiques).to_pandas(),
                    ["prompt", "round", "principle_id", "response", "critique", "revision"])
    publish_samples("feedback-preferences", "Sample preference pairs", prefs,
                    ["prompt", "response_a", "response_b", "p_a_first", "p_a_second", "p_chosen",
                     "principle_ids", "valid", "invalid_reason"])
    return summary


@flow(name="rlaif-feedback", log_prints=True)
def feedback_flow(ctx: RunContext, responses_path: str, cfg: FeedbackConfig = FeedbackConfig(),
                  on_ray: bool = False) -> FeedbackResult:
    """`on_ray`: the caller gave this flow a RayTaskRunner (`with_options(task_runner=...)`), so
    the preference shards are labelled in parallel on Ray workers."""
    critiques = cached(critique_task, ctx)(ctx, cfg, responses_path)
    preferences, workers = label_shards(ctx, cfg, responses_path, critiques, on_ray)
    rankings = rankings_task(ctx, cfg, responses_path, preferences)
    calibration = cached(calibration_task, ctx)(ctx, cfg) if cfg.calibration else {}
    result = FeedbackResult(critiques=critiques, preferences=preferences, rankings=rankings,
                            metrics=summarise_feedback(ctx, cfg, critiques, preferences, workers, calibration))
    publish("feedback-summary", "Feedback: critiques and preferences", result.metrics,
            {"critiques": critiques, "preferences": preferences, "rankings": rankings or "none (no tournaments)"})
    track_stage(ctx, "feedback", result, cfg, judge=ctx.judge)
    return result
