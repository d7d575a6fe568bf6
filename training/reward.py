"""Reward model: a backbone with a scalar head trained on soft AI preference labels.

Loss (soft-label Bradley-Terry), with delta = r_chosen - r_rejected - margin:
    -(p * log sigmoid(delta) + (1 - p) * log sigmoid(-delta))  +  center_coef * (r_c + r_r)^2
After training, rewards are normalised so that the reference policy's responses score mean
0, std 1 (lm-human-preferences); gain and bias are stored with the model.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm
from transformers.trainer_pt_utils import get_length_grouped_indices

from rlaif.models import load_sequence_scorer, load_tokenizer
from training import TrainingError
from training.common import (atomic_save, conversation_texts, lora_config, score_texts,
                             token_values, write_json)


class RewardConfig(BaseModel):
    """Stage 3: train the reward model on the preference pairs."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    lora: bool = True
    """Train LoRA adapters plus the head (True) or the whole backbone (False)."""
    lora_r: int = 16
    """LoRA rank."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    lr: float = 3e-4
    """AdamW learning rate."""
    epochs: int = 2
    """Passes over the training pairs."""
    batch_size: int = 4
    """Pairs per optimisation step."""
    max_length: int = 256
    """Token cap per prompt+response (truncated on the left, keeping the response end)."""
    eval_fraction: float = 0.25
    """Share of prompt ids held out for rm/accuracy and rm/ece."""
    margin: float = 0.0
    """Margin subtracted from the reward difference in the loss."""
    center_coef: float = 0.01
    """Weight of the (r_chosen + r_rejected)^2 penalty that keeps rewards centred."""
    seed: int = 0
    """Seed for head initialisation, shuffling and the split."""
    group_by_length: bool = True
    """Batch pairs of similar length (transformers' length-grouped order: shuffled, then sorted
    within groups of a few batches), so less compute goes to padding: about a quarter fewer
    token slots on hh-rlhf pairs. False: plain shuffled batches."""


# ---------------------------------------------------------------- maths (pure, unit-tested)

def soft_bt_loss(r_chosen: torch.Tensor, r_rejected: torch.Tensor, p_chosen: torch.Tensor,
                 margin: float = 0.0, center_coef: float = 0.0) -> torch.Tensor:
    delta = r_chosen - r_rejected - margin
    nll = -(p_chosen * F.logsigmoid(delta) + (1 - p_chosen) * F.logsigmoid(-delta))
    return (nll + center_coef * (r_chosen + r_rejected) ** 2).mean()


def expected_calibration_error(p_pred: np.ndarray, p_label: np.ndarray, n_bins: int = 10) -> float:
    """|mean predicted - mean label| per confidence bin, weighted by bin size."""
    p_pred, p_label = np.asarray(p_pred, float), np.asarray(p_label, float)
    if len(p_pred) == 0:
        return float("nan")
    bins = np.minimum((p_pred * n_bins).astype(int), n_bins - 1)
    return float(sum(abs(p_pred[bins == b].mean() - p_label[bins == b].mean()) * (bins == b).sum()
                     for b in np.unique(bins)) / len(p_pred))


def split_by_prompt(df: pd.DataFrame, eval_fraction: float, seed: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Hold out whole prompt ids, so no prompt appears on both sides of the split."""
    ids = sorted(df["prompt_id"].unique(),
                 key=lambda p: hashlib.sha256(f"{seed}/{p}".encode()).hexdigest())
    n_eval = min(max(1, round(len(ids) * eval_fraction)), len(ids) - 1) if len(ids) > 1 else 0
    held = set(ids[:n_eval])
    mask = df["prompt_id"].isin(held)
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


# ---------------------------------------------------------------- training

