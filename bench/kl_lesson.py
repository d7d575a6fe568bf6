"""The seeds' lesson, as an experiment: PPO with the KL term off (a fixed kl_coef of 0) beside
the default (kl_coef 0.05, adaptive), on the embedded models, everything else the same.

Each arm is one `rlaif run` (the same seeds, so both collect the same responses and labels and
train the same reward model); PPO saves `--snapshots` intermediate policies, and the
evaluation reads, for each, the exact KL to the reference, the reward-model score and the
judge-free probes (reference perplexity, distinct-2, repeated 4-grams, length, EOS) on every
held-out prompt. Writes bench/results/<date>-kl-lesson.json and docs/kl-lesson.png, and prints
the tables docs/evaluation.md quotes.

    .venv/bin/python bench/kl_lesson.py [--steps 32] [--snapshots 4] [--data DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine, result_path

ARMS = {"kl": [], "no-kl": ["--ppo.init-kl-coef", "0", "--ppo.no-adaptive-kl"]}
PROBES = ("ref_perplexity", "distinct_2", "repeats_4gram", "length", "no_eos", "refusal_harmful")


def run_arm(name: str, data: Path, steps: int, snapshots: int) -> float:
    cmd = [str(Path(sys.executable).parent / "rlaif"), "run", "--run-id", f"kl-lesson-{name}", "--ppo.steps", str(steps),
           "--ppo.snapshots", str(snapshots), *ARMS[name], "policy-engine:vllm", "judge.engine:vllm"]  # engines last
    print("$", " ".join(cmd[1:]), flush=True)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=ROOT, env={**os.environ, "RLAIF_DATA": str(data)}, check=True)
    return time.perf_counter() - t0


def arm_result(name: str, data: Path) -> dict:
    """The arm's PPO curve (per step) and its evaluation (per snapshot: KL, RM score, probes)."""
    import pandas as pd
    import pyarrow.parquet as pq

    from rlaif.store import Store

    store, run_id = Store(data), f"kl-lesson-{name}"
    ppo = store.read("ppo_metrics", run_id=run_id)
    per_step = ppo[ppo["metric"].isin(["objective/scores", "objective/kl", "objective/kl_coef"])].pivot_table(
        index="step", columns="metric", values="value")
    part = next(p for p in store.parts("eval") if pq.read_table(p, columns=["run_id"]).column(0)[0].as_py() == run_id)
    meta = json.loads(pq.read_schema(part).metadata[b"rlaif.metadata"])  # the evaluation's curve and probes
    probes = pd.DataFrame(meta["probes"])
    return {"ppo": per_step.reset_index().to_dict("records"), "curve": meta["curve"],
            "probes": probes[probes["probe"].isin(PROBES)].to_dict("records")}


def tables(results: dict) -> str:
    lines = []
    for name, r in results.items():
        lines += [f"### {name}", "", "| PPO step | KL (nats, exact) | RM score | "
                  + " | ".join(PROBES) + " |", "|---|---|---|" + "---|" * len(PROBES)]
        probes = {(p["step"], p["probe"]): p for p in r["probes"]}
        for point in r["curve"]:
            step = point["step"]
            cells = []
            for probe in PROBES:
                p = probes.get((step, probe)) if step else next((q for q in r["probes"] if q["probe"] == probe), None)
                if p is None:
                    cells.append("")
                    continue
                who = "policy" if step else "reference"
                cells.append(f"{p[who]:.3g} ({p[who + '_ci_low']:.3g} to {p[who + '_ci_high']:.3g})")
            lines.append(f"| {step} | {point['kl']:.3g} ({point.get('kl_ci_low', 0):.3g} to "
                         f"{point.get('kl_ci_high', 0):.3g}) | {point['rm_score']:.3g} | " + " | ".join(cells) + " |")
        scores = [s["objective/scores"] for s in r["ppo"]]
        lines += ["", f"PPO training score (reward model, per step, batch of 8): first 4 steps mean "
                      f"{sum(scores[:4]) / 4:.3g}, last 4 mean {sum(scores[-4:]) / 4:.3g}", ""]
    return "\n".join(lines)


def plot(results: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, r in results.items():
        kl = [p["kl"] for p in r["curve"]]
        axes[0].plot(kl, [p["rm_score"] for p in r["curve"]], "o-", label=name)
        ppl = {p["step"]: p["policy"] for p in r["probes"] if p["probe"] == "ref_perplexity"}
        ref = next(p["reference"] for p in r["probes"] if p["probe"] == "ref_perplexity")
        axes[1].plot(kl, [ref] + [ppl[p["step"]] for p in r["curve"][1:]], "o-", label=name)
    axes[0].set(xlabel="KL to the reference (nats per response, exact)", ylabel="reward-model score (held-out)")
    axes[1].set(xlabel="KL to the reference (nats per response, exact)", ylabel="reference perplexity of responses")
    for ax in axes:
        ax.legend()
    fig.suptitle("PPO with and without the KL term (embedded models)")
    fig.tight_layout()
    fig.savefig(out, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=32)
    ap.add_argument("--snapshots", type=int, default=4)
    ap.add_argument("--data", type=Path, default=ROOT / "data" / "kl-lesson")
    args = ap.parse_args()
    wall = {name: run_arm(name, args.data, args.steps, args.snapshots) for name in ARMS}
    results = {name: arm_result(name, args.data) for name in ARMS}
    out = result_path("kl-lesson")
    out.write_text(json.dumps({"machine": machine(), "steps": args.steps, "snapshots": args.snapshots,
                               "wall_seconds": wall, "arms": results}, indent=1, default=str))
    plot(results, ROOT / "docs" / "kl-lesson.png")
    print(tables(results))
    print(f"\nwrote {out} and docs/kl-lesson.png")


if __name__ == "__main__":
    main()
