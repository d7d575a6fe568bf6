"""The ladder: policies ranked by head-to-head judging on held-out prompts.

The rungs are the reference, each PPO snapshot and the final policy (or, in `rlaif compare`,
the reference and each constitution's policy). Each policy against the reference comes from
the `eval` table; policy against policy from the `matches` table (EvalConfig.ladder says which
pairs are judged). One ladder per judge:

    pairs = rung_pairs(3, "adjacent")                          -> [(0, 1), (1, 2)]
    matches = judge_matches(judge, constitution, prompts, sides, pairs, seed)
    comparisons = ladder_comparisons(eval_rows, matches, reference)
    ladder(comparisons, [(reference, 0), (snapshot, 5), (final, 10)])

`ladder` is pure: a Bradley-Terry fit (judges.rankings) anchored at the reference, with a
bootstrap over prompts for its interval, and Elo over shuffled orders beside it.
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pandas as pd

from judges.rankings import bradley_terry, elo

LADDERS = ("reference", "adjacent", "all")
ELO_BASE = 1000.0
# Elo's step size. Chatbot Arena's 4 suits millions of comparisons; a ladder has tens per
# pair, and at 4 the ratings would barely leave 1000. At 16 a rating settles in ~20 comparisons.
ELO_K = 16.0


# ---------------------------------------------------------------- which pairs to judge

def rung_pairs(n_policies: int, how: str) -> list[tuple[int, int]]:
    """The policy-against-policy pairs to judge among `n_policies` policies in ladder order
    (the reference excluded: each policy is judged against it anyway). `reference`: none;
    `adjacent`: each against the next (n - 1 pairs); `all`: every pair (n (n - 1) / 2)."""
    if how not in LADDERS:
        raise ValueError(f"ladder must be one of {LADDERS}, got {how!r}")
    if how == "reference":
        return []
    if how == "adjacent":
        return [(k, k + 1) for k in range(n_policies - 1)]
    return list(itertools.combinations(range(n_policies), 2))


def judge_matches(judge, constitution, prompts: pd.DataFrame, sides: list[tuple[str, int, list[str]]],
                  pairs: list[tuple[int, int]], seed: int) -> pd.DataFrame:
    """Judge policy against policy on the same prompts: `sides` is (name, PPO step, responses
    aligned with `prompts`) per policy; `pairs` index into it. Returns the `matches` table's
    rows, one per (pair, prompt). Each prompt is judged under the same sampled principles as
    its policy-vs-reference pairs (pair_id = prompt_id), so the rungs compare like with like."""
    from judges.config import FeedbackConfig
    from judges.feedback import label_preferences

    frames = []
    for x, y in pairs:
        (name_a, step_a, resp_a), (name_b, step_b, resp_b) = sides[x], sides[y]
        frames.append(pd.DataFrame({
            "pair_id": prompts["prompt_id"].values, "prompt_id": prompts["prompt_id"].values,
            "prompt": prompts["prompt"].values, "policy_a": name_a, "step_a": step_a, "policy_b": name_b,
            "step_b": step_b, "response_a": list(resp_a), "response_b": list(resp_b)}))
    columns = ["prompt_id", "prompt", "policy_a", "step_a", "policy_b", "step_b", "response_a", "response_b",
               "p_a", "position_consistent", "valid"]
    if not frames:
        return pd.DataFrame(columns=columns)
    pairs_df = pd.concat(frames, ignore_index=True)
    labels = label_preferences(judge, pairs_df, constitution, FeedbackConfig(seed=seed))
    return pairs_df.assign(p_a=labels["p_a"].values, position_consistent=labels["position_consistent"].values,
                           valid=labels["valid"].values)[columns]


def ladder_comparisons(eval_rows: pd.DataFrame, matches: pd.DataFrame | None, reference: str) -> pd.DataFrame:
    """The ladder's comparisons (prompt_id, a, b, p_a, position_consistent, valid): each
    policy against the reference from `eval` rows (policy, p_policy_better, ...), named
    `reference`, and policy against policy from `matches` rows."""
    vs_ref = pd.DataFrame({"prompt_id": eval_rows["prompt_id"].values, "a": eval_rows["policy"].values,
                           "b": reference, "p_a": eval_rows["p_policy_better"].values,
                           "position_consistent": eval_rows["position_consistent"].values,
                           "valid": eval_rows["valid"].values})
    if matches is None or matches.empty:
        return vs_ref
    h2h = matches.rename(columns={"policy_a": "a", "policy_b": "b"})[list(vs_ref.columns)]
    return pd.concat([vs_ref, h2h], ignore_index=True)


# ---------------------------------------------------------------- the ladder (pure, unit-tested)

def _joined(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """(n,) bool: the items joined to item 0 (the reference) by a chain of comparisons. Only
    these have a strength relative to the reference; the others' would be the prior's."""
    on = np.zeros(n, bool)
    on[0] = True
    while True:
        grow = on.copy()
        grow[j[on[i]]] = True
        grow[i[on[j]]] = True
        if (grow == on).all():
            return on
        on = grow


def anchored_strengths(n: int, i: np.ndarray, j: np.ndarray, p: np.ndarray, prior: float) -> np.ndarray:
    """(n,) Bradley-Terry strengths minus the reference's (item 0); NaN for items not joined
    to the reference, and for all when none is."""
    s = np.full(n, np.nan)
    on = _joined(n, i, j)
    if on.sum() < 2:
        return s
    idx = np.flatnonzero(on)
    remap = np.full(n, -1)
    remap[idx] = np.arange(len(idx))
    keep = on[i]  # a comparison touching the joined set lies wholly inside it
    fit = bradley_terry(len(idx), zip(remap[i[keep]], remap[j[keep]], p[keep]), prior)
    s[idx] = fit - fit[0]
    return s


def _percentiles(draws: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """2.5% and 97.5% per column over the finite draws; NaN where there are none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN column: NaN is the answer
        return np.nanpercentile(draws, 2.5, axis=0), np.nanpercentile(draws, 97.5, axis=0)


