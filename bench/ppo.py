"""PPO cost, side by side in one run, interleaved A B A B, each side in a fresh process (so
its peak memory is its own), on the embedded policy model:

1. our PPO with LoRA vs with full fine-tuning (`training.ppo.train_ppo`);
2. our PPO vs TRL's PPO trainer (`trl.experimental.ppo.PPOTrainer`, TRL 1.12.0, the newest
   release that still ships one), LoRA on both by default (`--full`: full fine-tuning on both).
   Our PPO runs twice in the same interleaving: with its default value head on the policy's
   trunk, and with a separate value model as TRL has (`shared_value_head=False`, what it did
   before): the before and after of that change, measured side by side.

All sides get the same prompts (each used once), reward model folder (also the value model's
start), batch size, minibatch size, PPO epochs, response length (max_new_tokens), temperature
and learning rate. Reported: median seconds per PPO iteration (rollout + update; the first
iteration of each run is dropped as warm-up when there are more), peak resident memory, and the
ratios.

    bash bench/trl/setup.sh                     # once: the TRL venv, bench/.venv-trl
    .venv/bin/python -m bench.ppo [--quick] [--reward-model DIR] [--steps 3] [--repeats 2] [--only trl|lora]

Without --reward-model, a small reward model is first trained with our code on 16 hh-rlhf pairs
(bench/results/tmp/reward-model, reused by later runs). Writes bench/results/<date>-ppo.json
(-ppo-trl, -ppo-lora with --only, -fullft with --full, -quick with --quick) and prints a markdown
table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, child, comparison, interleave, machine, markdown, write
from bench.reward import PAIRS_FILE, TRL_PYTHON

TRL_CHILD = ROOT / "bench" / "trl" / "ppo_trl.py"
SMALL_RM = RESULTS / "tmp" / "reward-model"

OURS = """
import json, resource, sys
from pathlib import Path
import pandas as pd, torch
from rlaif.models import EMBEDDED_MODEL
from training.config import PPOConfig
from training.ppo import train_ppo
prompts = pd.read_json(sys.argv[1], lines=True, dtype=False)
cfg = PPOConfig.model_validate_json(sys.argv[2])
metrics = train_ppo(prompts, EMBEDDED_MODEL, sys.argv[3], Path(sys.argv[4]), cfg, {})
print("RESULT " + json.dumps({
    "step_seconds": [m["value"] for m in metrics if m["metric"] == "time/step_seconds"],
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "threads": torch.get_num_threads()}))
"""

TRAIN_SMALL_RM = """
import sys
from pathlib import Path
from judges.human_eval import read_hh_pairs
from rlaif.models import EMBEDDED_MODEL
from training.config import RewardConfig
from training.reward import train_reward_model
hh = read_hh_pairs(sys.argv[1], 16)
prefs = hh.assign(prompt_id=hh["pair_id"], p_chosen=1.0, valid=True)
reference = hh[["prompt"]].assign(response=hh["chosen"])
train_reward_model(prefs, reference, EMBEDDED_MODEL, Path(sys.argv[2]), RewardConfig(epochs=1), {"bench": "ppo"})
print("RESULT {}")
"""


def small_reward_model() -> Path:
    """A reward model trained with our code on 16 hh-rlhf pairs: enough to score, for timing."""
    if not (SMALL_RM / "normalization.json").exists():
        print(f"training a small reward model into {SMALL_RM} ...", flush=True)
        child(TRAIN_SMALL_RM, [str(PAIRS_FILE), str(SMALL_RM)])
    return SMALL_RM


def with_seconds(r: dict) -> dict:
    """Add the run's median seconds per iteration, without the first (warm-up) when there are more."""
    s = r["step_seconds"]
    return {**r, "s_per_iter": statistics.median(s[1:] or s)}


