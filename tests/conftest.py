"""Shared fixtures. Unit tests use a tiny random-weight Llama built from a config (as TRL's
tests do) with the embedded model's tokenizer, so they run in seconds and offline."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from bench.load import free_port

# Keep Prefect's database and settings out of the user's home during tests.
os.environ.setdefault("PREFECT_HOME", tempfile.mkdtemp(prefix="rlaif-prefect-"))
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")


def _tiny_llama(path: Path, initializer_range: float = 0.02) -> Path:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlaif.models import EMBEDDED_MODEL, load_tokenizer

    tok = load_tokenizer(EMBEDDED_MODEL)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=2048, tie_word_embeddings=True,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=initializer_range)
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(autouse=True)
def _prefect_console_outlives_capfd():
    """Prefect's console log handlers keep the stderr they were made with; one made while a
    test captured fds (capfd) writes to a stream closed when that test ends, and every later
    flow's logging fails. Point such a handler at the current stderr after each test."""
    yield
    if "prefect" not in sys.modules:
        return
    from prefect.logging.handlers import PrefectConsoleHandler

    loggers = [logging.getLogger(), *(x for x in logging.Logger.manager.loggerDict.values()
                                      if isinstance(x, logging.Logger))]
    for handler in (h for x in loggers for h in x.handlers):
        if isinstance(handler, PrefectConsoleHandler) and getattr(handler.stream, "closed", False):
            handler.stream = sys.stderr  # not setStream(): it flushes the closed one
            handler.console.file = sys.stderr


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def peaked_tiny_model_dir(tmp_path_factory) -> Path:
    """For tests that must move the policy. With the default 0.02 init and a 49k vocabulary the
    next-token distribution is uniform (entropy ~10.8 nats), and no update of the layers can
    move it; a wider init gives a peaked distribution (~4 nats), like a trained LM's."""
    return _tiny_llama(tmp_path_factory.mktemp("tiny-llama-peaked"), initializer_range=0.5)


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def prefect_server(tmp_path):
    """A real Prefect server (API, scheduler and UI, as an operator starts it) on loopback, in
    its own PREFECT_HOME."""
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "PREFECT_API_URL": url,
           "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "PREFECT_UI_ENABLED": "true",
           "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "2", "PREFECT_RUNNER_POLL_FREQUENCY": "2",
           "PREFECT_LOGGING_LEVEL": "INFO"}
    log = open(tmp_path / "server.log", "w")
    prefect = Path(sys.executable).parent / "prefect"
    proc = subprocess.Popen([str(prefect), "server", "start", "--host", "127.0.0.1", "--port", str(port)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"prefect server did not start:\n{(tmp_path / 'server.log').read_text()[-3000:]}")
            time.sleep(1)
        yield url, env
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
