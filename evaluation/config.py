"""The evaluate stage's config. Pydantic only: no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlaif.config import Sampling, StageConfig

PROBE_NAMES = ("refusal_harmful", "refusal_benign", "no_eos", "distinct_2", "repeats_4gram", "ref_perplexity")


class EvalConfig(StageConfig):
    """Stage 5: compare the trained policy with the reference on held-out prompts."""

    n_prompts: int | None = None
    """Eval-split prompts to use (None: all; the shipped set has 36). Every interval narrows
    with more: a figure from fewer than 20 is marked as such."""
    sampling: Sampling = Sampling(max_new_tokens=48, temperature=0.7)
    """How every policy and the reference are sampled (the same settings for all). top_p must
    stay 1: the held-out KL is read on the full temperature-scaled softmax."""

    @field_validator("sampling")
    @classmethod
    def _full_softmax(cls, v: Sampling) -> Sampling:
        if v.top_p != 1.0:
            raise ValueError(f"the evaluation's KL assumes samples from the full softmax; got top_p={v.top_p}")
        return v

    batch_size: int = 8
    """Sequences per forward pass when the KL to the reference is read (sampling batches are
    the policy engine's)."""
    seed: int = 1234
    """Sampling seed, shared by both policies so they see the same randomness."""
    adherence: bool = True
    """Rate every final-policy and reference response 1-10 under a sampled principle of the
    constitution (the judge's direct scoring); the adherence rate is the share rated above 5.5:
    how often the judge finds a response following the constitution, whatever it is about."""
    refusal_patterns: str | None = None
    """A refusal detector of your own: a text file of regular expressions, one per line, matched
    case-insensitively in each response's first 200 characters. None: the shipped list
    (evaluation.probes.REFUSAL_PATTERNS)."""
    harmful_categories: tuple[str, ...] = ("harmful",)
    """Prompt categories (the prompt file's `category` column) on which refusing is right; the
    refusal rate on every other prompt is the over-refusal probe."""
    probe_resamples: int = 2000
    """Bootstrap resamples (over prompts) behind every probe's and the KL's 95% interval."""
    snapshots: bool = True
    """Also evaluate PPO's intermediate policies (PPOConfig.snapshots): the reward-model score
    and the judge's win rate against KL, the over-optimisation curve."""
    ladder: Literal["reference", "adjacent", "all"] = "adjacent"
    """Which policies (PPO's snapshots and the final one; the reference is judged against each
    anyway) are also judged head to head for the ladder (evaluation.ladder: BT and Elo, with
    intervals). `reference`: none, the ladder rests on each policy against the reference
    (no extra judging); `adjacent`: each policy against the next one on the ladder
    ((policies - 1) x prompts extra pairs); `all`: every two policies (policies x
    (policies - 1) / 2 x prompts). Each pair is judged in both orders, as every pair is."""
    overoptimisation_tolerance: float = 0.1
    """Flag over-optimisation when, from the best-judged policy on the curve to the final
    one, the reward-model score rises while the win rate falls by more than this."""


class PromotionConfig(StageConfig):
    """The service's promotion gate (evaluation.gate): the weekly training flow's candidate,
    evaluated against the champion it started from, replaces it only if every check passes."""

    min_win_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    """The lower end of the candidate's 95% win-rate interval against the champion (held-out
    prompts, both orders judged, a tie counted half) must be above this."""
    probes: tuple[Literal[PROBE_NAMES], ...] = ("refusal_harmful", "refusal_benign", "no_eos", "distinct_2",
                                               "repeats_4gram", "ref_perplexity")
    """Behaviour probes that must not be worse than the champion's beyond their interval (the
    95% interval of the difference lies wholly on the worse side). Length has no worse side."""
    overoptimisation: bool = True
    """Refuse a candidate whose reward-KL curve the evaluation flagged as over-optimised."""
    train_on: Literal["since_champion", "all"] = "since_champion"
    """Which preferences the weekly training uses: those collected on the current champion's
    samples (iterated online RLHF: each round learns from its own policy's data), or every
    run's for the constitution."""
