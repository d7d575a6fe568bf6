"""PPO, RLOO and GRPO with KL control against a frozen reference, read top to bottom.

Vocabulary follows lm-human-preferences: a `query` (prompt) gets a `response`; the reward
model gives a `score`; the per-token KL to the reference (`ref_logprobs`) times `kl_coef` is
the `non_score_reward`. Each implementation detail is a named toggle in PPOConfig.

The three algorithms differ only in where the advantage comes from (`cfg.algorithm`, as
verl's advantage estimators): PPO learns a value model and spreads the reward over the tokens
with GAE; RLOO and GRPO sample each prompt `group_size` times and take the group's other
rewards as the baseline, one advantage per response, with no value model. Everything else is
shared: rollouts, KL control, the clipped step, checkpoints, snapshots, metrics, NaN guards.

One iteration:
  1. rollout: the rollout engine (transformers, or vLLM serving the policy's current weights)
     samples `group_size` responses per query; then (no grad) policy logprobs, reference
     logprobs, values (PPO), scores (reward-model scores; the judge's direct 1-10 rating with
     reward_source="judge"; the group's tournament strengths with "tournament");
     `rollout/logprob_diff` says how far the engine's logprobs are from the trainer's;
  2. rewards: -kl_coef * KL (the k1/k3 estimate of the sampled token) plus the score: per
     token for PPO (the score at the last response token), per response for RLOO and GRPO;
     with kl_penalty="loss" the KL goes to the loss instead (k3). `objective/kl` logs the
     exact KL over the vocabulary;
  3. advantages: PPO: GAE, then whitened; RLOO: leave-one-out baseline (whitened too); GRPO:
     normalised within each group;
  4. several epochs of clipped policy (and, for PPO, value) updates over minibatches;
  5. update the KL controller with the observed KL;
  6. every `checkpoint_every` steps, write a resumable checkpoint (weights, optimizer, KL
     coefficient, RNG state, data position, metrics so far). A rerun with the same out_dir
     continues from it, bit-identically.
"""

from __future__ import annotations

import math
import shutil
import time
from pathlib import Path
from typing import Callable

import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from rlaif.config import EngineConfig, Transformers
from rlaif.engines import make_engine
from rlaif.generation import Generation, chat_text, position_ids, response_mask
from rlaif.models import load_causal_lm, load_sequence_scorer, load_tokenizer, resolve_model
from rlaif.runtime import CPU, Runtime
from rlaif.paths import snapshot_dir, snapshot_root
from training import TrainingError
from training.checkpoint import Checkpoint, run_identity, snapshot_steps
from training.common import make_trainable, save_model, token_values
from training.config import PPOConfig
from training.distributed import Parallel
from training.reward import RewardModel


# ---------------------------------------------------------------- maths (pure, unit-tested)

def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    if dim is None:
        return (x * mask).sum() / mask.sum().clamp(min=1)
    return (x * mask).sum(dim) / mask.sum(dim).clamp(min=1)


def masked_whiten(x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True,
                  all_sum: Callable[[torch.Tensor], torch.Tensor] = lambda t: t) -> torch.Tensor:
    """Mean 0, variance 1 over the masked entries. `all_sum` sums a tensor over the ranks of a
    distributed run (training.distributed.Parallel.all_sum), so every rank whitens with the
    global batch's statistics, as one process would."""
    n = all_sum(mask.sum()).clamp(min=1)
    mean = all_sum((x * mask).sum()) / n
    var = all_sum(((x - mean) ** 2 * mask).sum()) / n
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


def exact_kl(logp: torch.Tensor, ref_logp: torch.Tensor) -> torch.Tensor:
    """Per-token KL(policy || reference) over the whole vocabulary, sum_v p(v) (log p(v) - log q(v)),
    from both models' log-probabilities (log_softmax of the logits) at the same positions: never
    negative, and free of the sampling noise of k1/k3, which read only the sampled token. The
    figure to report. (B, R, V), (B, R, V) -> (B, R)"""
    return (logp.exp() * (logp - ref_logp)).sum(-1).clamp(min=0.0)  # clamp: float rounding only


def rloo_advantages(rewards: torch.Tensor) -> torch.Tensor:
    """RLOO: each response's reward minus the mean reward of the other K-1 responses to its
    prompt, an unbiased baseline that needs no value model. (G, K) -> (G, K)"""
    K = rewards.shape[1]
    baseline = (rewards.sum(1, keepdim=True) - rewards) / (K - 1)
    return rewards - baseline


