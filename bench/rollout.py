"""Rollout generation, tokens/s: HF `generate` (batched, left-padded, the project's sampler)
against vLLM's offline engine, on the same chat prompts, model and sampling settings.

Every response is forced to the full length on both sides (HF `min_new_tokens`, vLLM
`min_tokens`), so both write exactly prompts x tokens tokens and an early EOS cannot favour
either. Each side runs in a fresh process per repeat, interleaved A B C A B C; engine
start-up (vLLM: ~30 s eager, ~100 s with graph compilation on this CPU) is reported apart
from the generation time the ratio is taken on. HF works through the prompts in batches of
`--batch-size` (the generate stage's default); vLLM takes them all at once and batches
continuously, which is how it is used.

    .venv/bin/python bench/rollout.py [--prompts 32] [--tokens 64] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script (the child processes): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULT_PREFIX, child, comparison, interleave, markdown, peak_rss_gib, write

SIDES = {"hf generate": "hf", "vllm (eager)": "vllm-eager", "vllm (compiled)": "vllm-compiled"}


def prompt_texts(n: int) -> list[str]:
    from rlaif.generation import chat_text
    from rlaif.models import EMBEDDED_MODEL, load_tokenizer
    from rlaif.prompts import load_prompts

    tok = load_tokenizer(EMBEDDED_MODEL)
    prompts = load_prompts(split="train", limit=n)["prompt"]
    return [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts]


def side_hf(texts: list[str], tokens: int, batch_size: int, temperature: float) -> dict:
    import torch

    from rlaif.models import EMBEDDED_MODEL, load_causal_lm, load_tokenizer

    t0 = time.perf_counter()
    tok, model = load_tokenizer(EMBEDDED_MODEL), load_causal_lm(EMBEDDED_MODEL).eval()
    startup = time.perf_counter() - t0
    written, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], return_tensors="pt", padding=True, add_special_tokens=False)
            out = model.generate(**enc, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=True,
                                 temperature=temperature, top_p=1.0, top_k=0, pad_token_id=tok.pad_token_id)
            written += out[:, enc["input_ids"].shape[1]:].numel()
    return {"startup_s": startup, "generate_s": time.perf_counter() - t0, "tokens": written}


def side_vllm(texts: list[str], tokens: int, temperature: float, eager: bool) -> dict:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    from rlaif.models import EMBEDDED_MODEL, load_tokenizer, resolve_model

    tok = load_tokenizer(EMBEDDED_MODEL)
    prompts = [TokensPrompt(prompt_token_ids=tok.encode(t, add_special_tokens=False)) for t in texts]
    t0 = time.perf_counter()
    llm = LLM(model=str(resolve_model(EMBEDDED_MODEL)), dtype="float32", seed=0,
              kv_cache_memory_bytes=2**30, enforce_eager=eager)
    startup = time.perf_counter() - t0
    params = SamplingParams(max_tokens=tokens, min_tokens=tokens, temperature=temperature, seed=0)
    t0 = time.perf_counter()
    outs = llm.generate(prompts, params, use_tqdm=False)
    return {"startup_s": startup, "generate_s": time.perf_counter() - t0,
            "tokens": sum(len(o.outputs[0].token_ids) for o in outs)}


def run(quick: bool = False, prompts: int = 32, tokens: int = 64, batch_size: int = 16,
        repeats: int = 3, temperature: float = 0.8) -> list[dict]:
    if quick:
        prompts, tokens, repeats = 8, 16, 1
    args = ["--prompts", str(prompts), "--tokens", str(tokens), "--batch-size", str(batch_size),
            "--temperature", str(temperature)]

    def side(mode: str):
        def fn() -> dict:
            r = child(Path(__file__), ["--side", mode, *args])
            if r["tokens"] != prompts * tokens:
                raise RuntimeError(f"{mode} wrote {r['tokens']} tokens, not {prompts * tokens}")
            return {**r, "tokens_per_s": r["tokens"] / r["generate_s"]}
        return fn

    runs = interleave({name: side(mode) for name, mode in SIDES.items()}, repeats)
    setting = f"{prompts} chat prompts x {tokens} tokens, HF batch {batch_size}, fp32"
    return [comparison(f"rollout generation: {b} vs hf generate ({setting})", "tokens_per_s", "tokens/s", runs,
                       b, "hf generate", target=1.3, higher_is_better=True,
                       note=f"start-up (median s): {b} {_median(runs[b], 'startup_s'):.0f}, "
                            f"hf {_median(runs['hf generate'], 'startup_s'):.0f}; not in the ratio")
            for b in ("vllm (eager)", "vllm (compiled)")]


def _median(rs: list[dict], key: str) -> float:
    import statistics

    return statistics.median(r[key] for r in rs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16, help="HF: prompts per generate call")
    ap.add_argument("--temperature", type=float, default=0.8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="8 prompts x 16 tokens, one repeat")
    ap.add_argument("--side", choices=sorted(set(SIDES.values())), help=argparse.SUPPRESS)  # a child process
    args = ap.parse_args()
    if args.side:
        texts = prompt_texts(args.prompts)
        if args.side == "hf":
            r = side_hf(texts, args.tokens, args.batch_size, args.temperature)
        else:
            r = side_vllm(texts, args.tokens, args.temperature, eager=args.side == "vllm-eager")
        print(RESULT_PREFIX + json.dumps({**r, "peak_rss_gib": peak_rss_gib()}), flush=True)
        return
    rows = run(args.quick, args.prompts, args.tokens, args.batch_size, args.repeats, args.temperature)
    print(markdown(rows))
    print(f"written to {write(rows, 'rollout', args.quick)}")


if __name__ == "__main__":
    main()
