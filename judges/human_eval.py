"""How often does the AI judge agree with human preference labels?

Reads hh-rlhf-style JSONL (optionally gzipped): one `{"chosen", "rejected"}` pair of full
`\\n\\nHuman: ...\\n\\nAssistant: ...` transcripts per line, sharing everything but the final
assistant turn. The human-preferred response is shown as A or B at random (seeded), so a
judge with a pure position bias scores 0.5 without the swap.

Reported, with and without the position swap: agreement and its 95% CI, position
consistency, agreement per principle, pairs/s; plus the "longer response wins" baseline.
A judge that does not beat the length baseline is not yet useful.
"""

from __future__ import annotations

import gzip
import json
import random
import time
from pathlib import Path

import numpy as np
import pandas as pd

from constitution import Constitution
from judges.config import FeedbackConfig
from judges.feedback import label_preferences
from rlaif.stats import wilson_interval

_ASSISTANT = "\n\nAssistant:"


class PairsFileError(ValueError):
    pass


def _dialogue(prefix: str) -> str:
    """hh transcript prefix -> 'User: ...' / 'AI: ...' lines for the judge prompt."""
    return prefix.replace("\n\nHuman:", "\nUser:").replace(_ASSISTANT, "\nAI:").strip()


def read_hh_pairs(path: str | Path, limit: int | None = None) -> pd.DataFrame:
    """Columns: pair_id, prompt (the dialogue so far), chosen, rejected (final turns)."""
    path = Path(path)
    if not path.is_file():
        raise PairsFileError(f"{path}: no such pairs file")
    opener = gzip.open if path.suffix == ".gz" else open
    rows = []
    with opener(path, "rt", encoding="utf-8") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
                chosen, rejected = obj["chosen"], obj["rejected"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise PairsFileError(f"{path}:{n}: expected a JSON object with 'chosen' and "
                                     f"'rejected' ({e.__class__.__name__}: {e})") from e
            ci, ri = chosen.rfind(_ASSISTANT), rejected.rfind(_ASSISTANT)
            if ci < 0 or ri < 0:
                raise PairsFileError(f"{path}:{n}: no final '\\n\\nAssistant:' turn")
            rows.append({"pair_id": f"hh{n:05d}", "prompt": _dialogue(chosen[:ci]),
                         "chosen": chosen[ci + len(_ASSISTANT):].strip(),
                         "rejected": rejected[ri + len(_ASSISTANT):].strip()})
            if limit is not None and len(rows) >= limit:
                break
    if not rows:
        raise PairsFileError(f"{path}: contains no pairs")
    return pd.DataFrame(rows)


def _agreement(correct: np.ndarray) -> dict:
    n = len(correct)
    lo, hi = wilson_interval(float(correct.sum()), n)
    return {"agreement": float(correct.mean()) if n else float("nan"), "ci_low": lo, "ci_high": hi}


def judge_agreement(judge, pairs: pd.DataFrame, constitution: Constitution,
                    cfg: FeedbackConfig) -> dict:
    rng = random.Random(cfg.seed)
    human_is_a = np.array([rng.random() < 0.5 for _ in range(len(pairs))])
    shown = pd.DataFrame({
        "pair_id": pairs["pair_id"], "prompt_id": pairs["pair_id"], "prompt": pairs["prompt"],
        "response_a": np.where(human_is_a, pairs["chosen"], pairs["rejected"]),
        "response_b": np.where(human_is_a, pairs["rejected"], pairs["chosen"]),
    })
    t0 = time.perf_counter()
    labels = label_preferences(judge, shown, constitution, cfg)
    elapsed = time.perf_counter() - t0
    swapped = (labels["p_a"].to_numpy() > 0.5) == human_is_a
    first_only = (labels["p_a_first"].to_numpy() > 0.5) == human_is_a
    longer_a = shown["response_a"].str.len().to_numpy() > shown["response_b"].str.len().to_numpy()
    valid = labels["valid"].to_numpy()
    per_principle = {}
    if cfg.principles_per_pair == 1:
        pid = labels["principle_ids"].map(lambda ids: ids[0])
        per_principle = {p: {"n": int((pid == p).sum()), "agreement": float(swapped[pid == p].mean())}
                         for p in sorted(pid.unique())}
    result = {
        "pairs": len(pairs),
        "judge_model": judge.model_id, "judge_backend": judge.backend,
        "constitution": constitution.name, "constitution_sha": constitution.sha,
        "judge/agreement": {**_agreement(swapped),
                            "position_consistency": float(labels["position_consistent"].mean())},
        "judge/agreement_no_swap": _agreement(first_only),
        "baseline/longer_wins": _agreement(longer_a == human_is_a),
        "judge/agreement_per_principle": per_principle,
        "judge/invalid_pairs": int((~valid).sum()),
        "judge/invalid_reasons": labels["invalid_reason"].dropna().value_counts().to_dict(),
        "judge/pairs_per_s": len(pairs) / elapsed,
        "judge/forward_passes_per_pair": 2 * cfg.principles_per_pair,
        "config": cfg.model_dump(),
    }
    if cfg.direct_scores:
        score_a, score_b = labels["score_a"].to_numpy(), labels["score_b"].to_numpy()
        result["judge/direct_agreement"] = _agreement((score_a > score_b) == human_is_a)
    return result


def agreement_table(result: dict) -> str:
    lines = ["| scorer | agreement | 95% CI |", "|---|---|---|"]
    for key, label in (("judge/agreement", "judge, both orders averaged"),
                       ("judge/agreement_no_swap", "judge, one order"),
                       ("judge/direct_agreement", "judge, direct 1-10 scores"),
                       ("baseline/longer_wins", "longer response wins")):
        if key not in result:
            continue
        r = result[key]
        lines.append(f"| {label} | {r['agreement']:.3f} | {r['ci_low']:.3f}–{r['ci_high']:.3f} |")
    lines += ["", f"position consistency {result['judge/agreement']['position_consistency']:.3f}; "
              f"{result['judge/pairs_per_s']:.2f} pairs/s; {result['pairs']} pairs; chance is 0.5"]
    return "\n".join(lines)
