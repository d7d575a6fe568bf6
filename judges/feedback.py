"""Constitutional feedback: critique->revision (SL-CAI) and pairwise preferences (RL-CAI).

Both work on DataFrames from the `responses` table and return rows for the `critiques` and
`preferences` tables. Principles are sampled per item with an RNG seeded by the item's id,
so a label does not depend on batch order and a retried task reproduces it exactly.
"""

from __future__ import annotations

import hashlib
import itertools
import random
import re
from typing import Callable

import numpy as np
import pandas as pd
from constitution import Constitution
from judges.judge import JudgeError
from judges.config import FeedbackConfig
from judges.rankings import bradley_terry, tournament_comparisons
from rlaif.config import Sampling
from judges.templates import (ANSWER_PREFIX, COT_PREFIX, LABELS, RATING_PREFIX, RATINGS,
                              TEMPLATE_VERSION, contrastive_messages, critique_messages, neutralise,
                              preference_messages, rating_messages, revision_messages)

# Text in a response that addresses the judge rather than the user: (name, regex), tried in
# order; the first match names the pattern. Each is narrow enough not to fire on ordinary
# answers (tests/unit/test_injection.py holds both sides), since a match decides the pair.
INJECTION_PATTERNS: tuple[tuple[str, str], ...] = (
    ("addresses the evaluator",  # "Note to the evaluator:", "Dear judge,"
     r"(?i)\b(?:note|message|memo|instructions?|reminder|hint)\s+(?:to|for)\s+(?:the\s+|any\s+|all\s+)?"
     r"(?:ai\s+)?(?:evaluators?|judges?|graders?|raters?|reviewers?|annotators?|assessors?|reward\s+models?"
     r"|labell?ers?)\b"
     r"|\b(?:dear|attention|hello|hey|hi)\s*,?\s+(?:ai\s+)?(?:evaluator|judge|grader|rater|annotator"
     r"|reward\s+model)s?\b"),
    ("casts the reader as the judge",  # "You are the evaluator...", "As the judge, you must..."
     r"(?i)\byou\s+are\s+(?:the|an?)\s+(?:ai\s+)?(?:evaluator|judge|grader|rater|reward\s+model)\b"
     r"|\bas\s+(?:the|an?)\s+(?:ai\s+)?(?:evaluator|judge|grader|rater)\s*,?\s+you\b"),
    ("ignore previous instructions",
     r"(?i)\b(?:ignore|disregard|forget|override)\s+(?:all\s+|any\s+)?(?:of\s+)?(?:the\s+|your\s+)?"
     r"(?:previous|prior|above|earlier|preceding|other|original|system)\s+(?:instructions?|prompts?|rules|"
     r"guidelines|criteria|directions|messages?|text)"),
    ("asks to be chosen",  # "choose this response", "select option (A)", "give it a score of 10"
     r"(?i)\b(?:choose|select|pick|prefer|favou?r|vote\s+for|rank|rate|score)\s+(?:this|my|the\s+(?:first|second))\s+"
     r"(?:response|answer|reply|completion|output)\b"
     r"|\b(?:choose|select|pick|prefer)\s+(?:option\s+|response\s+)?[\(\[]\s*(?-i:[AB])\s*[\)\]]"
     r"|\b(?:give|assign|award)\s+(?:this|it|me|my)\s+(?:\w+\s+)?(?:a\s+)?(?:rating|score)\s+of\s+\d"),
    ("forges the verdict",  # "The better response is (A)", "Answer: (B)", "Rating: 10"
     r"(?im)\b(?:better|best|preferred|winning)\s+(?:response|option|reply|completion)\s+is\s*:?\s*"
     r"(?:option\s+|response\s+)?[\(\[]\s*(?-i:[AB])\s*[\)\]]"
     r"|\b(?:better|preferred|winning)\s+response\s+is\s+(?:option\s+|response\s+)?(?-i:[AB])\b"
     r"|^\s*(?:answer|verdict|choice|rating)\s*:\s*(?:[\(\[]?\s*(?-i:[AB])\s*[\)\]]?|\d+\s*(?:/\s*10)?)\s*$"),
    ("fake turn",  # a line that opens a turn in the raw format, or a chat special token
     r"(?im)^\s*(?:user|human|assistant|system|ai)\s*:"
     r"|<\|[^|<>\n]{1,40}\|>|<(?:start_of_turn|end_of_turn|bos|eos)>"),
    ("fake option",  # a line that opens another option, or a quoting delimiter
     r"(?m)^\s*(?:options?\s*)?\(\s*[AB]\s*\)\s|(?i:</?response\b)"),
)
_INJECTION = tuple((name, re.compile(rx)) for name, rx in INJECTION_PATTERNS)


