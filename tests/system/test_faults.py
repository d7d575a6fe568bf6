"""Faults, with real processes and real file systems:

- a run SIGKILLed in the middle of labelling its tournaments, and again in the middle of PPO,
  then started again, labels only the missing shards and ends with the same datasets and
  policy as a run that was never interrupted;
- three runs at once against one data root (two under the same constitution) lose and mix
  no rows;
- a full data root (a small tmpfs) and a read-only one are clear errors that keep the data
  already written.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlaif.store import TABLES, Lineage, Store, StoreError

# Real processes killed and rerun, real file systems: the slow lane (`make test-slow`).
pytestmark = pytest.mark.slow

RLAIF = Path(sys.executable).parent / "rlaif"
N_PROMPTS, SAMPLES = 8, 3  # tournaments: 3 pairs per prompt, 24 pairs labelled in 4 shards of 6
N_PAIRS = N_PROMPTS * SAMPLES * (SAMPLES - 1) // 2


def settings(tiny: Path) -> list[str]:
    return ["--policy-model", str(tiny), "--judge.model", str(tiny), "--generate.n-prompts", str(N_PROMPTS),
            "--generate.sampling.max-new-tokens", "6", "--generate.samples-per-prompt", str(SAMPLES),
            "--feedback.pairing", "all", "--feedback.sampling.max-new-tokens", "5", "--feedback.shards", "4",
            "--sft.no-enabled", "--reward.epochs", "1", "--reward.batch-size", "2", "--ppo.steps", "6",
            "--ppo.batch-size", "3", "--ppo.mini-batch-size", "3", "--ppo.ppo-epochs", "1",
            "--ppo.sampling.max-new-tokens", "6", "--eval.n-prompts", "3", "--eval.sampling.max-new-tokens", "6"]


def start(tiny: Path, data: Path, run_id: str, *extra: str, api_url: str | None = None) -> subprocess.Popen:
    """`rlaif run` in its own process group, with its own Prefect home: against the Prefect
    server at api_url, or else a temporary server of its own."""
    env = {**os.environ, "PREFECT_HOME": str(data.parent / f"prefect-{data.name}-{run_id}")}
    env.pop("PREFECT_API_URL", None)
    if api_url:
        env["PREFECT_API_URL"] = api_url
    log = data.parent / f"{data.name}-{run_id}-{len(list(data.parent.glob(f'{data.name}-{run_id}-*.log')))}.log"
    with open(log, "w") as fh:  # one log per process
        proc = subprocess.Popen([str(RLAIF), "run", "--data", str(data), "--run-id", run_id, *settings(tiny), *extra],
                                env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = log
    return proc


def finish(proc: subprocess.Popen, timeout: float = 600) -> None:
    assert proc.wait(timeout) == 0, f"rlaif run failed:\n{log_of(proc)[-4000:]}"


def log_of(proc: subprocess.Popen) -> str:
    return proc.log.read_text()


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL the run (and its Prefect server) as soon as `ready()` holds."""
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"the run ended before {what}:\n{log_of(proc)[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def table(data: Path, name: str) -> pd.DataFrame:
    """A table without what legitimately differs between two runs: write times, flow run ids,
    timings, and the data root in the paths it names."""
    df = Store(data).read(name).drop(columns=["created_at", "flow_run_id"])
    for c in df.columns:
        df[c] = df[c].map(lambda v: v.replace(str(data), "<data>") if isinstance(v, str) else v)
    if "metric" in df:
        df = df[~df["metric"].str.startswith("time/")]
    return df.sort_values(list(df.columns[:8].drop(["principle_ids", "rationales"], errors="ignore"))
                          ).reset_index(drop=True)


