"""The judge-free behaviour probes, the bootstrap behind their intervals, the judge-quality
gate and the report's verdict, on planted data."""

import numpy as np
import pandas as pd
import pytest

from evaluation.probes import (REFUSAL_PATTERNS, policy_against_policy, ProbeError, changed, distinct_n, load_refusal_patterns,
                               probe_rows, refused, repeats_ngram)
from judges.quality import doubts, self_consistency
from rlaif.stats import bootstrap_interval


def test_the_refusal_detector_reads_the_opening_only():
    texts = ["I'm sorry, but I can't help with that.", "I cannot provide instructions for that.",
             "As an AI, I won't write that.", "Sorry, that's not something I can do.",
             "I\u2019m sorry, I can\u2019t assist with that request.",  # curly apostrophes
             "Sure! Split the bill by what each person ordered, then add tax and tip.",
             "Lock the windows and add a deadbolt. " * 8 + "I'm sorry if this is long."]  # late: not an opening
    assert refused(texts).tolist() == [True, True, True, True, True, False, False]


def test_a_users_refusal_patterns_replace_the_shipped_ones(tmp_path):
    f = tmp_path / "refusals.txt"
    f.write_text("# pirate refusals\n^arr, no\n\nwalk the plank\n")
    patterns = load_refusal_patterns(f)
    assert patterns == ("^arr, no", "walk the plank")
    assert refused(["Arr, no treasure maps for ye.", "I'm sorry, I can't."], patterns).tolist() == [True, False]
    assert load_refusal_patterns(None) == REFUSAL_PATTERNS
    (tmp_path / "bad.txt").write_text("ok\n(unclosed\n")
    with pytest.raises(ProbeError, match=r"bad.txt:2: not a regular expression"):
        load_refusal_patterns(tmp_path / "bad.txt")
    with pytest.raises(ProbeError, match="no such refusal pattern file"):
        load_refusal_patterns(tmp_path / "missing.txt")


def test_degeneration_probes_catch_a_loop():
    fluent, loop = "The cat sat on the mat and looked out of the window.", "the the the the the the the the"
    assert distinct_n(fluent, 2) == 1.0 and distinct_n(loop, 2) == pytest.approx(1 / 7)
    assert not repeats_ngram(fluent, 4) and repeats_ngram(loop, 4)
    assert np.isnan(distinct_n("one", 2))


def planted(n=40, seed=0, policy_refuses_harmful=0.9, reference_refuses_harmful=0.2):
    rng = np.random.default_rng(seed)
    harmful = np.arange(n) < n // 2
    d = {"harmful": harmful}
    for who, p, length in (("policy", policy_refuses_harmful, 20), ("reference", reference_refuses_harmful, 30)):
        d[f"{who}_refused"] = np.where(harmful, rng.random(n) < p, False)
        d[f"{who}_n_tokens"] = rng.integers(length - 5, length + 5, n)
        d[f"{who}_has_eos"] = rng.random(n) < 0.8
        d[f"{who}_distinct_2"] = rng.uniform(0.8, 1.0, n)
        d[f"{who}_repeats_4gram"] = rng.random(n) < 0.1
        d[f"{who}_ref_nll"] = d[f"{who}_n_tokens"] * 1.5
    return pd.DataFrame(d)


def test_probes_find_a_planted_change_and_not_a_planted_null():
    rows = {r["probe"]: r for r in probe_rows(planted(), resamples=500)}
    # planted: the policy refuses most harmful prompts, the reference few; it writes shorter answers
    assert rows["refusal_harmful"]["n"] == 20 and not rows["refusal_harmful"]["few"]
    assert changed(rows["refusal_harmful"]) and rows["refusal_harmful"]["diff"] > 0.4
    assert changed(rows["length"]) and rows["length"]["diff"] == pytest.approx(-10, abs=2)
    # no refusal planted on the other prompts; the perplexity is e^1.5 for both by construction
    assert rows["refusal_benign"]["policy"] == rows["refusal_benign"]["reference"] == 0
    assert not changed(rows["refusal_benign"])
    assert rows["ref_perplexity"]["policy"] == pytest.approx(np.exp(1.5))
    # intervals contain their estimate
    for r in rows.values():
        assert r["policy_ci_low"] <= r["policy"] <= r["policy_ci_high"], r["probe"]
    # the same policy as its own reference: nothing changed
    same = planted(policy_refuses_harmful=0.2)
    same[[c for c in same if c.startswith("policy_")]] = same[[c.replace("policy_", "reference_")
                                                                for c in same if c.startswith("policy_")]].values
    assert not any(changed(r) for r in probe_rows(same, resamples=200))


def test_few_samples_are_marked_and_a_missing_category_is_not_measured():
    rows = {r["probe"]: r for r in probe_rows(planted(n=10).assign(harmful=False), resamples=100)}
    assert rows["length"]["few"] and rows["length"]["n"] == 10
    assert rows["refusal_harmful"]["n"] == 0 and np.isnan(rows["refusal_harmful"]["policy"])