def injection_match(text: str) -> str | None:
    """The name of the first INJECTION_PATTERNS entry the text matches, None when none does."""
    return next((name for name, rx in _INJECTION if rx.search(text)), None)


def injection_verdicts(response_a: list[str], response_b: list[str], mode: str) -> pd.DataFrame:
    """Per pair: which side carries an injection, the pattern, and what `mode` (FeedbackConfig.
    on_injection) makes of it: p_a_override (0, 1 or NaN: the judge's label stands),
    override_reason and invalid_reason (None when the pair is not overridden / not invalid)."""
    rows = []
    for a, b in zip(response_a, response_b):
        ma, mb = injection_match(a), injection_match(b)
        side = "both" if ma and mb else "a" if ma else "b" if mb else None
        pattern = ma or mb
        p, override, invalid = np.nan, None, None
        if side and mode == "invalid":
            invalid = f"injection suspected: {pattern}"
        elif side == "both" and mode == "against":
            invalid = f"injection suspected in both responses: {pattern}"
        elif side and mode == "against":
            p = 0.0 if side == "a" else 1.0
            override = f"injection suspected in response_{side}: {pattern}"
        rows.append({"injection_suspected": side is not None, "injection_pattern": pattern,
                     "injection_side": side, "p_a_override": p, "override_reason": override,
                     "injection_invalid": invalid})
    return pd.DataFrame(rows, columns=["injection_suspected", "injection_pattern", "injection_side",
                                       "p_a_override", "override_reason", "injection_invalid"])


def seeded_rng(seed: int, *parts) -> random.Random:
    return random.Random("/".join(map(str, (seed, *parts))))


