"""The whole chain with a judge of known preference: sample pairs from a tiny policy, label them
under a constitution, train a reward model on the labels, run PPO with it, and sample the
trained policy. Under a constitution that asks for a marker word the policy must end up saying
it more often than it started; under one that asks to avoid it, less often."""

from __future__ import annotations

import re
from collections import Counter
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from constitution import load_constitution
from judges.config import FeedbackConfig
from judges.feedback import label_preferences, make_pairs
from judges.templates import raw_prompt
from rlaif.config import Sampling, Transformers
from rlaif.engines import make_engine
from rlaif.generation import chat_text
from rlaif.models import load_tokenizer
from rlaif.prompts import load_prompts
from rlaif.stats import wilson_interval
from training.config import PPOConfig, RewardConfig
from training.ppo import train_ppo
from training.reward import train_reward_model

# What the stand-in judge reads in a preference question: "... mentions the word "X"?" or
# "... avoids the word "X"?".
WANT = re.compile(r"\b(mentions|avoids) the word\W{0,3}([A-Za-z]+)")


class StandInJudge:
    """A stand-in for a real judge, with a preference known by construction.

    A real judge cannot be made to hold a known preference (the embedded ones agree with humans
    little more than a coin), so a chain test driven by one would measure the judge; this one
    lets the test measure the CHAIN (labels -> reward model -> PPO). It implements what
    judges.feedback.label_preferences calls on a judge (`ask`, `choice_probs`, `backend`,
    `cfg.prompt_format`) and reads the judge prompt it is given, like a model would:

    - its preference comes from the principle's question in the prompt: a question asking for
      responses that "mention the word X" makes it prefer the option containing X, one asking for
      responses that "avoid the word X" the option without it, so swapping the constitution file
      is what flips it;
    - which option is (A) it finds by where the pair's two responses appear in the prompt, (A)
      being shown first (it is built with the pairs, so it maps the shown text back to them; the
      prompt's wording, delimiters and labels do not matter). Where it cannot tell, it answers
      0.5 and counts an abstention.

    Both or neither option containing X, it answers 0.5. `confidence=0.5` removes its preference.
    """

    backend = "stand-in"

    def __init__(self, pairs: pd.DataFrame, confidence: float = 0.9):
        self.cfg = SimpleNamespace(prompt_format="raw")
        self.pairs = pairs
        self.confidence = confidence
        self.abstained = 0
        self.questions: Counter = Counter()

    def ask(self, conversation: list[dict]) -> str:
        return raw_prompt(conversation)  # the text a raw-format judge reads

    def choice_probs(self, texts, prefix, candidates, desc=""):
        assert tuple(candidates) == ("A", "B") and all(t.endswith(prefix) for t in texts), (prefix, candidates)
        probs = np.array([self._p_a(t) for t in texts])
        return np.stack([probs, 1.0 - probs], axis=1), [None] * len(texts)

    def _p_a(self, text: str) -> float:
        wants = set(WANT.findall(text))
        assert len(wants) == 1, f"no single 'mentions/avoids the word X' question in the prompt: {wants}"
        (verb, word), = wants
        self.questions[verb, word] += 1
        # the pair shown: its request and both responses are in the prompt
        shown = {(r.response_a, r.response_b) for r in self.pairs.itertuples()
                 if r.prompt in text and r.response_a in text and r.response_b in text}
        if len(shown) != 1:
            self.abstained += 1
            return 0.5
        (a, b), = shown
        prompt = next(r.prompt for r in self.pairs.itertuples() if (r.response_a, r.response_b) == (a, b))
        has = [word in r for r in (a, b)]
        if has[0] == has[1]:
            return 0.5
        marked, plain = (a, b) if has[0] else (b, a)
        # Cut the request and the question out, then find both options; the marked response
        # (which the plain one cannot contain) first, masked before the plain one is looked for.
        rest = text.replace(prompt, "\0", 1)
        rest = WANT.sub("\0", rest)
        if rest.count(marked) != 1:
            self.abstained += 1
            return 0.5
        i = rest.index(marked)
        rest = rest[:i] + "\0" * len(marked) + rest[i + len(marked):]
        if rest.count(plain) != 1:
            self.abstained += 1
            return 0.5
        marked_first = i < rest.index(plain)
        likes = verb == "mentions"
        return self.confidence if marked_first == likes else 1.0 - self.confidence


