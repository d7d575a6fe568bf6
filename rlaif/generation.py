"""Batched, padding-aware sampling with HF `generate`, shared by every stage that writes text
(responses, critiques, revisions, PPO rollouts, evaluation)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from rlaif.config import Sampling
from rlaif.models import unwrap


@dataclass
class Generation:
    text: str
    n_tokens: int
    has_eos: bool
    # the sampled response tokens, up to and including the first EOS (an HTTP judge leaves it empty)
    token_ids: list[int] = field(default_factory=list)


def chat_text(tokenizer, messages: list[dict], add_generation_prompt: bool = True) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions that ignore left padding, matching what `generate` uses internally."""
    return (attention_mask.cumsum(-1) - 1).clamp(min=0)  # (B, T)


def response_mask(response_ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """1 up to and including the first EOS, 0 after it. (B, R)"""
    is_eos = response_ids == eos_id
    after_eos = (is_eos.cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return (~after_eos).long()


@contextmanager
def plain_generation_config(model):
    """Within this block `generate` applies only the settings passed to it. transformers fills
    every setting a call leaves unset from the model's own generation_config (a repetition
    penalty, a top_k, a min_p), which would draw tokens from another distribution than the
    temperature-scaled softmax that PPO's logprobs and the KL assume."""
    from transformers import GenerationConfig

    base = unwrap(model)  # under peft
    own = base.generation_config
    base.generation_config = GenerationConfig(bos_token_id=own.bos_token_id, eos_token_id=own.eos_token_id,
                                              pad_token_id=own.pad_token_id)
    try:
        yield
    finally:
        base.generation_config = own


@torch.inference_mode()
def sample(model, tokenizer, texts: list[str], sampling: Sampling, seed: int = 0):
    """One batch. Returns (query_ids (B,Q), query_mask (B,Q), response_ids (B,R))."""
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    torch.manual_seed(seed)
    greedy = sampling.temperature <= 0
    with plain_generation_config(model):
        out = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        )
    return enc["input_ids"], enc["attention_mask"], out[:, enc["input_ids"].shape[1]:]


def generate(model, tokenizer, conversations: list[list[dict]], sampling: Sampling, **kw) -> list[Generation]:
    """Continue each chat conversation with one assistant turn."""
    return generate_texts(model, tokenizer, [chat_text(tokenizer, c) for c in conversations], sampling, **kw)


def generate_texts(model, tokenizer, texts: list[str], sampling: Sampling, *, seed: int = 0,
                   batch_size: int = 16, desc: str = "generating", on_batch=None) -> list[Generation]:
    """Continue each prompt text; batch b is sampled with seed + b. `on_batch(n_done)` is
    called after each batch (e.g. a progress artifact)."""
    results: list[Generation] = []
    eos = tokenizer.eos_token_id
    for b, start in enumerate(tqdm(range(0, len(texts), batch_size), desc=desc, unit="batch")):
        _, _, resp = sample(model, tokenizer, texts[start:start + batch_size], sampling, seed=seed + b)
        mask = response_mask(resp, eos)
        for ids, m in zip(resp, mask):
            n = int(m.sum())
            results.append(Generation(
                text=tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                n_tokens=n, has_eos=bool((ids[:n] == eos).any()), token_ids=ids[:n].tolist(),
            ))
        if on_batch:
            on_batch(len(results))
    return results
