"""Group-baseline policy optimisation (GRPO, RLOO) cost: ours vs TRL 1.16's trainers.

Side by side in one run, interleaved A B A B, each side in a fresh process (so its peak memory
is its own), on the embedded policy:

- GRPO: `training.ppo.train_ppo` with algorithm="grpo" vs TRL 1.16.0's `GRPOTrainer`;
- RLOO: `training.ppo.train_ppo` with algorithm="rloo" vs TRL 1.16.0's `RLOOTrainer`.

Both sides get the same policy folder, reward model folder (as a sequence-classification
reward), prompts (each used once), group size (TRL's num_generations), prompts per iteration,
responses per gradient step, epochs over each rollout (TRL's num_iterations), response length,
temperature, LoRA adapter (r, alpha, q/k/v/o), learning rate and AdamW settings, gradient clip,
fixed KL coefficient (TRL's beta), clip range (TRL's epsilon), fp32 on the CPU, and no vLLM
(ours: its transformers engine). One iteration is one generation round and its updates on both
sides (bench/trl/grpo_trl.py maps the settings). Reported: median seconds per iteration
(rollout + update; the first of each run is dropped as warm-up when there are more), peak
resident memory up to the end of the last iteration (ours also saves the merged policy after
training, which is not counted), and the ratios ours / TRL against the targets: time <= 0.7,
memory <= 1.0.

Settings that could not be matched are in UNMATCHED below; they are written into the result.

    bash bench/trl/setup.sh grpo                # once: the TRL 1.16 venv, bench/.venv-trl-grpo
    .venv/bin/python -m bench.group [--quick] [--algorithm grpo|rloo|both] [--epochs 1 [2]]
                                    [--steps 3] [--repeats 2] [--reward-model DIR]

Without --reward-model, the small reward model of bench/ppo.py is used (trained once with our
code on 16 hh-rlhf pairs into bench/results/tmp/reward-model). Writes bench/results/<date>-group.json
(<date>-group-quick.json with --quick) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, child, comparison, interleave, machine, markdown, write

TRL_GRPO_PYTHON = ROOT / "bench" / ".venv-trl-grpo" / "bin" / "python"
TRL_CHILD = ROOT / "bench" / "trl" / "grpo_trl.py"

# Ours, in a fresh process. Peak RSS is read after the last iteration (on_step), before
# train_ppo merges the adapter and saves the policy; the whole call's peak is reported beside it.
OURS = """
import json, resource, sys
from pathlib import Path
import pandas as pd, torch
from rlaif.models import EMBEDDED_MODEL
from training.config import PPOConfig
from training.ppo import train_ppo
rss = {}
def on_step(n, m):
    rss["training"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
prompts = pd.read_json(sys.argv[1], lines=True, dtype=False)
cfg = PPOConfig.model_validate_json(sys.argv[2])
metrics = train_ppo(prompts, EMBEDDED_MODEL, sys.argv[3], Path(sys.argv[4]), cfg, {}, on_step=on_step)
lengths = [m["value"] for m in metrics if m["metric"] == "ppo/mean_response_length"]
print("RESULT " + json.dumps({
    "step_seconds": [m["value"] for m in metrics if m["metric"] == "time/step_seconds"],
    "mean_response_length": sum(lengths) / max(len(lengths), 1),
    "peak_rss_gib_training": rss["training"],
    "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, "threads": torch.get_num_threads()}))
"""

# Settings that could not be matched between the two sides (see bench/trl/grpo_trl.py for what is).
UNMATCHED = {
    "both": [
        "reward model normalisation: ours scores gain*raw+bias (normalization.json); TRL gets the same model "
        "with reward_weights=[gain], so its rewards are gain*raw: the bias is a constant that both group "
        "baselines remove (exact for RLOO's leave-one-out and GRPO's group mean)",
        "missing-EOS penalty: TRL has none, so ours runs with missing_eos_penalty=0 (its default is 1.0)",
        "scoring: ours scores in batches of 8, left-padded and left-truncated to the reward model's max_length; "
        "TRL scores the whole generation batch at once, right-padded, untruncated (pad set to <|endoftext|> so "
        "both read the score at the text's last token)",
        "rollout forwards: ours runs the policy once over the full vocabulary (log-softmax for logprobs, the "
        "entropy and the exact KL to the reference, logged) and takes the engine's sampling logprobs from "
        "generate; TRL computes only the sampled tokens' logprobs, in chunks of per_device_train_batch_size",
        "entropy: TRL computes the per-token entropy in every training forward (for logging); ours once per "
        "rollout",
        "prompt order: TRL's RepeatSampler shuffles the prompts with its own seed, ours with its own "
        "permutation (the same prompts, each once); the samples differ, so response lengths can too",
        "logging: TRL logs every optimizer step (logging_steps=1; the last step's log falls outside the timed "
        "window); ours records its metrics once per iteration",
        "weight decay: the same AdamW(weight_decay=0.01, eps=1e-5); TRL's Trainer exempts biases and norms "
        "(LoRA has neither)",
        "timing: ours times its loop body (time/step_seconds, from sampling the batch to the last optimizer "
        "step); TRL's iteration is the time between on_step_end callbacks, so it also includes the "
        "dataloader's collation and the Trainer's per-step bookkeeping",
    ],
    "grpo": [
        "loss aggregation: both a mean over the minibatch's tokens (TRL loss_type='bnpo', with no gradient "
        "accumulation); TRL's default is 'dapo' (a mean over the generation batch's tokens per accumulation "
        "window), not used",
        "KL in the loss: k3 per token on both; TRL's use_bias_correction_kl (the k3 term times the "
        "importance ratio) is off, since ours has none",
        "old logprobs: TRL recomputes them only when a generation round spans several optimizer steps "
        "(steps_per_generation > 1 or num_iterations > 1; true here), ours always",
    ],
    "rloo": [
        "importance ratio and loss: ours clips the ratio per token and averages over the minibatch's tokens "
        "(the shared PPO step); TRL's RLOOTrainer clips one ratio per sequence (the summed logprob "
        "difference) and averages over sequences",
        "advantage whitening: ours whitens over the batch's response tokens (masked, each token carrying its "
        "response's advantage); TRL's normalize_advantages over the generation batch's sequences",
        "KL placement: both k1 summed over the response and subtracted from the reward (TRL's only option for "
        "RLOO; ours kl_penalty='reward', kl_estimator='k1')",
    ],
}


def with_seconds(r: dict) -> dict:
    """Add the run's median seconds per iteration, without the first (warm-up) when there are more."""
    s = r["step_seconds"]
    return {**r, "s_per_iter": statistics.median(s[1:] or s)}


def measured(side) -> dict:
    """Run one side; record the machine's 1-minute load average before and after, so that a run
    slowed by other work on the machine (tests on the same cores) shows in the result."""
    before = os.getloadavg()[0]
    r = with_seconds(side())
    return {**r, "load_before": before, "load_after": os.getloadavg()[0]}


def run(quick: bool = False, algorithms: tuple[str, ...] = ("grpo", "rloo"), epochs: tuple[int, ...] = (1,),
        steps: int | None = None, repeats: int | None = None, reward_model: str | Path | None = None,
        group_size: int = 4, prompts_per_step: int = 2, mini_batch_size: int = 4,
        max_new_tokens: int | None = None) -> tuple[list[dict], dict]:
    """Run the comparisons (one per algorithm and epoch count); return their records and the
    settings, with what could not be matched."""
    from bench.ppo import small_reward_model
    from rlaif.config import Trainable
    from rlaif.models import EMBEDDED_MODEL, resolve_model
    from rlaif.prompts import load_prompts
    from training.config import PPOConfig

    if not TRL_GRPO_PYTHON.exists():
        raise SystemExit(f"{TRL_GRPO_PYTHON}: missing; run `bash bench/trl/setup.sh grpo` first")
    steps = steps or (1 if quick else 3)
    repeats = repeats or (1 if quick else 2)
    max_new_tokens = max_new_tokens or (8 if quick else 32)
    reward_model = str(reward_model or small_reward_model())
    policy = str(resolve_model(EMBEDDED_MODEL))
    n_prompts = steps * prompts_per_step
    prompts = load_prompts(split="train").head(n_prompts)  # each used once, by every side
    if len(prompts) < n_prompts:
        raise SystemExit(f"only {len(prompts)} training prompts for {steps} x {prompts_per_step}")
    warmup = "first iteration dropped as warm-up" if steps > 1 else "ONE iteration per run: includes warm-up"
    records: list[dict] = []
    settings: dict = {"machine": machine(), "steps": steps, "repeats": repeats, "reward_model": reward_model,
                      "policy": policy, "configs": {}, "unmatched": {}}

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        prompts[["prompt_id", "prompt"]].to_json(tmp / "prompts.jsonl", orient="records", lines=True)
        for algorithm in algorithms:
            for n_epochs in epochs:
                cfg = PPOConfig(
                    algorithm=algorithm, steps=steps, batch_size=prompts_per_step, group_size=group_size,
                    mini_batch_size=mini_batch_size, ppo_epochs=n_epochs,
                    sampling={"max_new_tokens": max_new_tokens, "temperature": 0.7},
                    trainable=Trainable(method="lora", lora_r=8, lora_alpha=16),
                    adaptive_kl=False,  # TRL's beta is fixed
                    missing_eos_penalty=0.0,  # TRL has none
                    checkpoint_every=0, snapshots=0)
                label = f"{algorithm}, {n_epochs} epoch{'s' if n_epochs > 1 else ''}"
                trl_name = {"grpo": "GRPOTrainer", "rloo": "RLOOTrainer"}[algorithm]
                out = tmp / label.replace(", ", "-").replace(" ", "")
                trl_args = ["--algorithm", algorithm, "--policy", policy, "--reward-model", reward_model,
                            "--prompts", str(tmp / "prompts.jsonl"), "--config", cfg.model_dump_json(),
                            "--out", str(out / "trl")]
                print(f"== {label}: ours vs TRL {trl_name}", flush=True)
                runs = interleave({
                    "ours": lambda: measured(lambda: child(OURS, [str(tmp / "prompts.jsonl"), cfg.model_dump_json(),
                                                              reward_model, str(out / "ours")])),
                    "trl": lambda: measured(lambda: child(TRL_CHILD, trl_args, python=TRL_GRPO_PYTHON)),
                }, repeats)
                for side, rs in runs.items():  # the same number of iterations, on as many threads
                    for r in rs:
                        if len(r["step_seconds"]) != steps:
                            raise RuntimeError(f"{side} ran {len(r['step_seconds'])} iterations, expected {steps}")
                        if r["threads"] != runs["ours"][0]["threads"]:
                            raise RuntimeError(f"{side} ran on {r['threads']} torch threads, "
                                               f"ours on {runs['ours'][0]['threads']}")
                version = runs["trl"][0]["trl"]
                unmatched = UNMATCHED["both"] + UNMATCHED[algorithm]
                kl = ("k3 in the loss" if algorithm == "grpo" else "k1 summed over the response, in the reward")
                note = (f"{'QUICK, ' if quick else ''}{steps} iteration(s) x {repeats} interleaved repeat(s) per side "
                        f"({warmup}); {prompts_per_step} prompts x {group_size} samples per iteration, "
                        f"{mini_batch_size} responses per gradient step, {n_epochs} epoch(s) per rollout, "
                        f"max_new_tokens {max_new_tokens}, temperature 0.7; LoRA r8/alpha16 on q/k/v/o, "
                        f"lr {cfg.lr:g}, fixed KL coef {cfg.init_kl_coef:g} ({kl}), clip {cfg.cliprange:g}; "
                        f"policy SmolLM2-135M-Instruct (embedded), fp32, {runs['ours'][0]['threads']} torch "
                        f"threads; reward model {reward_model}; TRL {version} {trl_name}; mean response length "
                        f"ours {statistics.mean(r['mean_response_length'] for r in runs['ours']):.1f}, TRL "
                        f"{statistics.mean(r['mean_response_length'] for r in runs['trl']):.1f} tokens; "
                        f"{machine()}. Not matched: " + "; ".join(unmatched))
                settings["configs"][label] = cfg.model_dump()
                settings["unmatched"][algorithm] = unmatched
                for r in (comparison(f"{label}: time per iteration, ours / TRL {trl_name}", "s_per_iter", "s",
                                     runs, "ours", "trl", target=0.7, higher_is_better=False, note=note),
                          comparison(f"{label}: peak memory, ours / TRL {trl_name}", "peak_rss_gib_training", "GiB",
                                     runs, "ours", "trl", target=1.0, higher_is_better=False, note=note)):
                    r.update(algorithm=algorithm, epochs=n_epochs, iterations_per_run=steps,
                             iterations_counted={side: sum(len(x["step_seconds"][1:] or x["step_seconds"])
                                                           for x in rs) for side, rs in runs.items()},
                             step_seconds={side: [x["step_seconds"] for x in rs] for side, rs in runs.items()},
                             peak_rss_gib_whole_process={side: [x["peak_rss_gib"] for x in rs]
                                                         for side, rs in runs.items()},
                             mean_response_length={side: [x["mean_response_length"] for x in rs]
                                                   for side, rs in runs.items()},
                             load_average={side: [[x["load_before"], x["load_after"]] for x in rs]
                                           for side, rs in runs.items()},
                             trl_version=version, unmatched=unmatched)
                    records.append(r)
    return records, settings


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true",
                    help="1 iteration, 8 new tokens, 1 repeat: a smoke run, not a result")
    ap.add_argument("--algorithm", choices=["grpo", "rloo", "both"], default="both",
                    help="ours vs TRL's GRPOTrainer, RLOOTrainer, or both (default)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[1],
                    help="passes over each rollout (ppo_epochs / num_iterations); several: one comparison each "
                         "(default 1)")
    ap.add_argument("--steps", type=int, help="iterations per run (default 3; the first is dropped)")
    ap.add_argument("--repeats", type=int, help="interleaved repeats per side (default 2)")
    ap.add_argument("--group-size", type=int, default=4, help="samples per prompt (default 4)")
    ap.add_argument("--prompts-per-step", type=int, default=2, help="prompts per iteration (default 2)")
    ap.add_argument("--mini-batch-size", type=int, default=4, help="responses per gradient step (default 4)")
    ap.add_argument("--max-new-tokens", type=int, help="response length cap (default 32; 8 with --quick)")
    ap.add_argument("--reward-model", help="a trained reward-model folder (default: bench/ppo.py's small one)")
    args = ap.parse_args()
    algorithms = ("grpo", "rloo") if args.algorithm == "both" else (args.algorithm,)
    records, settings = run(args.quick, algorithms, tuple(args.epochs), args.steps, args.repeats, args.reward_model,
                            args.group_size, args.prompts_per_step, args.mini_batch_size, args.max_new_tokens)
    print(markdown(records))
    path = write(records, "group" if args.algorithm == "both" else f"group-{args.algorithm}", args.quick)
    # the settings and what could not be matched, beside the comparisons
    data = json.loads(path.read_text())
    data["settings"] = settings
    path.write_text(json.dumps(data, indent=2))
    print(f"written to {path}")


if __name__ == "__main__":
    main()
