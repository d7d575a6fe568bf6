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
from transformers.trainer_pt_utils import get_length_grouped_indices

from rlaif.models import load_sequence_scorer, load_tokenizer
from rlaif.runtime import CPU, Runtime
from rlaif.stats import wilson_interval
from training import TrainingError
from training.common import conversation_texts, make_trainable, save_model, score_texts, token_values
from training.config import RewardConfig
from training.distributed import Parallel
from training.supervised import fit


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
    """Hold out whole prompt ids, so no prompt appears on both sides of the split (and a
    prompt's tournament stays whole). eval_fraction 0 holds out nothing; above 0, at least one
    prompt and never all."""
    ids = sorted(df["prompt_id"].unique(),
                 key=lambda p: hashlib.sha256(f"{seed}/{p}".encode()).hexdigest())
    n_eval = min(max(1, round(len(ids) * eval_fraction)), len(ids) - 1) if len(ids) > 1 and eval_fraction > 0 else 0
    held = set(ids[:n_eval])
    mask = df["prompt_id"].isin(held)
    return df[~mask].reset_index(drop=True), df[mask].reset_index(drop=True)


# ---------------------------------------------------------------- training

class LastTokenScore(torch.nn.Module):
    """The module that trains: a *ForSequenceClassification model's score at the last token,
    as one forward pass that DDP and FSDP can wrap. (B, T) -> (B,)"""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return token_values(self.model, input_ids, attention_mask)[:, -1]


def train_reward_model(prefs: pd.DataFrame, reference_responses: pd.DataFrame, base_model: str,
                       out_dir: Path, cfg: RewardConfig, lineage: dict, runtime: Runtime = CPU,
                       parallel: Parallel = Parallel()) -> tuple[dict, list[dict]] | None:
    """Train, evaluate, normalise and save. Returns (summary, metric rows for rm_metrics) on
    rank 0, None on the other ranks (training.distributed)."""
    prefs = prefs[prefs["valid"]].reset_index(drop=True)
    if prefs.empty:
        raise TrainingError("reward model: no valid preference pairs to train on")
    train, held = split_by_prompt(prefs, cfg.eval_fraction, cfg.seed)
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(base_model)
    tok.truncation_side = "left"  # keep the end of the response, where the score is read

    def build() -> LastTokenScore:
        return LastTokenScore(make_trainable(load_sequence_scorer(base_model, runtime), cfg.trainable, "SEQ_CLS"))

    module = build()
    # InstructGPT's batching: a prompt's comparisons (K*(K-1)/2 of them with K judged samples)
    # are one example. Each distinct response is scored once per step (K forward passes, not
    # K*(K-1)), and a response in K-1 pairs gets one gradient step per epoch, not K-1: InstructGPT
    # found that shuffling a prompt's pairs apart over-fits the reward model within an epoch.
    texts, groups = [], []  # groups: per prompt, its text slots and its pairs over them
    for _, g in train.groupby("prompt_id", sort=False):
        slot = {}
        for r in (*g["chosen"], *g["rejected"]):
            slot.setdefault(r, len(slot))
        texts += conversation_texts(tok, [g["prompt"].iloc[0]] * len(slot), list(slot))
        groups.append((len(texts) - len(slot), len(slot),
                       torch.tensor([slot[r] for r in g["chosen"]]), torch.tensor([slot[r] for r in g["rejected"]]),
                       runtime.put(torch.tensor(g["p_chosen"].to_numpy(), dtype=torch.float32))))
    # a prompt's padded width in a batch is that of its longest response
    lengths = [min(len(ids), cfg.max_length) for ids in tok(texts, add_special_tokens=False)["input_ids"]]
    n_tokens = [max(lengths[first:first + n]) for first, n, *_ in groups]

    def batches(gen: torch.Generator):
        order = (torch.tensor(get_length_grouped_indices(n_tokens, cfg.batch_size, generator=gen))
                 if cfg.group_by_length else torch.randperm(len(groups), generator=gen))
        return order.split(cfg.batch_size)

    def loss_fn(module: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        batch = [groups[g] for g in idx.tolist()]
        enc = runtime.put(tok([t for first, n, *_ in batch for t in texts[first:first + n]], return_tensors="pt",
                              padding=True, truncation=True, max_length=cfg.max_length, add_special_tokens=False))
        r = module(enc["input_ids"], enc["attention_mask"])  # (sum of K,) one score per distinct response
        loss, start = 0.0, 0
        for _, n, c, rj, p in batch:  # each prompt counts once: the mean over its pairs
            rg = r[start:start + n]
            loss = loss + soft_bt_loss(rg[c], rg[rj], p, cfg.margin, cfg.center_coef)
            start += n
        return loss

    module, metrics = fit(module, batches, loss_fn, lr=cfg.lr, epochs=cfg.epochs, seed=cfg.seed,
                          name="reward model", metric="rm/loss", steps_per_epoch=math.ceil(len(groups) / cfg.batch_size),
                          micro_batch_size=cfg.micro_batch_size, parallel=parallel)
    trained = parallel.plain(module, build)
    if trained is None:  # not rank 0: rank 0 evaluates and saves
        return None
    model, step = trained.model, len(metrics)

    with torch.inference_mode():
        summary = {"rm/train_pairs": len(train), "rm/train_prompts": len(groups), "rm/heldout_pairs": len(held)}
        if len(held):
            rc = score_texts(model, tok, conversation_texts(tok, held["prompt"], held["chosen"]), cfg.max_length)
            rr = score_texts(model, tok, conversation_texts(tok, held["prompt"], held["rejected"]), cfg.max_length)
            right = float((rc > rr).sum())
            summary["rm/accuracy"] = right / len(held)
            summary["rm/accuracy_ci_low"], summary["rm/accuracy_ci_high"] = wilson_interval(right, len(held))
            summary["rm/ece"] = expected_calibration_error(torch.sigmoid(rc - rr).float().cpu().numpy(),
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
    metrics += [{"step": step, "metric": k, "value": float(v), "text": None} for k, v in summary.items()]
    save_model(out_dir, model, tok, {
        "normalization.json": norm, "rlaif_config.json": cfg.model_dump(), "metrics.json": summary,
        "lineage.json": {**lineage, "base_model": base_model, "preference_pair_ids": prefs["pair_id"].tolist()}})
    return summary, metrics


class RewardModel:
    """A trained reward model with its normalisation, for PPO and evaluation. It scores with
    the max_length it was trained with (its saved rlaif_config.json)."""

    def __init__(self, path: str | Path, runtime: Runtime = CPU):
        self.path = Path(path)
        self.model = load_sequence_scorer(self.path, runtime)
        self.tokenizer = load_tokenizer(self.path)
        self.norm = json.loads((self.path / "normalization.json").read_text())
        saved = self.path / "rlaif_config.json"
        try:
            self.max_length = int(json.loads(saved.read_text())["max_length"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise TrainingError(f"reward model {self.path}: cannot read max_length from {saved.name} ({e}); "
                                "is this a folder written by the reward-model stage?") from e

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        """Normalised scores: mean 0, std 1 on the reference policy's responses, in float32 on
        the CPU. (N,)"""
        raw = score_texts(self.model, self.tokenizer,
                          conversation_texts(self.tokenizer, prompts, responses), self.max_length)
        return raw.float().cpu() * self.norm["gain"] + self.norm["bias"]
