"""Held-out evaluation: the trained policy against the reference on eval-split prompts.

Both policies answer with the same seeds; the debiased pairwise judge compares them (both
orders averaged) and the reward model scores both.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from constitution import Constitution
from judges.feedback import FeedbackConfig, label_preferences
from rlaif.generation import generate
from rlaif.models import load_causal_lm, load_tokenizer
from training.reward import RewardModel


class EvalConfig(BaseModel):
    """Stage 5: compare the trained policy with the reference on held-out prompts."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    n_prompts: int | None = 16
    """Eval-split prompts to use (None: all)."""
    max_new_tokens: int = 48
    """Response length cap, in tokens."""
    temperature: float = 0.7
    """Sampling temperature, the same for both policies."""
    batch_size: int = 8
    """Prompts per `generate` call."""
    seed: int = 1234
    """Sampling seed, shared by both policies so they see the same randomness."""


def wilson_interval(wins: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a proportion."""
    if n == 0:
        return (float("nan"), float("nan"))
    p = wins / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (centre - half, centre + half)


def evaluate(prompts: pd.DataFrame, reference_model: str, policy_model: str, judge,
             constitution: Constitution, reward_model: str, cfg: EvalConfig) -> tuple[pd.DataFrame, dict]:
    if (prompts["split"] != "eval").any():
        raise AssertionError("evaluate: only held-out eval prompts may be used")
    convs = [[{"role": "user", "content": p}] for p in prompts["prompt"]]
    outputs = {}
    for name, model_name in (("reference", reference_model), ("policy", policy_model)):
        model, tok = load_causal_lm(model_name), load_tokenizer(model_name)
        outputs[name] = generate(model, tok, convs, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, seed=cfg.seed,
                                 batch_size=cfg.batch_size, desc=f"eval: {name}")
        del model
    pairs = pd.DataFrame({
        "pair_id": prompts["prompt_id"], "prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"],
        "response_a": [g.text for g in outputs["policy"]],
        "response_b": [g.text for g in outputs["reference"]],
    })
    labels = label_preferences(judge, pairs, constitution, FeedbackConfig(seed=cfg.seed))
    rm = RewardModel(reward_model)
    rows = pd.DataFrame({
        "prompt_id": pairs["prompt_id"], "prompt": pairs["prompt"],
        "policy_response": pairs["response_a"], "reference_response": pairs["response_b"],
        "p_policy_better": labels["p_a"], "position_consistent": labels["position_consistent"],
        "policy_score": rm.score(list(pairs["prompt"]), list(pairs["response_a"])).numpy(),
        "reference_score": rm.score(list(pairs["prompt"]), list(pairs["response_b"])).numpy(),
        "policy_n_tokens": [g.n_tokens for g in outputs["policy"]],
        "reference_n_tokens": [g.n_tokens for g in outputs["reference"]],
        "reward_model": reward_model,
    })
    valid = labels["valid"].to_numpy()
    wins = int((rows["p_policy_better"][valid] > 0.5).sum())
    n = int(valid.sum())
    lo, hi = wilson_interval(wins, n)
    summary = {
        "eval/prompts": len(rows), "eval/compared": n, "eval/ties": int((~valid).sum()),
        "eval/win_rate": wins / n if n else float("nan"), "eval/win_rate_ci_low": lo,
        "eval/win_rate_ci_high": hi,
        "eval/position_consistency": float(rows["position_consistent"][valid].mean()) if n else float("nan"),
        "eval/policy_score": float(rows["policy_score"].mean()),
        "eval/reference_score": float(rows["reference_score"].mean()),
        "eval/policy_length": float(np.mean(rows["policy_n_tokens"])),
        "eval/reference_length": float(np.mean(rows["reference_n_tokens"])),
    }
    return rows, summary
