"""The transformers judge on a tiny random-weight model."""

import numpy as np
import pandas as pd
import pytest

from constitution import load_constitution
from judges.backends import JudgeError, TransformersJudge, label_token_ids, make_judge
from judges.feedback import (FeedbackConfig, critique_and_revise, label_preferences, make_pairs,
                             make_revision_pairs)
from judges.templates import preference_messages
from rlaif.models import load_tokenizer


@pytest.fixture(scope="module")
def judge(tiny_model_dir):
    return TransformersJudge(str(tiny_model_dir), batch_size=3)


def test_label_tokens_are_single_tokens(tiny_model_dir):
    assert label_token_ids(load_tokenizer(tiny_model_dir)) == [49, 50]


def test_tokenizer_without_single_token_labels_is_rejected():
    class Tok:
        def encode(self, text, add_special_tokens=False):
            return [ord(c) for c in text] + ([0] if text.endswith("A") else [])

    with pytest.raises(JudgeError, match="option label 'A' is not a single token"):
        label_token_ids(Tok())


def test_option_probs_are_padding_aware(judge):
    p = load_constitution("harmless").principles[0]
    convs = [preference_messages(p, "hi" * n, "short", "a much longer answer " * n) for n in (20, 1, 5, 30, 2)]
    batched = judge.option_probs(convs)
    one_by_one = np.concatenate([judge.option_probs([c]) for c in convs])
    np.testing.assert_allclose(batched, one_by_one, atol=1e-5)
    in_order = TransformersJudge(judge.model_id, batch_size=3, sort_by_length=False).option_probs(convs)
    np.testing.assert_allclose(batched, in_order, atol=1e-5)
    assert ((batched > 0) & (batched < 1)).all()


def test_unknown_backend():
    with pytest.raises(JudgeError, match="unknown judge backend 'nope'"):
        make_judge("x", "nope")


def responses_frame():
    return pd.DataFrame({
        "prompt_id": ["p1", "p1", "p2", "p2"], "prompt": ["how are you", "how are you", "tell me", "tell me"],
        "response_id": ["p1/s0", "p1/s1", "p2/s0", "p2/s1"], "sample_idx": [0, 1, 0, 1],
        "response": ["fine", "great thanks", "same", "same"],
    })


def test_preferences_are_debiased_soft_labels(judge):
    c = load_constitution("harmless")
    prefs = label_preferences(judge, make_pairs(responses_frame()), c, FeedbackConfig(principles_per_pair=2))
    assert len(prefs) == 2
    assert (prefs["p_chosen"] >= 0.5).all() and (prefs["p_chosen"] <= 1).all()
    np.testing.assert_allclose(prefs["p_a"], (prefs["p_a_first"] + 1 - prefs["p_a_second"]) / 2)
    assert all(len(ids) == 2 for ids in prefs["principle_ids"])
    row = prefs.set_index("prompt_id").loc["p1"]
    assert {row["chosen"], row["rejected"]} == {"fine", "great thanks"}
    same = prefs.set_index("prompt_id").loc["p2"]
    assert not same["valid"] and same["invalid_reason"] == "identical responses"
    again = label_preferences(judge, make_pairs(responses_frame()), c, FeedbackConfig(principles_per_pair=2))
    pd.testing.assert_frame_equal(prefs, again)  # seeded per pair: a retry reproduces labels


def test_critique_rounds_chain_revisions(judge):
    c = load_constitution("harmless")
    cfg = FeedbackConfig(critique_rounds=2, max_new_tokens=4, few_shot=1)
    rows = critique_and_revise(judge, responses_frame(), c, cfg)
    assert len(rows) == 4  # 2 first samples x 2 rounds
    r = rows.set_index(["response_id", "round"])
    assert r.loc[("p1/s0", 1), "response"] == r.loc[("p1/s0", 0), "revision"]
    assert set(rows["principle_id"]) <= {p.id for p in c.principles}


def test_revision_pairs_put_the_original_against_its_final_revision(judge):
    c = load_constitution("harmless")
    rows = critique_and_revise(judge, responses_frame(), c, FeedbackConfig(critique_rounds=2, max_new_tokens=4))
    pairs = make_revision_pairs(rows)
    assert len(pairs) == 2
    final = rows[rows["round"] == 1].set_index("response_id")["revision"]
    p1 = pairs.set_index("pair_id").loc["p1/s0/revision"]
    assert p1["response_a"] == "fine" and p1["response_b"] == final["p1/s0"]
