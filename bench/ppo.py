"""PPO cost with LoRA vs full fine-tuning, side by side in one run, on the embedded model.

Each side runs `train_ppo` for a few steps in a fresh subprocess (so peak memory is its own),
interleaved A B A B, with the same prompts, reward model and settings. Reports the median
wall time per PPO step (rollout + update; from the `time/step_seconds` metric), the peak
resident memory of the process, and the full / LoRA ratios.

    .venv/bin/python bench/ppo.py --reward-model data/checkpoints/<sha>/<run>/reward_model [--steps 3]

Writes bench/results/<date>-ppo.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
from datetime import date
from pathlib import Path

RESULTS = Path(__file__).parent / "results"

CHILD = """
import json, resource, sys
from pathlib import Path
from rlaif.models import EMBEDDED_MODEL
from rlaif.prompts import load_prompts
from training.ppo import PPOConfig, train_ppo
cfg = PPOConfig.model_validate_json(sys.argv[1])
metrics = train_ppo(load_prompts(split="train"), EMBEDDED_MODEL, sys.argv[2], Path(sys.argv[3]), cfg, {})
steps = [m["value"] for m in metrics if m["metric"] == "time/step_seconds"]
print("RESULT " + json.dumps({"step_seconds": steps,
                              "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}))
"""


def run_side(cfg: dict, reward_model: str) -> dict:
    from training.ppo import PPOConfig

    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run([sys.executable, "-c", CHILD, PPOConfig(**cfg).model_dump_json(), reward_model,
                              str(Path(tmp) / "policy")], capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"PPO side {cfg} failed:\n{out.stderr[-3000:]}")
    return json.loads(next(line for line in out.stdout.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reward-model", required=True, help="a trained reward-model folder (e.g. from `make demo`)")
    ap.add_argument("--steps", type=int, default=3, help="PPO steps per side; the first is dropped as warm-up")
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    base = {"steps": args.steps, "checkpoint_every": 0}  # the demo's other PPO settings
    sides = {"lora": {**base, "lora": True}, "full": {**base, "lora": False, "lr": 1e-5}}
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for _ in range(args.repeats):
        for name, cfg in sides.items():  # interleaved: A B A B
            runs[name].append(run_side(cfg, args.reward_model))
            print(name, runs[name][-1], flush=True)
    med = {k: {"step_seconds": statistics.median(s for r in v for s in r["step_seconds"][1:] or r["step_seconds"]),
               "peak_rss_gib": max(r["peak_rss_gib"] for r in v)} for k, v in runs.items()}
    from training.ppo import PPOConfig

    result = {
        "date": date.today().isoformat(), "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "model": "SmolLM2-135M-Instruct (embedded)", "reward_model": args.reward_model,
        "ppo_config": PPOConfig(**base).model_dump(), "repeats": args.repeats, "runs": runs, "summary": med,
        "ratios": {"full / lora step time": med["full"]["step_seconds"] / med["lora"]["step_seconds"],
                   "full / lora peak memory": med["full"]["peak_rss_gib"] / med["lora"]["peak_rss_gib"]},
    }
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{result['date']}-ppo.json"
    out.write_text(json.dumps(result, indent=2))
    print(f"PPO, {args.steps} steps x {args.repeats} interleaved repeats per side, {result['machine']}")
    print("| policy | median s / PPO step | peak RSS (GiB) |\n|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v['step_seconds']:.1f} | {v['peak_rss_gib']:.2f} |")
    for k, v in result["ratios"].items():
        print(f"{k}: {v:.2f}x")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
