"""End to end: the wall time of `rlaif run` (default settings, the embedded models; `make demo`
adds `policy-engine:vllm judge.engine:vllm`, which bench/engines.py passes as `args`) with its
time per stage, so the slowest stage is visible.

It runs in a fresh data root and a fresh PREFECT_HOME (so nothing is cached and the Prefect
database holds this run only), then reads each subflow's and each task's run time back from
that database. The setup `make demo` does first (venv, model conversion) is already done and
not timed.

    .venv/bin/python bench/e2e.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, machine, result_path

QUICK = ["--generate.n-prompts", "4", "--ppo.steps", "1", "--eval.n-prompts", "2", "--eval.sampling.max-new-tokens", "8"]


async def durations() -> dict:
    """Subflow and task run times from this PREFECT_HOME's database."""
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        flows = {f.id: f.name for f in await client.read_flows()}
        flow_runs = await client.read_flow_runs()
        task_runs = await client.read_task_runs()
    stages = [{"flow": flows[r.flow_id], "seconds": r.total_run_time.total_seconds(), "state": r.state_name}
              for r in flow_runs]
    tasks: dict[str, float] = {}
    for r in task_runs:
        name = r.name.rsplit("-", 1)[0]  # task runs are named <task>-<suffix>
        tasks[name] = tasks.get(name, 0.0) + r.total_run_time.total_seconds()
    return {"flows": sorted(stages, key=lambda s: -s["seconds"]),
            "tasks": dict(sorted(tasks.items(), key=lambda kv: -kv[1]))}


def run(quick: bool = False, args: list[str] = ()) -> dict:
    """`rlaif run` with `args` (e.g. engine choices) after the settings."""
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-e2e-") as tmp:
        env = {**os.environ, "PREFECT_HOME": str(Path(tmp) / "prefect"), "RLAIF_DATA": str(Path(tmp) / "data")}
        env.pop("PREFECT_API_URL", None)
        cmd = [str(Path(sys.executable).parent / "rlaif"), "run", *(QUICK if quick else []), *args]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr[-3000:]}")
        read = subprocess.run([sys.executable, __file__, "--read-durations"], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=True)
    times = json.loads(read.stdout.strip().splitlines()[-1])
    stages = [s for s in times["flows"] if s["flow"] != "rlaif-pipeline"]
    top = next(s for s in times["flows"] if s["flow"] == "rlaif-pipeline")
    return {"command": " ".join(["rlaif", "run", *(QUICK if quick else []), *args]), "wall_s": wall,
            "pipeline_flow_s": top["seconds"], "stages": stages, "tasks": times["tasks"],
            "slowest_stage": stages[0]["flow"] if stages else None}


def markdown(result: dict) -> str:
    total = result["pipeline_flow_s"]
    lines = [f"`{result['command']}`: **{result['wall_s'] / 60:.1f} min** wall time "
             f"(the pipeline flow itself: {total / 60:.1f} min; the rest is start-up and Prefect's temporary server).",
             "", "| stage (subflow) | seconds | share |", "|---|---|---|"]
    lines += [f"| {s['flow']} | {s['seconds']:.0f} | {s['seconds'] / total:.0%} |" for s in result.stages]
    lines += ["", "| task | seconds |", "|---|---|"]
    lines += [f"| {k} | {v:.0f} |" for k, v in result["tasks"].items() if v >= 1]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a tiny run (4 prompts, 1 PPO step) to check the script")
    ap.add_argument("--read-durations", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.read_durations:
        print(json.dumps(asyncio.run(durations())))
        return
    result = {"date": date.today().isoformat(), "machine": machine(), **run(args.quick)}
    out = result_path("e2e", args.quick)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
