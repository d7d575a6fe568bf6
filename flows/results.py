"""Typed stage results. Each stage flow returns one; the headline, report.md and the CLI read
their fields. `metrics` holds the stage's namespaced figures (`rm/accuracy`, `eval/win_rate`)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

Metric = float | int | str


class Figure(BaseModel):
    """One number a user reads, with what it needs to be read: its sample size, its 95%
    interval, and a note (fewer than 20 samples; a judge near chance)."""

    value: Metric
    ci_low: float | None = None
    ci_high: float | None = None
    n: int | None = None
    notes: list[str] = []

    def text(self) -> str:
        from flows.reports import fmt

        out = fmt(self.value)
        detail = []
        if self.ci_low is not None and self.ci_high is not None:
            detail.append(f"95% CI {fmt(self.ci_low)} to {fmt(self.ci_high)}")
        if self.n is not None:
            detail.append(f"n={self.n}")
        detail += self.notes
        return out + (f" ({'; '.join(detail)})" if detail else "")


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
    rankings: str | None = None
    """The `rankings` part written (None: no prompt had a tournament of judged samples)."""


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
    algorithm: str = "ppo"
    """ppo, rloo or grpo (PPOConfig.algorithm)."""
    reward_source: str = "reward_model"
    """reward_model, judge or tournament (PPOConfig.reward_source)."""


class EvalResult(StageResult):
    eval: str
    """The `eval` part written."""
    curve: list[dict] = []
    """The reward-KL curve: one point per policy (the reference at step 0)."""
    probes: list[dict] = []
    """The behaviour probes (evaluation.probes): one row per (policy, probe), with intervals."""
    ladder: list[dict] = []
    """The policies ranked by head-to-head judging (evaluation.ladder): one row per policy,
    the reference included, with BT strength and Elo and their intervals."""
    matches: str | None = None
    """The `matches` part written: the ladder's policy-against-policy judgements."""


class PromotionResult(StageResult):
    """The promotion gate's verdict on the run's policy (flows.policies.promotion_gate)."""

    policy_id: str
    parent_id: str
    """The champion it was trained from and evaluated against ("base": the base model)."""
    status: str
    """Its status in the registry after the gate: champion or rejected."""
    reason: str
    checks: list[dict] = []
    """Each check of the gate (evaluation.gate): check, passed, detail."""


class Stages(BaseModel):
    """The stages a flow ran; those it did not run are None."""

    model_config = ConfigDict(extra="forbid")

    generate: GenerateResult | None = None
    feedback: FeedbackResult | None = None
    sft: SFTResult | None = None
    reward: RewardResult | None = None
    ppo: PPOResult | None = None
    evaluate: EvalResult | None = None
    promotion: PromotionResult | None = None

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
    headline: dict[str, Figure]


class CompareResult(BaseModel):
    compare_id: str
    report: str
    table: list[dict]
    probes: list[dict] = []
    """Each trained policy's behaviour probes (its own evaluation's final policy)."""
    policy_diffs: list[dict] = []
    """Each two trained policies' probes side by side (evaluation.probes.policy_against_policy):
    `a` and `b` name them; `policy` is a's value, `reference` b's, `diff` a - b."""
    label_agreement: dict[str, dict]
    runs: dict[str, str]
    ladders: dict[str, list[dict]] = {}
    """Per judging constitution, the ladder (evaluation.ladder) of the reference and each trained policy."""
