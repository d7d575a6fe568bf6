"""Rankings from head-to-head judgements (judges/rankings.py), on planted outcomes."""

import itertools

import numpy as np
import pytest

from judges.rankings import bradley_terry, elo, intransitive_triples


def spearman(a, b):
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return np.corrcoef(ra, rb)[0, 1]


def planted(n=20, repeats=3, seed=0):
    """Hard outcomes of every pair, `repeats` times, drawn from known strengths."""
    rng = np.random.default_rng(seed)
    s = rng.normal(0, 1.5, n)
    comps = [(i, j, float(rng.random() < 1 / (1 + np.exp(-(s[i] - s[j])))))
             for i, j in itertools.combinations(range(n), 2) for _ in range(repeats)]
    return s, comps


def test_bradley_terry_recovers_planted_strengths():
    s, comps = planted()
    fit = bradley_terry(20, comps)
    assert spearman(fit, s) >= 0.9
    assert fit.mean() == pytest.approx(0, abs=1e-9)


def test_bradley_terry_takes_soft_labels_as_they_are():
    """Two items judged 0.8 to 0.2 a hundred times: the strength gap is logit(0.8), up to the prior."""
    fit = bradley_terry(2, [(0, 1, 0.8)] * 100, prior=1e-6)
    assert fit[0] - fit[1] == pytest.approx(np.log(0.8 / 0.2), rel=1e-4)
    # the same with the items swapped in half the rows
    fit2 = bradley_terry(2, [(0, 1, 0.8)] * 50 + [(1, 0, 0.2)] * 50, prior=1e-6)
    assert fit2 == pytest.approx(fit, abs=1e-6)


def test_an_item_that_wins_everything_stays_finite_and_first():
    fit = bradley_terry(3, [(0, 1, 1.0), (0, 2, 1.0), (1, 2, 0.7)])
    assert np.isfinite(fit).all() and list(np.argsort(-fit)) == [0, 1, 2]


def test_bad_comparisons_are_named():
    with pytest.raises(ValueError, match="two different items in 0..2"):
        bradley_terry(3, [(0, 3, 0.5)])
    with pytest.raises(ValueError, match="two different items"):
        bradley_terry(3, [(1, 1, 0.5)])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        bradley_terry(3, [(0, 1, 1.5)])


def test_elo_orders_a_transitive_set_and_its_interval_reflects_the_order():
    comps = [(i, j, 1.0) for i, j in itertools.combinations(range(4), 2)] * 5  # 0 > 1 > 2 > 3
    r = elo(4, comps, orders=50)
    assert list(np.argsort(-r["mean"])) == [0, 1, 2, 3]
    assert (r["ci_high"] - r["ci_low"] > 0).all()  # the order of the games moves the ratings
    assert r["mean"].sum() == pytest.approx(4 * 1000)  # zero-sum updates
    s, planted_comps = planted(n=10, repeats=5, seed=1)
    assert spearman(elo(10, planted_comps, orders=20)["mean"], s) >= 0.8


def test_intransitive_triples_find_a_planted_cycle_and_none_in_a_transitive_set():
    assert intransitive_triples(3, [(0, 1, 1.0), (1, 2, 0.9), (2, 0, 0.8)]) == (1, 1)
    assert intransitive_triples(4, [(i, j, 0.9) for i, j in itertools.combinations(range(4), 2)]) == (0, 4)
    # a pair judged 0.5 on average decides nothing; a pair never judged leaves its triples out
    assert intransitive_triples(3, [(0, 1, 1.0), (1, 2, 1.0), (2, 0, 0.7), (0, 2, 0.7)]) == (0, 0)
    assert intransitive_triples(3, [(0, 1, 1.0), (1, 2, 1.0)]) == (0, 0)


def test_a_judge_answering_at_random_has_a_quarter_of_its_triples_cyclic():
    rng = np.random.default_rng(0)
    comps = [(i, j, float(rng.random() < 0.5)) for i, j in itertools.combinations(range(30), 2)]
    cyclic, n = intransitive_triples(30, comps)
    assert n == 4060 and 0.2 < cyclic / n < 0.3


