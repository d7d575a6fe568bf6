"""Reward-model training: ours (`training.reward.train_reward_model`) vs TRL's `RewardTrainer`,
side by side in one run, interleaved A B A B, each side in a fresh process.

Both sides train on the same human preference pairs (hh-rlhf harmless, from ../shared/data),
with the same held-out split (`training.reward.split_by_prompt`), base model (the embedded
SmolLM2-135M-Instruct), LoRA adapter, batch size (pairs per step), epochs, learning rate,
max_length, centering coefficient and seed. Pairs longer than max_length are left out for
both: TRL drops them where ours truncates them on the left. Reported: training pairs per
second (pairs x epochs / training-loop seconds; model loading, tokenisation before the loop
and our post-training normalisation and save are excluded), held-out accuracy, peak RSS.

    bash bench/trl/setup.sh                     # once: the TRL venv, bench/.venv-trl
    .venv/bin/python -m bench.reward [--quick] [--pairs 200] [--repeats 2]

Writes bench/results/<date>-reward.json (<date>-reward-quick.json with --quick) and prints a
markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, child, comparison, interleave, machine, markdown, write

PAIRS_FILE = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
TRL_PYTHON = ROOT / "bench" / ".venv-trl" / "bin" / "python"
TRL_CHILD = ROOT / "bench" / "trl" / "reward_trl.py"

# Ours, in a fresh process. The training loop's wall time is read from its progress bar: the
# bar opens right before the first step and closes after the last, so the time excludes model
# loading, tokenisation, and the held-out scoring, normalisation and save that follow.
OURS = """
import json, resource, sys, time
from pathlib import Path
import pandas as pd, torch
import training.reward as R
import training.supervised as S
from rlaif.models import EMBEDDED_MODEL

span = {}
class TimedBar(S.tqdm):
    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        span["start"] = time.perf_counter()
    def close(self):
        span.setdefault("end", time.perf_counter())
        super().close()
S.tqdm = TimedBar

