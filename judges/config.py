"""The judge's configs: which model judges and where it runs (JudgeConfig), and how the
feedback stage critiques, revises and labels (FeedbackConfig). Pydantic only: no torch."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from rlaif.config import EMBEDDED_JUDGE, EngineConfig, Sampling, StageConfig, Transformers


class JudgeConfig(StageConfig):
    """The judge model and the engine it runs on (used by feedback and evaluation)."""

    model: str = EMBEDDED_JUDGE
    """Judge model: an embedded model's name (gemma3-270m, smollm2-135m-instruct) or a local HF
    folder. Its tokenizer and chat template build every judge prompt, whatever the engine."""
    prompt_format: Literal["raw", "chat"] = "raw"
    """How judge questions (preference labels, ratings) reach the model: plain 'User:/Assistant:'
    text, or the model's chat template. Raw text agreed with humans more for both embedded
    judges on 100 pairs (README); critiques and revisions always use the chat template."""
    engine: EngineConfig = Transformers()
    """Where the judge runs: in process (transformers, vllm) or over HTTP (openai), e.g.
    `judge.engine:vllm` or `judge.engine:openai --judge.engine.base-url ...` on the command line."""


class FeedbackConfig(StageConfig):
    """Stage 2: the judge critiques and revises responses, then labels preference pairs."""

    critic: Literal["policy", "judge"] = "policy"
    """Who writes critiques and revisions: the policy, critiquing itself as in the CAI paper
    (the default judge is a base model, which cannot follow a critique request), or the
    judge. The critiques table's judge_model column names the writer."""
    critique_rounds: int = 2
    """Critique->revision rounds per response (the CAI paper uses up to 4); each round
    samples one principle."""
    critique_all_samples: bool = False
    """Critique every sampled response, not only the first per prompt."""
    few_shot: int = 1
    """Few-shot examples from the constitution file put before each critique."""
    sampling: Sampling = Sampling(max_new_tokens=48, temperature=0.7)
    """How critiques and revisions are sampled."""
    pair_source: Literal["policy", "revision"] = "policy"
    """Preference pairs: two policy samples per prompt, or each critiqued response against
    its final revision."""
    pairing: str = "all"
    """Which pairs of a prompt's K responses (generate.samples_per_prompt) the judge labels,
    each in both orders: all (K(K-1)/2 pairs), round_robin (a cycle: K pairs for K >= 3), or
    random:M (M pairs drawn per prompt, seeded by `seed` and the prompt id). With K = 2 each
    is the one pair."""

    @field_validator("pairing")
    @classmethod
    def _pairing(cls, v: str) -> str:
        kind, _, m = v.partition(":")
        if v in ("all", "round_robin") or (kind == "random" and m.isdigit() and int(m) >= 1):
            return v
        raise ValueError(f"pairing {v!r}: expected all, round_robin or random:M with M >= 1")

    principles_per_pair: int = 1
    """Principles sampled per preference pair; their P(A) are averaged."""
    scoring: Literal["labels", "contrastive"] = "labels"
    """labels: P(A) vs P(B) read after the multiple-choice question, in both orders.
    contrastive: each response's log-likelihood under a principle-following system prompt
    minus under a principle-violating one; P(a better) = sigmoid(score_a - score_b). No
    positions, so no position bias (transformers and vllm engines)."""
    chain_of_thought: bool = False
    """The judge writes a rationale before the labels are read (CAI's CoT); P(A) is then
    clamped to `cot_clamp`, because a rationale makes the label near-certain."""
    cot_clamp: tuple[float, float] = (0.4, 0.6)
    """Band P(A) is clamped to when chain_of_thought is on."""
    @field_validator("cot_clamp")
    @classmethod
    def _band(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= v[0] <= 0.5 <= v[1] <= 1.0:
            raise ValueError(f"cot_clamp {v}: expected (low, high) with 0 <= low <= 0.5 <= high <= 1")
        return v

    cot_max_new_tokens: int = 64
    """Length cap on each rationale, in tokens."""
    direct_scores: bool = False
    """Also rate each response 1-10 on its own (d-RLAIF): the expected rating over the digit
    probabilities, mapped to [-1, 1], is stored as score_a / score_b."""
    injection_defence: bool = True
    """Quote each response the judge reads between delimiters carrying a per-call nonce (a hash
    of the call's text: reproducible, unpredictable to the policy), rewrite role markers, chat
    special tokens and option labels inside it into a neutral form, and tell the judge quoted
    text is data, not instructions. Contrastive scoring only neutralises. Off: the v1 prompts
    (template_version gains "undefended"), for measuring what the defence changes."""
    on_injection: Literal["against", "invalid", "ignore"] = "against"
    """What a pair becomes when a response matches an injection pattern (judges.feedback.
    INJECTION_PATTERNS; recorded in injection_suspected / injection_pattern / injection_side
    whatever this says). against: the pair goes against the response carrying it (p_a 0 or 1,
    override_reason says why; both carrying it: invalid), since addressing the judge is worse
    under any constitution; invalid: the pair is invalid ("injection suspected: <pattern>");
    ignore: the judge's label stands (measuring the judge itself)."""
    seed: int = 0
    """Seed for principle sampling and critique text."""
    shards: int = Field(default=1, ge=1)
    """Split the preference pairs into this many labelling tasks: one after another on one
    machine, in parallel on Ray workers with `--ray-address`. The labels do not depend on it
    (principles are drawn per pair)."""
    calibration: str | None = None
    """Human-labelled pairs (hh-rlhf-style JSONL[.gz], as `rlaif judge-eval` reads) on which the
    feedback stage measures the judge's agreement with humans before anything trains on its
    labels. None: only its self-consistency is measured."""
    calibration_pairs: int = Field(default=100, ge=1)
    """Pairs of the calibration file to measure on (its first ones)."""
    judge_gate: Literal["warn", "stop", "off"] = "warn"
    """When the judge cannot be told apart from chance (agreement with humans, or position
    consistency, whose 95% interval reaches 0.5) or from "the longer response wins": warn (the
    report opens with it, and every judged figure is marked), stop before training (RunError),
    or off."""
