"""Scheduled deployments: `rlaif serve` reads a schedules file and serves its deployments.

A schedules file (YAML) lists deployments. Each names an entry flow, a cron or interval
schedule, and the pipeline parameters, which are a `PipelineConfig` (constitution, models,
stage settings); the shipped `flows/schedules.yaml` is the example:

    deployments:
      - name: nightly-feedback
        flow: feedback              # generate + critique/revise + preferences (or training, pipeline)
        cron: "0 2 * * *"
        parameters: {constitution: harmless, generate: {n_prompts: 64}}

Every field is checked before anything is served; an error names the file, the deployment
and the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from flows.config import PipelineConfig

SHIPPED_SCHEDULES = Path(__file__).with_name("schedules.yaml")


class DeploymentSpec(BaseModel):
    """One scheduled deployment."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    flow: Literal["pipeline", "feedback", "training"] = "pipeline"
    cron: str | None = None
    interval_seconds: float | None = Field(default=None, gt=0)
    timezone: str = "UTC"
    paused: bool = False
    concurrency_limit: int | None = Field(default=1, ge=1)
    description: str | None = None
    parameters: PipelineConfig = PipelineConfig()

    @model_validator(mode="after")
    def _one_schedule(self):
        if (self.cron is None) == (self.interval_seconds is None):
            raise ValueError("give exactly one of cron and interval_seconds")
        return self


class Schedules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    deployments: list[DeploymentSpec] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self):
        names = [d.name for d in self.deployments]
        if dupes := sorted({n for n in names if names.count(n) > 1}):
            raise ValueError(f"deployment names must be unique; repeated: {', '.join(dupes)}")
        return self


class SchedulesError(ValueError):
    pass


def load_schedules(path: str | Path = SHIPPED_SCHEDULES) -> Schedules:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise SchedulesError(f"{path}: no such schedules file") from None
    except yaml.YAMLError as e:
        raise SchedulesError(f"{path}: not valid YAML: {e}") from None
    try:
        return Schedules.model_validate(raw)
    except ValidationError as e:
        lines = [f"{path}: " + ".".join(str(p) for p in err["loc"]) + f": {err['msg']}" for err in e.errors()]
        raise SchedulesError("\n".join(lines)) from None


def build_deployments(schedules: Schedules) -> list:
    """Prefect RunnerDeployments, one per spec, tagged with the flow and constitution."""
    from prefect.schedules import Cron, Interval

    from flows.pipeline import feedback_pipeline, pipeline, training_pipeline

    flows = {"pipeline": pipeline, "feedback": feedback_pipeline, "training": training_pipeline}
    out = []
    for d in schedules.deployments:
        schedule = (Cron(d.cron, timezone=d.timezone) if d.cron is not None
                    else Interval(d.interval_seconds, timezone=d.timezone))
        out.append(flows[d.flow].to_deployment(
            name=d.name, schedule=schedule, paused=d.paused, concurrency_limit=d.concurrency_limit,
            parameters={"config": d.parameters.model_dump(mode="json")},
            description=d.description, tags=["rlaif", f"flow:{d.flow}",
                                             f"constitution:{Path(d.parameters.constitution).stem}"]))
    return out


def limit_model_tasks(limit: int = 1) -> None:
    """At most `limit` model-heavy tasks (tag rlaif-model) at once across every run on this
    server, so a nightly and a weekly run that overlap take turns instead of sharing the CPU."""
    from prefect.client.orchestration import get_client

    from flows.common import MODEL_TAG

    with get_client(sync_client=True) as client:
        client.create_concurrency_limit(tag=MODEL_TAG, concurrency_limit=limit)  # creates or updates


def serve(path: str | Path = SHIPPED_SCHEDULES) -> None:
    """Serve every deployment in the schedules file until interrupted (needs a Prefect server)."""
    from prefect import serve as prefect_serve

    deployments = build_deployments(load_schedules(path))
    limit_model_tasks()
    prefect_serve(*deployments)
