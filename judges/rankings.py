"""Rankings from head-to-head judgements: Bradley-Terry strengths, Elo ratings and the judge's
intransitive triples. Pure functions over comparisons `(i, j, p)`: items i and j (0..n-1) and
the soft probability p that i beats j (the judge's debiased P, or 1/0 for hard outcomes).

    bradley_terry(3, [(0, 1, 0.8), (1, 2, 0.7)])        -> strengths, mean 0 (log-odds scale)
    elo(3, comparisons, orders=200)                      -> mean rating and 95% interval per item
    intransitive_triples(3, comparisons)                 -> (cyclic triples, decided triples)
    rank_responses(preferences)                          -> one row per response: BT, Elo, wins, rank
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd


def bradley_terry(n_items: int, comparisons, prior: float = 0.1, iters: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Maximum a posteriori Bradley-Terry strengths s, with P(i beats j) = sigmoid(s_i - s_j).

    Maximises sum p log sigmoid(s_i - s_j) + (1 - p) log sigmoid(s_j - s_i) - prior/2 |s|^2 by
    Newton's method (the objective is concave, so it converges from 0 in a few steps). The
    Gaussian prior keeps an item that won or lost everything finite; soft labels are used as
    they are, which the usual libraries (choix) do not take. Returns (n_items,), mean 0."""
    c = np.asarray(list(comparisons), dtype=float).reshape(-1, 3)
    i, j, p = c[:, 0].astype(int), c[:, 1].astype(int), c[:, 2]
    if len(c) and (i.min() < 0 or max(i.max(), j.max()) >= n_items or (i == j).any()):
        raise ValueError(f"comparisons must name two different items in 0..{n_items - 1}")
    if ((p < 0) | (p > 1) | ~np.isfinite(p)).any():
        raise ValueError("comparison probabilities must lie in [0, 1]")
    s = np.zeros(n_items)
    for _ in range(iters):
        q = 1 / (1 + np.exp(-(s[i] - s[j])))  # (m,) the model's P(i beats j)
        grad = -prior * s
        np.add.at(grad, i, p - q)
        np.add.at(grad, j, q - p)
        w = q * (1 - q)  # (m,) curvature of each comparison
        hess = prior * np.eye(n_items)  # minus the Hessian: a weighted graph Laplacian plus the prior
        np.add.at(hess, (i, i), w)
        np.add.at(hess, (j, j), w)
        np.add.at(hess, (i, j), -w)
        np.add.at(hess, (j, i), -w)
        step = np.linalg.solve(hess, grad)
        s += step
        if np.abs(step).max() < tol:
            break
    return s - s.mean()


def elo(n_items: int, comparisons, orders: int = 200, k: float = 4.0, seed: int = 0,
        base: float = 1000.0) -> dict[str, np.ndarray]:
    """Elo ratings from the comparisons taken one after another. Elo depends on the order, so
    it is run over `orders` seeded shuffles: returns the mean rating per item and the 2.5% and
    97.5% percentiles over the shuffles (as Chatbot Arena reports). Each comparison moves the
    two ratings by k * (p - expected), expected = 1 / (1 + 10^((R_j - R_i) / 400))."""
    c = np.asarray(list(comparisons), dtype=float).reshape(-1, 3)
    rng = np.random.default_rng(seed)
    runs = np.empty((orders, n_items))
    for o in range(orders):
        r = np.full(n_items, base)
        for i, j, p in c[rng.permutation(len(c))]:
            i, j = int(i), int(j)
            delta = k * (p - 1 / (1 + 10 ** ((r[j] - r[i]) / 400)))
            r[i] += delta
            r[j] -= delta
        runs[o] = r
    return {"mean": runs.mean(0), "ci_low": np.percentile(runs, 2.5, axis=0),
            "ci_high": np.percentile(runs, 97.5, axis=0)}


def intransitive_triples(n_items: int, comparisons) -> tuple[int, int]:
    """(cyclic, decided): among the triples whose three pairs were all judged with a winner
    (the pair's mean p away from 0.5), how many form a cycle a > b > c > a. A judge with a
    consistent preference has none; one answering at random has a quarter of them cyclic."""
    total = np.zeros((n_items, n_items))
    count = np.zeros((n_items, n_items))
    for i, j, p in comparisons:
        i, j = int(i), int(j)
        total[i, j] += p
        total[j, i] += 1 - p
        count[i, j] += 1
        count[j, i] += 1
    with np.errstate(invalid="ignore"):
        mean = total / count  # (n, n) P(row beats column), NaN where never judged
    beats = mean > 0.5
    decided = (count > 0) & (mean != 0.5)
    cyclic = n = 0
    for a, b, c in itertools.combinations(range(n_items), 3):
        if decided[a, b] and decided[b, c] and decided[a, c]:
            n += 1
            cyclic += bool((beats[a, b] and beats[b, c] and beats[c, a]) or (beats[b, a] and beats[c, b] and beats[a, c]))
    return cyclic, n


def tournament_comparisons(pairs: pd.DataFrame) -> tuple[list[str], list[tuple[int, int, float]]]:
    """One prompt's judged pairs, as the preferences table stores them (response_a_id,
    response_b_id; the chosen text and its p_chosen), as (response ids in first-seen order,
    comparisons over their indices with P(a better)). Pairs without two response ids (a
    response against its revision; parts written before schema version 5) are left out."""
    pairs = pairs[pairs["response_a_id"].notna() & pairs["response_b_id"].notna()]
    p_a = np.where(pairs["chosen"] == pairs["response_a"], pairs["p_chosen"], 1.0 - pairs["p_chosen"])
    a, b = pairs["response_a_id"].tolist(), pairs["response_b_id"].tolist()
    ids = list(dict.fromkeys(a + b))
    at = {r: k for k, r in enumerate(ids)}
    return ids, [(at[x], at[y], float(q)) for x, y, q in zip(a, b, p_a)]


def rank_responses(prefs: pd.DataFrame, orders: int = 100, seed: int = 0) -> pd.DataFrame:
    """One row per judged response: each prompt's tournament (its valid preference rows)
    aggregated into a Bradley-Terry
    strength, an Elo rating with its 95% interval over shuffled orders, wins and losses (a
    pair's winner is the side with p_a above 0.5; 0.5 is neither) and the rank within the
    prompt (1 = strongest by BT)."""
    rows = []
    for pid, g in prefs[prefs["valid"]].groupby("prompt_id", sort=False):
        ids, comps = tournament_comparisons(g)
        if len(ids) < 2:
            continue
        strength, ratings = bradley_terry(len(ids), comps), elo(len(ids), comps, orders, seed=seed)
        order = np.argsort(-strength, kind="stable")
        rank = np.empty(len(ids), int)
        rank[order] = np.arange(1, len(ids) + 1)
        for k, r in enumerate(ids):
            rows.append({"prompt_id": pid, "response_id": r, "bt_strength": float(strength[k]),
                         "elo": float(ratings["mean"][k]), "elo_ci_low": float(ratings["ci_low"][k]),
                         "elo_ci_high": float(ratings["ci_high"][k]),
                         "wins": sum((x == k and q > 0.5) or (y == k and q < 0.5) for x, y, q in comps),
                         "losses": sum((x == k and q < 0.5) or (y == k and q > 0.5) for x, y, q in comps),
                         "comparisons": sum(k in (x, y) for x, y, _ in comps), "rank": int(rank[k])})
    return pd.DataFrame(rows, columns=["prompt_id", "response_id", "bt_strength", "elo", "elo_ci_low", "elo_ci_high",
                                       "wins", "losses", "comparisons", "rank"])
