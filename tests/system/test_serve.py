"""Scheduled deployments against a real `prefect server` on loopback: `rlaif serve` serves a
deployment on a short interval schedule; a scheduled run completes and its artifacts are read
back through the server's REST API. Also: schedules files with mistakes are refused whole."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml

from flows.deployments import SHIPPED_SCHEDULES, SchedulesError, build_deployments, load_schedules

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[2]


def test_shipped_schedules_build_deployments():
    spec = load_schedules(SHIPPED_SCHEDULES)
    deployments = {d.name: d for d in build_deployments(spec)}
    assert set(deployments) == {"nightly-feedback", "weekly-training"}
    nightly = deployments["nightly-feedback"]
    assert nightly.schedules[0].schedule.cron == "0 2 * * *"
    assert nightly.parameters["config"]["constitution"] == "harmless"
    assert nightly.parameters["config"]["generate"]["n_prompts"] == 64
    assert "constitution:harmless" in nightly.tags


@pytest.mark.parametrize("text, error", [
    ("deployments: []", "deployments: List should have at least 1 item"),
    ("deployments:\n  - {name: a, flow: pipeline}", "give exactly one of cron and interval_seconds"),
    ("deployments:\n  - {name: a, cron: '* * * * *', interval_seconds: 5}", "give exactly one of cron"),
    ("deployments:\n  - {name: a, cron: '0 2 * * *'}\n  - {name: a, cron: '0 3 * * *'}", "repeated: a"),
    ("deployments:\n  - {name: a, cron: '0 2 * * *', parameters: {ppo: {stepz: 3}}}",
     "deployments.0.parameters.ppo.stepz: Extra inputs are not permitted"),
    ("deployments: [", "not valid YAML"),
])
def test_bad_schedules_file_is_refused_with_the_field_named(tmp_path, text, error):
    f = tmp_path / "s.yaml"
    f.write_text(text)
    with pytest.raises(SchedulesError, match=error.replace("[", r"\[").replace("*", r"\*")) as e:
        load_schedules(f)
    assert str(f) in str(e.value)


@pytest.mark.server
def test_rlaif_serve_runs_a_scheduled_deployment(prefect_server, tiny_model_dir, tmp_path):
    url, env = prefect_server
    data = tmp_path / "data"
    schedules = tmp_path / "schedules.yaml"
    schedules.write_text(yaml.safe_dump({"deployments": [{
        "name": "tiny-feedback", "flow": "feedback", "interval_seconds": 5,
        "parameters": {"data": str(data), "policy_model": str(tiny_model_dir), "judge": {"model": str(tiny_model_dir)},
                       "generate": {"n_prompts": 2, "sampling": {"max_new_tokens": 4}},
                       "feedback": {"sampling": {"max_new_tokens": 4}, "critique_rounds": 1}},
    }]}))
    log = open(tmp_path / "serve.log", "w")
    serve = subprocess.Popen([str(BIN / "rlaif"), "serve", "--schedules", str(schedules)], cwd=ROOT, env=env,
                             stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    api = httpx.Client(base_url=url, timeout=10)
    try:
        deadline, run = time.monotonic() + 300, None
        while run is None:
            assert serve.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no scheduled run completed in 300 s:\n" + \
                (tmp_path / "serve.log").read_text()[-3000:]
            time.sleep(2)
            r = api.get("/deployments/name/rlaif-feedback-collection/tiny-feedback")
            if r.status_code != 200:
                continue
            runs = api.post("/flow_runs/filter", json={
                "deployments": {"id": {"any_": [r.json()["id"]]}},
                "flow_runs": {"state": {"type": {"any_": ["COMPLETED", "FAILED", "CRASHED"]}}}}).json()
            if runs:
                run = runs[0]
        assert run["state"]["type"] == "COMPLETED", run["state"]
        limit = api.get("/concurrency_limits/tag/rlaif-model").json()  # set up by `rlaif serve`
        assert limit["concurrency_limit"] == 1
        assert run["auto_scheduled"] is True  # created by the schedule, not triggered by hand
        # its artifacts, read back through the API: the parent's report and the stages' summaries
        report = api.post("/artifacts/filter", json={"flow_runs": {"id": {"any_": [run["id"]]}}}).json()
        assert "pipeline-report" in {a["key"] for a in report}
        keys = {a["key"] for a in api.post("/artifacts/filter", json={
            "artifacts": {"key": {"any_": ["generate-summary", "feedback-summary"]}}}).json()}
        assert keys == {"generate-summary", "feedback-summary"}
        assert list((data / "preferences").glob("*/part-*.parquet")), "the run wrote its Parquet parts"
    finally:
        api.close()
        serve.terminate()
        try:  # a scheduled run may still be in flight (one starts every 5 s); do not wait on it
            serve.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serve.pid, signal.SIGKILL)
            serve.wait(timeout=30)
        log.close()


def test_serve_without_a_server_says_how_to_start_one(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    out = subprocess.run([str(BIN / "rlaif"), "serve"], env={**env, "PREFECT_HOME": str(tmp_path)},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "nightly-feedback: flow feedback" in out.stdout  # the file was checked first
    assert "prefect server start" in out.stderr and "PREFECT_API_URL" in out.stderr


def test_prefect_yaml_mirrors_the_shipped_schedules():
    """prefect.yaml (work pool + worker) and flows/schedules.yaml (`rlaif serve`) describe the
    same deployments; this keeps them from drifting apart."""
    entry = {"feedback": "flows/pipeline.py:feedback_pipeline", "training": "flows/pipeline.py:training_pipeline",
             "pipeline": "flows/pipeline.py:pipeline"}
    project = {d["name"]: d for d in yaml.safe_load((ROOT / "prefect.yaml").read_text())["deployments"]}
    for spec in load_schedules(SHIPPED_SCHEDULES).deployments:
        d = project.pop(spec.name)
        assert d["entrypoint"] == entry[spec.flow], spec.name
        assert d["schedules"] == [{"cron": spec.cron, "timezone": spec.timezone}], spec.name
        assert d["concurrency_limit"] == spec.concurrency_limit, spec.name
        given = yaml.safe_load(SHIPPED_SCHEDULES.read_text())
        raw = next(x for x in given["deployments"] if x["name"] == spec.name)["parameters"]
        assert d["parameters"] == {"config": raw}, spec.name
    assert not project, f"in prefect.yaml only: {sorted(project)}"