def test_sigkill_in_labelling_and_in_ppo_then_rerun_equals_an_uninterrupted_run(tiny_model_dir, tmp_path):
    ref, data = tmp_path / "ref", tmp_path / "killed"
    finish(start(tiny_model_dir, ref, "fault"))

    store = Store(data)
    proc = start(tiny_model_dir, data, "fault")
    # Shards run one after another: once shard 1's part exists, shard 0's task has returned and
    # its cache record is stored. The shard being written at the kill has no record yet, so
    # the rerun labels it again, into the same file (its key is the same).
    kill_when(proc, lambda: len(store.parts("preference_shards")) >= 2 and not store.parts("preferences"),
              "two labelled shards")
    assert 2 <= len(store.parts("preference_shards")) < 4 and not store.parts("preferences"), "killed mid-labelling"
    first = store.part_name("fault/preferences/0-of-4")
    labelled = {p: p.stat().st_mtime_ns for p in store.parts("preference_shards") if p.name == first}
    assert labelled, "shard 0 was labelled before the kill"

    proc = start(tiny_model_dir, data, "fault")
    policy = lambda: next((data / "checkpoints").glob("*/fault/policy"), None)  # noqa: E731
    checkpoint = lambda: next((data / "checkpoints").glob("*/fault/policy.checkpoint.pt"), None)  # noqa: E731
    kill_when(proc, lambda: checkpoint() is not None, "a PPO checkpoint")
    assert policy() is None and store.parts("preferences"), "killed mid-PPO, after labelling"
    step = torch.load(checkpoint(), weights_only=False)["step"]
    finish(proc := start(tiny_model_dir, data, "fault"))
    assert 1 <= step < 6 and f"| {step}/6 [" in log_of(proc) and "| 0/6 [" not in log_of(proc), \
        "PPO resumed at the killed run's checkpoint"
    for name in sorted(set(TABLES) - {"preference_shards", "sft_metrics"}):  # SFT is off here
        a, b = table(ref, name), table(data, name)
        assert len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, obj=name)
    # the rerun did not label the finished shard again
    assert {p: p.stat().st_mtime_ns for p in labelled} == labelled and len(store.parts("preference_shards")) == 4
    ids = table(data, "preferences")["pair_id"]
    assert ids.is_unique and len(ids) == N_PAIRS
    ref_policy, run_policy = next((ref / "checkpoints").glob("*/fault/policy")), policy()
    a, b = load_file(ref_policy / "model.safetensors"), load_file(run_policy / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "the same policy"


def test_three_runs_at_once_on_one_data_root_lose_and_mix_nothing(prefect_server, tiny_model_dir, tmp_path):
    """On one real Prefect server, as the README sets up concurrent runs (three temporary
    servers starting at once on two cores can miss Prefect's start-up timeout)."""
    import httpx

    from constitution import load_constitution

    url, _ = prefect_server
    data = tmp_path / "data"
    runs = {"a": "harmless", "b": "harmless", "c": "concise"}
    procs = [start(tiny_model_dir, data, run_id, "--constitution", c, api_url=url) for run_id, c in runs.items()]
    for p in procs:
        finish(p)
    flow_runs = httpx.post(f"{url}/flow_runs/filter", json={"limit": 200}, timeout=30).json()
    top = [r for r in flow_runs if r["parent_task_run_id"] is None]
    assert sorted(r["state_type"] for r in top) == ["COMPLETED"] * 3, "the server saw three finished runs"
    store = Store(data)
    for name, per_run in (("responses", N_PROMPTS * SAMPLES), ("preferences", N_PAIRS)):
        df = store.read(name)
        assert len(df) == per_run * len(runs), name
        for run_id, c in runs.items():
            rows = df[df["run_id"] == run_id]
            assert len(rows) == per_run and (rows["constitution_sha"] == load_constitution(c).sha).all()
            assert rows[{"responses": "response_id", "preferences": "pair_id"}[name]].is_unique
    # the two harmless runs used the same seeds: their labels are the same, run by run
    prefs = store.read("preferences").set_index(["run_id", "pair_id"])["p_chosen"]
    pd.testing.assert_series_equal(prefs["a"].sort_index(), prefs["b"].sort_index())


@pytest.fixture
def small_disk(tmp_path):
    """A 512 KiB tmpfs: a real full disk (ENOSPC). Needs root, as on this project's machines."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): no full disk to test against")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], check=True)


def prefs(n: int, text: str = "ok") -> pd.DataFrame:
    cols = [c for c, _ in TABLES["preferences"]]
    return pd.DataFrame([{c: None for c in cols} | {"pair_id": f"p{i}", "prompt_id": f"q{i}", "prompt": text,
                                                     "response_a": text, "response_b": text, "valid": True,
                                                     "principle_ids": [], "rationales": []} for i in range(n)])


def test_a_full_disk_is_a_clear_error_and_keeps_what_was_written(small_disk):
    store, lineage = Store(small_disk), Lineage(run_id="r", constitution_sha="c" * 64)
    first = store.write("preferences", prefs(3), key="first", lineage=lineage)
    before = store.read("preferences")
    noise = os.urandom(600_000).hex()  # incompressible: larger than the disk
    with pytest.raises(StoreError, match=r"part-\w+\.parquet: cannot write this 'preferences' part \(.*No space left "
                                         r"on device\); nothing of it was kept, and the parts already written are intact"):
        store.write("preferences", prefs(1, noise), key="second", lineage=lineage)
    pd.testing.assert_frame_equal(store.read("preferences"), before)
    assert sorted(p.name for p in first.parent.iterdir()) == [first.name], "no partial or temporary file"
    with pytest.raises(StoreError, match="cannot write"):  # a retry while still full: the same error
        store.write("preferences", prefs(1, noise), key="first", lineage=lineage)
    pd.testing.assert_frame_equal(store.read("preferences"), before)


def test_a_read_only_data_root_fails_before_any_model_work(tmp_path, tiny_model_dir):
    from flows.pipeline import prepare_run
    from flows.config import PipelineConfig

    ro = tmp_path / "ro"
    ro.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(ro)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root): root ignores file modes, so no read-only root to test")
    try:
        cfg = PipelineConfig.model_validate({"data": str(ro), "policy_model": str(tiny_model_dir),
                                             "judge": {"model": str(tiny_model_dir)}})
        with pytest.raises(StoreError, match=rf"data root {ro} is not writable \(Read-only file system\)"):
            prepare_run(cfg)
    finally:
        subprocess.run(["umount", "-l", str(ro)], check=True)
