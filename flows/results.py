"""Typed stage results. Each stage flow returns one; the headline, report.md and the CLI read
their fields. `metrics` holds the stage's namespaced figures (`rm/accuracy`, `eval/win_rate`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

Metric = float | int | str


class StageResult(BaseModel):
    model_config = ConfigDict(extra="forbid")

    metrics: dict[str, Metric] = {}
    """Namespaced figures of the stage."""
    plots: dict[str, str] = {}
    """PNG files by name, beside the run's report."""

    def get(self, name: str) -> Metric:
        return self.metrics.get(name, float("nan"))


class GenerateResult(StageResult):
    responses: str
    """The `responses` part written."""


class FeedbackResult(StageResult):
    critiques: str
    preferences: str


class SFTResult(StageResult):
    policy: str
    """The SL-CAI model folder: the policy and reference of every later stage."""
    sft_metrics: str


class RewardResult(StageResult):
    reward_model: str
    rm_metrics: str


class PPOResult(StageResult):
    policy: str
    ppo_metrics: str


class EvalResult(StageResult):
    eval: str
    """The `eval` part written."""
    curve: list[dict] = []
    """The reward-KL curve: one point per policy (the reference at step 0)."""


class Stages(BaseModel):
    """The stages a flow ran; those it did not run are None."""

    model_config = ConfigDict(extra="forbid")

    generate: GenerateResult | None = None
    feedback: FeedbackResult | None = None
    sft: SFTResult | None = None
    reward: RewardResult | None = None
    ppo: PPOResult | None = None
    evaluate: EvalResult | None = None

    def ran(self) -> dict[str, StageResult]:
        return {name: r for name in type(self).model_fields if (r := getattr(self, name)) is not None}


class RunResult(BaseModel):
    """What a pipeline, feedback, training or evaluation flow returns."""

    run_id: str
    constitution_sha: str
    data: str
    checkpoints: str
    report: str
    stages: Stages
    headline: dict[str, Metric]


class CompareResult(BaseModel):
    compare_id: str
    report: str
    table: list[dict]
    label_agreement: dict[str, dict]
    runs: dict[str, str]
