"""The judge: a model asked questions in a constitution's terms, through any engine.

The judge is a client of an engine (rlaif.engines: transformers, vllm or openai). It builds
its questions with the judge model's own tokenizer and chat template, whatever the engine, and
reads answers from next-token probabilities:
- `choice_probs(texts, prefix, labels)`: P(label), normalised over the labels, for texts that
  end with `prefix` (e.g. "The better response is ("). One forward pass, no generation, no
  parsing; NaN plus a reason where the engine could not read them.
- `generate(conversations)` / `complete(texts)`: critiques, revisions and rationales.
"""

from __future__ import annotations

import numpy as np

from judges.config import JudgeConfig
from judges.templates import raw_prompt
from rlaif.config import Sampling
from rlaif.engines import Engine, EngineError, TokenLogprobs, label_token_ids, make_engine
from rlaif.generation import Generation, chat_text
from rlaif.runtime import CPU, Runtime


class JudgeError(RuntimeError):
    pass


class Judge:
    def __init__(self, cfg: JudgeConfig, engine: Engine):
        self.cfg = cfg
        self.engine = engine
        self.model_id = cfg.model
        self.tokenizer = engine.tokenizer

    @property
    def backend(self) -> str:
        """The engine's kind (transformers, vllm, openai), as stored with every label."""
        return self.engine.kind

    def chat(self, conversation: list[dict]) -> str:
        return chat_text(self.tokenizer, conversation)

    def ask(self, conversation: list[dict]) -> str:
        """A judge question as text, in the configured prompt format; the answer follows it."""
        if self.cfg.prompt_format == "chat":
            return self.chat(conversation)
        # No BOS: texts are tokenized without special tokens. Measured on 200 hh-rlhf pairs,
        # Gemma's labels agree with humans at 0.580 like this and at 0.495 with its <bos> first.
        return raw_prompt(conversation)

    def generate(self, conversations: list[list[dict]], *, sampling: Sampling, seed: int,
                 desc: str = "judge writing") -> list[Generation]:
        """One assistant turn per conversation."""
        return self.complete([self.chat(c) for c in conversations], sampling=sampling, seed=seed, desc=desc)

    def complete(self, texts: list[str], *, sampling: Sampling, seed: int,
                 desc: str = "judge writing") -> list[Generation]:
        try:
            return self.engine.generate(texts, sampling, seed=seed, desc=desc)
        except EngineError as e:
            raise JudgeError(f"judge {e}") from None

    def next_token_logprobs(self, texts: list[str], prefix: str, candidates: tuple[str, ...],
                            desc: str = "judging") -> TokenLogprobs:
        """log P(candidate) for the single next token after each text, which ends with `prefix`."""
        try:
            ids = label_token_ids(self.tokenizer, prefix, candidates)
        except EngineError as e:
            raise JudgeError(str(e)) from None
        return self.engine.next_token_logprobs(texts, ids, desc=desc)

    def choice_probs(self, texts: list[str], prefix: str, candidates: tuple[str, ...],
                     desc: str = "judging") -> tuple[np.ndarray, list[str | None]]:
        """P(candidate), normalised over `candidates`, for texts that end with `prefix`. (N, C)"""
        read = self.next_token_logprobs(texts, prefix, candidates, desc=desc)
        lp = read.logprobs
        with np.errstate(invalid="ignore"):
            probs = np.exp(lp - lp.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        return probs, read.errors

    def continuation_logprob(self, contexts: list[str], continuations: list[str],
                             desc: str = "likelihoods") -> np.ndarray:
        """Sum of log P(continuation tokens | context), for contrastive scoring. (N,)"""
        try:
            return self.engine.sequence_logprobs(contexts, continuations, desc=desc)
        except EngineError as e:
            raise JudgeError(f"contrastive scoring: {e}") from None

    def close(self) -> None:
        self.engine.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_judge(cfg: JudgeConfig, runtime: Runtime = CPU) -> Judge:
    """The judge on its configured engine; close it (or use it as a context manager) when done."""
    return Judge(cfg, make_engine(cfg.engine, cfg.model, runtime))