def run(quick: bool = False, reward_model: str | Path | None = None, steps: int | None = None,
        repeats: int | None = None, only: str | None = None, full: bool = False) -> list[dict]:
    """Run the comparisons (`only`: "lora" or "trl"; both by default); return their records."""
    from rlaif.models import EMBEDDED_MODEL, resolve_model
    from rlaif.prompts import load_prompts
    from rlaif.config import Trainable
    from training.config import PPOConfig

    if only != "lora" and not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON}: missing; run `bash bench/trl/setup.sh` first")
    steps = steps or (1 if quick else 3)
    repeats = repeats or (1 if quick else 2)
    reward_model = str(reward_model or small_reward_model())
    # The demo's PPO settings, with no checkpoints or snapshots written between iterations.
    base = {"steps": steps, "checkpoint_every": 0, "snapshots": 0, **({"sampling": {"max_new_tokens": 8}} if quick else {})}
    cfg = PPOConfig(**base)
    prompts = load_prompts(split="train").head(steps * cfg.batch_size)  # each used once, by every side
    if len(prompts) < steps * cfg.batch_size:
        raise SystemExit(f"only {len(prompts)} training prompts for {steps} x {cfg.batch_size}")
    warmup = "first iteration dropped as warm-up" if steps > 1 else "ONE iteration per run: includes warm-up"
    setting = (f"{'QUICK, ' if quick else ''}{steps} PPO iteration(s) x {repeats} interleaved repeat(s) per side "
               f"({warmup}); batch {cfg.batch_size}, minibatch {cfg.mini_batch_size}, {cfg.ppo_epochs} PPO epochs, "
               f"max_new_tokens {cfg.sampling.max_new_tokens}, temperature {cfg.sampling.temperature}; policy SmolLM2-135M-Instruct "
               f"(embedded), fp32; reward model {reward_model}; {machine()}")
    records: list[dict] = []

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts[["prompt_id", "prompt"]].to_json(tmp / "prompts.jsonl", orient="records", lines=True)

        def ours(c: PPOConfig):
            return lambda: with_seconds(child(OURS, [str(tmp / "prompts.jsonl"), c.model_dump_json(),
                                                     reward_model, str(tmp / "policy")]))

        if only in (None, "lora"):
            full_cfg = cfg.model_copy(update={"trainable": Trainable(method="full"), "lr": 1e-5})
            runs = interleave({"lora": ours(cfg), "full": ours(full_cfg)}, repeats)
            note = f"{setting}; LoRA r{cfg.trainable.lora_r}/alpha{cfg.trainable.lora_alpha} lr {cfg.lr:g} vs full fine-tuning lr 1e-5"
            records += [
                comparison("our PPO: full fine-tuning / LoRA, time per iteration", "s_per_iter", "s", runs,
                           "full", "lora", target=None, higher_is_better=False, note=note),
                comparison("our PPO: full fine-tuning / LoRA, peak memory", "peak_rss_gib", "GiB", runs,
                           "full", "lora", target=None, higher_is_better=False, note=note),
            ]

        if only in (None, "trl"):
            c = cfg.model_copy(update={"trainable": Trainable(method="full"), "lr": 1e-5}) if full else cfg
            trl_args = ["--policy", str(resolve_model(EMBEDDED_MODEL)), "--reward-model", reward_model,
                        "--prompts", str(tmp / "prompts.jsonl"), "--config", c.model_dump_json(),
                        "--out", str(tmp / "trl-out")]
            separate = c.model_copy(update={"shared_value_head": False})
            runs = interleave({"ours": ours(c), "ours, separate value model": ours(separate),
                               "trl": lambda: with_seconds(child(TRL_CHILD, trl_args, python=TRL_PYTHON))}, repeats)
            version = runs["trl"][0]["trl"]
            adapters = (f"LoRA r{c.trainable.lora_r}/alpha{c.trainable.lora_alpha} on q/k/v/o of the policy and of the value model "
                        f"(TRL adds LoRA to the policy only; the same adapter is put on its value model here), "
                        f"reference = policy with the adapter off on both" if c.trainable.method == "lora" else
                        "full fine-tuning of policy and value model on both, frozen reference copy")
            note = (f"{setting}; ours: value head on the policy's trunk (one forward pass for logprobs and values); "
                    f"ours, separate value model: a second model initialised from the reward model, as TRL; "
                    f"{adapters}; lr {c.lr:g}, AdamW eps 1e-5, constant lr; TRL {version}, the newest "
                    f"release with a PPO trainer (trl/experimental/ppo; removed in 1.13.0 by huggingface/trl#7020). "
                    f"Not matched: ours clips gradients (norm 1.0), TRL's PPO loop does not; ours adapts the KL "
                    f"coefficient (from 0.05), TRL keeps it fixed at 0.05; TRL takes rollout logprobs from "
                    f"generate's scores, ours runs one more policy forward; TRL's tokenizer pads with "
                    f"<|endoftext|> (its pad is its EOS, which TRL would mask inside prompts); ours normalises "
                    f"reward scores (gain/bias), TRL uses them raw; prompt order differs (same prompts, each once)")
            records += [
                comparison("PPO time per iteration: ours / TRL", "s_per_iter", "s", runs, "ours", "trl",
                           target=0.7, higher_is_better=False, note=note),
                comparison("PPO peak memory: ours / TRL", "peak_rss_gib", "GiB", runs, "ours", "trl",
                           target=1.0, higher_is_better=False, note=note),
                comparison("PPO time per iteration before the shared value head: ours with a separate value "
                           "model / TRL", "s_per_iter", "s", runs, "ours, separate value model", "trl",
                           target=None, higher_is_better=False, note=note),
                comparison("PPO peak memory before the shared value head: ours with a separate value model / TRL",
                           "peak_rss_gib", "GiB", runs, "ours, separate value model", "trl",
                           target=None, higher_is_better=False, note=note),
            ]
    return records


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 iteration, 8 new tokens, 1 repeat: a smoke run, not a result")
    ap.add_argument("--reward-model", help="a trained reward-model folder (default: train a small one)")
    ap.add_argument("--steps", type=int, help="PPO iterations per run (default 3; the first is dropped)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats per side (default 2)")
    ap.add_argument("--only", choices=["lora", "trl"], help="run one comparison: LoRA vs full, or ours vs TRL")
    ap.add_argument("--full", action="store_true", help="ours vs TRL with full fine-tuning on both sides")
    args = ap.parse_args()
    records = run(args.quick, args.reward_model, args.steps, args.repeats, args.only, args.full)
    print(markdown(records))
    name = "ppo" + (f"-{args.only}" if args.only else "") + ("-fullft" if args.full else "")
    print(f"written to {write(records, name, args.quick)}")


if __name__ == "__main__":
    main()