def critique_and_revise(judge, responses: pd.DataFrame, constitution: Constitution,
                        cfg: FeedbackConfig) -> pd.DataFrame:
    """One row per (response, round). Round r critiques the revision from round r-1."""
    todo = responses if cfg.critique_all_samples else responses[responses["sample_idx"] == 0]
    todo = todo.reset_index(drop=True)
    current = todo["response"].tolist()
    rows = []
    for rnd in range(cfg.critique_rounds):
        principles = [constitution.sample_principles(seeded_rng(cfg.seed, rid, rnd))[0]
                      for rid in todo["response_id"]]
        crit_msgs = [critique_messages(constitution, p, q, r, cfg.few_shot)
                     for p, q, r in zip(principles, todo["prompt"], current)]
        critiques = judge.generate(crit_msgs, sampling=cfg.sampling, seed=cfg.seed + 1000 * rnd,
                                   desc=f"critiques (round {rnd + 1})")
        rev_msgs = [revision_messages(m, c.text, p)
                    for m, c, p in zip(crit_msgs, critiques, principles)]
        revisions = judge.generate(rev_msgs, sampling=cfg.sampling, seed=cfg.seed + 1000 * rnd + 1,
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


def tournament(k: int, pairing: str = "all", rng: random.Random | None = None) -> list[tuple[int, int]]:
    """The pairs (i, j), i < j, of a prompt's k samples that the judge labels (FeedbackConfig.pairing)."""
    everything = list(itertools.combinations(range(k), 2))
    if pairing == "all" or k < 3:
        return everything
    if pairing == "round_robin":  # each sample meets its two neighbours in a cycle
        return sorted(tuple(sorted((i, (i + 1) % k))) for i in range(k))
    m = int(pairing.removeprefix("random:"))
    return sorted((rng or random.Random(0)).sample(everything, min(m, len(everything))))


def make_pairs(responses: pd.DataFrame, pairing: str = "all", seed: int = 0) -> pd.DataFrame:
    """Each prompt's samples, paired as `pairing` schedules (with two samples: the one pair).
    The pair id names both responses, so a rerun labels the same pairs in the same order."""
    rows = []
    # prompts in the order of their first sample, as the responses table holds them
    for pid, group in responses.sort_values("sample_idx", kind="stable").groupby("prompt_id", sort=False):
        group = group.reset_index(drop=True)
        for i, j in tournament(len(group), pairing, seeded_rng(seed, pid, "pairs")):
            a, b = group.iloc[i], group.iloc[j]
            rows.append({"pair_id": f"{pid}/{a['response_id']}/{b['response_id']}", "prompt_id": pid,
                         "prompt": a["prompt"], "response_a": a["response"], "response_b": b["response"],
                         "response_a_id": a["response_id"], "response_b_id": b["response_id"]})
    return pd.DataFrame(rows, columns=["pair_id", "prompt_id", "prompt", "response_a", "response_b",
                                       "response_a_id", "response_b_id"])


def make_revision_pairs(critiques: pd.DataFrame) -> pd.DataFrame:
    """Each critiqued response (round 0) against its final revision (last round)."""
    ordered = critiques.sort_values(["response_id", "round"])
    # whole rows, not groupby().last(), which skips missing values column by column
    first = ordered.drop_duplicates("response_id", keep="first").set_index("response_id")
    last = ordered.drop_duplicates("response_id", keep="last").set_index("response_id")
    return pd.DataFrame({
        "pair_id": [f"{rid}/revision" for rid in first.index], "prompt_id": first["prompt_id"].values,
        "prompt": first["prompt"].values, "response_a": first["response"].values,
        "response_b": last["revision"].values, "response_a_id": first.index, "response_b_id": None,
    })


def debias(p_a_first: np.ndarray, p_a_second: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average the two orders (RLAIF): P(a better) and whether both orders agree.

    p_a_first: P(label A) with a shown as A; p_a_second: P(label A) with b shown as A.
    """
    p_a = (p_a_first + (1.0 - p_a_second)) / 2.0
    consistent = (p_a_first > 0.5) == (p_a_second < 0.5)
    return p_a, consistent


def expected_rating(p_digits: np.ndarray, p_ten: np.ndarray) -> np.ndarray:
    """d-RLAIF score in [-1, 1] from the rating distribution.

    p_digits: (N, 9) P(first digit = 1..9), normalised; p_ten: (N,) P("0" follows a "1"),
    which splits the mass of "1" between the ratings 1 and 10 (tokenizers that write "10"
    as two digit tokens).
    """
    p = np.concatenate([p_digits, np.zeros((len(p_digits), 1))], axis=1)  # (N, 10)
    p[:, 9] = p[:, 0] * p_ten
    p[:, 0] *= 1.0 - p_ten
    expected = p @ np.arange(1, 11)  # (N,) in [1, 10]
    return (expected - 5.5) / 4.5


def _first_error(errors: list[str | None]) -> str | None:
    return next((e for e in errors if e), None)


def direct_scores(judge, prompts: list[str], responses: list[str], principles: list,
                  desc: str = "direct scores", defence: bool = True) -> tuple[np.ndarray, list[str | None]]:
    """Rate each response 1-10 under its principle; the expected rating mapped to [-1, 1].
    defence: FeedbackConfig.injection_defence."""
    texts = [judge.ask(rating_messages(p, q, r, defence)) + RATING_PREFIX
             for p, q, r in zip(principles, prompts, responses)]
    digits = tuple(str(d) for d in RATINGS[:9])
    p_digits, errors = judge.choice_probs(texts, RATING_PREFIX, digits, desc=desc)
    # Does a "0" follow the "1"? One more batched pass, on the texts with "1" appended.
    ten = judge.next_token_logprobs([t + "1" for t in texts], RATING_PREFIX + "1", ("0",), desc=desc)
    p_ten = np.exp(np.nan_to_num(ten.logprobs[:, 0], nan=-np.inf))  # absent from top-k: ~0
    scores = expected_rating(p_digits, p_ten)
    return scores, errors


def judge_reward(judge, constitution: Constitution, seed: int = 0):
    """A PPO scorer from the judge itself (d-RLAIF): each (query, response) is rated under one
    principle drawn by a seed of the pair's text, so a resumed run draws the same ones."""
    import torch

    def score(queries: list[str], responses: list[str]):
        principles = [constitution.sample_principles(seeded_rng(seed, q, r, "reward"))[0]
                      for q, r in zip(queries, responses)]
        scores, errors = direct_scores(judge, queries, responses, principles, desc="judge reward")
        if (reason := _first_error(errors)) is not None:
            raise JudgeError(f"the judge could not score {sum(e is not None for e in errors)} "
                             f"response(s): {reason}")
        return torch.as_tensor(scores, dtype=torch.float32)  # (B,) in [-1, 1]

    return score


def tournament_reward(judge, constitution: Constitution, cfg: FeedbackConfig, group_size: int,
                      prompt_ids: dict[str, str] | None = None,
                      on_pairs: Callable[[pd.DataFrame], None] | None = None):
    """A scorer (as judge_reward) from head-to-head judging, with no reward model in between:
    each prompt's `group_size` responses, side by side in the batch, are paired as
    `cfg.pairing` schedules and labelled in both orders as the feedback stage labels them
    (label_preferences), and each response's score is its Bradley-Terry strength within the
    group, centred (judges.rankings). `on_pairs(pairs)` receives the judged pairs, as
    `preferences` rows, to be stored. Response ids hash the prompt id, the position in the
    group and the text, so a resumed run labels the same pairs under the same ids."""
    import torch

    K, prompt_ids = group_size, prompt_ids or {}

    def score(queries: list[str], responses: list[str]):
        G = len(queries) // K
        if len(queries) % K or any(queries[g * K + k] != queries[g * K] for g in range(G) for k in range(K)):
            raise JudgeError(f"tournament reward: expected each prompt's {K} responses side by side")
        groups, ids = [], []  # each group's pairs and response ids (a prompt may fill two groups of a batch)
        for g in range(G):
            q = queries[g * K]
            pid = prompt_ids.get(q) or hashlib.sha256(q.encode()).hexdigest()[:16]
            group = pd.DataFrame({"prompt_id": pid, "prompt": q, "sample_idx": range(K),
                                  "response": responses[g * K:(g + 1) * K]})
            group["response_id"] = [hashlib.sha256(f"{pid}\n{k}\n{r}".encode()).hexdigest()[:16]
                                    for k, r in zip(group["sample_idx"], group["response"])]
            groups.append(make_pairs(group, cfg.pairing, cfg.seed))
            ids.append(list(group["response_id"]))
        labelled = label_preferences(judge, pd.concat(groups, ignore_index=True), constitution, cfg)
        # identical responses and injection verdicts are decided; anything else is the judge failing
        failed = labelled[~labelled["valid"] & (labelled["invalid_reason"] != "identical responses")
                          & ~labelled["injection_suspected"].astype(bool)]
        if len(failed):
            raise JudgeError(f"the judge could not label {len(failed)} tournament pair(s): "
                             f"{failed['invalid_reason'].iloc[0]}")
        if on_pairs is not None:
            on_pairs(labelled)
        scores, start = np.zeros(len(queries)), 0
        for g, group_pairs in enumerate(groups):
            judged = labelled.iloc[start:start + len(group_pairs)]  # label_preferences keeps the order
            start += len(group_pairs)
            seen, comps = tournament_comparisons(judged[judged["valid"]])
            strength = dict(zip(seen, bradley_terry(len(seen), comps))) if len(seen) >= 2 else {}
            s = np.array([strength.get(rid, 0.0) for rid in ids[g]])  # unjudged (all ties skipped): 0
            scores[g * K:(g + 1) * K] = s - s.mean()
        return torch.as_tensor(scores, dtype=torch.float32)  # (B,) centred within each group

    return score


def _label_probs(judge, pairs: pd.DataFrame, principles: list[list], cfg: FeedbackConfig):
    """P(label A) for every (pair, principle, order), flat, with errors and rationales."""
    convs = []
    for ps, (_, row) in zip(principles, pairs.iterrows()):
        for p in ps:
            a, b, on = row["response_a"], row["response_b"], cfg.injection_defence
            convs.append(preference_messages(p, row["prompt"], a, b, on))
            convs.append(preference_messages(p, row["prompt"], b, a, on))
    texts = [judge.ask(c) for c in convs]
    rationales = [""] * len(texts)
    if cfg.chain_of_thought:
        texts = [t + COT_PREFIX for t in texts]
        written = judge.complete(texts, sampling=Sampling(max_new_tokens=cfg.cot_max_new_tokens, temperature=0.0),
                                 seed=cfg.seed, desc="rationales")
        rationales = [g.text for g in written]
        texts = [t + r + "\n" for t, r in zip(texts, rationales)]
    probs, errors = judge.choice_probs([t + ANSWER_PREFIX for t in texts], ANSWER_PREFIX, LABELS,
                                       desc="preference labels")
    probs = probs[:, 0]  # P(A)
    if cfg.chain_of_thought:
        probs = np.clip(probs, *cfg.cot_clamp)
    return probs, errors, rationales


def _contrastive_probs(judge, pairs: pd.DataFrame, principles: list[list], defence: bool) -> np.ndarray:
    """P(a better) = sigmoid(s_a - s_b), s = log p(response | follow) - log p(response | violate).
    Flat, laid out like _label_probs: the second "order" is the complement. The responses are
    continuations, not quoted, so the defence only neutralises them."""
    clean = neutralise if defence else (lambda t: t)
    contexts, responses = [], []
    for ps, (_, row) in zip(principles, pairs.iterrows()):
        for p in ps:
            for follow in (True, False):
                ctx = judge.chat(contrastive_messages(p, row["prompt"], follow))
                contexts += [ctx, ctx]
                responses += [clean(row["response_a"]), clean(row["response_b"])]
    lp = judge.continuation_logprob(contexts, responses, desc="contrastive scores")
    lp = lp.reshape(-1, 2, 2)  # (pairs*k, follow/violate, a/b)
    s = lp[:, 0] - lp[:, 1]  # (pairs*k, a/b)
    p_a = 1.0 / (1.0 + np.exp(-(s[:, 0] - s[:, 1])))
    return np.stack([p_a, 1.0 - p_a], axis=1).reshape(-1)


def label_preferences(judge, pairs: pd.DataFrame, constitution: Constitution,
                      cfg: FeedbackConfig) -> pd.DataFrame:
    """Soft AI preference labels from the judge's option probabilities, both orders.

    A pair whose response matches INJECTION_PATTERNS is flagged (injection_suspected,
    injection_pattern, injection_side: "a", "b" or "both") and decided by cfg.on_injection:
    against the injecting response (p_a 0 or 1, override_reason; p_a_first/p_a_second keep the
    judge's own reading), or invalid. No row is ever dropped."""
    k = cfg.principles_per_pair
    principles = [constitution.sample_principles(seeded_rng(cfg.seed, pid, "pref"), k)
                  for pid in pairs["pair_id"]]
    if cfg.scoring == "contrastive":
        probs = _contrastive_probs(judge, pairs, principles, cfg.injection_defence)
        errors, rationales = [None] * len(pairs) * 2 * k, []
    else:
        probs, errors, rationales = _label_probs(judge, pairs, principles, cfg)
    probs = probs.reshape(len(pairs), k, 2)  # (pairs, k, orders)
    p_first, p_second = probs[..., 0].mean(1), probs[..., 1].mean(1)
    p_a, consistent = debias(p_first, p_second)
    inj = injection_verdicts(list(pairs["response_a"]), list(pairs["response_b"]), cfg.on_injection)
    overridden = inj["p_a_override"].notna().to_numpy()
    p_a = np.where(overridden, inj["p_a_override"].to_numpy(), p_a)
    consistent = consistent | overridden  # the rule's verdict does not depend on the order shown
    pair_errors = [_first_error(errors[i * 2 * k:(i + 1) * 2 * k]) for i in range(len(pairs))]

    out = pairs.copy()
    a_wins = p_a >= 0.5
    out["p_a"] = p_a  # P(response_a is better), debiased
    out["p_a_first"], out["p_a_second"] = p_first, p_second
    out["p_chosen"] = np.where(a_wins, p_a, 1.0 - p_a)
    out["chosen"] = np.where(a_wins, out["response_a"], out["response_b"])
    out["rejected"] = np.where(a_wins, out["response_b"], out["response_a"])
    out["position_consistent"] = consistent
    out["principle_ids"] = [[p.id for p in ps] for ps in principles]
    out["rationales"] = [rationales[i * 2 * k:(i + 1) * 2 * k] if cfg.chain_of_thought else []
                         for i in range(len(pairs))]
    out["judge_backend"] = judge.backend
    out["template_version"] = "-".join([TEMPLATE_VERSION] + [v for v, on in (
        ("cot", cfg.chain_of_thought), ("raw", judge.cfg.prompt_format == "raw" and cfg.scoring == "labels"),
        ("contrastive", cfg.scoring == "contrastive"), ("undefended", not cfg.injection_defence)) if on])
    out["score_a"] = out["score_b"] = np.nan
    if cfg.direct_scores:
        first = [ps[0] for ps in principles]
        n = len(pairs)
        scores, score_errors = direct_scores(
            judge, list(pairs["prompt"]) * 2, list(pairs["response_a"]) + list(pairs["response_b"]),
            first * 2, defence=cfg.injection_defence)
        out["score_a"], out["score_b"] = scores[:n], scores[n:]
        pair_errors = [e or score_errors[i] or score_errors[n + i] for i, e in enumerate(pair_errors)]

    for col in ("injection_suspected", "injection_pattern", "injection_side", "override_reason"):
        out[col] = inj[col].to_numpy()
    identical = (out["response_a"].str.strip() == out["response_b"].str.strip()).to_numpy()
    # pandas' string columns hold a missing reason as NaN, which is truthy
    injected_reasons = [r if isinstance(r, str) else None for r in inj["injection_invalid"]]
    reasons = [("identical responses" if same else err or injected or
                ("non-finite judge probability" if not np.isfinite(p) else None))
               for same, err, injected, p in zip(identical, pair_errors, injected_reasons, p_a)]
    out["invalid_reason"] = reasons
    out["valid"] = [r is None for r in reasons]
    return out
