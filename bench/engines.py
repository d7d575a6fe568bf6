"""Engines side by side: the vllm engine against the transformers engine, measured where the
pipeline spends its time.

1. the demo pipeline (`rlaif run`, default settings, a fresh data root and Prefect home),
   wall time with every engine start-up included: `policy-engine:vllm judge.engine:vllm`
   against the default transformers engines (target <= 0.5x);
2. one PPO iteration (the default PPOConfig: 8 queries x 32 tokens, LoRA, 2 epochs) with
   vLLM rollouts against HF rollouts; the same programmatic reward on both sides, so the
   difference is the rollout (target <= 0.6x); also the rollout/logprob_diff each side logs;
3. the critique/revision stage alone (the policy critiquing itself, the demo's settings),
   tokens written per second on each engine, start-up apart.

Each side of 2 and 3 runs in a fresh process (vLLM runs one engine per process), interleaved.

    .venv/bin/python bench/engines.py [--quick] [--only demo ppo critique]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULT_PREFIX, child, comparison, interleave, markdown, peak_rss_gib, result_path, write

ENGINES = {"vllm": ["policy-engine:vllm", "judge.engine:vllm"],
           "transformers": ["policy-engine:transformers", "judge.engine:transformers"]}


def side_ppo(engine: str, steps: int, quick: bool) -> dict:
    import pandas as pd
    import torch

    from rlaif.config import VLLM, Transformers
    from rlaif.models import EMBEDDED_MODEL
    from rlaif.prompts import load_prompts
    from training.config import PPOConfig
    from training.ppo import train_ppo

    cfg = PPOConfig(steps=steps, snapshots=0, checkpoint_every=0,
                    **({"batch_size": 4, "mini_batch_size": 2, "sampling": {"max_new_tokens": 8}} if quick else {}))
    reward = lambda q, r: torch.tensor([10 * x.count("e") / max(len(x), 1) for x in r])  # noqa: E731
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        m = pd.DataFrame(train_ppo(load_prompts(split="train", limit=64), EMBEDDED_MODEL, "unused", Path(tmp) / "p",
                                   cfg, {}, scorer=reward, engine=VLLM() if engine == "vllm" else Transformers()))
        wall = time.perf_counter() - t0
    step_s = m.loc[m["metric"] == "time/step_seconds", "value"].tolist()
    return {"wall_s": wall, "step_s": statistics.median(step_s[1:] or step_s), "steps": len(step_s),
            "logprob_diff": float(m.loc[m["metric"] == "rollout/logprob_diff", "value"].max()),
            "tokens_per_step": float(m.loc[m["metric"] == "ppo/mean_response_length", "value"].mean() * cfg.batch_size)}


def side_critique(engine: str, n: int, quick: bool) -> dict:
    from constitution import load_constitution
    from judges.config import FeedbackConfig, JudgeConfig
    from judges.feedback import critique_and_revise
    from judges.judge import make_judge
    from rlaif.config import VLLM, Transformers
    from rlaif.models import EMBEDDED_MODEL
    from rlaif.prompts import load_prompts

    import pandas as pd

    prompts = load_prompts(split="train", limit=n)
    responses = pd.DataFrame({"prompt_id": prompts["prompt_id"], "prompt": prompts["prompt"], "sample_idx": 0,
                              "response_id": prompts["prompt_id"] + "/s0",
                              "response": "Sure, here is what you asked for."})
    cfg = FeedbackConfig(critique_rounds=1 if quick else 2)
    t0 = time.perf_counter()
    judge = make_judge(JudgeConfig(model=EMBEDDED_MODEL,
                                   engine=VLLM() if engine == "vllm" else Transformers(batch_size=16)))
    startup = time.perf_counter() - t0
    written = []
    generate = judge.engine.generate

    def counting(*a, **kw):
        out = generate(*a, **kw)
        written.extend(g.n_tokens for g in out)
        return out

    judge.engine.generate = counting
    t0 = time.perf_counter()
    critique_and_revise(judge, responses, load_constitution("harmless"), cfg)
    seconds = time.perf_counter() - t0
    judge.close()
    return {"startup_s": startup, "generate_s": seconds, "tokens": sum(written),
            "tokens_per_s": sum(written) / seconds}


def run_demo(quick: bool) -> list[dict]:
    from bench import e2e

    runs = {}
    for name, args in ENGINES.items():  # ~6 min each: one run per side
        r = e2e.run(quick, args)
        runs[name] = [{"wall_s": r["wall_s"], "stages": {s["flow"]: s["seconds"] for s in r["stages"]}}]
        print(f"demo on {name}: {r['wall_s']:.0f} s", flush=True)
    stages = "; ".join(f"{k} {runs['vllm'][0]['stages'].get(k, 0):.0f}/{v:.0f} s"
                       for k, v in runs["transformers"][0]["stages"].items())
    return [comparison("demo pipeline (`rlaif run`, defaults): vLLM engines vs transformers engines, start-up "
                       "included", "wall_s", "s", runs, "vllm", "transformers", target=0.5, higher_is_better=False,
                       note=f"one run each; per stage vllm/transformers: {stages}")]


def run(quick: bool = False, only=("demo", "ppo", "critique"), repeats: int = 2) -> list[dict]:
    if quick:
        repeats = 1
    rows = []
    if "ppo" in only:
        steps = 2 if quick else 4

        def ppo(engine):
            return lambda: child(Path(__file__), ["--side", f"ppo-{engine}", "--steps", str(steps),
                                                  *(["--quick"] if quick else [])])
        runs = interleave({f"{e} rollouts": ppo(e) for e in ENGINES}, repeats)
        diff = {k: max(r["logprob_diff"] for r in v) for k, v in runs.items()}
        rows.append(comparison("PPO iteration (default PPOConfig, LoRA, embedded policy): vLLM rollouts vs HF "
                               "rollouts, median step time", "step_s", "s", runs, "vllm rollouts",
                               "transformers rollouts", target=0.6, higher_is_better=False,
                               note=f"first step (vLLM start-up) excluded; rollout/logprob_diff max: "
                                    f"vllm {diff['vllm rollouts']:.1e}, hf {diff['transformers rollouts']:.1e}"))
    if "critique" in only:
        n = 4 if quick else 32

        def crit(engine):
            return lambda: child(Path(__file__), ["--side", f"critique-{engine}", "--n", str(n),
                                                  *(["--quick"] if quick else [])])
        runs = interleave({f"{e}": crit(e) for e in ENGINES}, repeats)
        start = {k: statistics.median(r["startup_s"] for r in v) for k, v in runs.items()}
        rows.append(comparison(f"critique/revision stage ({n} responses, 2 rounds, the policy critiquing itself): "
                               "vllm vs transformers engine", "tokens_per_s", "tokens/s", runs, "vllm",
                               "transformers", target=None, higher_is_better=True,
                               note=f"start-up apart (median s): vllm {start['vllm']:.0f}, "
                                    f"transformers {start['transformers']:.0f}"))
    if "demo" in only:
        rows += run_demo(quick)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the script")
    ap.add_argument("--only", nargs="+", default=["demo", "ppo", "critique"], choices=["demo", "ppo", "critique"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--side", help=argparse.SUPPRESS)  # a child process
    ap.add_argument("--steps", type=int, default=4, help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, default=32, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.side:
        what, engine = args.side.split("-", 1)
        r = (side_ppo(engine, args.steps, args.quick) if what == "ppo" else side_critique(engine, args.n, args.quick))
        print(RESULT_PREFIX + json.dumps({**r, "peak_rss_gib": peak_rss_gib()}), flush=True)
        return
    rows = run(args.quick, args.only, args.repeats)
    kept = result_path("engines", args.quick)  # today's rows of the comparisons not rerun stay
    if kept.exists() and len(args.only) < 3:
        rerun = {r["comparison"].split(" ")[0] for r in rows}
        rows = [r for r in json.loads(kept.read_text())["comparisons"] if r["comparison"].split(" ")[0] not in rerun] + rows
    print(markdown(rows))
    print(f"written to {write(rows, 'engines', args.quick)}")


if __name__ == "__main__":
    main()
