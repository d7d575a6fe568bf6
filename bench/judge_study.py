"""Which judge set-up agrees with humans most? Runs `judge_agreement` on the same hh-rlhf
pairs for each judge model and scoring variant, and prints one table.

    .venv/bin/python bench/judge_study.py [--pairs FILE] [--n 200] [--models gemma3-270m smollm2-135m-instruct]

Writes bench/results/<date>-judge-study-<models>-n<pairs>.json. Chance is 0.5; the "longer response wins"
baseline is on the same pairs.
"""

from __future__ import annotations

import argparse
import json
from datetime import date
from pathlib import Path

from constitution import load_constitution
from judges.judge import make_judge
from judges.config import JudgeConfig
from judges.config import FeedbackConfig
from judges.human_eval import judge_agreement, read_hh_pairs

RESULTS = Path(__file__).parent / "results"
# name: (JudgeConfig fields, FeedbackConfig fields), over the defaults
VARIANTS = {
    "labels, raw text": ({}, {}),
    "labels, chat template": ({"prompt_format": "chat"}, {}),
    "labels, 3 principles averaged": ({}, {"principles_per_pair": 3}),
    "contrastive likelihood": ({}, {"scoring": "contrastive"}),
    "direct 1-10 score (d-RLAIF)": ({}, {"direct_scores": True}),
    "labels after chain of thought": ({}, {"chain_of_thought": True}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", default="../shared/data/hh-rlhf-harmless-dev.jsonl.gz")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--models", nargs="+", default=[JudgeConfig().model])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    args = ap.parse_args()

    pairs, c = read_hh_pairs(args.pairs, args.n), load_constitution("harmless")
    out = RESULTS / f"{date.today().isoformat()}-judge-study-{'+'.join(Path(m).name for m in args.models)}-n{len(pairs)}.json"
    RESULTS.mkdir(exist_ok=True)
    # Rows from an earlier run on the same pairs stay, so variants can be added one run at a time.
    old = json.loads(out.read_text()) if out.exists() else {}
    same_pairs = old.get("pairs") == len(pairs) and old.get("pairs_file") == args.pairs
    rows, baseline = (old["rows"] if same_pairs else []), old.get("baseline/longer_wins")
    for model in args.models:
        for name in args.variants:
            judge_fields, feedback_fields = VARIANTS[name]
            judge = make_judge(JudgeConfig(model=model, **judge_fields))
            cfg = FeedbackConfig(**feedback_fields)
            r = judge_agreement(judge, pairs, c, cfg)
            key = "judge/direct_agreement" if cfg.direct_scores else "judge/agreement"
            baseline = r["baseline/longer_wins"]
            row = {"model": model, "variant": name, **r[key],
                   "no_swap": r["judge/agreement_no_swap"]["agreement"],
                   "position_consistency": r["judge/agreement"]["position_consistency"],
                   "pairs_per_s": r["judge/pairs_per_s"], "invalid": r["judge/invalid_pairs"]}
            rows = [r for r in rows if (r["model"], r["variant"]) != (model, name)] + [row]
            print(row, flush=True)
            out.write_text(json.dumps({"pairs": len(pairs), "pairs_file": args.pairs,
                                       "baseline/longer_wins": baseline, "rows": rows}, indent=2))
    print(f"\n{len(pairs)} hh-rlhf harmless pairs; chance 0.5; longer response wins: "
          f"{baseline['agreement']:.3f} [{baseline['ci_low']:.3f}-{baseline['ci_high']:.3f}]\n")
    print("| judge | scoring | agreement | 95% CI | one order | position consistency | pairs/s |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['model']} | {r['variant']} | {r['agreement']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} "
              f"| {r['no_swap']:.3f} | {r['position_consistency']:.3f} | {r['pairs_per_s']:.2f} |")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