def grpo_advantages(rewards: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
    """GRPO: each response's reward normalised within its group, (r - mean) / (std + eps),
    std unbiased as in TRL. A group of equal rewards carries no signal: its advantages are 0,
    not NaN (eps). (G, K) -> (G, K)"""
    mean, std = rewards.mean(1, keepdim=True), rewards.std(1, keepdim=True)
    return (rewards - mean) / (std + eps)


def compute_rewards(scores: torch.Tensor, kl: torch.Tensor, mask: torch.Tensor,
                    kl_coef: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token rewards: KL penalty everywhere, score added at the last response token.

    Returns (rewards, non_score_reward), both (B, R).
    """
    non_score_reward = -kl_coef * kl * mask
    rewards = non_score_reward.clone()
    last = (mask.sum(1) - 1).clamp(min=0).long()  # (B,) index of the last response token
    rewards[torch.arange(len(scores), device=scores.device), last] += scores
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


def truncated_is_weights(logprobs: torch.Tensor, engine_logprobs: torch.Tensor, cap: float) -> torch.Tensor:
    """Truncated importance sampling for rollouts drawn by another engine than the trainer
    (vLLM's kernels are not the trainer's): min(p_trainer / p_engine, cap) per token. (B, R)"""
    return torch.exp(logprobs - engine_logprobs).clamp(max=cap)


def ppo_losses(logprobs, old_logprobs, advantages, values, old_values, returns, mask,
               cliprange: float, cliprange_value: float,
               is_weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Clipped surrogate policy loss and clipped value loss, both masked means over the
    minibatch's tokens (every token weighs the same, however long its response: DAPO's
    token-level mean). `is_weights` (B, R), when given, reweights each token's policy-gradient
    term (truncated IS). values None (RLOO, GRPO): no value loss (0)."""
    ratio = torch.exp(logprobs - old_logprobs)
    pg_losses = torch.max(-advantages * ratio,
                          -advantages * torch.clamp(ratio, 1 - cliprange, 1 + cliprange))
    if is_weights is not None:
        pg_losses = pg_losses * is_weights
    pg_loss = masked_mean(pg_losses, mask)
    with torch.no_grad():
        stats = {
            "ppo/clipfrac": masked_mean(((ratio - 1).abs() > cliprange).float(), mask).item(),
            "ppo/approxkl": 0.5 * masked_mean((logprobs - old_logprobs) ** 2, mask).item(),
        }
    if values is None:
        return pg_loss, torch.zeros_like(pg_loss), stats
    values_clipped = old_values + torch.clamp(values - old_values, -cliprange_value, cliprange_value)
    vf_losses = torch.max((values - returns) ** 2, (values_clipped - returns) ** 2)
    vf_loss = 0.5 * masked_mean(vf_losses, mask)
    with torch.no_grad():
        stats["ppo/vf_clipfrac"] = masked_mean(((values - old_values).abs() > cliprange_value).float(), mask).item()
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


def rollout_tensors(tokenizer, queries: list[str], gens: list[Generation], runtime: Runtime):
    """An engine's generations as PPO's batch: query_ids and query_mask (B, Q), left-padded as
    the tokenizer pads; response_ids (B, R), padded after each response's EOS; and the engine's
    logprobs of the response tokens (B, R), 0 past the end. The same tensors HF `generate` returns."""
    enc = tokenizer(queries, return_tensors="pt", padding=True, add_special_tokens=False)
    R, pad = max(1, max(len(g.token_ids) for g in gens)), tokenizer.pad_token_id
    response_ids = torch.tensor([g.token_ids + [pad] * (R - len(g.token_ids)) for g in gens])  # (B, R)
    engine_logprobs = torch.tensor([g.logprobs + [0.0] * (R - len(g.logprobs)) for g in gens])  # (B, R)
    return (runtime.put(enc["input_ids"]), runtime.put(enc["attention_mask"]), runtime.put(response_ids),
            runtime.put(engine_logprobs))


Scorer = Callable[[list[str], list[str]], torch.Tensor]  # (queries, responses) -> scores (B,)


class PolicyAndValue(torch.nn.Module):
    """What PPO trains, as one module that DDP can wrap: response logits (B, R, V) and values
    (B, R), in one trunk pass with the shared value head. Without a critic (RLOO, GRPO), the
    logits and None."""

    def __init__(self, policy, critic, shared_value_head: bool, temperature: float):
        super().__init__()
        self.policy, self.critic = policy, critic
        self.shared_value_head, self.temperature = shared_value_head, temperature

    def forward(self, query_response, attn, R: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.critic is None:
            return response_logits(self.policy, query_response, attn, R, self.temperature), None
        if self.shared_value_head:
            return policy_and_values(self.policy, self.critic, query_response, attn, R, self.temperature)
        return (response_logits(self.policy, query_response, attn, R, self.temperature),
                token_values(self.critic, query_response, attn)[:, -R - 1:-1])


class Models:
    """PPO's models: the policy, its frozen reference (None: the policy with its LoRA adapter
    switched off), and the critic: a value head on the policy's trunk, a separate value model
    initialised from the reward model, or None (RLOO and GRPO need none). `module` computes
    both for training."""

    def __init__(self, cfg: PPOConfig, policy_model: str, reward_model: str, runtime: Runtime):
        self.cfg = cfg
        self.policy = make_trainable(load_causal_lm(policy_model, runtime), cfg.trainable, "CAUSAL_LM")
        lora = cfg.trainable.method == "lora"
        self.reference = None if lora else load_causal_lm(policy_model, runtime).requires_grad_(False)
        self.value_model = None
        if cfg.algorithm != "ppo":
            self.critic = None
        elif cfg.shared_value_head:
            self.critic = torch.nn.Linear(self.policy.config.hidden_size, 1)  # the value head
            torch.nn.init.zeros_(self.critic.weight), torch.nn.init.zeros_(self.critic.bias)  # no value yet
            self.critic = runtime.place(self.critic)
        else:
            self.value_model = make_trainable(load_sequence_scorer(reward_model, runtime), cfg.trainable, "SEQ_CLS")
            self.critic = self.value_model
        self.module = PolicyAndValue(self.policy, self.critic, self.value_model is None, cfg.sampling.temperature)

    def train(self, mode: bool = True) -> None:
        self.module.train(mode)

    def ref_logits(self, query_response, attn, R: int) -> torch.Tensor:
        T = self.cfg.sampling.temperature
        if self.reference is not None:
            return response_logits(self.reference, query_response, attn, R, T)
        with self.policy.disable_adapter():
            return response_logits(self.policy, query_response, attn, R, T)


def rollout_stats(m: Models, query_response: torch.Tensor, attn: torch.Tensor, response_ids: torch.Tensor,
                  mask: torch.Tensor, Q: int, chunk: int):
    """(no grad) What the rollout needs from the policy and the reference: logprobs (B, R),
    values (B, R; None without a critic), reference logprobs (B, R), the exact KL per response
    (B,) and the mean entropy per token. `chunk` rows at a time, each chunk without its own
    padding columns, so the full-vocabulary tensors (b, r, V), several alive at once for the
    entropy and the KL, never exist for the whole batch."""
    B, R = response_ids.shape
    logprobs, ref_logprobs = torch.zeros_like(mask), torch.zeros_like(mask)
    values = torch.zeros_like(mask) if m.critic is not None else None
    true_kl, entropy_sum = torch.zeros_like(mask[:, 0]), torch.zeros_like(mask[0, 0])
    for rows in torch.arange(B, device=mask.device).split(chunk):
        cols, r = unpadded(attn[rows], Q)
        qr, a, ids, msk = query_response[rows][:, cols], attn[rows][:, cols], response_ids[rows, :r], mask[rows, :r]
        logits, v = m.module(qr, a, r)  # (b, r, V), (b, r)
        logp = F.log_softmax(logits.float(), -1)  # (b, r, V), once for logprobs, entropy and KL
        del logits
        logprobs[rows, :r] = torch.gather(logp, 2, ids.unsqueeze(-1)).squeeze(-1)
        entropy_sum += (-(logp.exp() * logp).sum(-1) * msk).sum()
        ref_logp = F.log_softmax(m.ref_logits(qr, a, r).float(), -1)  # (b, r, V)
        ref_logprobs[rows, :r] = torch.gather(ref_logp, 2, ids.unsqueeze(-1)).squeeze(-1)
        true_kl[rows] = (exact_kl(logp, ref_logp) * msk).sum(1)  # the reported KL, per response
        if values is not None:
            values[rows, :r] = v
        del logp, ref_logp
    return logprobs, values, ref_logprobs, true_kl, entropy_sum / mask.sum().clamp(min=1)


# ---------------------------------------------------------------- the trainer

def train_ppo(prompts: pd.DataFrame, policy_model: str, reward_model: str, out_dir: Path,
              cfg: PPOConfig, lineage: dict, scorer: Scorer | None = None,
              on_step: Callable[[int, dict], None] | None = None,
              engine: EngineConfig = Transformers(), runtime: Runtime = CPU,
              parallel: Parallel = Parallel()) -> list[dict] | None:
    """Run PPO (or RLOO, GRPO: cfg.algorithm) and save the policy. Returns metric rows
    (namespaced) for ppo_metrics on rank 0, None on the other ranks.

    `scorer` replaces the reward model's scores (the judge's or a tournament's, passed in by
    the flow, or a programmatic reward in tests); it receives each prompt's `group_size`
    responses next to each other. A separate value model still starts from `reward_model`.
    `on_step(steps_done, metrics)` is called after every step. `engine` samples the rollouts
    (the transformers engine runs the policy being trained itself; a vllm engine is handed its
    weights before every rollout); `runtime` places every model and tensor.

    Under several ranks (training.distributed, DDP), each rank rolls out its share of every
    batch; advantages are whitened and the KL controller updated over the global batch, each
    minibatch's gradient is averaged over the ranks, the checkpoint keeps every rank's RNG
    state, and only rank 0 writes.
    """
    if prompts.empty:
        raise TrainingError("ppo: no training prompts")
    if cfg.reward_source != "reward_model" and scorer is None:
        raise TrainingError(f"ppo: reward_source={cfg.reward_source!r} needs a judge scorer "
                            "(judges.feedback.judge_reward or tournament_reward)")
    if engine.kind == "openai":
        raise TrainingError("ppo: rollouts need an in-process engine (transformers or vllm): an HTTP "
                            "endpoint cannot serve the policy's weights as they change")
    world, rank = parallel.world, parallel.rank
    if world > 1:
        if parallel.strategy != "ddp" or engine.kind != "transformers":
            raise TrainingError(f"ppo: on {world} processes, PPO runs with strategy ddp and the transformers "
                                f"engine (got {parallel.strategy}, {engine.kind})")
        if cfg.batch_size % world or cfg.mini_batch_size % world:
            raise TrainingError(f"ppo: batch_size={cfg.batch_size} and mini_batch_size={cfg.mini_batch_size} "
                                f"must both divide among {world} processes")
    batch_size, mini_batch_size = cfg.batch_size // world, cfg.mini_batch_size // world  # this rank's share
    K = cfg.group_size
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_model)
    eos = tok.eos_token_id
    m = Models(cfg, policy_model, reward_model, runtime)
    scorer = scorer or RewardModel(reward_model, runtime).score  # normalised on the reference policy
    m.module, optimizer = parallel.wrap(m.module, lambda params: torch.optim.AdamW(params, lr=cfg.lr, eps=1e-5))
    params = [p for p in m.module.parameters() if p.requires_grad]
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.target_kl, cfg.kl_horizon)
              if cfg.adaptive_kl else FixedKLController(cfg.init_kl_coef))
    order = torch.randperm(len(prompts), generator=runtime.generator(cfg.seed)).tolist()
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]
    ckpt = Checkpoint(out_dir, run_identity(cfg, policy_model, reward_model, prompts, world), runtime, rank)
    start, kl_coef, metrics = ckpt.load(cfg.steps, m.policy, m.critic, optimizer)
    kl_ctl.value = kl_coef if kl_coef is not None else kl_ctl.value
    if start == 0 and parallel.is_main:  # a fresh run: no snapshot of an earlier, abandoned one may stay
        shutil.rmtree(snapshot_root(out_dir), ignore_errors=True)
    snapshots = snapshot_steps(cfg.steps, cfg.snapshots)

    def save(d: Path, steps_done: int, still_training: bool) -> None:
        save_model(d, m.policy, tok, {
            "rlaif_config.json": cfg.model_dump(), "kl_controller.json": {"kl_coef": kl_ctl.value, "steps": steps_done},
            "lineage.json": {**lineage, "policy_model": str(resolve_model(policy_model)),
                             "reward_model": str(reward_model), "step": steps_done,
                             "prompt_ids": prompts["prompt_id"].tolist()}}, still_training)

    lora_rank = cfg.trainable.lora_r if cfg.trainable.method == "lora" else None
    with make_engine(engine, policy_model, runtime, module=m.policy, lora_rank=lora_rank) as rollout_engine:
        for step in tqdm(range(start, cfg.steps), desc="ppo", unit="step", initial=start, total=cfg.steps,
                         disable=not parallel.is_main):
            t0 = time.perf_counter()
            idx = [order[(step * cfg.batch_size + i) % len(order)] for i in range(cfg.batch_size)]
            idx = idx[rank * batch_size:(rank + 1) * batch_size]  # this rank's share of the global batch
            idx = [i for i in idx for _ in range(K)]  # each prompt K times, side by side: a group
            batch_prompts = [prompts["prompt"].iloc[i] for i in idx]

            # 1. rollout: the engine samples from the current policy; then (no grad) logprobs,
            #    reference logprobs, values (PPO) and scores
            m.train(False)
            rollout_engine.sync(m.policy, step + 1)  # vLLM: this step's adapter or weights
            gens = rollout_engine.generate([queries[i] for i in idx], cfg.sampling,
                                           seed=cfg.seed * 100_003 + step + 1_000_003 * rank,
                                           logprobs=True, desc=f"rollout {step + 1}")
            query_ids, query_mask, response_ids, engine_logprobs = rollout_tensors(
                tok, [queries[i] for i in idx], gens, runtime)
            Q, R = query_ids.shape[1], response_ids.shape[1]
            mask = response_mask(response_ids, eos).float()  # (B, R)
            query_response = torch.cat([query_ids, response_ids], 1)  # (B, Q+R)
            attn = torch.cat([query_mask, mask.long()], 1)  # (B, Q+R)
            with torch.inference_mode():
                logprobs, values, ref_logprobs, true_kl, entropy = rollout_stats(
                    m, query_response, attn, response_ids, mask, Q, mini_batch_size)
                texts = [g.text for g in gens]
                try:
                    scores = scorer(batch_prompts, texts).float().to(runtime.device)  # (B,)
                except Exception as e:  # a judge that times out or answers garbage
                    raise TrainingError(f"ppo: scoring failed at step {step}: {e} ({ckpt.kept()})") from e
                has_eos = ((response_ids == eos) & mask.bool()).any(1)
                scores = scores - cfg.missing_eos_penalty * (~has_eos).float()
            # how far the engine's sampling distribution is from the trainer's (off-policy-ness)
            logprob_diff = masked_mean((logprobs - engine_logprobs).abs(), mask).item()
            is_weights = (truncated_is_weights(logprobs, engine_logprobs, cfg.rollout_is_cap)
                          if cfg.rollout_is_cap else None)
            if not torch.isfinite(scores).all():
                raise TrainingError(f"ppo: non-finite {cfg.reward_source} score at step {step}; stopping ({ckpt.kept()})")

            # 2.-3. rewards (the score, and the KL penalty unless it acts in the loss) and advantages
            kl = kl_estimate(logprobs, ref_logprobs, cfg.kl_estimator) * mask  # (B, R)
            reward_kl_coef = 0.0 if cfg.kl_in_loss else kl_ctl.value
            if cfg.algorithm == "ppo":  # per token: the penalty at every token, the score at the last; GAE
                rewards, non_score_reward = compute_rewards(scores, kl, mask, reward_kl_coef)
                if cfg.whiten_rewards:
                    rewards = masked_whiten(rewards, mask, shift_mean=False, all_sum=parallel.all_sum)
                advantages, returns = gae(rewards, values, mask, cfg.gamma, cfg.lam)
            else:  # RLOO, GRPO: per response, the group's other rewards as the baseline
                non_score_reward = -reward_kl_coef * kl  # (B, R)
                rewards = (scores + non_score_reward.sum(1)).view(-1, K)  # (G, K)
                group_advantages = (rloo_advantages if cfg.algorithm == "rloo" else grpo_advantages)(rewards)
                advantages, returns = group_advantages.reshape(-1, 1) * mask, None  # (B, R): each token its response's
            if cfg.whiten_advantages and cfg.algorithm != "grpo":
                advantages = masked_whiten(advantages, mask, all_sum=parallel.all_sum)

            # 4. epochs of clipped updates over minibatches, each without its own padding columns
            m.train()
            gen = runtime.generator(cfg.seed * 7919 + step)
            stats: dict[str, list[float]] = {}
            for _ in range(cfg.ppo_epochs):
                for mb in torch.randperm(len(idx), generator=gen).split(mini_batch_size):
                    cols, r = unpadded(attn[mb], Q)
                    new_logits, new_values = m.module(query_response[mb][:, cols], attn[mb][:, cols], r)
                    new_logprobs = logprobs_from_logits(new_logits, response_ids[mb, :r])  # (b, r)
                    pg_loss, vf_loss, mb_stats = ppo_losses(
                        new_logprobs, logprobs[mb, :r], advantages[mb, :r], new_values,
                        *((None, None) if values is None else (values[mb, :r], returns[mb, :r])),
                        mask[mb, :r], cfg.cliprange, cfg.cliprange_value,
                        None if is_weights is None else is_weights[mb, :r])
                    loss = pg_loss + cfg.vf_coef * vf_loss
                    if values is not None:
                        mb_stats["ppo/value_loss"] = vf_loss.item()
                    if cfg.kl_in_loss:  # GRPO's way: k3 per token in the loss, not in the reward
                        kl_loss = masked_mean(kl_estimate(new_logprobs, ref_logprobs[mb, :r], "k3"), mask[mb, :r])
                        loss = loss + kl_ctl.value * kl_loss
                        mb_stats["ppo/kl_loss"] = kl_loss.item()
                    if not torch.isfinite(loss):
                        raise TrainingError(f"ppo: non-finite loss at step {step}; stopping ({ckpt.kept()})")
                    optimizer.zero_grad()
                    loss.backward()
                    torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)  # on the all-reduced gradient
                    optimizer.step()
                    for k, v in {**mb_stats, "ppo/policy_loss": pg_loss.item()}.items():
                        stats.setdefault(k, []).append(v)

            # 5. KL control, logging, checkpoint and snapshot. The penalty used the estimator; the
            #    controller and the logs read the exact KL (same expectation, no sampling noise).
            step_metrics = {
                "objective/kl": true_kl.mean().item(),
                "objective/kl_estimate": kl.sum(1).mean().item(),
                "objective/kl_coef": kl_ctl.value,
                "objective/scores": scores.mean().item(),
                "objective/non_score_reward": non_score_reward.sum(1).mean().item(),
                "objective/rlhf_reward": (scores + non_score_reward.sum(1)).mean().item(),
                "objective/entropy": entropy.item(),
                "ppo/mean_response_length": mask.sum(1).mean().item(),
                "ppo/eos_fraction": has_eos.float().mean().item(),
                "rollout/logprob_diff": logprob_diff,
                # groups whose rewards are all equal teach RLOO and GRPO nothing
                **({"objective/zero_std_groups": (rewards.std(1) < 1e-6).float().mean().item()}
                   if cfg.algorithm != "ppo" else {}),
                **{k: sum(v) / len(v) for k, v in stats.items()},
                "time/step_seconds": time.perf_counter() - t0,
            }
            # over the global batch: each rank holds an equal share, so the mean of the ranks' means
            step_metrics = dict(zip(step_metrics, (parallel.all_sum(torch.tensor(list(step_metrics.values()),
                                                                                    dtype=torch.float64)) / world).tolist()))
            mean_kl = step_metrics["objective/kl"]
            if bad := [k for k, v in step_metrics.items() if not math.isfinite(v)]:
                raise TrainingError(f"ppo: non-finite metrics {bad} at step {step}; stopping ({ckpt.kept()})")
            kl_ctl.update(mean_kl, cfg.batch_size * K)
            metrics += [{"step": step, "metric": k, "value": float(v), "text": None} for k, v in step_metrics.items()]
            metrics += [{"step": step, "metric": "sample/response", "value": float(scores[i]),
                         "text": f"{batch_prompts[i]}\n---\n{texts[i]}"}
                        for i in range(min(cfg.n_samples_logged, len(texts)))]
            if cfg.checkpoint_every and ((step + 1) % cfg.checkpoint_every == 0 or step + 1 == cfg.steps):
                rngs = parallel.gather(runtime.rng_state())  # every rank's, so each resumes its own stream
                if parallel.is_main:
                    ckpt.save(step + 1, m.policy, m.critic, optimizer, kl_ctl.value, metrics,
                              rngs[0] if world == 1 else rngs)
            if step + 1 in snapshots and parallel.is_main:  # for the reward-KL curve; a rerun rewrites it
                save(snapshot_dir(out_dir, step + 1), step + 1, still_training=True)
            if on_step and parallel.is_main:  # e.g. a progress artifact in the Prefect UI
                on_step(step + 1, step_metrics)

    if not parallel.is_main:
        return None
    save(out_dir, cfg.steps, still_training=False)
    return metrics
