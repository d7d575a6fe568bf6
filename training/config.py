"""The training stages' configs (SL-CAI SFT, the reward model, PPO), one per stage, each field
documented once. Pydantic only: no torch, so the CLI's --help stays light."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from rlaif.config import Sampling, StageConfig, Trainable

SHIPPED_ACCELERATE_CONFIGS = Path(__file__).parent / "accelerate"  # the only ones a deployment may name by default


class DistributedConfig(StageConfig):
    """How many processes train each of SFT, the reward model and PPO (training.distributed).
    Every rank sees a share of each global batch; results match one process's within float
    tolerance (docs/distributed.md)."""

    num_processes: int = Field(default=1, ge=1)
    """Processes per training stage: 1 trains in the flow's own process; N launches `torchrun
    --standalone --nproc_per_node N` (one per GPU on a GPU machine, gloo on a CPU)."""
    strategy: Literal["ddp", "fsdp"] = "ddp"
    """ddp: every rank holds the whole model and the gradients are averaged (DDP); fsdp:
    FSDP2's fully_shard per decoder layer, parameters, gradients and optimizer state sharded
    (SFT and the reward model; PPO then runs with DDP)."""
    accelerate_config: str | None = None
    """An accelerate config file (training/accelerate/*.yaml): the stage is launched with
    `accelerate launch --config_file FILE`, which then sets the process count, the machines
    and the main process's address; num_processes is not read."""

    @property
    def launched(self) -> bool:
        """Whether the stages run in launched processes rather than in the flow's own."""
        return self.num_processes > 1 or self.accelerate_config is not None


class SFTConfig(StageConfig):
    """Optional stage 2b (SL-CAI): fine-tune the policy on the final revisions."""

    enabled: bool = False
    """Run this stage; its model then becomes the policy and the reference of every later stage."""
    trainable: Trainable = Trainable()
    lr: float = 2e-4
    """AdamW learning rate (use a smaller one, ~1e-5, for full fine-tuning)."""
    epochs: int = 1
    """Passes over the revisions."""
    batch_size: int = 4
    """Examples per optimisation step."""
    micro_batch_size: int | None = Field(default=None, ge=1)
    """Examples per forward and backward pass, gradients accumulated over the batch (None:
    the whole batch at once). Either way the loss is the mean over the batch's response tokens."""
    max_length: int = 256
    """Token cap per prompt+revision (truncated on the left, keeping the revision end and EOS)."""
    seed: int = 0
    """Seed for LoRA initialisation and shuffling."""


class RewardConfig(StageConfig):
    """Stage 3: train the reward model on the preference pairs."""

    trainable: Trainable = Trainable()
    """What trains; the scalar head always does."""
    lr: float = 3e-4
    """AdamW learning rate."""
    epochs: int = 2
    """Passes over the training pairs."""
    batch_size: int = 4
    """Prompts per optimisation step, each with all its judged pairs (InstructGPT's batching:
    with two samples per prompt, one pair each). Every prompt weighs the same in the loss: the
    mean over its pairs."""
    micro_batch_size: int | None = Field(default=2, ge=1)
    """Prompts per forward and backward pass, gradients accumulated over the batch (None: the
    whole batch at once). The same gradient, with the activations of a micro-batch only,
    each micro-batch padded to its own longest response: measured on 200 hh-rlhf pairs, 2
    pairs per pass peaked at 2.9 GiB against 5.0 GiB for 4, in the same time. A pass scores
    each distinct response of its prompts once (K per prompt)."""
    max_length: int = 256
    """Token cap per prompt+response (truncated on the left, keeping the response end)."""
    eval_fraction: float = Field(default=0.25, ge=0.0, lt=1.0)
    """Share of prompt ids held out for rm/accuracy and rm/ece (0: train on every pair, and
    report neither)."""
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


class PPOConfig(StageConfig):
    """Stage 4: policy optimisation against the reward (PPO by default; RLOO or GRPO), with KL
    control against the frozen reference."""

    algorithm: Literal["ppo", "rloo", "grpo"] = "ppo"
    """ppo: a value model and GAE (per-token advantages). rloo: each response's reward minus
    the mean of its group's other rewards (Ahmadian et al. 2024). grpo: the group's rewards
    normalised to mean 0, std 1 (Shao et al. 2024). rloo and grpo need no value model: one
    advantage per response, spread over its tokens; all three take the same clipped-ratio step."""
    steps: int = 4
    """Iterations (rollout + update)."""
    batch_size: int = 8
    """Prompts per rollout."""
    group_size: int = Field(default=1, ge=1)
    """Samples per prompt (K), each prompt's a group: batch_size * group_size responses per
    rollout. rloo and grpo, and reward_source tournament, need at least 2."""
    mini_batch_size: int = 4
    """Responses per gradient step."""
    ppo_epochs: int = 2
    """Passes over each rollout batch."""
    sampling: Sampling = Sampling(max_new_tokens=32, temperature=0.7)
    """Rollout sampling; logprobs use the same temperature-scaled logits. top_p must stay 1:
    PPO's logprobs are those of the full temperature-scaled softmax."""

    @model_validator(mode="after")
    def _groups(self):
        if self.group_size < 2 and (self.algorithm != "ppo" or self.reward_source == "tournament"):
            why = f"algorithm {self.algorithm}" if self.algorithm != "ppo" else "reward_source tournament"
            raise ValueError(f"{why} compares each prompt's samples: group_size must be at least 2 "
                             f"(got {self.group_size})")
        return self

    @property
    def kl_in_loss(self) -> bool:
        return (self.kl_penalty or ("loss" if self.algorithm == "grpo" else "reward")) == "loss"

    @field_validator("sampling")
    @classmethod
    def _full_softmax(cls, v: Sampling) -> Sampling:
        if v.top_p != 1.0 or v.temperature <= 0:
            raise ValueError(f"PPO samples from the full softmax at a positive temperature; got "
                             f"temperature={v.temperature}, top_p={v.top_p}")
        return v

    lr: float = 1e-4
    """AdamW learning rate for the policy and value model."""
    trainable: Trainable = Trainable()
    """What trains (policy and a separate value model alike)."""
    shared_value_head: bool = True
    """Values from a zero-initialised scalar head on the policy's own trunk, so one forward
    pass gives logprobs and values (as in lm-human-preferences and TRL's value-head models).
    False: a separate value model initialised from the reward model (TRL's PPOTrainer),
    which costs a second forward and backward per minibatch and a second model in memory."""
    kl_penalty: Literal["reward", "loss"] | None = None
    """Where the KL to the reference acts. reward: -kl_coef * KL is added to the reward (per
    token for ppo, summed over the response for rloo); loss: kl_coef * k3 per token is added
    to the loss, the reward is the score alone (GRPO's way). None: loss for grpo, reward for
    ppo and rloo. The coefficient is kl_coef either way, fixed or adaptive."""
    kl_estimator: Literal["k1", "k3"] = "k1"
    """Per-token KL estimator in the reward penalty: k1 = log p - log q; k3 = (q/p - 1) - log(q/p).
    Both read the sampled token only. What is logged (`objective/kl`) and what the adaptive
    controller follows is the exact KL over the vocabulary (`objective/kl_estimate`: this one)."""
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
    """Normalise advantages to mean 0, std 1 over the batch's response tokens (ppo and rloo;
    grpo's are normalised within each group already)."""
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
    rollout_is_cap: float | None = None
    """Truncated importance sampling for rollouts from another engine (vLLM): weight each
    token's policy-gradient term by min(p_trainer / p_engine, cap), e.g. 2.0. None: off (the
    rollouts count as on-policy; `rollout/logprob_diff` says how far they are from it)."""
    missing_eos_penalty: float = 1.0
    """Subtracted from the score of a response that never emits EOS (0 disables)."""
    reward_source: Literal["reward_model", "judge", "tournament"] = "reward_model"
    """Score responses with the trained reward model; with the judge's direct 1-10 rating
    under a sampled principle, mapped to [-1, 1] (d-RLAIF); or by a tournament: each group's
    responses judged head to head in both orders (the feedback stage's --feedback.pairing
    schedule and settings), their Bradley-Terry strengths centred within the group as the
    scores, the judged pairs stored as preferences. A separate value model
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
