"""The service loop against a real `prefect server` on loopback: `rlaif serve` runs the nightly
feedback and weekly training deployments on short intervals until two cycles have turned (a
candidate trained from a promoted champion has been decided). Then, as an operator would:
two training runs forced to overlap leave one champion, a candidate held to a gate it cannot
pass is rejected, and a rollback sends the next nightly run back to the previous champion."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from constitution import load_constitution
from rlaif.registry import BASE, Registry
from rlaif.store import Store

# slow, not `server`: `make test-vllm` reruns the server tests next to vLLM to check Prefect's server
# there, which test_serve.py does in a minute; this one takes ~6 minutes and is the slow lane's
pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]
OPEN_GATE = {"min_win_rate": 0.0, "probes": [], "overoptimisation": False}


def settings(data: Path, model: Path) -> dict:
    """Tiny settings; the peaked tiny model and a large learning rate make PPO move the policy,
    so a candidate's held-out answers differ from its parent's and the judge compares pairs."""
    return {"data": str(data), "policy_model": str(model), "judge": {"model": str(model)},
            "generate": {"n_prompts": 3, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 4}},
            "feedback": {"sampling": {"max_new_tokens": 4}, "critique_rounds": 1},
            "sft": {"enabled": False}, "reward": {"epochs": 1, "batch_size": 2},
            "ppo": {"steps": 2, "batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1, "lr": 1e-3,
                    "snapshots": 0, "sampling": {"max_new_tokens": 4}},
            "eval": {"n_prompts": 3, "snapshots": False, "ladder": "reference", "sampling": {"max_new_tokens": 4}},
            "promotion": OPEN_GATE}


def cli(*args: str, env: dict, run_id: str, data: Path, model: Path, gate: dict = OPEN_GATE) -> subprocess.Popen:
    """`rlaif run --flow ...` as a process, with the tiny settings as flags."""
    s = settings(data, model)
    flags = ["--data", s["data"], "--policy-model", s["policy_model"], "--judge.model", s["policy_model"],
             "--run-id", run_id, "--generate.n-prompts", "3", "--generate.sampling.max-new-tokens", "4",
             "--feedback.sampling.max-new-tokens", "4", "--feedback.critique-rounds", "1",
             "--reward.epochs", "1", "--reward.batch-size", "2", "--ppo.steps", "2", "--ppo.batch-size", "2",
             "--ppo.mini-batch-size", "2", "--ppo.lr", "1e-3", "--ppo.snapshots", "0",
             "--ppo.sampling.max-new-tokens", "4", "--eval.n-prompts", "3", "--eval.no-snapshots",
             "--eval.ladder", "reference", "--eval.sampling.max-new-tokens", "4",
             "--promotion.min-win-rate", str(gate["min_win_rate"]),
             *(["--promotion.probes"] if not gate.get("probes", True) else []),
             *(["--promotion.no-overoptimisation"] if gate.get("overoptimisation") is False else [])]
    log = open(data.parent / f"{run_id}.log", "w")
    return subprocess.Popen([str(BIN / "rlaif"), "run", *args, *flags], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)


def finished(proc: subprocess.Popen, data: Path, run_id: str) -> None:
    assert proc.wait(timeout=600) == 0, (data.parent / f"{run_id}.log").read_text()[-3000:]


def sampled_by(data: Path, run_id: str) -> set[str]:
    return set(Store(data).read("responses", run_id=run_id)["policy_model"])


def test_two_cycles_of_the_loop_then_overlap_gate_and_rollback(prefect_server, peaked_tiny_model_dir, tmp_path):
    url, env = prefect_server
    data, model = tmp_path / "data", peaked_tiny_model_dir
    sha = load_constitution("harmless").sha
    registry = Registry(data)
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"deployments": [
        {"name": "nightly", "flow": "feedback", "interval_seconds": 20, "parameters": settings(data, model)},
        {"name": "weekly", "flow": "training", "interval_seconds": 45, "parameters": settings(data, model)},
    ]}))
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([str(BIN / "rlaif"), "serve", "--schedules", str(schedules)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 900
        while True:  # until a candidate trained from a promoted champion has been decided
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "two cycles did not turn in 900 s:\n" + \
                (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(5)
            policies = registry.policies(sha)
            if any(p.parent_id != BASE and p.status != "candidate" for p in policies):
                break
    finally:
        os.killpg(serve.pid, signal.SIGTERM)  # stops scheduling; a run in flight is cancelled
        try:
            serve.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
        log.close()

    # the loop's lineage: the first champion was trained from the base model on nights sampled
    # by the base model; a later night sampled it; the next candidate trained from it on that
    # night's labels only
    by_id = {p.policy_id: p for p in registry.policies(sha)}
    second = next(p for p in by_id.values() if p.parent_id != BASE and p.status != "candidate")
    first = by_id[second.parent_id]
    assert first.parent_id == BASE and first.metrics["gate"]["promote"]
    events = registry.events(sha)
    promoted_at = events[(events["policy_id"] == first.policy_id) & (events["event"] == "promoted")]["created_at"].min()
    responses = Store(data).read("responses")
    nights = responses.groupby("run_id").agg(policy=("policy_model", "first"), at=("created_at", "min"))
    assert set(nights[nights["at"] < promoted_at]["policy"]) == {str(model)}
    on_first = nights[nights["policy"] == first.checkpoint]
    assert len(on_first) >= 1 and (on_first["at"] > promoted_at).all()
    rm = json.loads((Path(second.checkpoint) / "lineage.json").read_text())
    assert rm["policy_model"] == first.checkpoint
    inputs = json.loads((Path(rm["reward_model"]) / "lineage.json").read_text())["inputs"]
    prefs = [i for i in inputs if Path(i).parent.parent.name == "preferences"]
    assert prefs and {r for p in prefs for r in pd.read_parquet(p)["run_id"]} <= set(on_first.index)
    # every run the server ran completed, or was a weekly run with nothing new to train on
    champ = [p for p in registry.policies(sha) if p.status == "champion"]
    assert len(champ) == 1

    # an operator's turn: one night on the current champion, then two weekly runs at once
    night = cli("--flow", "feedback", env=env, run_id="op-night", data=data, model=model)
    finished(night, data, "op-night")
    assert sampled_by(data, "op-night") == {champ[0].checkpoint}
    pair = [cli("--flow", "training", env=env, run_id=f"op-week-{i}", data=data, model=model) for i in (1, 2)]
    for i, proc in zip((1, 2), pair):
        finished(proc, data, f"op-week-{i}")
    a, b = registry.get("op-week-1", sha), registry.get("op-week-2", sha)
    assert a.parent_id == b.parent_id == champ[0].policy_id
    assert sorted([a.status, b.status]) == ["champion", "rejected"]
    loser = a if a.status == "rejected" else b
    assert "stale" in loser.reason
    assert len([p for p in registry.policies(sha) if p.status == "champion"]) == 1
    winner = a if a.status == "champion" else b

    # a candidate that fails the gate never becomes champion
    night = cli("--flow", "feedback", env=env, run_id="op-night-2", data=data, model=model)
    finished(night, data, "op-night-2")
    shut = cli("--flow", "training", env=env, run_id="op-week-3", data=data, model=model,
               gate={**OPEN_GATE, "min_win_rate": 1.0})
    finished(shut, data, "op-week-3")
    c = registry.get("op-week-3", sha)
    assert c.status == "rejected" and c.reason.startswith("win rate") and c.metrics["gate"]["promote"] is False
    assert registry.champion(sha, str(model)).policy_id == winner.policy_id
    assert "rejected: win rate" in (data / "reports" / "op-week-3" / "report.md").read_text()

    # rollback: the next night samples the champion the winner replaced
    done = subprocess.run([str(BIN / "rlaif"), "rollback", "--reason", "test", "--data", str(data),
                           "--policy-model", str(model)], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert registry.champion(sha, str(model)).policy_id == champ[0].policy_id
    night = cli("--flow", "feedback", env=env, run_id="op-night-3", data=data, model=model)
    finished(night, data, "op-night-3")
    assert sampled_by(data, "op-night-3") == {champ[0].checkpoint}
