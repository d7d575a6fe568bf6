"""Shared by the benchmarks: interleaved side-by-side runs, child processes (each side's peak
memory is its own), and one result record per comparison.

A comparison runs its sides in one invocation, interleaved A B A B, on the same data, model
and settings, and reports each side's median and the ratio of the medians. A target is a
bound on that ratio; `met` says whether it held. No timing is ever asserted in a test.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
RESULT_PREFIX = "RESULT "


def machine() -> str:
    cpus = os.cpu_count()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.machine()}, {cpus} CPU cores, {mem:.0f} GiB RAM, Python {platform.python_version()}"


def interleave(sides: dict[str, Callable[[], dict]], repeats: int) -> dict[str, list[dict]]:
    """Run every side `repeats` times, A B A B; each call returns a dict of measurements."""
    runs: dict[str, list[dict]] = {k: [] for k in sides}
    for r in range(repeats):
        for name, fn in sides.items():
            runs[name].append(fn())
            print(f"[{r + 1}/{repeats}] {name}: {json.dumps(_short(runs[name][-1]))}", flush=True)
    return runs


def _short(d: dict) -> dict:
    return {k: round(v, 4) if isinstance(v, float) else v for k, v in d.items() if not isinstance(v, (list, dict))}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def child(code_or_script: str | Path, args: list[str], python: str | Path = sys.executable,
          env: dict | None = None, timeout: float | None = None) -> dict:
    """Run a side in a fresh process (so its peak RSS is its own) and parse the one line it
    prints as `RESULT {json}`. A failing side raises with the end of its stderr."""
    cmd = [str(python)] + (["-c", code_or_script] if isinstance(code_or_script, str) else [str(code_or_script)])
    out = subprocess.run(cmd + args, capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                         env={**os.environ, **(env or {})})
    if out.returncode != 0:
        raise RuntimeError(f"benchmark side failed ({' '.join(cmd[:3])} ...):\n{out.stderr[-3000:]}")
    lines = [line for line in out.stdout.splitlines() if line.startswith(RESULT_PREFIX)]
    if not lines:
        raise RuntimeError(f"benchmark side printed no {RESULT_PREFIX!r} line:\n{out.stdout[-2000:]}")
    return json.loads(lines[-1][len(RESULT_PREFIX):])


def peak_rss_gib() -> float:
    """This process's peak resident memory (Linux reports ru_maxrss in KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def comparison(name: str, metric: str, unit: str, runs: dict[str, list[dict]], a: str, b: str,
               target: float | None, higher_is_better: bool, note: str = "") -> dict:
    """One row: the medians of `metric` for sides a and b, and a/b against the target.

    higher_is_better: the target is a lower bound on a/b (throughput); otherwise an upper
    bound (time, memory)."""
    med = {side: statistics.median(r[metric] for r in rs) for side, rs in runs.items()}
    ratio = med[a] / med[b] if med[b] else float("nan")
    met = None if target is None else (ratio >= target if higher_is_better else ratio <= target)
    return {"comparison": name, "metric": metric, "unit": unit, "a": a, "b": b,
            "a_median": med[a], "b_median": med[b], "ratio": ratio,
            "target": None if target is None else f"{'>=' if higher_is_better else '<='} {target:g}",
            "met": met, "runs": {side: [r[metric] for r in rs] for side, rs in runs.items()}, "note": note}


def result_path(name: str, quick: bool = False) -> Path:
    """bench/results/<date>-<name>.json; a --quick run writes beside it, never over it."""
    RESULTS.mkdir(exist_ok=True)
    return RESULTS / f"{datetime.date.today().isoformat()}-{name}{'-quick' if quick else ''}.json"


def markdown(records: list[dict]) -> str:
    """A markdown table of comparison records."""
    lines = ["| comparison | a | b | a median | b median | a / b | target | met |", "|---|---|---|---|---|---|---|---|"]
    for r in records:
        lines.append(f"| {r['comparison']} | {r['a']} | {r['b']} | {r['a_median']:.4g} {r['unit']} | "
                     f"{r['b_median']:.4g} {r['unit']} | {r['ratio']:.3f} | {r['target'] or ''} | "
                     f"{'' if r['met'] is None else r['met']} |")
    return "\n".join(lines)


def write(records: list[dict], name: str, quick: bool) -> Path:
    """The comparisons, with the date and machine, to bench/results/<date>-<name>[-quick].json."""
    out = result_path(name, quick)
    out.write_text(json.dumps({"date": datetime.date.today().isoformat(), "machine": machine(), "quick": quick,
                               "comparisons": records}, indent=2))
    return out
