"""The Parquet store: one dataset per table under a data root.

    <root>/<table>/<constitution_sha[:12]>/part-<key hash>.parquet

- Every row carries the lineage columns (`LINEAGE`).
- Datasets are namespaced by constitution, so a filtered read opens only that folder.
- Writes are atomic (temporary file, fsync, rename). Readers, pandas included, skip the
  dot-prefixed temporary files, so a crash mid-write leaves no visible partial data.
- A temporary's name carries its writer (host, pid, start time; rlaif.io). `sweep_stale`,
  run once per run before any model work, removes those of killed writes anywhere under the
  root: their writer on this host is gone, or they are older than RLAIF_STALE_TEMP_HOURS
  (24). One that a live run is still writing stays.
- Part names are a hash of the writer's content key: a retried task replaces its own part
  instead of appending duplicate rows.
- `pandas.read_parquet(root / "preferences")` reads a whole table directly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from rlaif.io import sweep_stale, temp_path, write_file_atomic

log = logging.getLogger("rlaif")

SCHEMA_VERSION = 5  # 2: preferences gained rationales, score_a, score_b; 3: eval gained snapshots,
#                     KL and harmlessness; 4: eval gained the probes and the exact KL, preferences
#                     the injection columns; 5: the rankings and matches tables, preferences the
#                     response ids.
#                     Older parts read with the added columns null, renamed ones under their new name.
# Columns renamed at a version: parts written before it are read under the new names. The eval
# table's policy_kl was the k1 estimate up to version 3; from 4 it is the exact KL.
RENAMED = {4: {"eval": {"policy_harmless": "policy_adherence", "reference_harmless": "reference_adherence",
                        "policy_kl": "policy_kl_k1"}}}

LINEAGE = [
    pa.field("run_id", pa.string(), nullable=False),
    pa.field("flow_run_id", pa.string()),
    pa.field("constitution_sha", pa.string(), nullable=False),
    pa.field("policy_model", pa.string()),
    pa.field("judge_model", pa.string()),
    pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
    pa.field("schema_version", pa.int32(), nullable=False),
]
LINEAGE_COLUMNS = [f.name for f in LINEAGE]

_s, _i, _f, _b = pa.string(), pa.int64(), pa.float64(), pa.bool_()
_METRICS = [("step", _i), ("metric", _s), ("value", _f), ("text", _s)]

TABLES: dict[str, list[tuple[str, pa.DataType]]] = {
    "responses": [
        ("prompt_id", _s), ("split", _s), ("prompt", _s), ("response_id", _s),
        ("sample_idx", _i), ("response", _s), ("n_tokens", _i), ("has_eos", _b),
        ("temperature", _f), ("seed", _i),
    ],
    "critiques": [
        ("response_id", _s), ("prompt_id", _s), ("prompt", _s), ("response", _s),
        ("round", _i), ("principle_id", _s), ("critique", _s), ("revision", _s),
        ("template_version", _s),
    ],
    "preferences": [
        ("pair_id", _s), ("prompt_id", _s), ("prompt", _s),
        ("response_a", _s), ("response_b", _s),
        ("response_a_id", _s), ("response_b_id", _s),  # their `responses` ids (a revision has none)
        ("p_a_first", _f),   # P(label A) with response_a shown first
        ("p_a_second", _f),  # P(label A) with response_b shown first (swapped order)
        ("p_chosen", _f),    # soft label: P(chosen is better), averaged over both orders
        ("chosen", _s), ("rejected", _s), ("position_consistent", _b),
        ("principle_ids", pa.list_(_s)), ("judge_backend", _s), ("template_version", _s),
        ("rationales", pa.list_(_s)),  # chain of thought: one per (principle, order)
        ("score_a", _f), ("score_b", _f),  # direct scores in [-1, 1] (d-RLAIF), when asked
        ("valid", _b), ("invalid_reason", _s),
        # text addressing the judge (judges.feedback.INJECTION_PATTERNS): the matched pattern, the
        # side(s) carrying it, and why the label was overridden (FeedbackConfig.on_injection)
        ("injection_suspected", _b), ("injection_pattern", _s), ("injection_side", _s), ("override_reason", _s),
    ],
    # each prompt's tournament (its judged pairs) aggregated per response (judges.rankings)
    "rankings": [
        ("prompt_id", _s), ("prompt", _s), ("response_id", _s), ("response", _s),
        ("bt_strength", _f),  # Bradley-Terry strength, log-odds scale, mean 0 within the prompt
        ("elo", _f), ("elo_ci_low", _f), ("elo_ci_high", _f),  # mean and 95% over shuffled orders
        ("wins", _i), ("losses", _i), ("comparisons", _i), ("rank", _i),  # rank 1: strongest by BT
    ],
    "sft_metrics": [*_METRICS, ("model", _s)],
    "rm_metrics": [*_METRICS, ("reward_model", _s)],
    "ppo_metrics": [*_METRICS, ("reward_model", _s)],
    "eval": [
        ("prompt_id", _s), ("prompt", _s),
        ("policy", _s), ("policy_step", _i), ("final", _b),  # PPO snapshots too; final: the trained policy
        ("policy_response", _s), ("reference_response", _s),
        ("p_policy_better", _f), ("position_consistent", _b), ("valid", _b),
        ("policy_score", _f), ("reference_score", _f),
        ("policy_n_tokens", _i), ("reference_n_tokens", _i),
        ("policy_kl", _f),  # exact KL(policy || reference) of the response, nats (over the vocabulary)
        ("policy_kl_k1", _f),  # its sampled-token estimate, sum(log p - log q)
        ("policy_adherence", _f), ("reference_adherence", _f),  # the judge's direct ratings in [-1, 1]
        # the probes (evaluation.probes): no judge involved
        ("category", _s), ("harmful", _b),
        ("policy_has_eos", _b), ("reference_has_eos", _b), ("policy_refused", _b), ("reference_refused", _b),
        ("policy_distinct_2", _f), ("reference_distinct_2", _f),
        ("policy_repeats_4gram", _b), ("reference_repeats_4gram", _b),
        ("policy_ref_nll", _f), ("reference_ref_nll", _f),  # nats summed over the response, temperature 1
        ("reward_model", _s),
    ],
    # the evaluation's policy-against-policy judgements on held-out prompts (the ladder's rungs;
    # each policy against the reference is in `eval`)
    "matches": [
        ("prompt_id", _s), ("prompt", _s),
        ("policy_a", _s), ("step_a", _i), ("policy_b", _s), ("step_b", _i),
        ("response_a", _s), ("response_b", _s),
        ("p_a", _f),  # P(response_a better), both orders averaged
        ("position_consistent", _b), ("valid", _b),
    ],
}

# The policies registry's log (rlaif.registry): one part per change of a policy's status.
TABLES["policies"] = [
    ("seq", _i),  # the change's number within its constitution: the log's order
    ("event", _s),  # registered, promoted, rejected, retired
    ("policy_id", _s),  # the run that trained it
    ("status", _s),  # after this change: candidate, champion, rejected, retired
    ("reason", _s),
    ("parent_id", _s), ("base_model", _s), ("checkpoint", _s),  # set when registered
    ("replaced", _s),  # on a promotion: the champion it replaced ("base": none)
    ("metrics", _s),  # JSON: the evaluation against the parent, and the gate's verdict
]

# Scratch parts of a run labelled in shards (FeedbackConfig.shards); merged into `preferences`.
TABLES["preference_shards"] = TABLES["preferences"]


def schema(table: str) -> pa.Schema:
    if table not in TABLES:
        raise KeyError(f"unknown table {table!r}; known tables: {', '.join(TABLES)}")
    return pa.schema(LINEAGE + [pa.field(n, t) for n, t in TABLES[table]])


class StoreError(RuntimeError):
    """A part file that cannot be read as this table: corrupt, truncated, foreign or future."""


@dataclass(frozen=True)
class Lineage:
    """Who produced a row: written into every row of every table."""

    run_id: str
    constitution_sha: str
    policy_model: str = ""
    judge_model: str = ""
    flow_run_id: str = ""


class Store:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_dir(self, table: str, constitution_sha: str | None = None) -> Path:
        schema(table)  # validates the name
        d = self.root / table
        return d / constitution_sha[:12] if constitution_sha else d

    @staticmethod
    def part_name(key: str) -> str:
        return f"part-{hashlib.sha256(key.encode()).hexdigest()[:20]}.parquet"

    def write(self, table: str, df: pd.DataFrame, *, key: str, lineage: Lineage,
              metadata: dict | None = None) -> Path:
        """Write `df` as one part of `table`, atomically. Same `key` -> same file (replaced)."""
        sch = schema(table)
        missing = [n for n, _ in TABLES[table] if n not in df.columns]
        if missing:
            raise ValueError(f"table {table!r}: missing columns {missing}")
        df = df[[n for n, _ in TABLES[table]]].copy()
        for k, v in asdict(lineage).items():
            df[k] = v
        df["created_at"] = pd.Timestamp(datetime.now(timezone.utc))
        df["schema_version"] = SCHEMA_VERSION
        arrow = pa.Table.from_pandas(df[sch.names], schema=sch, preserve_index=False)
        meta = {"rlaif.key": key, "rlaif.schema_version": str(SCHEMA_VERSION),
                "rlaif.table": table, "rlaif.metadata": json.dumps(metadata or {}, default=str)}
        arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **meta})

        final = self.table_dir(table, lineage.constitution_sha) / self.part_name(key)
        try:  # temporary dot file, fsync, rename, fsync the folder (rlaif.io)
            write_file_atomic(final, lambda tmp: pq.write_table(arrow, tmp))
        except OSError as e:  # a full disk, a read-only or vanished data root
            raise StoreError(f"{final}: cannot write this {table!r} part ({e.strerror or e}); "
                             "nothing of it was kept, and the parts already written are intact") from e
        return final

    def check_writable(self) -> None:
        """Fail before any model work when the data root cannot take a file (and its fsync)."""
        probe = temp_path(self.root / "write-probe")  # named like any temporary: a kill leaves it sweepable
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            with open(probe, "wb") as fh:
                fh.write(b"\0" * 4096)
                fh.flush()
                os.fsync(fh.fileno())
        except OSError as e:
            raise StoreError(f"data root {self.root} is not writable ({e.strerror or e})") from e
        finally:
            try:
                probe.unlink(missing_ok=True)
            except OSError:
                pass

    def sweep_stale(self) -> list[Path]:
        """Remove the temporaries that killed writes left under the root (table parts,
        checkpoints, reports, probes) and log them; never one a live writer is still writing."""
        swept = sweep_stale(self.root) if self.root.is_dir() else []
        if swept:
            log.info("swept %d stale temporaries left by killed writes under %s: %s", len(swept), self.root,
                     ", ".join(str(p.relative_to(self.root)) for p in swept[:5]) + (", ..." if len(swept) > 5 else ""))
        return swept

    def parts(self, table: str, constitution_sha: str | None = None) -> list[Path]:
        d = self.table_dir(table, constitution_sha)
        pattern = "part-*.parquet" if constitution_sha else "*/part-*.parquet"
        return sorted(d.glob(pattern)) if d.exists() else []

    def read_part(self, table: str, path: Path) -> pa.Table:
        try:
            t = pq.read_table(path)
        except Exception as e:  # pyarrow raises several types for corrupt or truncated files
            raise StoreError(f"{path}: not a readable Parquet file ({e})") from e
        meta = t.schema.metadata or {}
        version = int(meta.get(b"rlaif.schema_version", b"0") or 0)
        if version > SCHEMA_VERSION:
            raise StoreError(f"{path}: schema_version {version} is newer than this code "
                             f"understands ({SCHEMA_VERSION}); upgrade rlaif to read it")
        want = schema(table)
        for since, tables in RENAMED.items():
            for old, new in tables.get(table, {}).items() if version < since else ():
                if old in t.schema.names and new not in t.schema.names:
                    t = t.rename_columns([new if n == old else n for n in t.schema.names])
        missing = [n for n in want.names if n not in t.schema.names]
        if missing and version < SCHEMA_VERSION and meta.get(b"rlaif.table", b"").decode() == table:
            for n in missing:  # columns added since this part was written
                t = t.append_column(want.field(n), pa.nulls(t.num_rows, want.field(n).type))
            missing = []
        if missing or meta.get(b"rlaif.table", b"").decode() != table:
            raise StoreError(f"{path}: not a {table!r} part (missing columns {missing})")
        return t.select(want.names).cast(want)

    def read_parts(self, table: str, paths: list[str | Path]) -> pd.DataFrame:
        """The rows of the named parts of `table`, in order (a task reads the parts its inputs
        name, not the whole table)."""
        if not paths:
            raise StoreError(f"no {table!r} parts to read")
        return pa.concat_tables([self.read_part(table, Path(p)) for p in paths]).to_pandas()

    def read(self, table: str, *, constitution_sha: str | None = None,
             run_id: str | None = None, skip_bad: bool = False) -> pd.DataFrame:
        """Read a table (optionally one constitution's folder only, one run only).

        A bad part raises StoreError naming it; with skip_bad=True it is reported as a
        warning and the other parts are returned.
        """
        tables = []
        for path in self.parts(table, constitution_sha):
            try:
                tables.append(self.read_part(table, path))
            except StoreError as e:
                if not skip_bad:
                    raise
                warnings.warn(f"skipping bad part: {e}", stacklevel=2)
        df = (pa.concat_tables(tables) if tables else schema(table).empty_table()).to_pandas()
        if constitution_sha:
            df = df[df["constitution_sha"] == constitution_sha]
        if run_id:
            df = df[df["run_id"] == run_id]
        return df.reset_index(drop=True)

