"""The benchmark suite's bookkeeping (bench/common.py): medians, ratios and targets. The
benchmarks themselves are run by `make bench`, never timed in tests."""

import numpy as np
import pandas as pd
import pytest

from bench.common import child, comparison


def test_comparison_takes_the_ratio_of_medians_against_the_target():
    runs = {"ours": [{"s": 1.0}, {"s": 3.0}, {"s": 2.0}], "theirs": [{"s": 4.0}, {"s": 5.0}, {"s": 9.0}]}
    time = comparison("t", "s", "s", runs, "ours", "theirs", target=0.7, higher_is_better=False)
    assert time["a_median"] == 2.0 and time["b_median"] == 5.0 and time["ratio"] == pytest.approx(0.4)
    assert time["met"] is True and time["target"] == "<= 0.7" and time["runs"]["ours"] == [1.0, 3.0, 2.0]
    speed = comparison("t", "s", "1/s", runs, "ours", "theirs", target=1.0, higher_is_better=True)
    assert speed["met"] is False and speed["target"] == ">= 1"
    assert comparison("t", "s", "s", runs, "ours", "theirs", None, True)["met"] is None


def test_child_parses_its_result_line_and_names_a_failure():
    assert child("print('noise'); print('RESULT {\"x\": 1}')", []) == {"x": 1}
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        child("1/0", [])
    with pytest.raises(RuntimeError, match="no 'RESULT ' line"):
        child("print('nothing')", [])


# ---------------------------------------------------------------- bench/rankings.py's pure parts

def test_rankings_prompt_sets_give_both_sides_the_same_judged_pairs_and_a_disjoint_heldout():
    from bench.rankings import prompt_sets

    ids = [f"p{i:03d}" for i in range(144)]
    sets = prompt_sets(ids, n2=72, heldout=48)
    assert sets["k2"] == ids[:72] and sets["k4"] == ids[:12] and sets["heldout"] == ids[96:]
    assert len(sets["k2"]) * 1 == len(sets["k4"]) * 6  # one pair per K=2 prompt, six per K=4 prompt
    with pytest.raises(ValueError, match="multiple of 6"):
        prompt_sets(ids, n2=70, heldout=48)
    with pytest.raises(ValueError, match="disjoint"):
        prompt_sets(ids, n2=102, heldout=48)  # 150 prompts asked of 144


def test_rankings_accuracy_counts_ties_half_and_flags_intervals_around_chance():
    from bench.rankings import accuracy, correctness

    assert correctness([2.0, 0.0, 1.0], [1.0, 1.0, 1.0]).tolist() == [1.0, 0.0, 0.5]
    near = accuracy([1, 0, 1, 0, 1, 1])
    assert near["accuracy"] == pytest.approx(4 / 6) and near["near_chance"] and near["n"] == 6
    clear = accuracy([1.0] * 40)
    assert not clear["near_chance"] and clear["ci_low"] > 0.9


def test_rankings_difference_is_paired_and_averages_seeds_per_pair():
    from bench.rankings import paired_difference

    k4 = np.array([[1, 1, 0, 1], [1, 0, 0, 1]], float)  # (seeds, pairs)
    k2 = np.array([[0, 1, 0, 1], [0, 1, 0, 1]], float)
    d = paired_difference(k4, k2, resamples=200)
    assert d["difference"] == pytest.approx((3 / 4 + 2 / 4) / 2 - 2 / 4) and d["n"] == 4
    same = paired_difference(k2, k2, resamples=50)  # identical sides: every resample differs by exactly 0
    assert (same["ci_low"], same["ci_high"]) == (0.0, 0.0) and same["contains_zero"]
    better = paired_difference(np.ones((1, 30)), np.zeros((1, 30)), resamples=50)
    assert better["ci_low"] == 1.0 and not better["contains_zero"]
    with pytest.raises(ValueError, match="same pairs"):
        paired_difference(np.ones((1, 3)), np.ones((1, 4)))