def test_tournament_schedules():
    import random

    from judges.feedback import tournament

    assert tournament(2, "round_robin") == tournament(2, "random:5") == [(0, 1)]
    assert len(tournament(4, "all")) == 6 and tournament(4, "round_robin") == [(0, 1), (0, 3), (1, 2), (2, 3)]
    drawn = tournament(5, "random:3", random.Random(1))
    assert len(drawn) == 3 and set(drawn) <= set(tournament(5, "all"))
    assert drawn == tournament(5, "random:3", random.Random(1))  # seeded
    assert tournament(3, "random:9", random.Random(0)) == tournament(3, "all")  # never more than exist


def test_make_pairs_pairs_every_scheduled_sample_and_names_both():
    import pandas as pd
    from pydantic import ValidationError

    from judges.config import FeedbackConfig
    from judges.feedback import make_pairs

    responses = pd.DataFrame([{"prompt_id": p, "sample_idx": s, "response_id": f"{p}-{s}", "prompt": f"q {p}",
                               "response": f"answer {s} to {p}"} for s in range(4) for p in ("b", "a")])
    pairs = make_pairs(responses, "all")
    assert len(pairs) == 12 and list(pairs["prompt_id"].unique()) == ["b", "a"]  # first-seen order
    assert pairs["pair_id"].iloc[0] == "b/b-0/b-1" and pairs["response_b"].iloc[0] == "answer 1 to b"
    assert (pairs["response_a_id"].iloc[0], pairs["response_b_id"].iloc[0]) == ("b-0", "b-1")
    assert pairs["pair_id"].is_unique
    two = make_pairs(responses[responses["sample_idx"] < 2])
    assert list(two["pair_id"]) == ["b/b-0/b-1", "a/a-0/a-1"]  # K = 2: today's one pair per prompt
    assert len(make_pairs(responses, "random:2", seed=3)) == 4
    assert make_pairs(responses, "random:2", seed=3).equals(make_pairs(responses, "random:2", seed=3))
    with pytest.raises(ValidationError, match="expected all, round_robin or random:M"):
        FeedbackConfig(pairing="random:0")


def test_rank_responses_aggregates_each_prompts_tournament():
    import pandas as pd

    from judges.rankings import rank_responses

    # p1: x beats y and z, y beats z; p2: a single pair, u over v; a tie decides nothing
    rows = [("p1", "x", "y", 0.9), ("p1", "x", "z", 0.8), ("p1", "y", "z", 0.7), ("p2", "u", "v", 0.4),
            ("p2", "u", "v", 0.5)]
    prefs = pd.DataFrame([{"pair_id": f"{p}/{a}/{b}", "prompt_id": p, **stored(a, b, q), "valid": True} for p, a, b, q in rows]
                         + [{"pair_id": "p2/u/w", "prompt_id": "p2", **stored("u", "w", 0.9), "valid": False}])
    r = rank_responses(prefs, orders=20).set_index("response_id")
    assert list(r.loc[["x", "y", "z"], "rank"]) == [1, 2, 3] and list(r.loc[["v", "u"], "rank"]) == [1, 2]
    assert (r.loc["x", "wins"], r.loc["x", "losses"], r.loc["z", "losses"]) == (2, 0, 2)
    assert (r.loc["u", "comparisons"], r.loc["u", "wins"], r.loc["u", "losses"]) == (2, 0, 1)
    assert "w" not in r.index  # an invalid pair is left out
    assert r.loc["x", "elo"] > r.loc["y", "elo"] > r.loc["z", "elo"]


