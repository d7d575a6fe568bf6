"""Shared fixtures. Unit tests use a tiny random-weight Llama built from a config (as TRL's
tests do) with the embedded model's tokenizer, so they run in seconds and offline."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

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