def train_reward_model(prefs: pd.DataFrame, reference_responses: pd.DataFrame, base_model: str,
                       out_dir: Path, cfg: RewardConfig, lineage: dict) -> tuple[dict, list[dict]]:
    """Train, evaluate, normalise and save. Returns (summary, metric rows for rm_metrics)."""
    prefs = prefs[prefs["valid"]].reset_index(drop=True)
    if prefs.empty:
        raise TrainingError("reward model: no valid preference pairs to train on")
    train, held = split_by_prompt(prefs, cfg.eval_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(base_model)
    model = load_sequence_scorer(base_model)
    if cfg.lora:
        from peft import get_peft_model

        model = get_peft_model(model, lora_config("SEQ_CLS", cfg.lora_r, cfg.lora_alpha))
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr)
    chosen = conversation_texts(tok, train["prompt"], train["chosen"])
    rejected = conversation_texts(tok, train["prompt"], train["rejected"])
    p_label = torch.tensor(train["p_chosen"].to_numpy(), dtype=torch.float32)
    # a pair's padded width in a batch is that of its longer response
    n_tokens = [min(max(len(c), len(r)), cfg.max_length) for c, r in
                zip(*(tok(t, add_special_tokens=False)["input_ids"] for t in (chosen, rejected)))]

    metrics, step = [], 0
    gen = torch.Generator().manual_seed(cfg.seed)
    n_steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
    model.train()
    with tqdm(total=n_steps, desc="reward model", unit="step") as bar:
        for _ in range(cfg.epochs):
            order = (torch.tensor(get_length_grouped_indices(n_tokens, cfg.batch_size, generator=gen))
                     if cfg.group_by_length else torch.randperm(len(train), generator=gen))
            for idx in order.split(cfg.batch_size):
                texts = [chosen[i] for i in idx] + [rejected[i] for i in idx]
                tok.truncation_side = "left"
                enc = tok(texts, return_tensors="pt", padding=True, truncation=True,
                          max_length=cfg.max_length, add_special_tokens=False)
                r = token_values(model, enc["input_ids"], enc["attention_mask"])[:, -1]  # (2B,)
                loss = soft_bt_loss(r[:len(idx)], r[len(idx):], p_label[idx], cfg.margin, cfg.center_coef)
                if not torch.isfinite(loss):
                    raise TrainingError(f"reward model: non-finite loss at step {step}; nothing saved")
                opt.zero_grad()
                loss.backward()
                opt.step()
                metrics.append({"step": step, "metric": "rm/loss", "value": loss.item()})
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()

    with torch.inference_mode():
        summary = {"rm/train_pairs": len(train), "rm/heldout_pairs": len(held)}
        if len(held):
            rc = score_texts(model, tok, conversation_texts(tok, held["prompt"], held["chosen"]), cfg.max_length)
            rr = score_texts(model, tok, conversation_texts(tok, held["prompt"], held["rejected"]), cfg.max_length)
            summary["rm/accuracy"] = float((rc > rr).float().mean())
            summary["rm/ece"] = expected_calibration_error(torch.sigmoid(rc - rr).numpy(),
                                                           held["p_chosen"].to_numpy())
        ref = score_texts(model, tok, conversation_texts(tok, reference_responses["prompt"],
                                                         reference_responses["response"]), cfg.max_length)
    mean = float(ref.mean())
    std = float(ref.std()) if len(ref) > 1 else 1.0
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise TrainingError("reward model: non-finite rewards on the reference responses; nothing saved")
    gain = 1.0 / max(std, 1e-6)
    norm = {"gain": gain, "bias": -mean * gain}
    summary.update({"rm/reward_mean": mean, "rm/reward_std": std})
    metrics += [{"step": step, "metric": k, "value": float(v)} for k, v in summary.items()]

    merged = model.merge_and_unload() if cfg.lora else model

    def save(d: Path):
        merged.save_pretrained(d)
        tok.save_pretrained(d)
        write_json(d / "normalization.json", norm)
        write_json(d / "rlaif_config.json", cfg.model_dump())
        write_json(d / "lineage.json", {**lineage, "base_model": base_model,
                                        "preference_pair_ids": prefs["pair_id"].tolist()})
        write_json(d / "metrics.json", summary)

    atomic_save(out_dir, save)
    return summary, metrics


class RewardModel:
    """A trained reward model with its normalisation, for PPO and evaluation."""

    def __init__(self, path: str | Path, max_length: int = 256):
        self.path = Path(path)
        self.model = load_sequence_scorer(self.path)
        self.tokenizer = load_tokenizer(self.path)
        self.norm = json.loads((self.path / "normalization.json").read_text())
        self.max_length = max_length

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Normalised scores: mean 0, std 1 on the reference policy's responses. (N,)"""
        raw = score_texts(self.model, self.tokenizer,
                          conversation_texts(self.tokenizer, prompts, responses), self.max_length)
        return raw * self.norm["gain"] + self.norm["bias"]