prefs = pd.read_json(sys.argv[1], lines=True, dtype=False)
cfg = R.RewardConfig.model_validate_json(sys.argv[2])
reference = prefs[["prompt"]].head(2).assign(response=prefs["chosen"].head(2))  # normalisation: kept tiny
t0 = time.perf_counter()
summary, _ = R.train_reward_model(prefs, reference, EMBEDDED_MODEL, Path(sys.argv[3]), cfg, {})
total = time.perf_counter() - t0
seconds = span["end"] - span["start"]
print("RESULT " + json.dumps({
    "pairs_per_s": summary["rm/train_pairs"] * cfg.epochs / seconds, "train_seconds": seconds,
    "call_seconds": total, "train_pairs": summary["rm/train_pairs"], "heldout_pairs": summary["rm/heldout_pairs"],
    "heldout_accuracy": summary["rm/accuracy"],
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "threads": torch.get_num_threads()}))
"""


def preference_pairs(n: int, max_length: int):
    """The first n hh-rlhf pairs whose chosen and rejected conversations both fit in max_length
    tokens, as the preference table train_reward_model reads (human labels: p_chosen = 1)."""
    from judges.human_eval import read_hh_pairs
    from rlaif.models import EMBEDDED_MODEL, load_tokenizer
    from training.common import conversation_texts

    if not PAIRS_FILE.is_file():
        raise SystemExit(f"{PAIRS_FILE}: not found; this benchmark needs the shared hh-rlhf pairs")
    hh = read_hh_pairs(PAIRS_FILE)
    tok = load_tokenizer(EMBEDDED_MODEL)
    n_tokens = {k: [len(ids) for ids in tok(conversation_texts(tok, hh["prompt"], hh[k]),
                                            add_special_tokens=False)["input_ids"]]
                for k in ("chosen", "rejected")}
    fits = [c <= max_length and r <= max_length for c, r in zip(n_tokens["chosen"], n_tokens["rejected"])]
    hh = hh[fits].head(n).reset_index(drop=True)
    if len(hh) < n:
        raise SystemExit(f"only {len(hh)} pairs fit in max_length={max_length} tokens; asked for {n}")
    return hh.assign(prompt_id=[hashlib.sha256(p.encode()).hexdigest()[:16] for p in hh["prompt"]],
                     p_chosen=1.0, valid=True)


def run(quick: bool = False, repeats: int | None = None, n_pairs: int | None = None, seed: int = 0) -> list[dict]:
    """Train both sides `repeats` times, interleaved; return the two comparison records. The
    seed picks the held-out split, the score head's initialisation and the batch order."""
    from rlaif.models import EMBEDDED_MODEL, resolve_model
    from training.config import RewardConfig
    from training.reward import split_by_prompt

    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON}: missing; run `bash bench/trl/setup.sh` first")
    repeats = repeats or (1 if quick else 2)
    n_pairs = n_pairs or (16 if quick else 200)
    cfg = RewardConfig(epochs=1, seed=seed) if quick else RewardConfig(seed=seed)  # the project's defaults otherwise
    prefs = preference_pairs(n_pairs, cfg.max_length)
    train, held = split_by_prompt(prefs, cfg.eval_fraction, cfg.seed)  # the split ours makes inside

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prefs.to_json(tmp / "prefs.jsonl", orient="records", lines=True)
        with open(tmp / "trl_pairs.jsonl", "w", encoding="utf-8") as f:
            for split, df in (("train", train), ("heldout", held)):
                for r in df.itertuples():
                    f.write(json.dumps({"prompt": r.prompt, "chosen": r.chosen, "rejected": r.rejected,
                                        "split": split}) + "\n")
        trl_args = ["--model", str(resolve_model(EMBEDDED_MODEL)), "--pairs", str(tmp / "trl_pairs.jsonl"),
                    "--batch-size", str(cfg.batch_size), "--epochs", str(cfg.epochs), "--lr", str(cfg.lr),
                    "--max-length", str(cfg.max_length), "--lora-r", str(cfg.trainable.lora_r),
                    "--lora-alpha", str(cfg.trainable.lora_alpha), "--center-coef", str(cfg.center_coef),
                    "--seed", str(cfg.seed), "--out", str(tmp / "trl-out")]
        runs = interleave({
            "ours": lambda: child(OURS, [str(tmp / "prefs.jsonl"), cfg.model_dump_json(), str(tmp / "rm")]),
            # the before: the whole batch in one forward and backward pass (micro_batch_size None)
            "ours, whole batch per pass": lambda: child(OURS, [str(tmp / "prefs.jsonl"), cfg.model_copy(
                update={"micro_batch_size": None}).model_dump_json(), str(tmp / "rm")]),
            "trl": lambda: child(TRL_CHILD, trl_args, python=TRL_PYTHON),
        }, repeats)
    for side, rs in runs.items():  # both must have trained and scored the same pairs, on as many threads
        for r in rs:
            if (r["train_pairs"], r["heldout_pairs"]) != (len(train), len(held)):
                raise RuntimeError(f"{side} trained on {r['train_pairs']} / scored {r['heldout_pairs']} pairs, "
                                   f"expected {len(train)} / {len(held)}")
            if r["threads"] != runs["ours"][0]["threads"]:
                raise RuntimeError(f"{side} ran on {r['threads']} torch threads, ours on {runs['ours'][0]['threads']}")

    trl_version = runs["trl"][0]["trl"]
    setting = (f"{'QUICK, ' if quick else ''}{len(train)} train / {len(held)} held-out hh-rlhf pairs (both "
               f"responses <= {cfg.max_length} tokens), {cfg.epochs} epoch(s), batch {cfg.batch_size} pairs, "
               f"lr {cfg.lr:g}, LoRA r{cfg.trainable.lora_r}/alpha{cfg.trainable.lora_alpha} on q/k/v/o + score head, "
               f"center coef {cfg.center_coef:g}, seed {cfg.seed}, fp32, {runs['ours'][0]['threads']} torch threads, "
               f"{repeats} interleaved repeat(s); {machine()}; TRL {trl_version}, the newest release that still "
               f"ships a PPO trainer (trl/experimental/ppo, removed in 1.13.0 by huggingface/trl#7020), so "
               f"reward and PPO use one TRL")
    unmatched = ("Not matched: TRL tokenises the pairs before its loop, ours tokenises each micro-batch "
                 "inside it (counted against ours); training order differs (TRL's shuffled batches vs our "
                 "length-grouped ones); ours takes each batch of 4 pairs in micro-batches of "
                 f"{cfg.micro_batch_size} pairs ('ours, whole batch per pass' is the before); TRL excludes "
                 "biases/norms from weight decay (LoRA has none). Ours is timed "
                 "from its progress bar (training loop only); its whole call is in call_seconds.")
    speed = comparison("reward model training throughput: ours / TRL RewardTrainer", "pairs_per_s", "pairs/s",
                       runs, "ours", "trl", target=1.4, higher_is_better=True, note=f"{setting}. {unmatched}")
    acc = comparison("reward model held-out accuracy: ours / TRL RewardTrainer", "heldout_accuracy", "accuracy",
                     runs, "ours", "trl", target=None, higher_is_better=True, note=setting)
    # The accuracy target is a difference, not a ratio: within 2 points of each other.
    diff = 100 * (acc["a_median"] - acc["b_median"])
    acc.update(target="within 2 points", met=abs(diff) <= 2,
               note=f"difference {diff:+.1f} points ({len(held)} held-out pairs: one pair is "
                    f"{100 / len(held):.1f} points). {setting}")
    memory = comparison("reward model training peak RSS: ours / TRL RewardTrainer", "peak_rss_gib", "GiB",
                        runs, "ours", "trl", target=1.0, higher_is_better=False, note=setting)
    before = [comparison(f"reward model training {what} before micro-batches: ours, whole batch per pass "
                         "/ TRL RewardTrainer", metric, unit, runs, "ours, whole batch per pass", "trl", target=None,
                         higher_is_better=higher, note=setting)
              for what, metric, unit, higher in (("throughput", "pairs_per_s", "pairs/s", True),
                                                 ("peak RSS", "peak_rss_gib", "GiB", False))]
    return [speed, acc, memory, *before]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="16 pairs, 1 epoch, 1 repeat: a smoke run, not a result")
    ap.add_argument("--repeats", type=int, help="interleaved repeats per side (default 2; 1 with --quick)")
    ap.add_argument("--pairs", type=int,
                    help="pairs before the 75/25 split (default 200; 16 with --quick); more: a steadier accuracy")
    ap.add_argument("--seed", type=int, default=0,
                    help="split, initialisation and order seed, for both sides; other than 0, the result is "
                         "written as <date>-reward-seed<N>.json, beside the suite's")
    args = ap.parse_args()
    records = run(args.quick, args.repeats, args.pairs, args.seed)
    print(markdown(records))
    acc = records[1]
    print(f"held-out accuracy difference: {100 * (acc['a_median'] - acc['b_median']):+.1f} points (target: within 2)")
    print(f"written to {write(records, 'reward' if args.seed == 0 else f'reward-seed{args.seed}', args.quick)}")


if __name__ == "__main__":
    main()