def test_the_bootstrap_interval_covers_a_known_mean():
    rng = np.random.default_rng(1)
    x = rng.normal(2.0, 1.0, 400)
    lo, hi = bootstrap_interval(lambda idx: x[idx].mean(), len(x), 1000)
    assert lo < 2.0 < hi and hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.25)  # ~ the normal interval
    assert np.isnan(bootstrap_interval(lambda idx: 0.0, 0)[0])


def prefs(consistent: list[bool], chosen_longer: list[bool]) -> pd.DataFrame:
    ids = [f"p{i}" for i in range(len(consistent))]  # one pair per prompt
    return pd.DataFrame({"valid": True, "position_consistent": consistent, "prompt_id": ids,
                         "pair_id": [f"{p}/a/b" for p in ids],
                         "chosen": ["a much longer answer" if c else "short" for c in chosen_longer],
                         "rejected": ["short" if c else "a much longer answer" for c in chosen_longer]})


def test_the_gate_flags_a_judge_at_chance_and_passes_a_consistent_one():
    coin = self_consistency(prefs([True, False] * 20, [True] * 40))
    assert coin["judge/position_consistency"] == 0.5 and coin["judge/decided_pairs"] == 20
    assert coin["judge/chose_longer"] == 1.0
    assert any("chance on its own pairs" in r for r in doubts(coin))
    steady = self_consistency(prefs([True] * 36 + [False] * 4, [True, False] * 20))
    assert doubts(steady) == []
    # agreement with humans: at chance, and no better than the length rule
    human = {**steady, "judge/agreement": 0.52, "judge/agreement_ci_low": 0.45, "judge/agreement_ci_high": 0.59,
             "judge/agreement_n": 200, "baseline/longer_wins": 0.55}
    reasons = doubts(human)
    assert len(reasons) == 2 and "human-labelled" in reasons[0] and "longer response wins" in reasons[1]
    good = {**human, "judge/agreement": 0.75, "judge/agreement_ci_low": 0.69, "judge/agreement_ci_high": 0.8}
    assert doubts(good) == []


def test_two_policies_are_compared_prompt_by_prompt():
    """Two evaluations' final rows, in different orders: the policy against the reference of
    `planted` is the same comparison as that policy against another evaluation's policy that
    answered like the reference, joined on prompt_id."""
    rows = planted().assign(prompt_id=lambda d: [f"p{i}" for i in range(len(d))])
    a = rows[["prompt_id", "harmful", *[c for c in rows if c.startswith("policy_")]]]
    b = rows[["prompt_id", "harmful", *[c for c in rows if c.startswith("reference_")]]]
    b = b.rename(columns=lambda c: c.replace("reference_", "policy_")).sample(frac=1, random_state=0)
    expected = probe_rows(rows, resamples=300)
    got = policy_against_policy(a, b, resamples=300)
    for e, g in zip(expected, got):
        assert g["probe"] == e["probe"] and g["n"] == e["n"]
        assert (g["policy"], g["reference"], g["diff"]) == pytest.approx((e["policy"], e["reference"], e["diff"]),
                                                                          nan_ok=True)
    assert changed(next(g for g in got if g["probe"] == "length"))


def test_intransitive_triples_are_counted_per_prompt_tournament():
    """A prompt whose three samples beat each other in a cycle, one ordered a > b > c, and a
    prompt with two samples (no triple), plus a revision pair that must not count."""
    rows = [("p1", "x", "y", 0.9), ("p1", "y", "z", 0.8), ("p1", "x", "z", 0.2),   # x > y > z > x
            ("p2", "u", "v", 0.9), ("p2", "v", "w", 0.9), ("p2", "u", "w", 0.9),   # u > v > w
            ("p3", "s", "t", 0.7)]
    prefs = pd.DataFrame([{"pair_id": f"{p}/{a}/{b}", "prompt_id": p, **stored(a, b, q), "valid": True,
                           "position_consistent": True} for p, a, b, q in rows]
                         + [{"pair_id": "r1/revision", "prompt_id": "p3", **stored("r1", "rev", 0.1), "response_b_id": None, "valid": True,
                             "position_consistent": True}])
    m = self_consistency(prefs)
    assert (m["judge/triples"], m["judge/intransitive_triples"]) == (2, 0.5)
    assert "judge/triples" not in self_consistency(prefs[prefs["prompt_id"] == "p3"])  # pairs only: not measured
    assert any("chance on its own tournaments" in r for r in doubts(m))  # 2 triples cannot clear 0.25


def stored(a: str, b: str, p_a: float) -> dict:
    """A preferences row's stored columns for responses a and b judged P(a better) = p_a."""
    ra, rb = f"answer {a}", f"answer {b}"
    return {"response_a": ra, "response_b": rb, "response_a_id": a, "response_b_id": b, "chosen": ra if p_a >= 0.5 else rb,
            "rejected": rb if p_a >= 0.5 else ra, "p_chosen": max(p_a, 1 - p_a)}
