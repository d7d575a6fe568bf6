"""How far the judge can be trusted, measured before anything trains on its labels (pure).

- Self-consistency, on the run's own pairs: the share whose verdict survives swapping the
  order of the two responses. A judge answering at random keeps it on half the pairs; a judge
  that always picks the first-shown response on none.
- The share of decided pairs in which the judge chose the longer response.
- With tournaments (K >= 3 samples per prompt, FeedbackConfig.pairing): the share of a
  prompt's fully judged triples that form a cycle a > b > c > a. A consistent judge has none;
  one answering at random, a quarter.
- With a human-labelled calibration file (FeedbackConfig.calibration): agreement with the
  humans, against chance (0.5) and against "the longer response wins" on the same pairs.

`doubts` turns these into the gate's reasons: a judge whose 95% interval reaches chance, or
does not clear the length rule, cannot be told apart from them.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from judges.rankings import intransitive_triples, tournament_comparisons
from rlaif.stats import wilson_interval


def rate(k: float, n: int, name: str) -> dict:
    """`name`, `name_ci_low`, `name_ci_high` (Wilson, 95%)."""
    lo, hi = wilson_interval(k, n)
    return {name: k / n if n else float("nan"), f"{name}_ci_low": lo, f"{name}_ci_high": hi}


def self_consistency(prefs: pd.DataFrame) -> dict:
    """Position consistency and the longer-response share on labelled pairs (the valid ones)."""
    valid = prefs[prefs["valid"]]
    decided = valid[valid["position_consistent"]]
    longer = (decided["chosen"].str.len() > decided["rejected"].str.len()).sum()
    return {**rate(float(valid["position_consistent"].sum()), len(valid), "judge/position_consistency"),
            **rate(float(longer), len(decided), "judge/chose_longer"), "judge/decided_pairs": len(decided),
            **transitivity(valid)}


def transitivity(prefs: pd.DataFrame) -> dict:
    """`judge/intransitive_triples` (share, Wilson interval) and `judge/triples` (n) over each
    prompt's tournament, from the pairs' debiased P(a better); nothing when no prompt has three
    samples judged against each other."""
    cyclic = n = 0
    for pid, g in prefs.groupby("prompt_id"):
        if len(g) < 3:  # a triple needs three judged pairs
            continue
        ids, comps = tournament_comparisons(g)
        if len(ids) >= 3:
            c, m = intransitive_triples(len(ids), comps)
            cyclic, n = cyclic + c, n + m
    return {**rate(float(cyclic), n, "judge/intransitive_triples"), "judge/triples": n} if n else {}


def calibration_metrics(result: dict) -> dict:
    """judges.human_eval.judge_agreement's result as flat stage metrics."""
    a, longer = result["judge/agreement"], result["baseline/longer_wins"]
    return {"judge/agreement": a["agreement"], "judge/agreement_ci_low": a["ci_low"],
            "judge/agreement_ci_high": a["ci_high"], "judge/agreement_n": int(result["pairs"]),
            "baseline/longer_wins": longer["agreement"], "baseline/longer_wins_ci_low": longer["ci_low"],
            "baseline/longer_wins_ci_high": longer["ci_high"]}


def doubts(metrics: dict) -> list[str]:
    """Why the judge cannot be told apart from chance or from the length rule (empty: it can)."""
    def fmt(x: float) -> str:
        return f"{x:.3f}"

    out = []
    pc_lo, pc_hi = metrics.get("judge/position_consistency_ci_low"), metrics.get("judge/position_consistency_ci_high")
    if pc_lo is not None and np.isfinite(pc_lo) and pc_lo <= 0.5:
        out.append(f"chance on its own pairs (its verdict survives swapping the order on "
                   f"{fmt(metrics['judge/position_consistency'])} of them, 95% CI {fmt(pc_lo)} to {fmt(pc_hi)}; "
                   "a judge answering at random: 0.5)")
    if metrics.get("judge/triples"):
        lo, hi = metrics["judge/intransitive_triples_ci_low"], metrics["judge/intransitive_triples_ci_high"]
        if hi >= 0.25:
            out.append(f"chance on its own tournaments ({fmt(metrics['judge/intransitive_triples'])} of "
                       f"{metrics['judge/triples']} judged triples are cycles, 95% CI {fmt(lo)} to {fmt(hi)}; "
                       "a judge answering at random: 0.25)")
    if "judge/agreement" in metrics:
        lo, hi, n = metrics["judge/agreement_ci_low"], metrics["judge/agreement_ci_high"], metrics["judge/agreement_n"]
        agree = f"agreement with humans {fmt(metrics['judge/agreement'])}, 95% CI {fmt(lo)} to {fmt(hi)}, n={n}"
        if lo <= 0.5:
            out.append(f"chance on human-labelled pairs ({agree})")
        if lo <= metrics["baseline/longer_wins"]:
            out.append(f"'the longer response wins' ({agree}; the length rule: "
                       f"{fmt(metrics['baseline/longer_wins'])} on the same pairs)")
    return out
