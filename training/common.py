"""Pieces shared by the reward model and PPO: scalar heads over a backbone, LoRA, saving."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlaif.generation import chat_text, position_ids


def unwrap(model):
    """The transformers model under an optional peft wrapper (LoRA layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def token_values(scorer, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The scalar head applied at every position of a *ForSequenceClassification model. (B, T)

    Read explicitly rather than through the model's own pooling, which finds the "last
    token" by comparing with pad_token_id, and here pad == EOS.
    """
    base = unwrap(scorer)
    hidden = base.model(input_ids=input_ids, attention_mask=attention_mask,
                        position_ids=position_ids(attention_mask)).last_hidden_state  # (B, T, H)
    return base.score(hidden).squeeze(-1).float()  # (B, T)


def conversation_texts(tokenizer, prompts: list[str], responses: list[str]) -> list[str]:
    return [chat_text(tokenizer, [{"role": "user", "content": p},
                                  {"role": "assistant", "content": r}], add_generation_prompt=False)
            for p, r in zip(prompts, responses)]


def score_texts(scorer, tokenizer, texts: list[str], max_length: int,
                batch_size: int = 8) -> torch.Tensor:
    """Scalar score at the last token of each text (left padding, left truncation). (N,)"""
    tokenizer.truncation_side = "left"  # keep the end of the response, where the score is read
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length, add_special_tokens=False)
        out.append(token_values(scorer, enc["input_ids"], enc["attention_mask"])[:, -1])
    return torch.cat(out) if out else torch.zeros(0)


def lora_config(task_type: str, r: int, alpha: int):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def atomic_save(out_dir: Path, save_fn) -> Path:
    """Write a checkpoint folder into a temporary sibling, then rename it into place."""
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}-", dir=out_dir.parent))
    try:
        save_fn(tmp)
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def write_json(path: Path, obj) -> None:
    Path(path).write_text(json.dumps(obj, indent=2, default=str))
