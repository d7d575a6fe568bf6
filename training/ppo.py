"""PPO with per-token KL control against a frozen reference, read top to bottom.

Vocabulary follows lm-human-preferences: a `query` (prompt) gets a `response`; the reward
model gives a `score`; the per-token KL to the reference (`ref_logprobs`) times `kl_coef` is
the `non_score_reward`. Each implementation detail is a named toggle in PPOConfig.

One iteration:
  1. rollout: sample responses, then (no grad) policy logprobs, reference logprobs, values, scores
     (reward-model scores, or the judge's direct 1-10 rating with reward_source="judge");
  2. rewards: -kl_coef * KL at every token, plus the score at the last response token;
  3. GAE advantages and returns; whiten advantages;
  4. several epochs of clipped policy and value updates over minibatches;
  5. update the KL controller with the observed KL;
  6. every `checkpoint_every` steps, write a resumable checkpoint (weights, optimizer, KL
     coefficient, RNG state, data position, metrics so far). A rerun with the same out_dir
     continues from it, bit-identically.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from pathlib import Path
from typing import Callable, Literal

import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict
from tqdm.auto import tqdm

from rlaif.generation import chat_text, position_ids, response_mask, sample
from rlaif.models import load_causal_lm, load_sequence_scorer, load_tokenizer, resolve_model
from training import TrainingError
from training.common import atomic_save, lora_config, token_values, write_json
from training.reward import RewardModel


class PPOConfig(BaseModel):
    """Stage 4: PPO on the policy against the reward model, with KL control."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    steps: int = 4
    """PPO iterations (rollout + update)."""
    batch_size: int = 8
    """Queries per rollout."""
    mini_batch_size: int = 4
    """Queries per gradient step."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    max_new_tokens: int = 32
    """Response length cap, in tokens."""
    temperature: float = 0.7
    """Rollout temperature; logprobs use the same temperature-scaled logits."""
    lr: float = 1e-4
    """AdamW learning rate for the policy and value model."""
    lora: bool = True
    """LoRA policy whose reference is the same base with the adapter switched off
    (no second copy); False trains every weight against a frozen copy."""
    lora_r: int = 16
    """LoRA rank (policy and value model)."""
    lora_alpha: int = 32
    """LoRA scaling numerator."""
    shared_value_head: bool = True
    """Values from a zero-initialised scalar head on the policy's own trunk, so one forward
    pass gives logprobs and values (as in lm-human-preferences and TRL's value-head models).
    False: a separate value model initialised from the reward model (TRL's PPOTrainer),
    which costs a second forward and backward per minibatch and a second model in memory."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator: k1 = log p - log q; k3 = (q/p - 1) - log(q/p)."""
    init_kl_coef: float = 0.05
    """Initial KL penalty coefficient."""
    adaptive_kl: bool = True
    """Adapt kl_coef towards target_kl (Ziegler et al.); False keeps it fixed."""
    target_kl: float = 6.0
    """Target KL per response (nats) for the adaptive controller."""
    kl_horizon: int = 10000
    """Horizon, in queries, of the adaptive controller."""
    gamma: float = 1.0
    """GAE discount."""
    lam: float = 0.95
    """GAE lambda."""
    whiten_advantages: bool = True
    """Normalise advantages to mean 0, std 1 over the batch's response tokens."""
    whiten_rewards: bool = False
    """Scale rewards to unit variance before GAE (mean kept)."""
    cliprange: float = 0.2
    """Policy ratio clip."""
    cliprange_value: float = 0.2
    """Value prediction clip around the rollout values."""
    vf_coef: float = 0.1
    """Weight of the value loss."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that never emits EOS (0 disables)."""
    reward_source: Literal["reward_model", "judge"] = "reward_model"
    """Score responses with the trained reward model, or with the judge's direct 1-10 rating
    under a sampled principle, mapped to [-1, 1] (d-RLAIF). A separate value model
    (shared_value_head=False) starts from the reward model either way."""
    checkpoint_every: int = 1
    """Write a resumable checkpoint every N steps (0: never). A rerun into the same output
    folder resumes from it; a run with more `steps` extends it."""
    snapshots: int = 2
    """Intermediate policies saved, evenly spaced over the run, next to the final one
    (`policy-snapshots/step-N`): evaluation scores each against KL, the over-optimisation
    curve. 0: none."""
    n_samples_logged: int = 2
    """Sample responses written to ppo_metrics per step."""
    seed: int = 0
    """Seed for initialisation, prompt order and sampling."""


# ---------------------------------------------------------------- maths (pure, unit-tested)

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True) -> torch.Tensor:
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    out = (x - mean) * torch.rsqrt(var + 1e-8)
    return (out if shift_mean else out + mean) * mask


def logprobs_from_logits(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """log p(token) under logits. (B, R, V), (B, R) -> (B, R)"""
    return torch.gather(F.log_softmax(logits.float(), dim=-1), 2, tokens.unsqueeze(-1)).squeeze(-1)


def kl_estimate(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, estimator: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate from sampled tokens. (B, R)"""
    log_ratio = logprobs - ref_logprobs
    if estimator == "k1":
        return log_ratio
    if estimator == "k3":  # unbiased and always >= 0: (r - 1) - log r with r = q/p
        return torch.expm1(-log_ratio) + log_ratio
    raise ValueError(f"unknown KL estimator {estimator!r}")


def compute_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                    kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: KL penalty everywhere, score added at the last response token.

    Returns (rewards, non_score_reward), both (B, R).
    """
    non_score_reward = -kl_coef * kl * mask
    rewards = non_score_reward.clone()
    last = (mask.sum(1) - 1).clamp(min=0).long()  # (B,) index of the last response token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, non_score_reward


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float,
        lam: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens. Returns (advantages, returns)."""
    values, rewards = values * mask, rewards * mask  # nothing flows in from past the EOS
    R = rewards.shape[1]
    advantages = torch.zeros_like(rewards)
    lastgaelam = torch.zeros_like(rewards[:, 0])
    for t in reversed(range(R)):
        next_values = values[:, t + 1] if t + 1 < R else torch.zeros_like(values[:, 0])
        delta = rewards[:, t] + gamma * next_values - values[:, t]
        lastgaelam = delta + gamma * lam * lastgaelam
        advantages[:, t] = lastgaelam
    return advantages * mask, (advantages + values) * mask


def ppo_losses(logprobs, old_logprobs, advantages, values, old_values, returns, mask,
               cliprange: float, cliprange_value: float) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Clipped surrogate policy loss and clipped value loss, both masked means."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = torch.max(-advantages * ratio,
                          -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    pg_loss = masked_mean(pg_losses, mask)
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    vf_loss = 0.5 * masked_mean(vf_losses, mask)
    with torch.no_grad():
        stats = {
            "ppo/clipfrac": masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
            "ppo/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask).item(),
            "ppo/vf_clipfrac": masked_mean(((values - old_values).abs() > cliprange_value).float(), mask).item(),
        }
    return pg_loss, vf_loss, stats


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Ziegler et al. (2019): move kl_coef proportionally towards the target KL."""

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value, self.target, self.horizon = init_kl_coef, target, horizon

    def update(self, current: float, n_steps: int) -> None:
        proportional_error = max(-0.2, min(0.2, current / self.target - 1))
        self.value *= 1 + proportional_error * n_steps / self.horizon


# ---------------------------------------------------------------- model plumbing

def response_logits(model, query_response: torch.Tensor, attention_mask: torch.Tensor,
                    response_len: int, temperature: float) -> torch.Tensor:
    """Temperature-scaled logits that predict each response token. (B, R, V)"""
    logits = model(input_ids=query_response, attention_mask=attention_mask,
                   position_ids=position_ids(attention_mask),
                   logits_to_keep=response_len + 1).logits
    return logits[:, :-1] / temperature


def policy_and_values(model, value_head: torch.nn.Module, query_response: torch.Tensor,
                      attention_mask: torch.Tensor, response_len: int,
                      temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """One trunk pass: response logits as in response_logits (B, R, V), and the value head on
    the last hidden state at the same positions (B, R)."""
    out = model(input_ids=query_response, attention_mask=attention_mask,
                position_ids=position_ids(attention_mask), logits_to_keep=response_len + 1,
                output_hidden_states=True)
    hidden = out.hidden_states[-1][:, -response_len - 1:-1]  # (B, R, H)
    return out.logits[:, :-1] / temperature, value_head(hidden).squeeze(-1).float()


def unpadded(attention_mask: torch.Tensor, query_len: int) -> tuple[slice, int]:
    """The columns of a (sub)batch that hold any token, and its response length: left padding
    of the queries and right padding of the responses cost compute and change nothing."""
    start = int(attention_mask.any(0).float().argmax())  # first column with a real token
    response_len = int(attention_mask[:, query_len:].sum(1).max().clamp(min=1))
    return slice(start, query_len + response_len), response_len


Scorer = Callable[[list[str], list[str]], torch.Tensor]  # (queries, responses) -> scores (B,)


def checkpoint_path(out_dir: Path) -> Path:
    """The resumable checkpoint sits next to the policy folder, so a final save never removes it."""
    out_dir = Path(out_dir)
    return out_dir.with_name(out_dir.name + ".checkpoint.pt")


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    expected = {k for k, v in model.named_parameters() if v.requires_grad}
    if set(state) != expected:
        raise TrainingError("ppo: checkpoint weights do not match this model "
                            f"({len(set(state) ^ expected)} parameter names differ)")
    model.load_state_dict(state, strict=False)


def snapshot_steps(steps: int, n: int) -> set[int]:
    """The steps after which an intermediate policy is saved: n, evenly spaced, before the last."""
    return {round(steps * k / (n + 1)) for k in range(1, n + 1)} - {0, steps}


def snapshot_root(policy_dir: str | Path) -> Path:
    """The intermediate policies sit beside the final one: <policy>-snapshots/step-NNNN."""
    return Path(policy_dir).with_name(Path(policy_dir).name + "-snapshots")


def snapshot_dirs(policy_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of each intermediate policy saved beside `policy_dir`, by step."""
    return sorted((int(p.name.split("-")[1]), p) for p in snapshot_root(policy_dir).glob("step-*") if p.is_dir())


def run_identity(cfg: PPOConfig, policy_model: str, reward_model: str, prompts: pd.DataFrame) -> dict:
    """What must match for a checkpoint to be continued: the inputs and every setting but the
    run's length."""
    return {**cfg.model_dump(exclude={"steps", "checkpoint_every", "snapshots", "n_samples_logged"}),
            "policy_model": str(resolve_model(policy_model)), "reward_model": str(reward_model),
            "prompt_ids": hashlib.sha256("\n".join(prompts["prompt_id"]).encode()).hexdigest()}


# ---------------------------------------------------------------- the trainer

def train_ppo(prompts: pd.DataFrame, policy_model: str, reward_model: str, out_dir: Path,
              cfg: PPOConfig, lineage: dict, scorer: Scorer | None = None,
              on_step: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Run PPO and save the policy. Returns metric rows (namespaced) for ppo_metrics.

    `scorer` replaces the reward model's scores (the judge's, or a programmatic reward in
    tests); the value model still starts from `reward_model`. `on_step(steps_done, metrics)`
    is called after every step.
    """
    from peft import get_peft_model

    if prompts.empty:
        raise TrainingError("ppo: no training prompts")
    if cfg.reward_source == "judge" and scorer is None:
        raise TrainingError("ppo: reward_source='judge' needs a judge scorer (judges.feedback.judge_reward)")
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_model)
    eos = tok.eos_token_id
    policy = load_causal_lm(policy_model)
    if cfg.lora:
        policy = get_peft_model(policy, lora_config("CAUSAL_LM", cfg.lora_r, cfg.lora_alpha))
        ref_policy = None  # the same weights with the adapter switched off
    else:
        ref_policy = load_causal_lm(policy_model).requires_grad_(False)
    if cfg.shared_value_head:
        value_model = None
        critic = torch.nn.Linear(policy.config.hidden_size, 1)  # the value head
        torch.nn.init.zeros_(critic.weight), torch.nn.init.zeros_(critic.bias)  # no value yet
    else:
        value_model = load_sequence_scorer(reward_model)  # value model initialised from the RM
        if cfg.lora:
            value_model = get_peft_model(value_model, lora_config("SEQ_CLS", cfg.lora_r, cfg.lora_alpha))
        critic = value_model
    if scorer is None:
        scorer = RewardModel(reward_model).score  # normalised on the reference policy
    params = [p for m in (policy, critic) for p in m.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
              if cfg.adaptive_kl else FixedKLController(cfg.init_kl_coef))

    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]
    metrics: list[dict] = []
    start, ckpt = 0, checkpoint_path(out_dir)
    identity = run_identity(cfg, policy_model, reward_model, prompts)
    if ckpt.exists():  # resume: same weights, optimizer, KL coefficient, RNG and data position
        try:
            state = torch.load(ckpt, weights_only=False)
        except Exception as e:  # truncated or foreign file
            raise TrainingError(f"ppo: cannot read the checkpoint {ckpt} ({type(e).__name__}: {e}); "
                                "delete it to start over") from e
        if state["identity"] != identity:
            diff = sorted(k for k in identity if state["identity"].get(k) != identity[k])
            raise TrainingError(f"ppo: {ckpt} was written for different settings or inputs ({', '.join(diff)}); "
                                "use those settings, or delete it to start over")
        if state["step"] > cfg.steps:
            raise TrainingError(f"ppo: {ckpt} is at step {state['step']}, beyond steps={cfg.steps}")
        load_trainable_state(policy, state["policy"])
        load_trainable_state(critic, state["value_model"])
        optimizer.load_state_dict(state["optimizer"])
        kl_ctl.value, start, metrics = state["kl_coef"], state["step"], state["metrics"]
        torch.set_rng_state(state["rng"])
        print(f"ppo: resuming from {ckpt} at step {start}")

    def save_checkpoint(step: int) -> None:
        tmp = ckpt.with_name(ckpt.name + ".tmp")
        torch.save({"step": step, "identity": identity, "policy": trainable_state(policy),
                    "value_model": trainable_state(critic), "optimizer": optimizer.state_dict(),
                    "kl_coef": kl_ctl.value, "rng": torch.get_rng_state(), "metrics": metrics}, tmp)
        os.replace(tmp, ckpt)  # atomic: a crash leaves the previous checkpoint whole

    def save(d: Path, steps_done: int):
        policy.save_pretrained(d)
        tok.save_pretrained(d)
        write_json(d / "rlaif_config.json", cfg.model_dump())
        write_json(d / "lineage.json", {**lineage, "policy_model": str(resolve_model(policy_model)),
                                        "reward_model": str(reward_model), "step": steps_done,
                                        "prompt_ids": prompts["prompt_id"].tolist()})
        write_json(d / "kl_controller.json", {"kl_coef": kl_ctl.value, "steps": steps_done})

    def forward(query_response, attn, R) -> tuple[torch.Tensor, torch.Tensor]:
        """Response logits (B, R, V) and values (B, R): one pass with the shared value head."""
        if value_model is None:
            return policy_and_values(policy, critic, query_response, attn, R, cfg.temperature)
        return (response_logits(policy, query_response, attn, R, cfg.temperature),
                token_values(value_model, query_response, attn)[:, -R - 1:-1])

    snapshots = snapshot_steps(cfg.steps, cfg.snapshots)
    if start == 0:  # a fresh run: no snapshot of an earlier, abandoned one may stay
        shutil.rmtree(snapshot_root(out_dir), ignore_errors=True)
    for step in tqdm(range(start, cfg.steps), desc="ppo", unit="step", initial=start, total=cfg.steps):
        t0 = time.perf_counter()
        idx = [order[(step * cfg.batch_size + i) % len(order)] for i in range(cfg.batch_size)]
        batch_prompts = [prompts["prompt"].iloc[i] for i in idx]

        # 1. rollout ---------------------------------------------------------------------
        policy.eval(), critic.eval()
        query_ids, query_mask, response_ids = sample(
            policy, tok, [queries[i] for i in idx], max_new_tokens=cfg.max_new_tokens,
            temperature=cfg.temperature, seed=cfg.seed * 100_003 + step)
        Q, R = query_ids.shape[1], response_ids.shape[1]
        mask = response_mask(response_ids, eos).float()  # (B, R)
        query_response = torch.cat([query_ids, response_ids], 1)  # (B, Q+R)
        attn = torch.cat([query_mask, mask.long()], 1)  # (B, Q+R)
        with torch.inference_mode():
            logits, values = forward(query_response, attn, R)  # (B, R, V), (B, R)
            logprobs = logprobs_from_logits(logits, response_ids)  # (B, R)
            entropy = masked_mean(-(F.softmax(logits, -1) * F.log_softmax(logits, -1)).sum(-1), mask)
            del logits
            if ref_policy is None:
                with policy.disable_adapter():
                    ref_logits = response_logits(policy, query_response, attn, R, cfg.temperature)
            else:
                ref_logits = response_logits(ref_policy, query_response, attn, R, cfg.temperature)
            ref_logprobs = logprobs_from_logits(ref_logits, response_ids)  # (B, R)
            del ref_logits
            texts = [tok.decode(r[:int(m.sum())], skip_special_tokens=True).strip()
                     for r, m in zip(response_ids, mask)]
            try:
                scores = scorer(batch_prompts, texts).float()  # (B,)
            except Exception as e:  # a judge that times out or answers garbage
                raise TrainingError(f"ppo: scoring failed at step {step}: {e} ({_kept(ckpt)})") from e
            has_eos = ((response_ids == eos) & mask.bool()).any(1)
            scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
        if not torch.isfinite(scores).all():
            raise TrainingError(f"ppo: non-finite {cfg.reward_source} score at step {step}; stopping "
                                f"({_kept(ckpt)})")

        # 2. rewards ---------------------------------------------------------------------
        kl = kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
        rewards, non_score_reward = compute_rewards(scores, kl, mask, kl_ctl.value)
        if cfg.whiten_rewards:
            rewards = masked_whiten(rewards, mask, shift_mean=False)

        # 3. advantages --------------------------------------------------------------------
        advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)

        # 4. PPO epochs --------------------------------------------------------------------
        policy.train(), critic.train()
        gen = torch.Generator().manual_seed(cfg.seed * 7919 + step)
        stats: dict[str, list[float]] = {}
        for _ in range(cfg.ppo_epochs):
            for mb in torch.randperm(cfg.batch_size, generator=gen).split(cfg.mini_batch_size):
                cols, r = unpadded(attn[mb], Q)  # this minibatch's own padding is dropped
                new_logits, new_values = forward(query_response[mb][:, cols], attn[mb][:, cols], r)
                new_logprobs = logprobs_from_logits(new_logits, response_ids[mb, :r])  # (b, r)
                pg_loss, vf_loss, mb_stats = ppo_losses(
                    new_logprobs, logprobs[mb, :r], advantages[mb, :r], new_values, values[mb, :r],
                    returns[mb, :r], mask[mb, :r], cfg.cliprange, cfg.cliprange_value)
                loss = pg_loss + cfg.vf_coef * vf_loss
                if not torch.isfinite(loss):
                    raise TrainingError(f"ppo: non-finite loss at step {step}; stopping ({_kept(ckpt)})")
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                optimizer.step()
                for k, v in {**mb_stats, "ppo/policy_loss": pg_loss.item(),
                             "ppo/value_loss": vf_loss.item()}.items():
                    stats.setdefault(k, []).append(v)

        # 5. KL control and logging --------------------------------------------------------
        mean_kl = kl.sum(1).mean().item()
        step_metrics = {
            "objective/kl": mean_kl,
            "objective/kl_coef": kl_ctl.value,
            "objective/scores": scores.mean().item(),
            "objective/non_score_reward": non_score_reward.sum(1).mean().item(),
            "objective/rlhf_reward": (scores + non_score_reward.sum(1)).mean().item(),
            "objective/entropy": entropy.item(),
            "ppo/mean_response_length": mask.sum(1).mean().item(),
            "ppo/eos_fraction": has_eos.float().mean().item(),
            **{k: sum(v) / len(v) for k, v in stats.items()},
            "time/step_seconds": time.perf_counter() - t0,
        }
        bad = [k for k, v in step_metrics.items() if not math.isfinite(v)]
        if bad:
            raise TrainingError(f"ppo: non-finite metrics {bad} at step {step}; stopping ({_kept(ckpt)})")
        kl_ctl.update(mean_kl, cfg.batch_size)
        metrics += [{"step": step, "metric": k, "value": float(v), "text": None}
                    for k, v in step_metrics.items()]
        metrics += [{"step": step, "metric": "sample/response", "value": float(scores[i]),
                     "text": f"{batch_prompts[i]}\n---\n{texts[i]}"}
                    for i in range(min(cfg.n_samples_logged, len(texts)))]
        if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
            save_checkpoint(step + 1)
        if step + 1 in snapshots:  # for the reward-KL curve; a rerun of this step rewrites it
            atomic_save(snapshot_root(out_dir) / f"step-{step + 1:04d}",
                        lambda d: save(d, step + 1))
        if on_step:  # e.g. a progress artifact in the Prefect UI
            on_step(step + 1, step_metrics)

    atomic_save(out_dir, lambda d: save(d, cfg.steps))
    return metrics


def _kept(ckpt: Path) -> str:
    if ckpt.exists():
        return f"the last good checkpoint, {ckpt}, is kept; rerun to resume from it"
    return "no checkpoint was written yet"
