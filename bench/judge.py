"""Judge labelling throughput, side by side in one run, interleaved A B A B.

Every comparison labels the same hh-rlhf pairs (both orders, one principle each) with the
same model and batch size, and reports the median pairs/s of each side and their ratio:

1. label log-probs (one forward pass per order) vs generate-then-parse (greedy verdict text,
   the first "A"/"B" in it wins; unparseable answers are counted);
2. length-sorted vs input-order batches (transformers backend);
3. the transformers backend vs the in-process vLLM engine (when vLLM is installed).

    .venv/bin/python bench/judge.py [--model M] [--pairs FILE] [--n 32] [--repeats 3] [--verdict-tokens 64]

Uses the default judge (model and prompt format) unless told otherwise. Writes
bench/results/<date>-judge-<model>-v<verdict tokens>.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import statistics
import time
from datetime import date
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

from constitution import load_constitution
from judges.backends import JudgeConfig, TransformersJudge, make_judge
from judges.feedback import FeedbackConfig, label_preferences
from judges.human_eval import read_hh_pairs
from judges.templates import preference_messages

RESULTS = Path(__file__).parent / "results"


def generate_then_parse(judge, pairs: pd.DataFrame, constitution, cfg: FeedbackConfig,
                        max_new_tokens: int) -> tuple[np.ndarray, float]:
    """The usual alternative: write a verdict, parse a letter out of it. P(A) is 1, 0 or NaN."""
    from judges.feedback import seeded_rng

    convs = []
    for _, row in pairs.iterrows():
        p = constitution.sample_principles(seeded_rng(cfg.seed, row["pair_id"], "pref"))[0]
        convs.append(preference_messages(p, row["prompt"], row["response_a"], row["response_b"]))
        convs.append(preference_messages(p, row["prompt"], row["response_b"], row["response_a"]))
    texts = [judge.ask(c) for c in convs]
    out = judge.complete(texts, max_new_tokens=max_new_tokens, temperature=0.0, seed=0,
                         desc="generate-then-parse")
    letters = [re.search(r"\b([AB])\b", g.text) for g in out]
    p = np.array([np.nan if m is None else float(m.group(1) == "A") for m in letters])
    return p, float(np.isnan(p).mean())


def timed(fn):
    t0 = time.perf_counter()
    result = fn()
    return result, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=JudgeConfig().model, help="judge model (default: the default judge)")
    ap.add_argument("--prompt-format", choices=["chat", "raw"], default=JudgeConfig().prompt_format)
    ap.add_argument("--pairs", default="../shared/data/hh-rlhf-harmless-dev.jsonl.gz")
    ap.add_argument("--n", type=int, default=32, help="pairs per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--verdict-tokens", type=int, default=64,
                    help="generate-then-parse: length cap on the verdict")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM comparison")
    args = ap.parse_args()

    hh = read_hh_pairs(args.pairs, args.n)
    pairs = hh.rename(columns={"chosen": "response_a", "rejected": "response_b"}).assign(prompt_id=hh["pair_id"])
    c, cfg = load_constitution("harmless"), FeedbackConfig()
    jcfg = JudgeConfig(model=args.model, prompt_format=args.prompt_format, batch_size=args.batch_size)
    sorted_judge = TransformersJudge(jcfg)
    sides = {
        "label log-probs": lambda: label_preferences(sorted_judge, pairs, c, cfg)["p_a_first"].to_numpy(),
        "generate-then-parse": lambda: generate_then_parse(sorted_judge, pairs, c, cfg, args.verdict_tokens),
        "input-order batches": lambda: label_preferences(TransformersJudge(jcfg, sort_by_length=False),
                                                         pairs, c, cfg)["p_a_first"].to_numpy(),
    }
    use_vllm = not args.no_vllm and find_spec("vllm") is not None
    if use_vllm:
        vllm_judge, startup = timed(lambda: make_judge(jcfg.model_copy(update={"backend": "vllm"})))
        sides["vllm-cpu"] = lambda: label_preferences(vllm_judge, pairs, c, cfg)["p_a_first"].to_numpy()

    rates: dict[str, list[float]] = {k: [] for k in sides}
    last = {}
    for _ in range(args.repeats):
        for name, fn in sides.items():  # interleaved: A B C D A B C D
            last[name], seconds = timed(fn)
            rates[name].append(len(pairs) / seconds)
            print(f"{name}: {rates[name][-1]:.3f} pairs/s", flush=True)
    med = {k: statistics.median(v) for k, v in rates.items()}
    ref = "label log-probs"
    parsed_p, unparsed = last["generate-then-parse"]
    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "model": args.model, "prompt_format": args.prompt_format, "pairs": len(pairs), "batch_size": args.batch_size,
        "repeats": args.repeats, "verdict_tokens": args.verdict_tokens,
        "pairs_per_s": {k: {"median": med[k], "runs": v} for k, v in rates.items()},
        "ratios": {
            "label log-probs / generate-then-parse (target >= 10)": med[ref] / med["generate-then-parse"],
            "length-sorted / input-order batches": med[ref] / med["input-order batches"],
        },
        "generate_then_parse_unparseable": unparsed,
        # first order only, where both sides answered the same question
        "generate_then_parse_agrees_with_labels": float(np.mean((parsed_p[0::2] > 0.5) == (last[ref] > 0.5))),
        "max_abs_diff_sorted_vs_input_order": float(np.abs(last[ref] - last["input-order batches"]).max()),
    }
    if use_vllm:
        result["ratios"]["vllm-cpu / transformers"] = med["vllm-cpu"] / med[ref]
        result["vllm_startup_s"] = startup
        result["max_abs_diff_vllm_vs_transformers"] = float(np.abs(last["vllm-cpu"] - last[ref]).max())

    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{result['date']}-judge-{Path(args.model).name.lower()}-v{args.verdict_tokens}.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"{len(pairs)} hh-rlhf pairs, both orders, batch {args.batch_size}, {args.repeats} interleaved repeats, "
          f"{result['machine']}")
    print("| side | median pairs/s | runs |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in v)} |")
    print("\n| ratio | value |\n|---|---|")
    for k, v in result["ratios"].items():
        print(f"| {k} | {v:.2f}x |")
    print(f"\ngenerate-then-parse: {unparsed:.0%} unparseable verdicts")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