def write_constitution(path, name: str, verb: str, word: str):
    path.write_text(f"""\
name: {name}
version: 1
description: The assistant's responses should {verb.removesuffix('s')} the word "{word}".
principles:
  - id: {verb}-{word.lower()}
    critique_request: Point out whether the response fails to {verb.removesuffix('s')} the word "{word}".
    revision_request: Rewrite the response so that it does {verb.removesuffix('s')} the word "{word}".
    preference_question: Which of these responses {verb} the word "{word}"?
""")
    return load_constitution(path)


def queries_for(tok, prompts: pd.DataFrame) -> list[str]:
    return [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]


def sample_responses(model_dir, prompts: pd.DataFrame, sampling: Sampling, rounds: int,
                     seed: int) -> pd.DataFrame:
    """`rounds` pairs per prompt, each round its own prompt id, as the responses table has them:
    prompt_id, prompt, response_id, sample_idx, response."""
    tok = load_tokenizer(model_dir)
    qs = queries_for(tok, prompts)
    with make_engine(Transformers(batch_size=64), model_dir) as engine:
        gens = engine.generate(qs * (2 * rounds), sampling, seed=seed)
    n = len(prompts)
    rows = []
    for k, g in enumerate(gens):
        j, rnd, s = k % n, k // (2 * n), (k // n) % 2
        pid = f"{prompts['prompt_id'].iloc[j]}-{rnd}"
        rows.append({"prompt_id": pid, "prompt": prompts["prompt"].iloc[j], "response_id": f"{pid}/{s}",
                     "sample_idx": s, "response": g.text})
    return pd.DataFrame(rows)


def marker_rate(model_dir, prompts: pd.DataFrame, sampling: Sampling, word: str, samples: int,
                seed: int) -> tuple[int, int]:
    tok = load_tokenizer(model_dir)
    with make_engine(Transformers(batch_size=64), model_dir) as engine:
        gens = engine.generate(queries_for(tok, prompts) * samples, sampling, seed=seed)
    return sum(word in g.text for g in gens), len(gens)


def choose_marker(responses: list[str], tok) -> str:
    """The word (a whole token's text, letters only) most responses contain, among those that
    are seldom part of another token: the judge and the measurement look for it as text."""
    tokens: Counter = Counter()
    for r in responses:
        tokens.update({tok.decode([i]).strip() for i in tok(r, add_special_tokens=False)["input_ids"]})
    words = [w for w in tokens if len(w) >= 4 and w.isalpha()]
    text = {w: sum(w in r for r in responses) for w in words}
    return max((w for w in words if text[w] <= 1.25 * tokens[w]), key=lambda w: (tokens[w], w))


# Short responses at a low temperature: the peaked tiny policy's favourite words come up often
# enough (the chosen marker is in about a tenth of its responses) for the pairs to disagree on it.
SAMPLING = Sampling(max_new_tokens=6, temperature=0.5)


