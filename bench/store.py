"""The Parquet store at 10k, 100k and 1M preference rows.

For each size, a fresh data root gets that many synthetic preference rows (prompts and
responses of realistic length) in parts of 2,500 rows, spread over 4 constitutions. Measured:
- append: `Store.write` of every part (atomic: temporary file, fsync, rename), rows/s;
- read back: `Store.read` of the whole table, rows/s;
- filtered read of one constitution: `Store.read(constitution_sha=...)`, which lists that
  constitution's folder only, against the same filter pushed into a pyarrow dataset scan of
  the whole table (`pandas.read_parquet(filters=...)`), which opens every part's footer.
  Interleaved A B A B; the parts each side opened are counted, and the store's must all lie
  in the constitution's folder.
Linear cost shows as a flat seconds-per-million-rows column across the sizes.

    .venv/bin/python bench/store.py [--sizes 10000 100000 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import comparison, interleave, machine, result_path, timed
from rlaif.store import Lineage, Store

PART_ROWS = 2_500  # 4 parts per 10k rows, one per constitution
CONSTITUTIONS = [f"{i:x}" * 40 for i in range(1, 5)]  # 4 fake 40-hex shas


def part_frame(n: int, start: int, rng: np.random.Generator) -> pd.DataFrame:
    """n preference rows; texts of the length the pipeline writes (~200-400 characters)."""
    words = np.array("the a model answer safe helpful please explain why how what when data".split())
    text = lambda k: [" ".join(rng.choice(words, k)) for _ in range(n)]  # noqa: E731
    p_first, p_second = rng.random(n), rng.random(n)
    return pd.DataFrame({
        "pair_id": [f"pair-{start + i}" for i in range(n)], "prompt_id": [f"p{(start + i) // 2}" for i in range(n)],
        "prompt": text(12), "response_a": text(50), "response_b": text(50),
        "p_a_first": p_first, "p_a_second": p_second, "p_chosen": (p_first + 1 - p_second) / 2,
        "chosen": "a", "rejected": "b", "position_consistent": (p_first > 0.5) == (p_second < 0.5),
        "principle_ids": [["p1"]] * n, "judge_backend": "transformers", "template_version": "v1",
        "rationales": [[]] * n, "score_a": np.nan, "score_b": np.nan, "valid": True, "invalid_reason": None,
    })


def measure_size(rows: int, repeats: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix=f"rlaif-bench-store-{rows}-"))
    try:
        store, rng = Store(root), np.random.default_rng(0)
        frames = [part_frame(min(PART_ROWS, rows - s), s, rng) for s in range(0, rows, PART_ROWS)]
        _, write_s = timed(lambda: [store.write("preferences", f, key=f"bench/{i}",
                                                lineage=Lineage(run_id=f"bench-{i}",
                                                                constitution_sha=CONSTITUTIONS[i % 4]))
                                    for i, f in enumerate(frames)])
        sha = CONSTITUTIONS[0]
        want = sum(len(f) for i, f in enumerate(frames) if i % 4 == 0)
        opened: dict[str, set] = {"store (constitution folder)": set(), "pyarrow filter over the table": set()}

        def filtered_store():
            df, s = timed(lambda: store.read("preferences", constitution_sha=sha))
            opened["store (constitution folder)"].update(str(p) for p in store.parts("preferences", sha))
            assert len(df) == want, (len(df), want)
            return {"seconds": s, "rows_per_s": len(df) / s}

        def filtered_scan():
            df, s = timed(lambda: pd.read_parquet(root / "preferences", filters=[("constitution_sha", "==", sha)]))
            opened["pyarrow filter over the table"].update(str(p) for p in (root / "preferences").glob("*/part-*"))
            assert len(df) == want, (len(df), want)
            return {"seconds": s, "rows_per_s": len(df) / s}

        runs = interleave({"store (constitution folder)": filtered_store,
                           "pyarrow filter over the table": filtered_scan}, repeats)
        full, read_s = timed(lambda: store.read("preferences"))
        assert len(full) == rows and full["pair_id"].is_unique  # nothing lost or duplicated
        own = store.table_dir("preferences", sha)
        assert all(Path(p).parent == own for p in opened["store (constitution folder)"])
        on_disk = sum(p.stat().st_size for p in (root / "preferences").rglob("part-*"))
        return {
            "rows": rows, "parts": len(frames), "bytes_on_disk": on_disk,
            "append_rows_per_s": rows / write_s, "append_s_per_million": write_s / rows * 1e6,
            "read_rows_per_s": rows / read_s, "read_s_per_million": read_s / rows * 1e6,
            "filtered_rows": want,
            "filtered_parts_opened": {k: len(v) for k, v in opened.items()},
            "filtered": comparison(f"store: filtered read of 1 of 4 constitutions, {rows:,} rows", "seconds",
                                   "s", runs, "store (constitution folder)", "pyarrow filter over the table",
                                   target=None, higher_is_better=False,
                                   note="ratio < 1: the store's folder pruning is faster"),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(quick: bool = False, sizes: list[int] | None = None, repeats: int = 3) -> dict:
    sizes = sizes or ([10_000, 30_000] if quick else [10_000, 100_000, 1_000_000])
    per_size = [measure_size(n, 1 if quick else repeats) for n in sizes]
    big, small = per_size[-1], per_size[0]
    scale = big["rows"] / small["rows"]
    return {
        "sizes": per_size,
        # linear cost: seconds grow by the same factor as rows (1.0 = exactly linear)
        "append_growth_over_linear": big["append_s_per_million"] / small["append_s_per_million"],
        "read_growth_over_linear": big["read_s_per_million"] / small["read_s_per_million"],
        "scale": scale,
        "comparisons": [s["filtered"] for s in per_size],
    }


def markdown(result: dict) -> str:
    lines = ["| rows | parts | MB on disk | append rows/s | read rows/s | append s/1M | read s/1M "
             "| filtered read: store s | pyarrow scan s | ratio | parts opened (store / scan) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for s in result["sizes"]:
        f, o = s["filtered"], list(s["filtered_parts_opened"].values())
        lines.append(f"| {s['rows']:,} | {s['parts']} | {s['bytes_on_disk'] / 1e6:.0f} | {s['append_rows_per_s']:,.0f} "
                     f"| {s['read_rows_per_s']:,.0f} | {s['append_s_per_million']:.1f} | {s['read_s_per_million']:.1f} "
                     f"| {f['a_median']:.3f} | {f['b_median']:.3f} | {f['ratio']:.2f} | {o[0]} / {o[1]} |")
    lines.append(f"\nFrom {result['sizes'][0]['rows']:,} to {result['sizes'][-1]['rows']:,} rows, seconds per row "
                 f"grew {result['append_growth_over_linear']:.2f}x (append) and {result['read_growth_over_linear']:.2f}x "
                 "(read); 1.00 is exactly linear.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="10k and 30k rows, one repeat")
    args = ap.parse_args()
    result = {"date": date.today().isoformat(), "machine": machine(),
              **run(args.quick, args.sizes, args.repeats)}
    out = result_path("store", args.quick)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