def test_rankings_intransitivity_sums_cycles_over_prompts_and_counts_the_pairs_it_read():
    from bench.rankings import intransitivity

    def pair(pid, a, b, p_a, valid=True):  # stored as the preferences table holds it: chosen + p_chosen
        return {"pair_id": f"{pid}/{a}/{b}", "prompt_id": pid, "response_a": a, "response_b": b,
                "response_a_id": a, "response_b_id": b,
                "chosen": a if p_a >= 0.5 else b, "p_chosen": max(p_a, 1 - p_a), "valid": valid}

    rows = [pair("x", "x/s0", "x/s1", 0.9), pair("x", "x/s1", "x/s2", 0.8), pair("x", "x/s0", "x/s2", 0.2),  # a cycle
            pair("y", "y/s0", "y/s1", 0.9), pair("y", "y/s1", "y/s2", 0.8), pair("y", "y/s0", "y/s2", 0.7),  # ordered
            pair("y", "y/s0", "y/s3", 0.1, valid=False)]
    t = intransitivity(pd.DataFrame(rows))
    assert (t["cyclic"], t["decided"], t["pairs_read"], t["valid_pairs"]) == (1, 2, 6, 6)
    assert t["share"] == 0.5


def test_rankings_schedule_cost_per_pair_and_per_prompt():
    from bench.rankings import schedule_cost

    c = schedule_cost("round_robin", n_pairs=48, n_prompts=12, seconds=24.0, valid=47)
    assert (c["pairs_per_s"], c["pairs_per_prompt"], c["seconds_per_prompt"]) == (2.0, 4.0, 2.0)


def test_rankings_markdown_reads_a_result_and_says_what_is_near_chance_or_empty():
    from bench.rankings import accuracy, markdown, paired_difference, schedule_cost

    right, coin = np.ones(30), np.array([1.0, 0.0] * 15)
    seed = {"seed": 0, "train_pairs": 72, "optimizer_steps": 36, "heldout": accuracy(right),
            "heldout_consistent": accuracy([]), "hh": accuracy(coin)}
    side = {"prompts": 72, "responses": 144, "judged_pairs": 72, "valid_pairs": 70, "position_consistent_pairs": 30,
            "seeds": [seed], "mean": {"heldout": accuracy(right), "heldout_consistent": accuracy([]), "hh": accuracy(coin)}}
    result = {"quick": False, "settings": {"hh_pairs": 30, "rm_seeds": [0], "engine": "hf", "max_new_tokens": 64},
              "sides": {"K=2": side, "K=4": {**side, "prompts": 12, "responses": 48}},
              "heldout": {"judged_pairs": 30, "valid_pairs": 30, "consistent_pairs": 0},
              "difference": {"heldout": paired_difference(right, right, resamples=20),
                             "heldout_consistent": paired_difference(np.zeros((1, 0)), np.zeros((1, 0))),
                             "hh": paired_difference(coin, coin, resamples=20)},
              "tournament": [schedule_cost("all", 72, 12, 36.0, 72)],
              "intransitive": {"cyclic": 0, "decided": 0, "share": float("nan"), "ci_low": float("nan"),
                               "ci_high": float("nan"), "pairs_read": 72, "valid_pairs": 72}}
    md = markdown(result)
    assert "| K=4 (mean of 1 seed(s)) | 12 | 48 | 72 (70, 30) | 72 pairs, 36 steps | 1.000 [0.886, 1.000] |" in md
    assert "0.500 [0.332, 0.668] (near chance)" in md  # the coin's hh accuracy
    assert "n/a (0 pairs)" in md and "0 cyclic of 0 decided (n/a" in md
    assert "| all | 72 | 6.00 | 36.0 | 2.00 | 3.00 |" in md


def test_rankings_label_summary_separates_consistency_from_a_position_bias():
    from bench.rankings import label_summary

    prefs = pd.DataFrame({"p_a_first": [0.9, 0.8, 0.3, 0.7, 0.9], "p_a_second": [0.2, 0.7, 0.4, 0.6, 0.9],
                          "valid": [True, True, True, True, False]})
    prefs["p_a"] = (prefs["p_a_first"] + 1 - prefs["p_a_second"]) / 2
    prefs["position_consistent"] = (prefs["p_a_first"] > 0.5) == (prefs["p_a_second"] < 0.5)
    s = label_summary(prefs)
    assert s["valid"] == 4 and s["position_consistent"] == 0.25
    assert (s["always_first_shown"], s["always_second_shown"]) == (0.5, 0.25)
    assert s["mean_margin"] == pytest.approx((0.35 + 0.05 + 0.05 + 0.05) / 4)
