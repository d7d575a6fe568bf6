"""The benchmark suite, one command: `make bench` (or `.venv/bin/python bench/run.py`).

Runs each benchmark in its own process (vLLM and peak-memory figures stay separate), each
comparing its sides in one invocation, interleaved. Then merges today's result of every
benchmark (so `--only` runs add up) into `bench/results/<date>.json` and a markdown table,
`bench/results/<date>.md`, with every ratio against its target.

    .venv/bin/python bench/run.py [--only judge rollout ...] [--quick] [--merge]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, ROOT, machine, result_path

# name -> (script, the result file it writes under bench/results/, without the date)
BENCHMARKS = {
    "judge": ("bench/judge.py", "judge"),
    "rollout": ("bench/rollout.py", "rollout"),
    "engines": ("bench/engines.py", "engines"),
    "reward": ("bench/reward.py", "reward"),
    "ppo": ("bench/ppo.py", "ppo"),
    "group": ("bench/group.py", "group"),
    "store": ("bench/store.py", "store"),
    "e2e": ("bench/e2e.py", "e2e"),
    "load": ("bench/load.py", "load"),
    "rankings": ("bench/rankings.py", "rankings"),
}


def table(results: dict) -> str:
    lines = ["| comparison | A | B | A (median) | B (median) | unit | ratio A/B | target | met |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        for c in r.get("comparisons", []):
            met = {True: "yes", False: "**no**", None: "-"}[c["met"]]
            lines.append(f"| {c['comparison']} | {c['a']} | {c['b']} | {c['a_median']:.4g} | {c['b_median']:.4g} "
                         f"| {c['unit']} | {c['ratio']:.2f} | {c['target'] or '-'} | {met} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=list(BENCHMARKS), help="run these benchmarks only")
    ap.add_argument("--quick", action="store_true", help="tiny settings, to check the scripts run")
    ap.add_argument("--merge", action="store_true",
                    help="run nothing: merge today's results (e.g. of a benchmark run by hand) into the table")
    args = ap.parse_args()
    today, seconds, failed = date.today().isoformat(), {}, {}
    for name in [] if args.merge else args.only or BENCHMARKS:
        script, stem = BENCHMARKS[name]
        print(f"== {name}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run([sys.executable, script, *(["--quick"] if args.quick else [])], cwd=ROOT).returncode
        seconds[name] = time.perf_counter() - t0
        if rc != 0:
            failed[name] = f"exit status {rc}"
            print(f"!! {name} failed ({failed[name]}); going on", flush=True)
    # today's latest result of every benchmark, so `--only` runs add up to the whole table
    results = {name: {**json.loads(result_path(stem, args.quick).read_text()), "bench_seconds": seconds.get(name)}
               for name, (_, stem) in BENCHMARKS.items()
               if name not in failed and result_path(stem, args.quick).exists()}
    merged = {"date": today, "machine": machine(), "quick": args.quick, "results": results, "failed": failed}
    suffix = "-quick" if args.quick else ""
    (RESULTS / f"{today}{suffix}.json").write_text(json.dumps(merged, indent=2))
    md = f"# Benchmarks {today}{' (quick settings)' if args.quick else ''}\n\nMachine: {merged['machine']}\n\n"
    md += table(results) + "\n"
    from bench import e2e, load, rankings, store  # their own tables: scaling, per-stage times, concurrency, RM accuracy

    for name, module in (("store", store), ("e2e", e2e), ("load", load), ("rankings", rankings)):
        if name in results:
            md += f"\n## {name}\n\n{module.markdown(results[name])}\n"
    if failed:
        md += "\nFailed: " + ", ".join(f"{k} ({v})" for k, v in failed.items()) + "\n"
    (RESULTS / f"{today}{suffix}.md").write_text(md)
    print(md)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
