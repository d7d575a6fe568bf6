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
        tensorboard/                             TensorBoard event files of every stage
    <data>/.cache/                               Prefect's step-cache records

Checkpoints are namespaced by constitution, so two constitutions never mix.

A deployment run (started through the Prefect API, so by anyone who can reach it) reads the
files its parameters name only from allowed folders (`check_allowed`): the shipped ones, plus
those an operator lists in an environment variable where the flow runs.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable


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
    def tensorboard(self) -> Path:
        return self.reports / "tensorboard"

    @property
    def cache(self) -> Path:
        return self.data / ".cache"


def report_dir(data_root: str | Path, name: str) -> Path:
    """Reports of a run, or of a comparison of runs (`rlaif compare`), by name."""
    return Path(data_root) / "reports" / name


# Where a deployment may read prompts, human-labelled pairs, refusal patterns and accelerate configs
# besides their shipped folders (constitutions have their own, constitution.loader).
INPUT_DIRS_ENV = "RLAIF_INPUT_DIRS"


def allowed_dirs(env: str, shipped: Iterable[str | Path] = ()) -> list[Path]:
    """Folders a deployment run may read a file from: `shipped`, plus the folders listed in the
    environment variable `env` (separated by os.pathsep) on the machine that runs the flow,
    symlinks resolved."""
    extra = [d for d in os.environ.get(env, "").split(os.pathsep) if d]
    return [Path(d).expanduser().resolve() for d in (*shipped, *extra)]


def check_allowed(path: str | Path, *, parameter: str, env: str, shipped: Iterable[str | Path] = (),
                  error: Callable[[str], Exception]) -> Path:
    """`path`, symlinks and `..` resolved, when it lies inside `allowed_dirs(env, shipped)`;
    otherwise `error(message)` is raised (the caller's user-error type, which the CLI prints as
    one line), naming the parameter, the file, the folders and `env`."""
    given = Path(path).expanduser()
    resolved = given.resolve()
    dirs = allowed_dirs(env, shipped)
    if not any(resolved.is_relative_to(d) for d in dirs):
        shown = str(path) if given.absolute() == resolved else f"{path} (resolved: {resolved})"
        raise error(f"{parameter}: {shown} is outside the folders a deployment may read it from "
                    f"({', '.join(map(str, dirs)) or 'none'}); add its folder to {env} where the flow runs")
    return resolved
