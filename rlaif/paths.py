"""Where things live on disk. Two roots, both overridable from the environment:

- RLAIF_HOME (default ~/.cache/rlaif): converted models and other caches;
- RLAIF_DATA (default ./data): the Parquet datasets, checkpoints and reports.

Every path of one run comes from its `RunLayout`:

    <data>/<table>/<sha12>/part-*.parquet        the Parquet store (rlaif.store)
    <data>/checkpoints/<sha12>/<run_id>/
        sft/                                     SL-CAI model (when SFT runs)
        reward_model/                            reward model and its normalisation
        policy/                                  final PPO policy
        policy.checkpoint.pt                     PPO's resumable state, beside the policy
        policy-snapshots/step-NNNN/              intermediate policies (the reward-KL curve)
        .launch/<stage>/                         a stage run across processes: its pickled
                                                 arguments and a failed rank's error (removed
                                                 once the stage succeeds)
    <data>/reports/<run_id>/                     report.md, evaluation.md, PNGs
    <data>/.cache/                               Prefect's step-cache records

Checkpoints are namespaced by constitution, so two constitutions never mix.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


def rlaif_home() -> Path:
    return Path(os.environ.get("RLAIF_HOME") or Path.home() / ".cache" / "rlaif").expanduser()


def default_data_root() -> Path:
    return Path(os.environ.get("RLAIF_DATA") or "data")


def checkpoint_file(model_dir: str | Path) -> Path:
    """A trainer's resumable state sits beside its output folder, so the final save (which
    replaces the folder whole) never removes it."""
    model_dir = Path(model_dir)
    return model_dir.with_name(model_dir.name + ".checkpoint.pt")


def snapshot_root(policy_dir: str | Path) -> Path:
    """Intermediate policies sit beside the final one: <policy>-snapshots/step-NNNN."""
    policy_dir = Path(policy_dir)
    return policy_dir.with_name(policy_dir.name + "-snapshots")


def snapshot_dir(policy_dir: str | Path, step: int) -> Path:
    return snapshot_root(policy_dir) / f"step-{step:04d}"


def snapshot_dirs(policy_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of each intermediate policy saved beside `policy_dir`, by step."""
    return sorted((int(p.name.split("-")[1]), p) for p in snapshot_root(policy_dir).glob("step-*") if p.is_dir())


@dataclass(frozen=True)
class RunLayout:
    """Every path of one run, from its data root, constitution sha and run id."""

    data: Path
    constitution_sha: str
    run_id: str

    def __post_init__(self):
        object.__setattr__(self, "data", Path(self.data))

    @property
    def checkpoints(self) -> Path:
        return self.data / "checkpoints" / self.constitution_sha[:12] / self.run_id

    @property
    def sft(self) -> Path:
        return self.checkpoints / "sft"

    @property
    def reward_model(self) -> Path:
        return self.checkpoints / "reward_model"

    @property
    def policy(self) -> Path:
        return self.checkpoints / "policy"

    def launch(self, stage: str) -> Path:
        return self.checkpoints / ".launch" / stage

    @property
    def reports(self) -> Path:
        return report_dir(self.data, self.run_id)

    @property
    def cache(self) -> Path:
        return self.data / ".cache"


def report_dir(data_root: str | Path, name: str) -> Path:
    """Reports of a run, or of a comparison of runs (`rlaif compare`), by name."""
    return Path(data_root) / "reports" / name
