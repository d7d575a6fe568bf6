"""The step cache (flows/common.py `cached`) when Prefect's own state is lost but the data root
is kept: a wiped `~/.prefect`, a new PREFECT_HOME, another worker. The cache records under
`<data>/.cache` hold the steps' results themselves, so every finished step is still a hit; a
record that cannot be read back whole (one pointing at a result that is gone, one cut short
by a crash) makes its step run again instead of failing the run."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from flows.config import PipelineConfig
from rlaif.store import Store

SMALL = {"generate": {"n_prompts": 2, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 4}},
         "feedback": {"sampling": {"max_new_tokens": 4}, "critique_rounds": 1}}
STEPS = ("responses", "critiques", "preferences")  # the tables of the feedback flow's cached steps


def written(data: Path) -> dict[str, list]:
    """When each step wrote its part: a step that ran again writes a new time."""
    store = Store(data)
    return {t: store.read(t)["created_at"].tolist() for t in STEPS}


def rows(data: Path, table: str) -> pd.DataFrame:
    return Store(data).read(table).drop(columns=["created_at", "flow_run_id"])


def records(data: Path) -> dict[str, Path]:
    """The step-cache records, by the table their step wrote (read from the result each holds)."""
    from prefect.results import ResultRecord

    found = {}
    for f in (data / ".cache").iterdir():
        result = ResultRecord.deserialize(f.read_bytes()).result
        path = result["path"] if isinstance(result, dict) else result
        found[Path(path).parent.parent.name] = f
    return found


def test_lost_result_storage_keeps_every_hit_and_an_unreadable_record_runs_its_step_again(
        prefect_harness, tiny_model_dir, tmp_path):
    from prefect.results import ResultRecord
    from prefect.settings import PREFECT_RESULTS_LOCAL_STORAGE_PATH, get_current_settings, temporary_settings

    from flows.pipeline import feedback_pipeline

    data = tmp_path / "data"
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "lost", **SMALL})
    feedback_pipeline(cfg)
    first = written(data)

    # Prefect's result storage empty (wiped, or a new PREFECT_HOME or worker: a new location):
    # every step is a cache hit, its part not written again.
    with temporary_settings({PREFECT_RESULTS_LOCAL_STORAGE_PATH: tmp_path / "new-home" / "storage"}):
        feedback_pipeline(cfg)
    assert written(data) == first
    by_step = records(data)  # each record holds its step's result
    assert sorted(by_step) == sorted(STEPS)
    storage = get_current_settings().results.local_storage_path
    assert not [r.name for r in by_step.values() if (storage / r.name).exists()], \
        "nothing of the run in Prefect's result storage"

    # A record that points at a result that is gone (what a record Prefect keeps apart from its
    # result holds once that result's storage is wiped) and a record cut short by a crash while
    # Prefect wrote it: those two steps run again, with the same rows; the third is still a hit.
    before = {t: rows(data, t) for t in STEPS}
    pointer = ResultRecord.deserialize(by_step["responses"].read_bytes()).metadata.model_copy(
        update={"storage_key": str(tmp_path / "wiped-home" / "storage" / by_step["responses"].name)})
    by_step["responses"].write_bytes(pointer.dump_bytes())
    by_step["critiques"].write_bytes(by_step["critiques"].read_bytes()[:200])
    feedback_pipeline(cfg)
    again = written(data)
    assert again["responses"] != first["responses"] and again["critiques"] != first["critiques"], "run again"
    assert again["preferences"] == first["preferences"], "still a hit: its inputs did not change"
    for t in STEPS:
        pd.testing.assert_frame_equal(rows(data, t), before[t], obj=t)
    # and their records were replaced by whole ones, hits for the next rerun
    assert records(data) == by_step
