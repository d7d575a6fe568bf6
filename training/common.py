"""Pieces shared by the trainers: scalar heads over a backbone, what trains, saving."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import torch

from rlaif.config import Trainable
from rlaif.generation import chat_text, position_ids
from rlaif.models import unwrap
from rlaif.io import write_dir_atomic
from training import TrainingError


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
    """Scalar score at the last token of each text (left padding, left truncation), on the
    scorer's device. (N,)"""
    tokenizer.truncation_side = "left"  # keep the end of the response, where the score is read
    device = next(scorer.parameters()).device
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer(texts[start:start + batch_size], return_tensors="pt", padding=True,
                        truncation=True, max_length=max_length, add_special_tokens=False).to(device)
        out.append(token_values(scorer, enc["input_ids"], enc["attention_mask"])[:, -1])
    return torch.cat(out) if out else torch.zeros(0, device=device)


def lora_config(task_type: str, r: int, alpha: int):
    from peft import LoraConfig

    return LoraConfig(task_type=task_type, r=r, lora_alpha=alpha, lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def make_trainable(model, trainable: Trainable, task_type: str = "CAUSAL_LM"):
    """Apply `trainable` (what trains) to a fresh model; returns the model to train.

    lora: a peft model (for SEQ_CLS, peft also trains the scalar head). full: unchanged.
    last_layers: every weight frozen but the top `trainable.last_layers` decoder layers, the
    final norm and the scalar head (`score`, when there is one). The input embeddings stay
    frozen, and with them an lm_head tied to them.
    """
    if trainable.method == "lora":
        from peft import get_peft_model

        return get_peft_model(model, lora_config(task_type, trainable.lora_r, trainable.lora_alpha))
    if trainable.method == "last_layers":
        trunk = model.model  # LlamaModel and its kin: embed_tokens, layers, norm
        n = len(trunk.layers)
        if trainable.last_layers > n:
            raise TrainingError(f"trainable.last_layers={trainable.last_layers}, but the model has {n} layers")
        model.requires_grad_(False)
        for module in [*trunk.layers[n - trainable.last_layers:], trunk.norm, getattr(model, "score", None)]:
            if module is not None:
                module.requires_grad_(True)
    return model


def save_model(out_dir: Path, model, tokenizer, files: dict[str, object], still_training: bool = False) -> Path:
    """The one way a stage saves a model: a plain Hugging Face folder (LoRA merged into the
    weights, so transformers, vLLM and every later stage load it as it is), its tokenizer and
    the JSON `files` (config, lineage, metrics), written atomically as one folder.

    A peft model is merged in place, which ends its training; one `still_training` (PPO's
    snapshots) is merged on a copy instead: merging in place and back would drift the base
    weights.
    """
    if hasattr(model, "merge_and_unload"):
        model = (copy.deepcopy(model) if still_training else model).merge_and_unload()

    def write(d: Path) -> None:
        model.save_pretrained(d)
        tokenizer.save_pretrained(d)
        for name, obj in files.items():
            (d / name).write_text(json.dumps(obj, indent=2, default=str) + "\n")

    return write_dir_atomic(out_dir, write)
