"""Labelling fanned out over Ray workers (prefect-ray's RayTaskRunner on a temporary local Ray
instance), on a tiny model: the shards run in other processes and the merged labels are the
ones a single task writes."""

import asyncio

import numpy as np
import pytest

from flows.config import PipelineConfig
from rlaif.store import Store

pytestmark = [pytest.mark.ray, pytest.mark.slow]  # ~2 min of Ray start-up and labelling: the slow lane


def test_sharded_labelling_on_ray_matches_one_task(prefect_harness, tiny_model_dir, tmp_path):
    from flows.pipeline import feedback_pipeline

    def run(run_id: str, **extra):
        feedback = {"sampling": {"max_new_tokens": 5}, "critique_rounds": 1, **extra.pop("feedback", {})}
        return feedback_pipeline(PipelineConfig.model_validate({
            "data": str(tmp_path), "policy_model": str(tiny_model_dir), "judge": {"model": str(tiny_model_dir)},
            "run_id": run_id, "generate": {"n_prompts": 6, "sampling": {"max_new_tokens": 6}}, "feedback": feedback, **extra}))

    one = run("one-task")
    local = run("local-shards", feedback={"shards": 2})
    on_ray = run("ray-shards", feedback={"shards": 3}, ray_address="local")

    store = Store(tmp_path)
    prefs = {r: store.read("preferences", run_id=r) for r in ("one-task", "local-shards", "ray-shards")}
    assert len(prefs["one-task"]) == 6
    for run_id in ("local-shards", "ray-shards"):  # same pairs, same order, same labels
        assert prefs[run_id]["pair_id"].tolist() == prefs["one-task"]["pair_id"].tolist()
        np.testing.assert_allclose(prefs[run_id]["p_chosen"], prefs["one-task"]["p_chosen"], atol=1e-4)
        assert prefs[run_id]["principle_ids"].map(list).tolist() == prefs["one-task"]["principle_ids"].map(list).tolist()
    # Each run has one preferences part; the shards stay in their scratch table.
    assert len(store.parts("preferences")) == 3
    assert len(store.read("preference_shards", run_id="ray-shards")) == 6
    assert one.stages.feedback.metrics["judge/label_workers"] == 1
    assert local.stages.feedback.metrics["judge/label_workers"] == 1  # one after another, in the flow's process
    assert on_ray.stages.feedback.metrics["judge/label_workers"] >= 2  # Ray ran shards in separate worker processes
    assert on_ray.stages.feedback.metrics["judge/shards"] == 3

    from prefect.client.orchestration import get_client

    async def progress():
        async with get_client() as client:
            return [a for a in await client.read_artifacts() if a.key == "labelling-progress"]

    # a progress artifact per sharded run, updated shard by shard to the end
    arts = asyncio.run(progress())
    assert sorted(a.description for a in arts) == ["Preference shards labelled: 2/2",
                                                   "Preference shards labelled: 3/3"]
    assert all(float(a.data) == 100.0 for a in arts)