def ladder(comparisons: pd.DataFrame, policies: list[tuple[str, int]], resamples: int = 1000, orders: int = 200,
           prior: float = 0.1, elo_k: float = ELO_K, seed: int = 0) -> pd.DataFrame:
    """Rank `policies` ((name, PPO step) in ladder order, the reference first) from head-to-
    head `comparisons` (prompt_id, a, b, p_a: P(a better), valid; optional position_consistent).

    One row per policy, in the given order:
    - bt_strength: the Bradley-Terry MAP strength (log-odds) minus the reference's (so the
      reference is 0); win_prob: sigmoid(s - s_ref), the fitted P(beats the reference). Each
      with a 95% percentile bootstrap interval over prompts (prompt ids resampled with
      replacement, every comparison on a drawn prompt kept, BT refitted; `resamples` draws);
    - elo: the mean rating over `orders` shuffled orders of all comparisons (judges.rankings.elo,
      step `elo_k`), shifted so the reference's mean is exactly 1000, with the 2.5-97.5%
      range over the orders (how much the order moves it, not a sampling interval);
    - wins / losses / ties over its comparisons (a win or a loss only when the judge's two
      orders agree, as the win rate counts), comparisons, prompts, and rank (1: strongest by BT).
    Invalid comparisons (identical answers, no label) are left out, as the win rate leaves them.
    A policy with no valid comparison, or none that joins it to the reference, is reported
    with its counts (n=0) and NaN figures and no rank; when the reference has none, every
    figure is NaN."""
    names = [name for name, _ in policies]
    if len(set(names)) < len(names):
        raise ValueError(f"ladder: policy names must be unique, got {names}")
    at = {name: k for k, name in enumerate(names)}
    unknown = (set(comparisons["a"]) | set(comparisons["b"])) - set(at)
    if unknown:
        raise ValueError(f"ladder: comparisons name policies not on the ladder: {sorted(map(str, unknown))}")
    c = comparisons[comparisons["valid"].astype(bool)]
    n = len(names)
    i, j = c["a"].map(at).to_numpy(int), c["b"].map(at).to_numpy(int)  # (m,)
    p = c["p_a"].to_numpy(float)
    agreed = (c["position_consistent"].to_numpy(bool) if "position_consistent" in c
              else np.ones(len(c), bool))
    pid = c["prompt_id"].to_numpy()

    s = anchored_strengths(n, i, j, p, prior)
    rng = np.random.default_rng(seed)
    groups = list(pd.Series(np.arange(len(c))).groupby(pid, sort=False).indices.values())  # rows per prompt
    draws = np.full((resamples, n), np.nan)
    for r in range(resamples if groups else 0):
        sel = np.concatenate([groups[g] for g in rng.integers(0, len(groups), len(groups))])
        draws[r] = anchored_strengths(n, i[sel], j[sel], p[sel], prior)
    lo, hi = _percentiles(draws)

    ratings = {k: np.full(n, np.nan) for k in ("mean", "ci_low", "ci_high")}
    on = np.isfinite(s)
    if on.any():
        idx = np.flatnonzero(on)
        remap = np.full(n, -1)
        remap[idx] = np.arange(len(idx))
        keep = on[i]
        e = elo(len(idx), zip(remap[i[keep]], remap[j[keep]], p[keep]), orders, elo_k, seed, ELO_BASE)
        shift = ELO_BASE - e["mean"][0]  # anchor: the reference's mean rating is 1000
        for k in ratings:
            ratings[k][idx] = e[k] + shift

    order = [k for k in np.argsort(-np.nan_to_num(s, nan=-np.inf), kind="stable") if on[k]]
    rank = {k: r for r, k in enumerate(order, 1)}
    sigmoid = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    rows = []
    for k, (name, step) in enumerate(policies):
        mine_a, mine_b = i == k, j == k
        wins = int((agreed & ((mine_a & (p > 0.5)) | (mine_b & (p < 0.5)))).sum())
        losses = int((agreed & ((mine_a & (p < 0.5)) | (mine_b & (p > 0.5)))).sum())
        m = int((mine_a | mine_b).sum())
        rows.append({"policy": name, "step": int(step),
                     "bt_strength": s[k], "bt_ci_low": lo[k], "bt_ci_high": hi[k],
                     "win_prob": sigmoid(s[k]), "win_prob_ci_low": sigmoid(lo[k]), "win_prob_ci_high": sigmoid(hi[k]),
                     "elo": ratings["mean"][k], "elo_ci_low": ratings["ci_low"][k], "elo_ci_high": ratings["ci_high"][k],
                     "wins": wins, "losses": losses, "ties": m - wins - losses, "comparisons": m,
                     "prompts": int(len(set(pid[mine_a | mine_b]))), "rank": rank.get(k)})
    out = pd.DataFrame(rows)
    out["rank"] = pd.Series([r["rank"] for r in rows], dtype=object)  # None: not ranked
    return out
