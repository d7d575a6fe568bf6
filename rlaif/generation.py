"""Text generation pieces: the Generation record every engine returns, chat templating, and
batched, padding-aware sampling with HF `generate` (the transformers engine's, rlaif.engines.hf)."""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

import torch

from rlaif.config import Sampling
from rlaif.models import unwrap


@dataclass
class Generation:
    text: str
    n_tokens: int
    has_eos: bool
    # the sampled response tokens, up to and including the first EOS (an HTTP engine leaves it empty)
    token_ids: list[int] = field(default_factory=list)
    # log P(token) of each of token_ids under the distribution it was drawn from (when asked for)
    logprobs: list[float] | None = None


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
def sample(model, tokenizer, texts: list[str], sampling: Sampling, seed: int = 0, logprobs: bool = False):
    """One batch, on the model's device. Returns (query_ids (B,Q), query_mask (B,Q),
    response_ids (B,R), response_logprobs (B,R) or None): the logprob of each sampled token
    under the temperature-scaled softmax it was drawn from (the plain softmax when greedy)."""
    device = next(model.parameters()).device
    enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
    torch.manual_seed(seed)
    greedy = sampling.temperature <= 0
    with plain_generation_config(model):
        out = model.generate(
            input_ids=enc["input_ids"], attention_mask=enc["attention_mask"],
            max_new_tokens=sampling.max_new_tokens, do_sample=not greedy,
            temperature=None if greedy else sampling.temperature,
            top_p=None if greedy else sampling.top_p, top_k=None if greedy else 0,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
            return_dict_in_generate=True, output_logits=logprobs,
        )
    response = out.sequences[:, enc["input_ids"].shape[1]:]  # (B, R)
    lp = None
    if logprobs:  # a step at a time, (B, V): never the (B, R, V) stack and its copies
        T = 1.0 if greedy else sampling.temperature
        lp = torch.stack([torch.log_softmax(step.float() / T, -1).gather(-1, response[:, t, None])[:, 0]
                          for t, step in enumerate(out.logits)], 1)  # (B, R)
    return enc["input_ids"], enc["attention_mask"], response, lp
