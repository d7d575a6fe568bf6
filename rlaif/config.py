"""Config pieces shared by the stages, and the generate stage's config. Pydantic only: no
torch, no Prefect, so the CLI's --help (built from these docstrings) starts fast.

Each stage's config lives next to its code and imports only pydantic:
`rlaif.config.GenerateConfig`, `judges.config` (JudgeConfig, FeedbackConfig),
`training.config` (SFTConfig, RewardConfig, PPOConfig), `evaluation.config` (EvalConfig);
`flows.config.PipelineConfig` composes them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

EMBEDDED_MODEL = "smollm2-135m-instruct"  # the policy and reference (rlaif.models)
EMBEDDED_JUDGE = "gemma3-270m"  # the judge (rlaif.models)


class StageConfig(BaseModel):
    """Base of every config: unknown fields are an error; field docstrings are the help text."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    @model_validator(mode="before")
    @classmethod
    def _partial_sub_configs(cls, data):
        """A sub-config given as a partial mapping (`{"sampling": {"max_new_tokens": 16}}`, from
        YAML or a deployment parameter) overrides only the fields it names; the others keep
        this stage's defaults, not the sub-config class's."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for name, field in cls.model_fields.items():
            if isinstance(field.default, BaseModel) and isinstance(data.get(name), dict):
                data[name] = {**field.default.model_dump(), **data[name]}
        return data


class Sampling(StageConfig):
    """How a stage samples text: exactly these settings, and no others. The model's own
    generation_config (a repetition penalty, a top_k) is never applied on top, so the
    probabilities PPO and the KL assume are those the tokens were drawn from."""

    model_config = ConfigDict(frozen=True)

    max_new_tokens: int = Field(default=64, ge=1)
    """Length cap per text, in tokens."""
    temperature: float = Field(default=0.7, ge=0.0)
    """Softmax temperature (0: greedy)."""
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    """Nucleus sampling mass (1: off)."""


class Trainable(StageConfig):
    """What trains, the same setting for SFT, the reward model and PPO."""

    model_config = ConfigDict(frozen=True)

    method: Literal["lora", "full", "last_layers"] = "lora"
    """lora: LoRA adapters on the attention projections, merged into the weights on save (for
    PPO, the reference is the same base with the adapter switched off); full: every weight;
    last_layers: only the last `last_layers` decoder layers and the final norm (and a scalar
    head) train, the rest is frozen (the partial fine-tuning of the seed documents). With
    full or last_layers, PPO's reference is a frozen copy of the starting policy."""
    lora_r: int = Field(default=16, ge=1)
    """LoRA rank."""
    lora_alpha: int = Field(default=32, ge=1)
    """LoRA scaling numerator."""
    last_layers: int = Field(default=2, ge=1)
    """With method=last_layers: how many of the top decoder layers train."""


class GenerateConfig(StageConfig):
    """Stage 1: sample responses to the training prompts from the policy."""

    n_prompts: int | None = 32
    """Training prompts to answer (None: all of the train split)."""
    samples_per_prompt: int = Field(default=2, ge=1)
    """Responses per prompt; the first two form the preference pair."""
    sampling: Sampling = Sampling(max_new_tokens=64, temperature=0.8, top_p=0.95)
    batch_size: int = Field(default=16, ge=1)
    """Prompts per `generate` call."""
    seed: int = 0
    """Seed for sampling; the same seed gives the same responses."""
