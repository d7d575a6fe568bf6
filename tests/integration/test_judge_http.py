"""The openai engine's failure handling, against a real HTTP server on loopback.

A real `vllm serve` never answers with 500s, garbage JSON or missing logprobs on demand, so
a small stand-in completions endpoint (below) plays a misbehaving server. The prompt text
tells it how to misbehave. The engine's agreement with a real `vllm serve` is tested in
test_vllm.py.
"""

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pandas as pd
import pytest

from constitution import load_constitution
from judges.judge import JudgeError, make_judge
from judges.config import FeedbackConfig, JudgeConfig
from judges.feedback import label_preferences
from rlaif.config import Openai, Sampling

KEY = "sk-test-planted-7f3a9c"


class StandIn(BaseHTTPRequestHandler):
    calls: dict = {}
    in_flight = 0
    max_in_flight = 0
    auth: set = set()
    lock = threading.Lock()

    def log_message(self, *args):  # keep pytest output clean
        pass

    def _send(self, status: int, body: str | dict):
        data = (json.dumps(body) if isinstance(body, dict) else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        try:
            self.wfile.write(data)
        except BrokenPipeError:  # the client gave up first (the timeout case)
            pass

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["prompt"]
        cls = type(self)
        mode = re.search(r"MODE=(\w+)", prompt).group(1)
        # A timed-out request still sleeps here after the client gave up: not counted.
        counted = int(mode != "slow")
        with cls.lock:
            cls.auth.add(self.headers.get("Authorization", ""))
            cls.calls[prompt] = cls.calls.get(prompt, 0) + 1
            n = cls.calls[prompt]
            cls.in_flight += counted
            cls.max_in_flight = max(cls.max_in_flight, cls.in_flight)
        try:
            time.sleep(0.05)  # let requests overlap, so concurrency is observable
            if mode == "slow":
                time.sleep(3)
            if mode == "http500" or (mode == "flaky" and n == 1):
                return self._send(500 if mode == "http500" else 429, {"error": {"message": "busy"}})
            if mode == "badjson":
                return self._send(200, "{not json")
            # "good" is the better answer: a sharp judge puts it first, whatever its label.
            good_is_a = prompt.index("(A) good") < prompt.index("(B)") if "(A) good" in prompt else False
            top = {"A": -0.1, "B": -2.4} if good_is_a else {"A": -2.4, "B": -0.1}
            if mode == "nolabel":
                top = {"A": -0.1, "C": -2.4}
            logprobs = None if mode == "nologprobs" else {
                "tokens": ["A"], "token_logprobs": [-0.1], "top_logprobs": [top], "text_offset": [0]}
            self._send(200, {"id": "x", "object": "text_completion", "created": 0, "model": req["model"],
                             "choices": [{"index": 0, "text": "A", "finish_reason": "length",
                                          "logprobs": logprobs}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})
        finally:
            with cls.lock:
                cls.in_flight -= counted


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()


def pairs(modes):
    return pd.DataFrame({"pair_id": modes, "prompt_id": modes, "prompt": [f"MODE={m}" for m in modes],
                         "response_a": ["good"] * len(modes), "response_b": ["bad"] * len(modes)})


def test_failures_mark_pairs_invalid_with_a_reason(endpoint, tiny_model_dir, monkeypatch, caplog):
    monkeypatch.setenv("RLAIF_TEST_KEY", KEY)
    cfg = JudgeConfig(model=str(tiny_model_dir), engine=Openai(
        base_url=endpoint, served_model="judge", api_key_env="RLAIF_TEST_KEY", timeout_s=1.0, max_retries=1,
        max_concurrency=3))
    judge = make_judge(cfg)
    modes = ["good", "flaky", "http500", "badjson", "nologprobs", "nolabel", "slow"]
    out = label_preferences(judge, pairs(modes), load_constitution("harmless"), FeedbackConfig())
    out = out.set_index("pair_id")
    for ok in ("good", "flaky"):  # a 429 is retried with backoff, then succeeds
        assert out.at[ok, "valid"] and pd.isna(out.at[ok, "invalid_reason"])
        assert out.at[ok, "chosen"] == "good" and out.at[ok, "p_chosen"] == pytest.approx(0.9, abs=0.01)
    expect = {"http500": "failed after 1 retries: InternalServerError (HTTP 500)",
              "badjson": "malformed answer (JSONDecodeError)",
              "nologprobs": "answer without next-token logprobs",
              "nolabel": "option label(s) 'B' not among the judge's top-20 next tokens",
              "slow": "failed after 1 retries: APITimeoutError"}
    for mode, reason in expect.items():
        assert not out.at[mode, "valid"], mode
        assert reason in out.at[mode, "invalid_reason"], (mode, out.at[mode, "invalid_reason"])
        assert np.isnan(out.at[mode, "p_a_first"]), mode  # never a silent 0.5
    assert 1 < StandIn.max_in_flight <= 3  # concurrent, and bounded
    assert StandIn.auth == {f"Bearer {KEY}"}  # the key reached the server...
    frame_text = out.reset_index().astype(str).to_csv()
    assert KEY not in frame_text and KEY not in caplog.text  # ...and nothing we keep


def test_generation_failure_is_an_error_naming_the_status(endpoint, tiny_model_dir):
    cfg = JudgeConfig(model=str(tiny_model_dir), engine=Openai(base_url=endpoint, max_retries=0))
    with pytest.raises(JudgeError, match=r"InternalServerError \(HTTP 500\)"):
        make_judge(cfg).complete(["MODE=http500"], sampling=Sampling(max_new_tokens=4, temperature=0.0), seed=0)
