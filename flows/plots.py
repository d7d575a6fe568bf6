"""The PNG plots of a run (training curves, evaluation, the reward-KL curve), drawn
off-screen and written atomically beside the run's report."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rlaif.io import write_file_atomic

# Units for the y axes of the training curves.
UNITS = {"objective/kl": "nats per response", "objective/kl_coef": "coefficient",
         "objective/scores": "score (RM: std units on the reference)", "objective/rlhf_reward": "score - KL penalty",
         "rm/loss": "cross-entropy (nats)"}


def figure(n_panels: int, width: float = 4.0):
    """A row of matplotlib panels, drawn off-screen (a server has no display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, n_panels, figsize=(width * n_panels, 3.2), squeeze=False)
    return fig, list(axes[0])


def save_figure(fig, path: Path, title: str) -> str:
    import matplotlib.pyplot as plt

    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    write_file_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    plt.close(fig)
    return str(path)


def plot_metrics(metrics: pd.DataFrame, names: list[str], path: Path, title: str) -> str:
    """One panel per metric against `step` (a metrics table: step, metric, value)."""
    fig, axes = figure(len(names))
    for ax, name in zip(axes, names):
        m = metrics[metrics["metric"] == name].sort_values("step")
        ax.plot(m["step"], m["value"], marker=".")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel(UNITS.get(name, "value"), fontsize=8)
    return save_figure(fig, path, title)


def plot_eval(rows: pd.DataFrame, path: Path, title: str) -> str:
    """Reward-model score and response length, reference vs policy, on the same prompts."""
    fig, (ax_rm, ax_len) = figure(2, width=4.5)
    for who, colour in (("reference", "tab:gray"), ("policy", "tab:blue")):
        ax_rm.hist(rows[f"{who}_score"], bins=12, alpha=0.6, color=colour, label=who)
        ax_len.hist(rows[f"{who}_n_tokens"], bins=12, alpha=0.6, color=colour, label=who)
    ax_rm.set(title="reward-model score", xlabel="score (std units on the reference)", ylabel="responses")
    ax_len.set(title="response length", xlabel="tokens", ylabel="responses")
    for ax in (ax_rm, ax_len):
        ax.legend(fontsize=8)
    return save_figure(fig, path, title)


def plot_reward_kl(curve: pd.DataFrame, path: Path, title: str, flagged: bool) -> str:
    """The over-optimisation curve: the proxy (reward-model score) and the judged win rate
    against KL, one point per policy, labelled by PPO step."""
    fig, (ax_rm, ax_win) = figure(2, width=4.5)
    ax_rm.plot(curve["kl"], curve["rm_score"], marker="o", color="tab:blue", label="reward model (proxy)")
    # (2, N); NaN (the reference point) drawn without a bar, rounding never a negative length
    err = np.clip(np.nan_to_num([curve["win_rate"] - curve["ci_low"], curve["ci_high"] - curve["win_rate"]]), 0, None)
    ax_win.errorbar(curve["kl"], curve["win_rate"], yerr=err, marker="o", color="tab:orange",
                    capsize=3, label="judge win rate vs reference (95% CI)")
    ax_win.axhline(0.5, color="gray", lw=0.8, ls="--", label="parity")
    for ax in (ax_rm, ax_win):
        for _, r in curve.iterrows():
            ax.annotate(f"step {r['step']}", (r["kl"], r["rm_score"] if ax is ax_rm else r["win_rate"]),
                        fontsize=7, textcoords="offset points", xytext=(3, 3))
        ax.set_xlabel("KL to reference (nats per response)")
        ax.legend(fontsize=7)
    ax_rm.set(title="proxy reward", ylabel="mean RM score (std units)")
    ax_win.set(title="judged quality" + (" - OVER-OPTIMISED" if flagged else ""), ylabel="win rate")
    return save_figure(fig, path, title)


def plot_ladder(ladder: pd.DataFrame, path: Path, title: str, labels: list[str] | None = None) -> str:
    """The ladder (evaluation.ladder), policies on the x axis in ladder order (labelled by
    PPO step; the reference first): the Elo mean with its 2.5-97.5% range over shuffled orders,
    and the fitted P(beats the reference) with its 95% bootstrap interval over prompts. A policy
    without a valid comparison has no point."""
    fig, (ax_elo, ax_win) = figure(2, width=4.5)
    x = np.arange(len(ladder))
    labels = labels or ["reference", *[f"step {s}" for s in ladder["step"].iloc[1:]]]
    for ax, col, colour, par in ((ax_elo, "elo", "tab:purple", 1000), (ax_win, "win_prob", "tab:orange", 0.5)):
        # (2, N); NaN (no comparison) drawn without a bar, rounding never a negative length
        err = np.clip(np.nan_to_num([ladder[col] - ladder[f"{col}_ci_low"], ladder[f"{col}_ci_high"] - ladder[col]]),
                      0, None)
        ax.errorbar(x, ladder[col], yerr=err, marker="o", ls="none", color=colour, capsize=3)
        for k, (v, n) in enumerate(zip(ladder[col], ladder["comparisons"])):
            ax.annotate(f"n={n}", (k, v if np.isfinite(v) else par), fontsize=7, textcoords="offset points",
                        xytext=(4, 4))
        ax.set_xticks(x, labels, fontsize=8)
        ax.set_xlim(-0.5, len(ladder) - 0.5)
        ax.set_xlabel("policy (ladder order)")
        if not ladder[col].notna().any():
            ax.text(0.5, 0.3, "no valid comparison", ha="center", va="center", transform=ax.transAxes, fontsize=9)
        ax.axhline(par, color="gray", lw=0.8, ls="--")
    ax_elo.set(title="Elo (reference 1000; range over orders)", ylabel="rating")
    ax_win.set(title="P(beats the reference), BT (95% CI)", ylabel="probability")
    return save_figure(fig, path, title)
