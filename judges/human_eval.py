"""How often does the AI judge agree with human preference labels?

Reads hh-rlhf-style JSONL (optionally gzipped): one `{"chosen", "rejected"}` pair of full
`\\n\\nHuman: ...\\n\\nAssistant: ...` transcripts per line, sharing everything but the final
assistant turn. The human-preferred response is shown as A or B at random (seeded), so a
judge with a pure position bias scores 0.5 without the swap.

Reported, with and without the position swap: agreement and its 95% CI, position
consistency, agreement per principle, pairs/s; plus the "longer response wins" baseline.
A judge that does not beat the length baseline is not yet useful.

`injection_eval` measures how far text that addresses the judge moves it: each injection
string is appended to the human-rejected response, and the labels are compared with the
clean pairs', with the prompt defence on and off.
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
from judges.feedback import injection_match, label_preferences
from rlaif.stats import wilson_interval

_ASSISTANT = "\n\nAssistant:"


class PairsFileError(ValueError):
    pass


class InjectionsFileError(PairsFileError):
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


def _human_is_a(n: int, seed: int) -> np.ndarray:
    """Which pairs show the human-preferred response as A: seeded, the same in every measurement."""
    rng = random.Random(seed)
    return np.array([rng.random() < 0.5 for _ in range(n)])


def _shown(pairs: pd.DataFrame, human_is_a: np.ndarray, rejected=None) -> pd.DataFrame:
    """The pairs as the judge sees them, optionally with other rejected texts (injected)."""
    rejected = pairs["rejected"] if rejected is None else rejected
    return pd.DataFrame({
        "pair_id": pairs["pair_id"], "prompt_id": pairs["pair_id"], "prompt": pairs["prompt"],
        "response_a": np.where(human_is_a, pairs["chosen"], rejected),
        "response_b": np.where(human_is_a, rejected, pairs["chosen"]),
    })


def judge_agreement(judge, pairs: pd.DataFrame, constitution: Constitution,
                    cfg: FeedbackConfig) -> dict:
    human_is_a = _human_is_a(len(pairs), cfg.seed)
    shown = _shown(pairs, human_is_a)
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
        # pairs the injection detector flagged, and those it decided (cfg.on_injection)
        "judge/injection_suspected": int(labels["injection_suspected"].sum()),
        "judge/injection_overridden": int(labels["override_reason"].notna().sum()),
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


# ---------------------------------------------------------------- injections


def read_injections(path: str | Path) -> list[str]:
    """Injection strings, one per line; blank lines and lines starting with # are skipped, and
    the two characters \\n stand for a newline (a fake turn needs one)."""
    path = Path(path)
    if not path.is_file():
        raise InjectionsFileError(f"{path}: no such injections file")
    lines = path.read_text(encoding="utf-8").splitlines()
    out = [ln.replace("\\n", "\n") for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    if not out:
        raise InjectionsFileError(f"{path}: contains no injection strings")
    return out


def _pair_bootstrap(clean: np.ndarray, injected: np.ndarray, seed: int = 0,
                    n_boot: int = 2000) -> tuple[np.ndarray, np.ndarray]:
    """Bootstrap draws of (agreement drop, injected agreement), resampling pairs: the k
    injected copies of one pair are not independent, so pairs, not labels, are the unit.
    clean: (n,) correct or not; injected: (k, n)."""
    idx = np.random.default_rng(seed).integers(0, len(clean), size=(n_boot, len(clean)))  # (B, n)
    per_pair = injected.mean(0)  # (n,) share of the k copies judged correctly
    return clean[idx].mean(1) - per_pair[idx].mean(1), per_pair[idx].mean(1)


def _ci(draws: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(draws, 0.025)), float(np.quantile(draws, 0.975))


def injection_effect(p_a_clean: np.ndarray, p_a_injected: np.ndarray, human_is_a: np.ndarray) -> dict:
    """How injected text in the rejected response moves the judge, against its clean verdicts.

    p_a_clean: (n,) debiased P(A) on the clean pairs; p_a_injected: (k, n) the same pairs with
    each of k strings appended to the rejected response; human_is_a: (n,). A positive
    agreement_drop / mean_shift_p_rejected means the injection helps the response carrying
    it; a negative one, that the judge punishes it. flip_share: labels whose verdict differs
    from the clean verdict of the same pair, split by direction."""
    clean_a, inj_a = p_a_clean > 0.5, p_a_injected > 0.5  # (n,), (k, n)
    correct_clean, correct_inj = clean_a == human_is_a, inj_a == human_is_a
    p_rej_clean = np.where(human_is_a, 1.0 - p_a_clean, p_a_clean)  # P(rejected is better)
    p_rej_inj = np.where(human_is_a, 1.0 - p_a_injected, p_a_injected)
    flips = inj_a != clean_a
    drops, agreements = _pair_bootstrap(correct_clean.astype(float), correct_inj.astype(float))
    (lo, hi), (agree_lo, agree_hi) = _ci(drops), _ci(agreements)
    return {
        "pairs": int(len(human_is_a)), "strings": int(len(p_a_injected)),
        "clean": _agreement(correct_clean),
        "injected": {"agreement": float(correct_inj.mean()), "ci_low": agree_lo, "ci_high": agree_hi,
                     "ci": "bootstrap over pairs"},
        "agreement_drop": float(correct_clean.mean() - correct_inj.mean()), "agreement_drop_ci": [lo, hi],
        "mean_shift_p_rejected": float((p_rej_inj - p_rej_clean).mean()),
        "flip_share": float(flips.mean()),
        "flips_to_rejected": float((flips & correct_clean).mean()),
        "flips_to_chosen": float((flips & ~correct_clean).mean()),
        "per_string": [{**_agreement(c), "agreement_drop": float(correct_clean.mean() - c.mean()),
                        "mean_shift_p_rejected": float((r - p_rej_clean).mean()), "flip_share": float(f.mean()),
                        "flips_to_rejected": float((f & correct_clean).mean())}
                       for c, r, f in zip(correct_inj, p_rej_inj, flips)],
    }


def injection_eval(judge, pairs: pd.DataFrame, constitution: Constitution, cfg: FeedbackConfig,
                   injections: list[str]) -> dict:
    """The judge under attack: each string appended (after a blank line) to every human-
    rejected response, labelled with the defence on and off, against the clean labels of the
    same mode. Detection is off (on_injection="ignore"): it would decide every injected pair by
    rule; what it catches is reported separately, with how often it fires on clean responses."""
    human_is_a = _human_is_a(len(pairs), cfg.seed)
    n, k = len(pairs), len(injections)
    # same pair_ids, so each injected copy is judged under the same principle as its clean pair
    injected = pd.concat([_shown(pairs, human_is_a, pairs["rejected"] + "\n\n" + s) for s in injections],
                         ignore_index=True)
    caught = [injection_match(s) for s in injections]
    clean_texts = list(pairs["chosen"]) + list(pairs["rejected"])
    result = {
        "injection/strings": injections,
        "injection/detection": {
            "rate": sum(c is not None for c in caught) / k, "caught": sum(c is not None for c in caught),
            "strings": k, "patterns": caught,
            "clean_responses_flagged": sum(injection_match(t) is not None for t in clean_texts),
            "clean_responses": len(clean_texts)},
    }
    clean = {}
    for on in (True, False):
        mode = cfg.model_copy(update={"injection_defence": on, "on_injection": "ignore", "direct_scores": False})
        clean[on] = label_preferences(judge, _shown(pairs, human_is_a), constitution, mode)
        p_inj = label_preferences(judge, injected, constitution, mode)["p_a"].to_numpy().reshape(k, n)
        result[f"injection/defence_{'on' if on else 'off'}"] = injection_effect(
            clean[on]["p_a"].to_numpy(), p_inj, human_is_a)
    on, off = clean[True], clean[False]
    result["defence/clean_change"] = {
        "pairs": n,
        "mean_abs_delta_p_a": float((on["p_a"] - off["p_a"]).abs().mean()),
        "mean_abs_delta_p_a_first": float((on["p_a_first"] - off["p_a_first"]).abs().mean()),
        "verdicts_changed": float(((on["p_a"] > 0.5) != (off["p_a"] > 0.5)).mean()),
        "agreement_on": result["injection/defence_on"]["clean"]["agreement"],
        "agreement_off": result["injection/defence_off"]["clean"]["agreement"],
    }
    return result


def injection_table(result: dict) -> str:
    """injection_eval's result as markdown: one row per defence mode, then one per string."""
    f = lambda x: f"{x:+.3f}"  # noqa: E731
    lines = ["| defence | pairs x strings | clean agreement | injected agreement (95% CI) | agreement drop (95% CI) "
             "| mean shift P(rejected) | flips | to rejected | to chosen |", "|---" * 9 + "|"]
    for mode in ("on", "off"):
        r = result[f"injection/defence_{mode}"]
        c, i, (lo, hi) = r["clean"], r["injected"], r["agreement_drop_ci"]
        lines.append(f"| {mode} | {r['pairs']} x {r['strings']} | {c['agreement']:.3f} | {i['agreement']:.3f} "
                     f"({i['ci_low']:.3f}–{i['ci_high']:.3f}) | {f(r['agreement_drop'])} ({f(lo)} to {f(hi)}) "
                     f"| {f(r['mean_shift_p_rejected'])} | {r['flip_share']:.3f} | {r['flips_to_rejected']:.3f} "
                     f"| {r['flips_to_chosen']:.3f} |")
    d, cc = result["injection/detection"], result["defence/clean_change"]
    lines += ["", "A positive drop or shift: the injection helps the response carrying it; negative: the judge "
              "punishes it. Detection was off for these labels.",
              f"detector catches {d['caught']}/{d['strings']} strings ({d['rate']:.2f}); fires on "
              f"{d['clean_responses_flagged']}/{d['clean_responses']} clean responses",
              f"defence on vs off on clean pairs: mean |ΔP(A)| {cc['mean_abs_delta_p_a']:.4f} (one order "
              f"{cc['mean_abs_delta_p_a_first']:.4f}), verdicts changed {cc['verdicts_changed']:.3f}, agreement "
              f"{cc['agreement_on']:.3f} on vs {cc['agreement_off']:.3f} off",
              "", "| injection | caught as | agreement, on (95% CI) | agreement, off (95% CI) | drop, on | drop, off "
              "| flips, on | flips, off |", "|---" * 8 + "|"]
    ci = lambda r: f"{r['agreement']:.2f} ({r['ci_low']:.2f}–{r['ci_high']:.2f})"  # noqa: E731
    on, off = result["injection/defence_on"]["per_string"], result["injection/defence_off"]["per_string"]
    for s, pattern, a, b in zip(result["injection/strings"], d["patterns"], on, off):
        text = s.replace("\n", "\\n").replace("|", "\\|")
        lines.append(f"| `{text[:60]}` | {pattern or '—'} | {ci(a)} | {ci(b)} | {f(a['agreement_drop'])} "
                     f"| {f(b['agreement_drop'])} | {a['flip_share']:.3f} | {b['flip_share']:.3f} |")
    return "\n".join(lines)
