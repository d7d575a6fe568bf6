"""Judge labelling throughput: length-sorted batches against batches in input order.

Both sides label the same hh-rlhf pairs (both orders, one principle) with the same model and
batch size, interleaved A B A B; reports the median pairs/s of each and the ratio, and checks
that both give the same probabilities.

    .venv/bin/python bench/judge_batching.py [--pairs FILE] [--n 32] [--repeats 2]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from constitution import load_constitution
from judges.backends import TransformersJudge
from judges.feedback import FeedbackConfig, label_preferences
from judges.human_eval import read_hh_pairs
from rlaif.models import EMBEDDED_MODEL


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="../shared/data/hh-rlhf-harmless-dev.jsonl.gz")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=8)
    args = ap.parse_args()

    hh = read_hh_pairs(args.pairs, args.n)
    pairs = hh.rename(columns={"chosen": "response_a", "rejected": "response_b"}).assign(prompt_id=hh["pair_id"])
    c, cfg = load_constitution("harmless"), FeedbackConfig(batch_size=args.batch_size)
    judges = {"input order": TransformersJudge(EMBEDDED_MODEL, args.batch_size, sort_by_length=False),
              "length-sorted": TransformersJudge(EMBEDDED_MODEL, args.batch_size, sort_by_length=True)}
    rates: dict[str, list[float]] = {k: [] for k in judges}
    probs = {}
    for _ in range(args.repeats):
        for name, judge in judges.items():  # interleaved: A B A B
            t0 = time.perf_counter()
            probs[name] = label_preferences(judge, pairs, c, cfg)["p_a"].to_numpy()
            rates[name].append(len(pairs) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in rates.items()}
    print(f"{len(pairs)} pairs, batch {args.batch_size}, {args.repeats} interleaved repeats")
    print("| batching | median pairs/s | runs |\n|---|---|---|")
    for k, v in rates.items():
        print(f"| {k} | {med[k]:.3f} | {', '.join(f'{x:.3f}' for x in v)} |")
    print(f"ratio length-sorted / input order: {med['length-sorted'] / med['input order']:.2f}x")
    print(f"max |P(A) difference|: {np.abs(probs['length-sorted'] - probs['input order']).max():.2e}")


if __name__ == "__main__":
    main()
