"""`rlaif run --train.num-processes 2` on a tiny model: SFT, the reward model and PPO each run on
2 torchrun ranks (gloo, this CPU), write every row once, and match one process within the
tolerances of tests/integration/test_distributed.py. PPO killed mid-run on 2 ranks resumes
from its checkpoint. Real processes: the slow lane."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from flows.config import PipelineConfig
from rlaif.paths import checkpoint_file
from rlaif.store import Store

pytestmark = pytest.mark.slow

TINY = {
    "generate": {"n_prompts": 6, "sampling": {"max_new_tokens": 6}},
    "feedback": {"sampling": {"max_new_tokens": 5}},
    "sft": {"enabled": True, "max_length": 64, "batch_size": 4},
    "reward": {"epochs": 3, "batch_size": 2, "micro_batch_size": 1},
    "ppo": {"steps": 3, "batch_size": 4, "mini_batch_size": 2, "ppo_epochs": 1, "sampling": {"max_new_tokens": 6}},
    "eval": {"n_prompts": 3, "sampling": {"max_new_tokens": 6}},
}


def run(data, model, processes, run_id):
    from flows.pipeline import pipeline

    return pipeline(PipelineConfig.model_validate({
        "data": str(data), "policy_model": str(model), "judge": {"model": str(model)}, "run_id": run_id,
        "train": {"num_processes": processes}, **TINY}))


def values(store, table, run_id, metric):
    df = store.read(table)
    return df[(df["run_id"] == run_id) & (df["metric"] == metric)].sort_values("step")["value"].to_numpy()


def test_two_processes_train_every_stage_as_one_does(prefect_harness, tiny_model_dir, tmp_path):
    one, two = run(tmp_path, tiny_model_dir, 1, "one"), run(tmp_path, tiny_model_dir, 2, "two")
    store = Store(tmp_path)
    for table, metric in (("sft_metrics", "sft/loss"), ("rm_metrics", "rm/loss")):
        a, b = values(store, table, "one", metric), values(store, table, "two", metric)
        assert len(a) == len(b) >= 2, table
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=0, err_msg=table)
    ppo = store.read("ppo_metrics")
    for run_id in ("one", "two"):
        rows = ppo[(ppo["run_id"] == run_id) & (ppo["metric"] != "sample/response")]
        assert not rows.duplicated(["step", "metric"]).any(), f"{run_id}: a PPO row written twice"
        assert sorted(rows["step"].unique()) == [0, 1, 2], run_id
    # rank 0 alone wrote: one part per table and run, and the same number of rows as one process
    for table in ("sft_metrics", "rm_metrics", "ppo_metrics"):
        df = store.read(table)
        assert (df["run_id"] == "two").sum() == (df["run_id"] == "one").sum(), table
    assert two.stages.ppo.metrics.keys() == one.stages.ppo.metrics.keys()


@pytest.fixture
def reward_model_dir(tiny_model_dir, tmp_path):
    import pandas as pd

    from training.config import RewardConfig
    from training.reward import train_reward_model

    n = 6
    prefs = pd.DataFrame({"pair_id": [f"q{i}" for i in range(n)], "prompt_id": [f"q{i}" for i in range(n)],
                          "prompt": [f"question {i}" for i in range(n)], "chosen": ["a kind answer"] * n,
                          "rejected": ["go away"] * n, "p_chosen": 0.8, "valid": True})
    out = tmp_path / "rm"
    train_reward_model(prefs, prefs.assign(response=prefs["chosen"]), str(tiny_model_dir), out,
                       RewardConfig(epochs=1), {})
    return out


def test_ppo_on_two_ranks_killed_mid_run_resumes_from_its_checkpoint(tiny_model_dir, reward_model_dir, tmp_path):
    """SIGKILL to torchrun's whole process group once the first checkpoint is on disk; the rerun
    resumes there (every rank from its own RNG state) and ends with the steps of one run."""
    out = tmp_path / "policy"
    script = f"""
import sys, pandas as pd
from rlaif.prompts import load_prompts
from rlaif.runtime import CPU
from training.config import DistributedConfig, PPOConfig
from training.distributed import launch
cfg = PPOConfig(steps=6, batch_size=4, mini_batch_size=2, ppo_epochs=1, sampling={{"max_new_tokens": 8, "temperature": 0.7}})
m = launch("training.ppo:train_ppo", dict(prompts=load_prompts(split="train", limit=8), policy_model={str(tiny_model_dir)!r},
           reward_model={str(reward_model_dir)!r}, out_dir={str(out)!r}, cfg=cfg, lineage={{}}),
           DistributedConfig(num_processes=2), CPU, {str(tmp_path / "launch")!r})
print("STEPS", sorted({{r["step"] for r in m}}))
print("DUPLICATES", pd.DataFrame(m).query("metric != 'sample/response'").duplicated(["step", "metric"]).sum())
"""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen([sys.executable, "-c", script], start_new_session=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while not checkpoint_file(out).exists():
        assert proc.poll() is None and time.time() < deadline, "no checkpoint before the run ended"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not out.exists(), "killed before the end"
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "ppo: resuming from" in done.stdout + done.stderr
    assert "STEPS [0, 1, 2, 3, 4, 5]" in done.stdout and "DUPLICATES 0" in done.stdout
    assert (out / "model.safetensors").exists()
