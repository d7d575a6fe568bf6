"""The ladder of policies (evaluation/ladder.py), on planted head-to-head outcomes."""

import numpy as np
import pandas as pd
import pytest

from evaluation.ladder import ladder, ladder_comparisons, rung_pairs

POLICIES = [("reference", 0), ("step 4", 4), ("step 8", 8), ("final", 12)]
TRUTH = np.array([0.0, 0.4, 0.9, 1.5])  # planted strengths, the reference at 0


def planted(n_prompts, seed, pairs=((1, 0), (2, 0), (3, 0), (1, 2), (2, 3))):
    """Hard outcomes drawn from TRUTH: each policy against the reference and adjacent rungs,
    once per prompt, as evaluate() with ladder="adjacent" judges them."""
    rng = np.random.default_rng(seed)
    rows = [{"prompt_id": f"p{q}", "a": POLICIES[x][0], "b": POLICIES[y][0],
             "p_a": float(rng.random() < 1 / (1 + np.exp(-(TRUTH[x] - TRUTH[y])))), "valid": True}
            for q in range(n_prompts) for x, y in pairs]
    return pd.DataFrame(rows)


def test_a_planted_ladder_comes_back_in_order_with_intervals_that_hold_the_truth():
    covered = total = 0
    for seed in range(8):
        out = ladder(planted(150, seed), POLICIES, resamples=200, orders=30, seed=seed)
        assert out["policy"].tolist() == [p for p, _ in POLICIES]
        # the reference anchors both scales
        assert out.loc[0, "bt_strength"] == 0 and out.loc[0, "win_prob"] == 0.5 and out.loc[0, "elo"] == pytest.approx(1000)
        if seed == 0:
            assert out["rank"].tolist() == [4, 3, 2, 1]
            assert out["elo"].is_monotonic_increasing and out["bt_strength"].is_monotonic_increasing
        for k in range(1, 4):
            r = out.loc[k]
            assert r["bt_ci_low"] <= r["bt_strength"] <= r["bt_ci_high"]
            covered += r["bt_ci_low"] <= TRUTH[k] <= r["bt_ci_high"]
            truth_p = 1 / (1 + np.exp(-TRUTH[k]))
            assert (r["win_prob_ci_low"] <= truth_p <= r["win_prob_ci_high"]) == (r["bt_ci_low"] <= TRUTH[k] <= r["bt_ci_high"])
            total += 1
    assert covered / total >= 0.75  # nominal 95%; the prior shrinks a little


def test_more_prompts_give_narrower_intervals():
    width = {}
    for n in (30, 300):
        out = ladder(planted(n, seed=1), POLICIES, resamples=200, orders=10)
        width[n] = (out["bt_ci_high"] - out["bt_ci_low"]).iloc[1:].mean()
    assert width[300] < 0.6 * width[30]


def test_a_policy_without_comparisons_is_reported_with_n_0_and_no_figures():
    comps = planted(40, seed=2, pairs=((1, 0), (2, 0)))  # "final" never judged
    comps = pd.concat([comps, pd.DataFrame({"prompt_id": ["p0"], "a": ["final"], "b": ["reference"],
                                            "p_a": [1.0], "valid": [False]})])  # identical answers: invalid
    out = ladder(comps, POLICIES, resamples=50, orders=5).set_index("policy")
    assert out.loc["final", "comparisons"] == 0 and out.loc["final", "rank"] is None
    assert out.loc["final", ["bt_strength", "bt_ci_low", "win_prob", "elo", "elo_ci_high"]].isna().all()
    assert out.loc["step 4", "comparisons"] == 40 and out.loc["reference", "comparisons"] == 80
    assert sorted(out["rank"].dropna()) == [1, 2, 3]
    # nothing valid at all: every figure NaN, the reference's too, nothing ranked
    none = ladder(comps.assign(valid=False), POLICIES, resamples=10, orders=5)
    assert none["comparisons"].eq(0).all() and none["bt_strength"].isna().all() and none["elo"].isna().all()
    assert none["rank"].isna().all()


def test_a_policy_joined_only_to_another_policy_is_not_anchored():
    """Two policies judged only against each other: their strength relative to the reference
    is not identified, so neither is reported, though their counts are."""
    comps = planted(20, seed=3, pairs=((1, 0), (2, 3)))
    out = ladder(comps, POLICIES, resamples=20, orders=5).set_index("policy")
    assert np.isfinite(out.loc["step 4", "bt_strength"])
    assert out.loc[["step 8", "final"], "bt_strength"].isna().all()
    assert (out.loc[["step 8", "final"], "comparisons"] == 20).all()


def test_ties_are_pairs_whose_two_orders_disagree():
    comps = pd.DataFrame({"prompt_id": ["p0", "p1", "p2"], "a": ["final"] * 3, "b": ["reference"] * 3,
                          "p_a": [0.9, 0.2, 0.6], "position_consistent": [True, True, False], "valid": True})
    out = ladder(comps, [("reference", 0), ("final", 2)], resamples=10, orders=5).set_index("policy")
    assert out.loc["final", ["wins", "losses", "ties"]].tolist() == [1, 1, 1]
    assert out.loc["reference", ["wins", "losses", "ties"]].tolist() == [1, 1, 1]


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="not on the ladder"):
        ladder(planted(5, 0), POLICIES[:3])
    with pytest.raises(ValueError, match="unique"):
        ladder(planted(5, 0), [*POLICIES, ("final", 13)])


def test_rung_pairs_and_comparisons():
    assert rung_pairs(3, "reference") == []
    assert rung_pairs(3, "adjacent") == [(0, 1), (1, 2)] and rung_pairs(1, "adjacent") == []
    assert rung_pairs(3, "all") == [(0, 1), (0, 2), (1, 2)]
    with pytest.raises(ValueError):
        rung_pairs(3, "every")
    rows = pd.DataFrame({"prompt_id": ["p0", "p0"], "policy": ["s1", "final"], "p_policy_better": [0.7, 0.4],
                         "position_consistent": [True, False], "valid": [True, True]})
    matches = pd.DataFrame({"prompt_id": ["p0"], "policy_a": ["s1"], "policy_b": ["final"], "p_a": [0.3],
                            "position_consistent": [True], "valid": [True]})
    c = ladder_comparisons(rows, matches, "ref")
    assert list(zip(c["a"], c["b"], c["p_a"])) == [("s1", "ref", 0.7), ("final", "ref", 0.4), ("s1", "final", 0.3)]
