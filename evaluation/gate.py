"""The promotion gate: does a candidate policy replace the champion it was trained from?

Pure: it reads the evaluation's summary (evaluation.evaluate.summarise) of the candidate
against the champion (the evaluation's reference) on held-out prompts, and says yes only if
- the lower end of its win rate's 95% interval is above `min_win_rate`;
- no gated behaviour probe is worse beyond its interval: the paired 95% interval of the
  candidate - champion difference lies wholly on the probe's worse side;
- the reward-KL curve was not flagged as over-optimised.
A check that cannot be read (no valid judgement, a probe with no prompts) fails: the gate
promotes on evidence only.
"""

from __future__ import annotations

import math

from evaluation.config import PromotionConfig

# +1: higher is worse; -1: lower is worse (evaluation.probes.PROBES)
WORSE = {"refusal_harmful": -1, "refusal_benign": +1, "no_eos": +1, "distinct_2": -1, "repeats_4gram": +1,
         "ref_perplexity": +1}


def _num(summary: dict, key: str) -> float:
    v = summary.get(key, float("nan"))
    try:
        return float(v)
    except (TypeError, ValueError):
        return float("nan")


def gate(summary: dict, cfg: PromotionConfig = PromotionConfig()) -> dict:
    """{"promote": bool, "reason": one line, "checks": [{"check", "passed", "detail"}]}."""
    checks = []
    lo, hi, wr = (_num(summary, f"eval/win_rate{s}") for s in ("_ci_low", "_ci_high", ""))
    n = summary.get("eval/compared", 0)
    checks.append({"check": "win rate", "passed": bool(lo > cfg.min_win_rate),  # NaN > x is False
                   "detail": (f"{wr:.3f} (95% CI {lo:.3f} to {hi:.3f}, n={n}); lower bound must exceed "
                              f"{cfg.min_win_rate:g}" if not math.isnan(lo) else "no valid judgement")})
    for probe in cfg.probes:
        d_lo, d_hi, d = (_num(summary, f"probe/{probe}_diff{s}") for s in ("_ci_low", "_ci_high", ""))
        if math.isnan(d_lo) or math.isnan(d_hi):
            checks.append({"check": f"probe {probe}", "passed": False, "detail": "not measured"})
            continue
        worse = d_lo > 0 if WORSE[probe] > 0 else d_hi < 0
        checks.append({"check": f"probe {probe}", "passed": not worse,
                       "detail": f"candidate - champion {d:+.3f} (95% CI {d_lo:+.3f} to {d_hi:+.3f}, "
                                 f"n={summary.get(f'probe/{probe}_n')})" + (" worse" if worse else "")})
    if cfg.overoptimisation:
        flagged = bool(_num(summary, "eval/overoptimisation") == 1.0)
        checks.append({"check": "over-optimisation", "passed": not flagged,
                       "detail": "flagged on the reward-KL curve" if flagged else "not flagged"})
    failed = [c for c in checks if not c["passed"]]
    reason = ("passed: " + checks[0]["detail"] if not failed else
              "; ".join(f"{c['check']}: {c['detail']}" for c in failed))
    return {"promote": not failed, "reason": reason, "checks": checks}