def test_rankings_read_response_ids_that_contain_slashes():
    """The pipeline's response ids are prompt/sample ("q1/s0"): a pair id cannot be split back
    into them, so the ranking reads the stored ids."""
    import pandas as pd

    from judges.feedback import make_pairs
    from judges.rankings import rank_responses

    responses = pd.DataFrame([{"prompt_id": "q1", "sample_idx": s, "response_id": f"q1/s{s}", "prompt": "q",
                               "response": f"answer {s}"} for s in range(3)])
    pairs = make_pairs(responses, "all")
    p_a = {"q1/s0": 0.9, "q1/s1": 0.8}  # P(a better) by the pair's first id: s0 > s1 > s2
    prefs = pairs.assign(p_chosen=[max(p_a[a], 1 - p_a[a]) for a in pairs["response_a_id"]], valid=True,
                         chosen=[ra if p_a[a] >= 0.5 else rb for a, ra, rb in
                                 zip(pairs["response_a_id"], pairs["response_a"], pairs["response_b"])])
    r = rank_responses(prefs, orders=10).set_index("response_id")
    assert list(r.index) == ["q1/s0", "q1/s1", "q1/s2"] and list(r["rank"]) == [1, 2, 3]
    assert list(r["comparisons"]) == [2, 2, 2]


def stored(a: str, b: str, p_a: float) -> dict:
    """A preferences row's stored columns for responses a and b judged P(a better) = p_a."""
    ra, rb = f"answer {a}", f"answer {b}"
    return {"response_a": ra, "response_b": rb, "response_a_id": a, "response_b_id": b, "chosen": ra if p_a >= 0.5 else rb,
            "rejected": rb if p_a >= 0.5 else ra, "p_chosen": max(p_a, 1 - p_a)}


class RankingJudge:
    """A stand-in judge (no model) with a known order over the responses it may be shown: it
    finds the two in the prompt, (A) being the one shown first, and prefers the better one with
    P = 0.9. It implements what judges.feedback.label_preferences calls on a judge."""

    backend = "stand-in"

    def __init__(self, order: list[str]):
        from types import SimpleNamespace

        self.cfg, self.rank = SimpleNamespace(prompt_format="raw"), {r: k for k, r in enumerate(order)}

    def ask(self, conversation):
        from judges.templates import raw_prompt

        return raw_prompt(conversation)

    def choice_probs(self, texts, prefix, candidates, desc=""):
        p_a = []
        for t in texts:
            a, b = sorted((r for r in self.rank if r in t), key=t.index)  # (A) is shown first
            p_a.append(0.9 if self.rank[a] < self.rank[b] else 0.1)
        return np.stack([p_a, 1 - np.array(p_a)], axis=1), [None] * len(texts)


def test_a_tournament_reward_scores_each_group_by_its_judged_strengths():
    """Each group's responses scored by Bradley-Terry over its judged pairs, centred within the
    group, in the batch's order; the pairs go to on_pairs with both orders; a prompt that fills
    two groups of one batch gets two tournaments."""
    from constitution import load_constitution
    from judges.config import FeedbackConfig
    from judges.feedback import JudgeError, tournament_reward

    order = ["Paris is the capital.", "It is Paris.", "Maybe Lyon.", "No idea."]  # best first
    stored = []
    score = tournament_reward(RankingJudge(order), load_constitution("harmless"), FeedbackConfig(), group_size=4,
                              prompt_ids={"Capital of France?": "p1"}, on_pairs=stored.append)
    batch = [order[2], order[0], order[3], order[1],  # group 1
             order[1], order[3], order[0], order[2]]  # group 2: the same prompt again
    scores = score(["Capital of France?"] * 8, batch).numpy()
    for g in (scores[:4], scores[4:]):
        assert abs(g.sum()) < 1e-6  # centred within the group
    ranks = [order.index(r) for r in batch]
    assert list(np.argsort(-scores[:4])) == list(np.argsort(ranks[:4]))  # best response, highest score
    assert list(np.argsort(-scores[4:])) == list(np.argsort(ranks[4:]))
    pairs = stored[0]
    assert len(pairs) == 12 and set(pairs["prompt_id"]) == {"p1"} and pairs["valid"].all()
    assert (pairs["p_a_first"] + pairs["p_a_second"]).round(6).eq(1.0).all()  # both orders asked, consistent
    assert len(set(pairs["response_a_id"]) | set(pairs["response_b_id"])) == 8  # each group's own ids
    with pytest.raises(JudgeError, match="4 responses side by side"):
        score(["a", "a", "b", "a"], order)
