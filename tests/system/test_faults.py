"""Faults, with real processes and real file systems:

- a run SIGKILLed in the middle of labelling its tournaments, and again in the middle of PPO,
  then started again, labels only the missing shards and ends with the same datasets and
  policy as a run that was never interrupted;
- the same with the two ways a run is stopped short of a kill: cancelled from the UI (a
  deployment run on a real Prefect server, which its runner ends with SIGTERM), and SIGTERM
  to a local `rlaif run`; neither leaves a process behind, training ranks included;
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
import psutil
import pytest
import torch
from safetensors.torch import load_file

from rlaif.store import TABLES, Lineage, Store, StoreError

# Real processes killed and rerun, real file systems: the slow lane (`make test-slow`).
pytestmark = pytest.mark.slow

RLAIF = Path(sys.executable).parent / "rlaif"
ROOT = Path(__file__).resolve().parents[2]
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
    env = {**os.environ, "PREFECT_HOME": str(data.parent / f"prefect-{data.name}-{run_id}"),
           "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "120"}  # 20 s by default: short on a busy 2-core machine
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


def wait_for(ready, what: str, timeout: float = 600, alive: subprocess.Popen | None = None):
    """Poll `ready()` until it returns something true, and return that; `alive` must not end first."""
    deadline = time.monotonic() + timeout
    while not (found := ready()):
        if alive is not None:
            assert alive.poll() is None, f"ended before {what}:\n{alive.log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.02)
    return found


def kill_when(proc: subprocess.Popen, ready, what: str, timeout: float = 600) -> None:
    """SIGKILL the run (and its Prefect server) as soon as `ready()` holds."""
    wait_for(ready, what, timeout, alive=proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def running(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE  # a zombie has ended
    except psutil.NoSuchProcess:
        return False


def in_group(pgid: int) -> list[int]:
    """The running processes of process group `pgid`."""
    found = []
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and running(p.pid):
                found.append(p.pid)
        except (ProcessLookupError, psutil.Error):
            pass
    return found


def assert_nothing_left(pids, what: str, timeout: float = 30) -> None:
    """None of `pids()` (a list of process ids) is running within `timeout` seconds."""
    try:
        wait_for(lambda: not [p for p in pids() if running(p)], f"the end of {what}", timeout)
    except AssertionError:
        left = [" ".join(psutil.Process(p).cmdline())[:200] for p in pids() if running(p)]
        raise AssertionError(f"{what}: still running after {timeout} s: {left}") from None


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


def assert_equals_the_uninterrupted_run(ref: Path, data: Path) -> None:
    """Every dataset and the policy of run `fault` under `data` equal those of the uninterrupted
    run under `ref`, row for row and weight for weight."""
    # SFT is off here, and only the training flow registers policies
    for name in sorted(set(TABLES) - {"preference_shards", "sft_metrics", "policies"}):
        a, b = table(ref, name), table(data, name)
        assert len(a) > 0, name
        pd.testing.assert_frame_equal(a, b, obj=name)
    ids = table(data, "preferences")["pair_id"]
    assert ids.is_unique and len(ids) == N_PAIRS
    ref_policy, run_policy = (next((d / "checkpoints").glob("*/fault/policy")) for d in (ref, data))
    a, b = load_file(ref_policy / "model.safetensors"), load_file(run_policy / "model.safetensors")
    assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a), "the same policy"


@pytest.fixture(scope="module")
def reference(tiny_model_dir, tmp_path_factory) -> Path:
    """The data root of run `fault` never interrupted: what every interrupted run must end as."""
    ref = tmp_path_factory.mktemp("reference") / "ref"
    finish(start(tiny_model_dir, ref, "fault"))
    return ref


def test_sigkill_in_labelling_and_in_ppo_then_rerun_equals_an_uninterrupted_run(reference, tiny_model_dir, tmp_path):
    data = tmp_path / "killed"
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
    assert_equals_the_uninterrupted_run(reference, data)
    # the rerun did not label the finished shard again
    assert {p: p.stat().st_mtime_ns for p in labelled} == labelled and len(store.parts("preference_shards")) == 4


FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


def recorded_shards(data: Path) -> dict[Path, int]:
    """The labelled shards whose step-cache record is stored (a rerun skips them), with their
    parts' modification times."""
    from prefect.results import ResultRecord

    parts = {}
    for f in (data / ".cache").iterdir():
        try:
            result = ResultRecord.deserialize(f.read_bytes()).result
        except Exception:  # not whole: not a hit either
            continue
        if isinstance(result, dict) and "/preference_shards/" in result.get("path", ""):
            parts[Path(result["path"])] = Path(result["path"]).stat().st_mtime_ns
    return parts


