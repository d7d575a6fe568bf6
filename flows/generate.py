"""Stage 1: the policy answers the training prompts, several samples each."""

from __future__ import annotations

import pandas as pd
from prefect import flow, task

from flows.common import MODEL_TASK, Progress, cached, publish
from flows.config import RunContext
from flows.results import GenerateResult
from flows.tracking import track_stage
from rlaif.config import GenerateConfig
from rlaif.engines import make_engine
from rlaif.generation import chat_text
from rlaif.models import load_tokenizer
from rlaif.prompts import assert_no_eval, fit_to_context, load_prompts
from rlaif.store import Store


@task(**MODEL_TASK)
def generate_responses(ctx: RunContext, cfg: GenerateConfig) -> str:
    tok = load_tokenizer(ctx.policy_model)
    prompts = fit_to_context(load_prompts(ctx.prompts, split="train", limit=cfg.n_prompts), tok)
    assert_no_eval(prompts, "generate")
    texts = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]
    frames = []
    progress = Progress("generate-progress", len(texts) * cfg.samples_per_prompt, "Responses generated")
    with make_engine(ctx.policy_engine, ctx.policy_model, ctx.runtime) as engine:
        samples = []
        for s in range(cfg.samples_per_prompt):
            samples.append(engine.generate(texts, cfg.sampling, seed=cfg.seed + 7919 * s,
                                           desc=f"responses (sample {s + 1}/{cfg.samples_per_prompt})",
                                           on_batch=lambda n, done=len(texts) * s: progress(done + n)))
    for s, gens in enumerate(samples):
        seed = cfg.seed + 7919 * s
        frames.append(pd.DataFrame({
            "prompt_id": prompts["prompt_id"], "split": prompts["split"], "prompt": prompts["prompt"],
            "response_id": [f"{pid}/s{s}" for pid in prompts["prompt_id"]], "sample_idx": s,
            "response": [g.text for g in gens], "n_tokens": [g.n_tokens for g in gens],
            "has_eos": [g.has_eos for g in gens], "temperature": cfg.sampling.temperature, "seed": seed,
        }))
    path = Store(ctx.data).write("responses", pd.concat(frames, ignore_index=True),
                                 key=f"{ctx.run_id}/responses", lineage=ctx.lineage(),
                                 metadata={"config": cfg.model_dump(), "engine": ctx.policy_engine.model_dump()})
    return str(path)


@task
def summarise_responses(ctx: RunContext, path: str) -> dict:
    df = Store(ctx.data).read_part("responses", path).to_pandas()
    return {"generate/responses": len(df), "generate/prompts": df["prompt_id"].nunique(),
            "generate/mean_tokens": float(df["n_tokens"].mean()),
            "generate/eos_fraction": float(df["has_eos"].mean())}


@flow(name="rlaif-generate", log_prints=True)
def generate_flow(ctx: RunContext, cfg: GenerateConfig = GenerateConfig()) -> GenerateResult:
    path = cached(generate_responses, ctx)(ctx, cfg)
    result = GenerateResult(responses=path, metrics=summarise_responses(ctx, path))
    publish("generate-summary", "Generate: policy responses", result.metrics, {"responses": path})
    track_stage(ctx, "generate", result, cfg, engine=ctx.policy_engine)
    return result