def run_chain(policy_dir, rm_base_dir, tmp_path, seed: int) -> dict:
    """Sample pairs from the policy, pick the marker, then for each constitution: label, train a
    reward model, run PPO; the marker's rate among fresh samples on held-out prompts for the
    starting policy and each trained one, as (count, n)."""
    tok = load_tokenizer(policy_dir)
    train, held = load_prompts(split="train"), load_prompts(split="eval")
    responses = sample_responses(policy_dir, train, SAMPLING, rounds=2, seed=seed)
    word = choose_marker(list(responses["response"]), tok)
    pairs = make_pairs(responses)
    out = {"word": word, "pairs": len(pairs),
           "initial": marker_rate(policy_dir, held, SAMPLING, word, samples=16, seed=seed + 1)}
    # The reward model reads the last 16 tokens (the response and the turn's end; the preference
    # is about the response alone). Its backbone is the uniform tiny model: there the last
    # position's state is close to the mean of the tokens', so the marker is readable; behind
    # the peaked model's sharp random attention it hardly is (marker vs no marker on held-out
    # pairs: 0.1-1 std of the scores apart there, over 10 here, for 3 seeds each).
    rm_cfg = RewardConfig(epochs=4, batch_size=8, lr=3e-3, max_length=16, seed=seed)
    ppo_cfg = PPOConfig(steps=12, batch_size=32, mini_batch_size=16, ppo_epochs=4, sampling=SAMPLING, lr=1e-3,
                        init_kl_coef=0.05, adaptive_kl=False, missing_eos_penalty=0.0, snapshots=0,
                        checkpoint_every=0, seed=seed)
    for name, verb in (("liked", "mentions"), ("avoided", "avoids")):
        constitution = write_constitution(tmp_path / f"{name}.yaml", f"{verb}-marker", verb, word)
        judge = StandInJudge(pairs)
        prefs = label_preferences(judge, pairs, constitution, FeedbackConfig(seed=seed))
        decided = prefs[prefs["valid"] & (prefs["p_chosen"] > 0.5)]
        out[f"{name}/labels"] = {"decided": len(decided), "abstained": judge.abstained,
                                 "chosen_has_marker": int(decided["chosen"].str.contains(word, regex=False).sum()),
                                 "questions": dict(judge.questions)}
        rm_dir, policy = tmp_path / f"rm-{name}", tmp_path / f"policy-{name}"
        train_reward_model(prefs, responses[["prompt", "response"]], str(rm_base_dir), rm_dir, rm_cfg, {})
        train_ppo(train, str(policy_dir), str(rm_dir), policy, ppo_cfg, {})
        out[name] = marker_rate(policy, held, SAMPLING, word, samples=16, seed=seed + 1)
    return out


@pytest.fixture
def one_thread():
    """One torch thread: the same numbers on any machine (the float sums, hence the samples,
    depend on the thread count), and no slowdown when other work shares the cores."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_the_chain_moves_the_policy_the_way_the_constitution_asks(peaked_tiny_model_dir, tiny_model_dir,
                                                                   tmp_path, one_thread):
    """Generate -> label under a constitution -> reward model -> PPO, twice from the same policy
    and the same pairs: once under a constitution whose question asks for responses that mention
    a marker word, once under one that asks for responses that avoid it. The judge is a stand-in
    of known preference (StandInJudge), so a failure here is the chain's. Only the constitution
    file differs between the two runs, so nothing but the labels can make them go opposite ways;
    labels dropped, ignored or swapped anywhere along the chain fail the test.

    Measured (about 60 s of CPU, 55-100 s on 2 shared cores): seed 0 gives 65/576 -> 179/576 liked, 13/576 avoided;
    seeds 1-4 started at 70-82, ended at 131-170 liked and 14-29 avoided, the same marker.
    With the stand-in's preference removed (confidence=0.5) PPO's drift left the rate at 71/576."""
    r = run_chain(peaked_tiny_model_dir, tiny_model_dir, tmp_path, seed=0)
    print(r)
    # the stand-in read both constitutions and labelled what it was meant to
    for name, verb in (("liked", "mentions"), ("avoided", "avoids")):
        labels = r[f"{name}/labels"]
        assert set(labels["questions"]) == {(verb, r["word"])}, labels
        assert labels["abstained"] <= 0.05 * 2 * r["pairs"], labels
        assert labels["decided"] >= 15, labels  # pairs where one response has the marker and the other not
        share = labels["chosen_has_marker"] / labels["decided"]  # 1 or 0 but for a rare injection verdict
        assert share >= 0.9 if name == "liked" else share <= 0.1, labels
    # the policy moved up under one, down under the other, beyond sampling noise: the 95%
    # Wilson intervals of the three rates (each on 16 samples x 36 held-out prompts) do not overlap
    ci = {k: wilson_interval(*r[k]) for k in ("initial", "liked", "avoided")}
    rates = {k: f"{r[k][0]}/{r[k][1]} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ci}
    assert ci["liked"][0] > ci["initial"][1], rates
    assert ci["initial"][0] > ci["avoided"][1], rates
