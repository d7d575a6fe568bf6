"""Constitutional feedback: critique->revision (SL-CAI) and pairwise preferences (RL-CAI).

Both work on DataFrames from the `responses` table and return rows for the `critiques` and
`preferences` tables. Principles are sampled per item with an RNG seeded by the item's id,
so a label does not depend on batch order and a retried task reproduces it exactly.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
from typing import Literal

from pydantic import BaseModel, ConfigDict

from constitution import Constitution
from judges.templates import (TEMPLATE_VERSION, critique_messages, preference_messages,
                              revision_messages)


class FeedbackConfig(BaseModel):
    """Stage 2: the judge critiques and revises responses, then labels preference pairs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    critique_rounds: int = 1
    """Critique->revision rounds per response; each round samples one principle."""
    critique_all_samples: bool = False
    """Critique every sampled response, not only the first per prompt."""
    few_shot: int = 1
    """Few-shot examples from the constitution file put before each critique."""
    max_new_tokens: int = 48
    """Length cap on each critique and revision, in tokens."""
    temperature: float = 0.7
    """Sampling temperature for critiques and revisions."""
    pair_source: Literal["policy", "revision"] = "policy"
    """Preference pairs: two policy samples per prompt, or each critiqued response against
    its final revision."""
    principles_per_pair: int = 1
    """Principles sampled per preference pair; their P(A) are averaged."""
    batch_size: int = 8
    """Sequences per judge forward pass or `generate` call."""
    seed: int = 0
    """Seed for principle sampling and critique text."""


def _rng(seed: int, *parts) -> random.Random:
    return random.Random("/".join(map(str, (seed, *parts))))


def critique_and_revise(judge, responses: pd.DataFrame, constitution: Constitution,
                        cfg: FeedbackConfig) -> pd.DataFrame:
    """One row per (response, round). Round r critiques the revision from round r-1."""
    todo = responses if cfg.critique_all_samples else responses[responses["sample_idx"] == 0]
    todo = todo.reset_index(drop=True)
    current = todo["response"].tolist()
    rows = []
    for rnd in range(cfg.critique_rounds):
        principles = [constitution.sample_principles(_rng(cfg.seed, rid, rnd))[0]
                      for rid in todo["response_id"]]
        crit_msgs = [critique_messages(constitution, p, q, r, cfg.few_shot)
                     for p, q, r in zip(principles, todo["prompt"], current)]
        critiques = judge.generate(crit_msgs, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, seed=cfg.seed + 1000 * rnd,
                                   desc=f"critiques (round {rnd + 1})")
        rev_msgs = [revision_messages(m, c.text, p)
                    for m, c, p in zip(crit_msgs, critiques, principles)]
        revisions = judge.generate(rev_msgs, max_new_tokens=cfg.max_new_tokens,
                                   temperature=cfg.temperature, seed=cfg.seed + 1000 * rnd + 1,
                                   desc=f"revisions (round {rnd + 1})")
        for i, row in todo.iterrows():
            rows.append({
                "response_id": row["response_id"], "prompt_id": row["prompt_id"],
                "prompt": row["prompt"], "response": current[i], "round": rnd,
                "principle_id": principles[i].id, "critique": critiques[i].text,
                "revision": revisions[i].text, "template_version": TEMPLATE_VERSION,
            })
        current = [r.text for r in revisions]
    return pd.DataFrame(rows)


def make_pairs(responses: pd.DataFrame) -> pd.DataFrame:
    """The first two samples of each prompt form its pair."""
    first = responses[responses["sample_idx"] == 0].set_index("prompt_id")
    second = responses[responses["sample_idx"] == 1].set_index("prompt_id")
    ids = first.index.intersection(second.index)
    return pd.DataFrame({
        "pair_id": [f"{pid}/{first.at[pid, 'response_id']}/{second.at[pid, 'response_id']}" for pid in ids],
        "prompt_id": ids, "prompt": first.loc[ids, "prompt"].values,
        "response_a": first.loc[ids, "response"].values,
        "response_b": second.loc[ids, "response"].values,
    }).reset_index(drop=True)


def make_revision_pairs(critiques: pd.DataFrame) -> pd.DataFrame:
    """Each critiqued response (round 0) against its final revision (last round)."""
    ordered = critiques.sort_values(["response_id", "round"])
    first = ordered.groupby("response_id", sort=True).first()
    last = ordered.groupby("response_id", sort=True).last()
    return pd.DataFrame({
        "pair_id": [f"{rid}/revision" for rid in first.index], "prompt_id": first["prompt_id"].values,
        "prompt": first["prompt"].values, "response_a": first["response"].values,
        "response_b": last["revision"].values,
    })


def debias(p_a_first: np.ndarray, p_a_second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the two orders (RLAIF): P(a better) and whether both orders agree.

    p_a_first: P(label A) with a shown as A; p_a_second: P(label A) with b shown as A.
    """
    p_a = (p_a_first + (1.0 - p_a_second)) / 2.0
    consistent = (p_a_first > 0.5) == (p_a_second < 0.5)
    return p_a, consistent


def label_preferences(judge, pairs: pd.DataFrame, constitution: Constitution,
                      cfg: FeedbackConfig) -> pd.DataFrame:
    """Soft AI preference labels from the judge's option probabilities, both orders."""
    k = cfg.principles_per_pair
    principles = [constitution.sample_principles(_rng(cfg.seed, pid, "pref"), k)
                  for pid in pairs["pair_id"]]
    convs = []
    for ps, (_, row) in zip(principles, pairs.iterrows()):
        for p in ps:
            convs.append(preference_messages(p, row["prompt"], row["response_a"], row["response_b"]))
            convs.append(preference_messages(p, row["prompt"], row["response_b"], row["response_a"]))
    probs = judge.option_probs(convs, desc="preference labels")
    n_used = [len(ps) for ps in principles]
    probs = probs.reshape(len(pairs), max(n_used, default=k), 2)  # (pairs, k, orders)
    p_first, p_second = probs[..., 0].mean(1), probs[..., 1].mean(1)
    p_a, consistent = debias(p_first, p_second)

    out = pairs.copy()
    a_wins = p_a >= 0.5
    out["p_a"] = p_a  # P(response_a is better), debiased
    out["p_a_first"], out["p_a_second"] = p_first, p_second
    out["p_chosen"] = np.where(a_wins, p_a, 1.0 - p_a)
    out["chosen"] = np.where(a_wins, out["response_a"], out["response_b"])
    out["rejected"] = np.where(a_wins, out["response_b"], out["response_a"])
    out["position_consistent"] = consistent
    out["principle_ids"] = [[p.id for p in ps] for ps in principles]
    out["judge_backend"] = judge.backend
    out["template_version"] = TEMPLATE_VERSION
    identical = out["response_a"].str.strip() == out["response_b"].str.strip()
    nonfinite = ~np.isfinite(p_a)
    out["valid"] = ~(identical | nonfinite)
    out["invalid_reason"] = np.where(identical, "identical responses",
                                     np.where(nonfinite, "non-finite judge probability", None))
    return out
