"""Prompt sets. The default set ships inside the package (rlaif/data/prompts.jsonl), each
prompt with a stable id, a category and a split. Users may pass their own JSONL, CSV or
Parquet file with a `prompt` column; `id` and `split` columns are optional. Without them a
prompt's id is a hash of its text and its split is drawn from that hash, so both are stable.

The `eval` split is held out: training stages call `load_prompts(..., split="train")` and
`assert_no_eval` guards their inputs.
"""

from __future__ import annotations

import hashlib
import logging
import warnings
from importlib.resources import files
from pathlib import Path

import pandas as pd

log = logging.getLogger("rlaif")

SPLITS = ("train", "eval")
EVAL_FRACTION = 0.2
MAX_PROMPT_TOKENS = 1024


class PromptError(ValueError):
    pass


def default_prompts_path() -> Path:
    return Path(str(files("rlaif") / "data" / "prompts.jsonl"))


def _read(path: Path) -> pd.DataFrame:
    suffix = path.suffix.lower()
    try:
        if suffix in (".jsonl", ".json"):
            return pd.read_json(path, lines=suffix == ".jsonl", dtype=False)
        if suffix == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False)
        if suffix == ".parquet":
            return pd.read_parquet(path)
    except (ValueError, UnicodeDecodeError, OSError) as e:
        raise PromptError(f"{path}: cannot read prompts ({e})") from e
    raise PromptError(f"{path}: unsupported prompt file type {suffix!r} (use .jsonl, .csv or .parquet)")


def _hash_id(text: str) -> str:
    return "h" + hashlib.sha256(text.encode()).hexdigest()[:12]


def fit_to_context(prompts: pd.DataFrame, tokenizer, max_tokens: int | None = None) -> pd.DataFrame:
    """Cut prompts longer than `max_tokens` (default: MAX_PROMPT_TOKENS, or a quarter of the
    tokenizer's context when that is less) to that many tokens, keeping their start, with a
    warning that counts them: a prompt must leave room in one context for two responses and
    the judge's own text. Ids stay those of the full prompts."""
    context = getattr(tokenizer, "model_max_length", None) or MAX_PROMPT_TOKENS * 4
    limit = max_tokens or min(MAX_PROMPT_TOKENS, context // 4)
    ids = tokenizer(list(prompts["prompt"]), add_special_tokens=False)["input_ids"]
    long = [i for i, t in enumerate(ids) if len(t) > limit]
    if not long:
        return prompts
    prompts = prompts.copy()
    prompts.iloc[long, prompts.columns.get_loc("prompt")] = [tokenizer.decode(ids[i][:limit]) for i in long]
    names = ", ".join(prompts["prompt_id"].iloc[long[:5]]) + (", ..." if len(long) > 5 else "")
    warn(f"{len(long)} of {len(prompts)} prompts are longer than {limit} tokens; cut to {limit} ({names})")
    return prompts


def warn(message: str) -> None:
    """A warning for the terminal, and a record on the `rlaif` logger, which the flows hand to
    Prefect (PREFECT_LOGGING_EXTRA_LOGGERS), so it reaches the run's log in the UI."""
    warnings.warn(message, stacklevel=3)
    log.warning(message)


def load_prompts(path: str | Path | None = None, split: str | None = None,
                 limit: int | None = None) -> pd.DataFrame:
    """Columns: prompt_id, prompt, split (and category when the file has one)."""
    path = Path(path) if path else default_prompts_path()
    if not path.is_file():
        raise PromptError(f"{path}: no such prompt file")
    df = _read(path)
    if "prompt" not in df.columns:
        raise PromptError(f"{path}: needs a 'prompt' column; found {list(df.columns)}")
    df = df.copy()
    df["prompt"] = df["prompt"].astype(str).str.strip()
    df = df[df["prompt"] != ""]
    if df.empty:
        raise PromptError(f"{path}: contains no non-empty prompts")
    df["prompt_id"] = df["id"].astype(str) if "id" in df.columns else df["prompt"].map(_hash_id)
    if df["prompt_id"].duplicated().any():
        dups = df.loc[df["prompt_id"].duplicated(), "prompt_id"].head(3).tolist()
        raise PromptError(f"{path}: duplicate prompt ids (or duplicate prompts): {dups}")
    if "split" not in df.columns:
        df["split"] = [
            "eval" if int(pid[-6:], 16) / 0xFFFFFF < EVAL_FRACTION else "train"
            for pid in df["prompt_id"].map(lambda p: hashlib.sha256(p.encode()).hexdigest())
        ]
    bad = sorted(set(df["split"]) - set(SPLITS))
    if bad:
        raise PromptError(f"{path}: unknown split values {bad}; use 'train' or 'eval'")
    cols = ["prompt_id", "prompt", "split"] + (["category"] if "category" in df.columns else [])
    df = df[cols]
    if split is not None:
        df = df[df["split"] == split]
        if df.empty:
            raise PromptError(f"{path}: no prompts in the {split!r} split")
    if limit is not None:
        df = df.head(limit)
    return df.reset_index(drop=True)


def eval_prompt_ids(path: str | Path | None = None) -> set[str]:
    """The held-out prompt ids of a prompt file (the shipped set when None)."""
    return set(load_prompts(path, split="eval")["prompt_id"])


def assert_no_eval(df: pd.DataFrame, stage: str, eval_ids: set[str] | None = None) -> None:
    """Training stages never read held-out prompts; this makes that a checked fact. Rows are
    checked by their `split` column where they have one, and by their `prompt_id` against
    `eval_ids` (critiques and preferences carry no split)."""
    leaked = df["split"] == "eval" if "split" in df.columns else pd.Series(False, index=df.index)
    if eval_ids is not None and "prompt_id" in df.columns:
        leaked |= df["prompt_id"].isin(eval_ids)
    if leaked.any():
        ids = ", ".join(df.loc[leaked, "prompt_id"].astype(str).unique()[:5]) if "prompt_id" in df.columns else ""
        raise AssertionError(f"{stage}: received {int(leaked.sum())} rows of held-out eval prompts ({ids}); "
                             "training must not read them")
