"""Where things live on disk. Two roots, both overridable from the environment:

- RLAIF_HOME (default ~/.cache/rlaif): converted models and other caches;
- RLAIF_DATA (default ./data): the Parquet datasets, checkpoints and reports.
"""

from __future__ import annotations

import os
from pathlib import Path


def rlaif_home() -> Path:
    return Path(os.environ.get("RLAIF_HOME") or Path.home() / ".cache" / "rlaif").expanduser()


def default_data_root() -> Path:
    return Path(os.environ.get("RLAIF_DATA") or "data")


def checkpoint_dir(data_root: Path | str, constitution_sha: str, run_id: str) -> Path:
    """Checkpoints are namespaced by constitution, so two constitutions never mix."""
    return Path(data_root) / "checkpoints" / constitution_sha[:12] / run_id


def report_dir(data_root: Path | str, run_id: str) -> Path:
    return Path(data_root) / "reports" / run_id
