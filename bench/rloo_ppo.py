"""RLOO and GRPO against PPO: programmatic-reward gain per wall-clock second of training, side
by side in one run, interleaved by seed (seed 0: PPO, RLOO, GRPO; seed 1: ...).

The task is the tests' (tests/integration/test_training.py): a tiny random-weight Llama with a
peaked next-token distribution, and a reward that is the share of response tokens from a fixed
half of the vocabulary, so a policy can raise it by turning its hidden state and the gain is
known to be learnable. Every side gets the same budget: 32 responses per rollout (PPO: 32
prompts once; RLOO and GRPO: 8 prompts, 4 samples each), the same steps, epochs, minibatch,
response length, learning rate, LoRA and KL coefficient (fixed). The gain is the mean reward
of the trained policy minus the reference's, on 8 fresh samples of each of the 32 prompts;
gain per second divides it by the training wall time (train_ppo, models loaded included).
Reported per side: mean over seeds with a 95% bootstrap interval, and each group method's
ratio to PPO (paired by seed), with its interval.

    .venv/bin/python -m bench.rloo_ppo [--seeds 5] [--steps 8] [--quick]

Writes bench/results/<date>-rloo-ppo.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np

from bench.common import ROOT, machine, result_path

SIDES = {"ppo": 1, "rloo": 4, "grpo": 4}  # algorithm: samples per prompt
RESPONSES_PER_STEP = 32


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--quick", action="store_true", help="2 seeds, 3 steps: checks that it runs")
    args = ap.parse_args()
    seeds, steps = (2, 3) if args.quick else (args.seeds, args.steps)

    sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "tests" / "integration")]
    from conftest import _tiny_llama  # tests/conftest.py: the tests' tiny model
    from test_training import fresh_mean_reward, good_token_reward, prefs_frame, reference_frame

    from rlaif.generation import chat_text
    from rlaif.models import load_causal_lm
    from rlaif.prompts import load_prompts
    from training.config import PPOConfig, RewardConfig
    from training.ppo import train_ppo
    from training.reward import train_reward_model

    tmp = Path(tempfile.mkdtemp(prefix="rloo-ppo-"))
    model = _tiny_llama(tmp / "peaked", initializer_range=0.5)
    rm = tmp / "rm"  # only read for its path: the programmatic reward replaces its scores
    train_reward_model(prefs_frame(), reference_frame(), str(_tiny_llama(tmp / "tiny")), rm,
                       RewardConfig(epochs=1, batch_size=2), {"run_id": "bench"})
    tok, reward = good_token_reward(model)
    prompts = load_prompts(split="train", limit=32)
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]
    base_cfg = dict(steps=steps, mini_batch_size=16, ppo_epochs=4, sampling={"max_new_tokens": 2}, lr=1e-3,
                    init_kl_coef=0.05, adaptive_kl=False, missing_eos_penalty=0.0, snapshots=0, checkpoint_every=0)
    reference = fresh_mean_reward(load_causal_lm(model), model, queries, PPOConfig().sampling.model_copy(
        update={"max_new_tokens": 2}), reward)

    runs: dict[str, list[dict]] = {s: [] for s in SIDES}
    for seed in range(seeds):
        for algorithm, k in SIDES.items():
            cfg = PPOConfig(algorithm=algorithm, group_size=k, batch_size=RESPONSES_PER_STEP // k, seed=seed,
                            **base_cfg)
            out = tmp / f"{algorithm}-{seed}"
            t0 = time.perf_counter()
            train_ppo(prompts, str(model), str(rm), out, cfg, {}, scorer=reward)
            seconds = time.perf_counter() - t0
            gain = fresh_mean_reward(load_causal_lm(out), model, queries, cfg.sampling, reward) - reference
            runs[algorithm].append({"seed": seed, "gain": gain, "seconds": seconds, "gain_per_second": gain / seconds})
            print(f"seed {seed} {algorithm}: gain {gain:.3f} in {seconds:.1f} s", flush=True)

    rng = np.random.default_rng(0)
    boot = rng.integers(0, seeds, (2000, seeds))  # seeds resampled, the same draw for every side (paired)

    def summary(values: np.ndarray) -> dict:
        draws = values[boot].mean(1)
        return {"mean": float(values.mean()), "ci95": [float(x) for x in np.percentile(draws, [2.5, 97.5])]}

    records = {}
    for algorithm, rs in runs.items():
        records[algorithm] = {k: summary(np.array([r[k] for r in rs])) for k in ("gain", "seconds", "gain_per_second")}
    ppo_gps = np.array([r["gain_per_second"] for r in runs["ppo"]])
    for algorithm in ("rloo", "grpo"):
        gps = np.array([r["gain_per_second"] for r in runs[algorithm]])
        draws = gps[boot].mean(1) / ppo_gps[boot].mean(1)
        records[algorithm]["gain_per_second_vs_ppo"] = {
            "ratio": float(gps.mean() / ppo_gps.mean()), "ci95": [float(x) for x in np.percentile(draws, [2.5, 97.5])]}

    out = result_path("rloo-ppo", args.quick)
    out.write_text(json.dumps({"machine": machine(), "seeds": seeds, "steps": steps,
                               "responses_per_step": RESPONSES_PER_STEP, "reference_reward": reference,
                               "config": base_cfg, "summary": records, "runs": runs}, indent=2))
    print(f"\nn = {seeds} seeds per side, 95% bootstrap intervals over seeds; reference reward {reference:.3f}\n")
    print("| algorithm | gain | seconds | gain per second | vs PPO |\n|---|---|---|---|---|")
    for algorithm, r in records.items():
        vs = r.get("gain_per_second_vs_ppo")
        fmt = lambda d, p=3: f"{d['mean']:.{p}f} [{d['ci95'][0]:.{p}f}, {d['ci95'][1]:.{p}f}]"  # noqa: E731
        print(f"| {algorithm} | {fmt(r['gain'])} | {fmt(r['seconds'], 1)} | {fmt(r['gain_per_second'], 4)} | "
              + (f"{vs['ratio']:.2f}x [{vs['ci95'][0]:.2f}, {vs['ci95'][1]:.2f}]" if vs else "") + " |")
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
