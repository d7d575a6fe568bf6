"""The pipeline's configuration: one typed config per stage, composed here.

Each stage's config lives next to its code and documents its fields once (GenerateConfig in
rlaif.config, JudgeConfig and FeedbackConfig in judges.config, SFTConfig, RewardConfig and
PPOConfig in training.config, EvalConfig in evaluation.config); the CLI's --help and the
Prefect UI's parameter form are both generated from those docstrings. Every module named
here imports pydantic only: building the CLI imports neither torch nor Prefect.
"""

from __future__ import annotations

import uuid
from pathlib import Path
from datetime import datetime, timezone
from typing import Annotated

import tyro
from pydantic import BaseModel, ConfigDict, Field, field_validator

from evaluation.config import EvalConfig, PromotionConfig
from judges.config import FeedbackConfig, JudgeConfig
from rlaif.config import EMBEDDED_MODEL, DType, EngineConfig, GenerateConfig, Transformers
from rlaif.paths import RunLayout, default_data_root
from training.config import DistributedConfig, PPOConfig, RewardConfig, SFTConfig


class RunError(ValueError):
    """A run that cannot start or go on as asked: no data for it yet, a missing checkpoint, an
    option without its extra. The CLI prints it as one line."""


def new_run_id() -> str:
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:6]


class PipelineConfig(BaseModel):
    """The whole pipeline: generate -> feedback -> [SFT] -> reward model -> PPO -> evaluate."""

    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    constitution: str = "harmless"
    """A shipped constitution's name (harmless, helpful, concise) or a path to a YAML file."""
    prompts: str | None = None
    """Prompt file (JSONL, CSV or Parquet with a 'prompt' column); None: the shipped set."""
    data: str = Field(default_factory=lambda: str(default_data_root()))
    """Data root for Parquet datasets, checkpoints and reports (env RLAIF_DATA)."""
    policy_model: str = EMBEDDED_MODEL
    """Policy and reference model: the embedded model's name or a local HF folder."""
    policy_engine: EngineConfig = Transformers(batch_size=16)
    """Where the policy writes text: responses, critiques and revisions (with feedback.critic
    policy), PPO's rollouts and evaluation's samples. `policy-engine:vllm` on the command line
    for vLLM; PPO's rollouts need transformers or vllm (the weights change every step)."""
    judge: JudgeConfig = JudgeConfig()
    device: str = "auto"
    """Where models run: auto (a CUDA GPU when one is visible, else the CPU), cpu, cuda, cuda:N."""
    dtype: DType = "auto"
    """Model weights: auto (bfloat16 on a GPU, float32 on the CPU), float32 or bfloat16."""
    run_id: str | None = Field(default=None, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
    """Name of this run in every row and folder (letters, digits, '.', '_', '-'; it names
    folders, so no path); None: a new timestamped id."""
    ray_address: str | None = None
    """Label the preference shards (--feedback.shards) in parallel on Ray: 'local' starts a
    temporary Ray instance on this machine, 'auto' or 'ray://host:10001' joins a running
    cluster (needs the `ray` extra). None: no Ray."""
    train: DistributedConfig = DistributedConfig()
    """How many processes train SFT, the reward model and PPO (docs/distributed.md)."""
    generate: GenerateConfig = GenerateConfig()
    feedback: FeedbackConfig = FeedbackConfig()
    sft: SFTConfig = SFTConfig()
    reward: RewardConfig = RewardConfig()
    ppo: PPOConfig = PPOConfig()
    eval: EvalConfig = EvalConfig()
    promotion: PromotionConfig = PromotionConfig()
    """The training flow's gate: when its policy replaces the champion (docs/service.md)."""
    mlflow_tracking_uri: str | None = None
    """Also log every stage's parameters, metrics and artifacts to MLflow at this tracking URI
    (a server, or a local store such as sqlite:///mlflow.db); None: the MLFLOW_TRACKING_URI
    environment variable, and no MLflow when that is unset. TensorBoard event files are always
    written under the run's reports folder."""


class CompareConfig(PipelineConfig):
    """Constitution A/B: the pipeline under each constitution (the other fields shared), then
    each trained policy judged under each constitution."""

    constitution: Annotated[tuple[str, ...], tyro.conf.UseAppendAction] = ()
    """Constitutions to compare, each a shipped name or a YAML path; repeat the flag
    (--constitution a.yaml --constitution b.yaml). None given: harmless and concise."""

    @field_validator("constitution")
    @classmethod
    def _two(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        v = v or ("harmless", "concise")
        stems = [Path(c).stem for c in v]
        if len(set(stems)) < 2 or len(set(stems)) < len(stems):
            raise ValueError(f"compare needs two or more constitutions with different file names, got {list(v)}")
        return v

    def pipeline_config(self, constitution: str, run_id: str) -> PipelineConfig:
        return PipelineConfig.model_validate({**self.model_dump(exclude={"constitution", "run_id"}),
                                              "constitution": constitution, "run_id": run_id})


class RunContext(BaseModel):
    """What every stage of one pipeline run shares: identity and lineage, no heavy objects."""

    run_id: str
    data: str
    constitution_path: str
    constitution_sha: str
    prompts: str | None
    policy_model: str
    judge: JudgeConfig
    policy_engine: EngineConfig = Transformers(batch_size=16)
    device: str = "auto"
    dtype: DType = "auto"
    train: DistributedConfig = DistributedConfig()
    mlflow_tracking_uri: str | None = None
    policy_id: str = "base"
    """The registry's id of the policy the run samples and trains from (rlaif.registry)."""
    base_model: str = ""
    """The base model of its chain (flows.policies.base_key of --policy-model)."""

    @property
    def runtime(self):
        """Where this run's models go (rlaif.runtime.Runtime)."""
        from rlaif.runtime import resolve

        return resolve(self.device, self.dtype)

    @property
    def layout(self) -> RunLayout:
        """Every path of this run."""
        return RunLayout(Path(self.data), self.constitution_sha, self.run_id)

    def lineage(self, policy_model: str | None = None, judge_model: str = ""):
        """The store's Lineage of rows this run writes."""
        from prefect.runtime import flow_run

        from rlaif.store import Lineage

        return Lineage(run_id=self.run_id, constitution_sha=self.constitution_sha,
                       policy_model=policy_model if policy_model is not None else self.policy_model,
                       judge_model=judge_model, flow_run_id=str(flow_run.get_id() or ""))