def test_cancelled_from_the_ui_and_sigterm_in_ppo_then_rerun_equals_an_uninterrupted_run(
        prefect_server, reference, tiny_model_dir, tmp_path):
    """Stopped twice short of a kill, then run again with the same run id:
    - mid-labelling, cancelled as the UI's Cancel does it: `rlaif serve` runs the run from a
      deployment on a real Prefect server, and once a shard is labelled the flow run is set to
      Cancelling through the server's API; the runner sends the flow's process SIGTERM (with
      the intent, over its control channel), and the run ends Cancelled;
    - mid-PPO, SIGTERM to a local `rlaif run` alone, not its process group (`kill`, a service
      manager, a runner's termination of one process): Prefect marks the runs Crashed, the
      command exits 143, and its temporary Prefect server stops with it.
    The deployment's run had the server's PREFECT_HOME and the local runs their own: the cache
    records under the data root hold the results, so the reruns skip what finished all the same."""
    import httpx
    import tyro
    import yaml

    from flows.config import PipelineConfig

    url, env = prefect_server
    data = tmp_path / "stopped"
    store = Store(data)
    config = tyro.cli(PipelineConfig, args=[*settings(tiny_model_dir), "--data", str(data), "--run-id", "fault"])
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"deployments": [{
        "name": "fault", "flow": "pipeline", "cron": "0 0 1 1 *",  # runs when asked to, below
        "parameters": config.model_dump(mode="json")}]}))
    with open(tmp_path / "serve.log", "w") as log:
        serve = subprocess.Popen([str(RLAIF), "serve", "--schedules", str(schedules)], cwd=ROOT, env=env,
                                 stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    serve.log = tmp_path / "serve.log"
    api = httpx.Client(base_url=url, timeout=30)

    def deployment():
        r = api.get("/deployments/name/rlaif-pipeline/fault")
        return r.status_code == 200 and r.json()

    def final_state():
        state = api.get(f"/flow_runs/{run['id']}").json()["state"]
        return state["type"] in FINAL and state

    def flow_processes():
        found = []
        for p in psutil.Process(serve.pid).children(recursive=True):
            try:
                if "prefect.engine" in p.cmdline():
                    found.append(p.pid)
            except psutil.Error:
                pass
        return found

    try:
        run = api.post(f"/deployments/{wait_for(deployment, 'the deployment', 300, serve)['id']}/create_flow_run",
                       json={}).json()
        wait_for(lambda: store.parts("preference_shards"), "a labelled shard", alive=serve)
        cancel = api.post(f"/flow_runs/{run['id']}/set_state", json={"state": {"type": "CANCELLING"}}).json()
        assert cancel["status"] == "ACCEPT", cancel
        state = wait_for(final_state, "the cancelled run's end", 300, serve)
        pids = flow_processes()
        assert_nothing_left(lambda: pids, "the flow run's process", 60)
    finally:
        api.close()
        serve.terminate()
        try:
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
    assert state["type"] == "CANCELLED", (state, serve.log.read_text()[-4000:])
    assert 1 <= len(store.parts("preference_shards")) < 4 and not store.parts("preferences"), "cancelled mid-labelling"
    labelled = recorded_shards(data)
    assert labelled, "a shard was labelled and recorded before the cancel"

    proc = start(tiny_model_dir, data, "fault")
    policy = lambda: next((data / "checkpoints").glob("*/fault/policy"), None)  # noqa: E731
    checkpoint = lambda: next((data / "checkpoints").glob("*/fault/policy.checkpoint.pt"), None)  # noqa: E731
    wait_for(checkpoint, "a PPO checkpoint", alive=proc)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(120) == 143, f"exit 143 after SIGTERM:\n{log_of(proc)[-4000:]}"
    assert "Execution was aborted by a termination signal" in log_of(proc)  # Prefect saw it: runs Crashed
    assert_nothing_left(lambda: in_group(proc.pid), "the run's processes (its temporary Prefect server)")
    assert policy() is None and store.parts("preferences"), "stopped mid-PPO, after labelling"
    step = torch.load(checkpoint(), weights_only=False)["step"]
    finish(proc := start(tiny_model_dir, data, "fault"))
    assert 1 <= step < 6 and f"| {step}/6 [" in log_of(proc) and "| 0/6 [" not in log_of(proc), \
        "PPO resumed at the stopped run's checkpoint"
    assert_equals_the_uninterrupted_run(reference, data)
    # the reruns did not label the shards the cancelled run had finished again
    assert {p: p.stat().st_mtime_ns for p in labelled} == labelled and len(store.parts("preference_shards")) == 4


RANK = """
import os, time
from pathlib import Path

def sleep(folder, runtime=None, parallel=None):
    Path(folder, f".pid-rank{parallel.rank}").write_text(str(os.getpid()))
    os.replace(Path(folder, f".pid-rank{parallel.rank}"), Path(folder, f"pid-rank{parallel.rank}"))
    time.sleep(600)
"""

# A flow's process as Prefect runs it: inside its SIGTERM bridge (SIGTERM raises
# TerminationSignal), waiting on a stage launched on 2 ranks.
FLOW_PROCESS = """
import sys
from prefect.utilities.engine import capture_sigterm
from rlaif.runtime import CPU
from training.config import DistributedConfig
from training.distributed import launch
with capture_sigterm():
    launch("rank:sleep", {"folder": sys.argv[1]}, DistributedConfig(num_processes=2), CPU, sys.argv[1])
"""


@pytest.mark.parametrize("stop", ["SIGTERM to the flow", "SIGKILL to the flow", "SIGKILL to the launcher"])
def test_no_training_rank_outlives_the_flow_that_launched_it(tmp_path, stop):
    """torchrun starts each rank in a session of its own, out of reach of a signal to the flow's
    process group. Whether the flow's process is cancelled (SIGTERM), killed alone (SIGKILL: a
    runner's kill after its grace period), or the launcher dies, the launcher and both ranks end
    within seconds instead of training on, unseen, beside a rerun."""
    (tmp_path / "rank.py").write_text(RANK)
    folder = tmp_path / "launch"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    with open(tmp_path / "flow.log", "w") as log:
        proc = subprocess.Popen([sys.executable, "-c", FLOW_PROCESS, str(folder)], env=env, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    proc.log = tmp_path / "flow.log"
    ranks = wait_for(lambda: len(found := sorted(folder.glob("pid-rank*"))) == 2 and [int(f.read_text()) for f in found],
                     "two ranks", 300, proc)
    launcher = psutil.Process(proc.pid).children()
    assert len(launcher) == 1 and "torch.distributed.run" in launcher[0].cmdline(), launcher
    launcher = launcher[0].pid
    if stop == "SIGKILL to the launcher":
        os.kill(launcher, signal.SIGKILL)
    else:
        os.kill(proc.pid, signal.SIGTERM if stop == "SIGTERM to the flow" else signal.SIGKILL)
    proc.wait(60)
    assert_nothing_left(lambda: [launcher, *ranks], "the launcher and its ranks")
    if stop == "SIGKILL to the launcher":  # the stage fails with the launcher's status
        assert "the launcher exited with status -9" in proc.log.read_text()


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
