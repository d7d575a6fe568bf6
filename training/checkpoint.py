"""PPO's plumbing, beside the trainer: the resumable checkpoint, what identifies a run, and
when intermediate policies are saved. The paths themselves come from rlaif.paths."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd
import torch

from rlaif.io import write_file_atomic
from rlaif.models import resolve_model
from rlaif.paths import checkpoint_file
from rlaif.runtime import Runtime
from training import TrainingError
from training.config import PPOConfig


def snapshot_steps(steps: int, n: int) -> set[int]:
    """The steps after which an intermediate policy is saved: n, evenly spaced, before the last."""
    return {round(steps * k / (n + 1)) for k in range(1, n + 1)} - {0, steps}


def run_identity(cfg: PPOConfig, policy_model: str, reward_model: str, prompts: pd.DataFrame,
                 processes: int = 1) -> dict:
    """What must match for a checkpoint to be continued: the inputs, every setting but the
    run's length, and the number of processes (each rank's share of a batch depends on it)."""
    return {**cfg.model_dump(exclude={"steps", "checkpoint_every", "snapshots", "n_samples_logged"}),
            "policy_model": str(resolve_model(policy_model)), "reward_model": str(reward_model),
            "prompt_ids": hashlib.sha256("\n".join(prompts["prompt_id"]).encode()).hexdigest(),
            **({"processes": processes} if processes > 1 else {})}  # one process: as before ranks existed


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}


def load_trainable_state(model, state: dict[str, torch.Tensor]) -> None:
    expected = {k for k, v in model.named_parameters() if v.requires_grad}
    if set(state) != expected:
        raise TrainingError("ppo: checkpoint weights do not match this model "
                            f"({len(set(state) ^ expected)} parameter names differ)")
    model.load_state_dict(state, strict=False)


class Checkpoint:
    """PPO's resumable state beside the policy folder: the trainable weights of the policy and
    the critic (none for RLOO and GRPO), the optimizer, the KL coefficient, the RNG state (CPU, and CUDA on a GPU; a
    list, one per rank, when several processes train), the step and the metrics so far.
    Resuming from it continues bit-identically where the rollout engine is deterministic for a
    seed. Rank 0 writes it; every rank reads it."""

    def __init__(self, out_dir: str | Path, identity: dict, runtime: Runtime, rank: int = 0):
        self.path, self.identity, self.runtime, self.rank = checkpoint_file(out_dir), identity, runtime, rank

    def load(self, steps: int, policy, critic, optimizer) -> tuple[int, float | None, list[dict]]:
        """Restore into the given objects; returns (step, kl_coef, metrics), or (0, None, [])
        when there is no checkpoint."""
        if not self.path.exists():
            return 0, None, []
        try:
            state = torch.load(self.path, weights_only=False, map_location="cpu")  # load_state_dict places it
        except Exception as e:  # truncated or foreign file
            raise TrainingError(f"ppo: cannot read the checkpoint {self.path} ({type(e).__name__}: {e}); "
                                "delete it to start over") from e
        if state["identity"] != self.identity:
            diff = sorted(k for k in self.identity if state["identity"].get(k) != self.identity[k])
            raise TrainingError(f"ppo: {self.path} was written for different settings or inputs ({', '.join(diff)}); "
                                "use those settings, or delete it to start over")
        if state["step"] > steps:
            raise TrainingError(f"ppo: {self.path} is at step {state['step']}, beyond steps={steps}")
        load_trainable_state(policy, state["policy"])
        if critic is not None:  # RLOO and GRPO have none
            load_trainable_state(critic, state["value_model"])
        optimizer.load_state_dict(state["optimizer"])
        self.runtime.set_rng_state(state["rng"][self.rank] if isinstance(state["rng"], list) else state["rng"])
        if self.rank == 0:
            print(f"ppo: resuming from {self.path} at step {state['step']}")
        return state["step"], state["kl_coef"], state["metrics"]

    def save(self, step: int, policy, critic, optimizer, kl_coef: float, metrics: list[dict],
             rng: dict | list[dict] | None = None) -> None:
        """`rng`: every rank's RNG state, in rank order, under several processes; None: this
        process's."""
        state = {"step": step, "identity": self.identity, "policy": trainable_state(policy),
                 "value_model": trainable_state(critic) if critic is not None else {}, "optimizer": optimizer.state_dict(),
                 "kl_coef": kl_coef, "rng": rng if rng is not None else self.runtime.rng_state(), "metrics": metrics}
        write_file_atomic(self.path, lambda tmp: torch.save(state, tmp))  # a crash keeps the previous one

    def kept(self) -> str:
        """For error messages: what a rerun resumes from."""
        if self.path.exists():
            return f"the last good checkpoint, {self.path}, is kept; rerun to resume from it"
        return "no checkpoint was written yet"
