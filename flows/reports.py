"""The Markdown a run publishes: the headline, report.md and the stage summaries (Prefect
artifacts), the reward-KL table and compare.md. Pure text from typed results; the flows
write and publish it."""

from __future__ import annotations

import math
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd

from flows.config import RunContext
from flows.results import Figure, Stages
from rlaif.stats import FEW

# label -> (stage, metric, the metric holding its n, whether it has `_ci_low`/`_ci_high`,
# whether the judge produced it). The numbers a run opens with.
HEADLINE = {
    "pairs labelled": ("feedback", "judge/valid_pairs", None, False, True),
    "judge position consistency": ("feedback", "judge/position_consistency", "judge/valid_pairs", True, True),
    "judge intransitive triples (a random judge: 0.25)": ("feedback", "judge/intransitive_triples", "judge/triples",
                                                          True, True),
    "judge agreement with humans": ("feedback", "judge/agreement", "judge/agreement_n", True, False),
    "'longer response wins' agreement with humans": ("feedback", "baseline/longer_wins", "judge/agreement_n", True,
                                                      False),
    "reward model held-out accuracy": ("reward", "rm/accuracy", "rm/heldout_pairs", True, False),
    "held-out win rate vs reference": ("evaluate", "eval/win_rate", "eval/compared", True, True),
    "held-out ties (the judge's two orders disagree)": ("evaluate", "eval/ties", "eval/compared", False, True),
    "win rate at equal length": ("evaluate", "eval/win_rate_length_corrected", "eval/compared", True, True),
    "adherence rate, policy (judge rates it as following the constitution)":
        ("evaluate", "eval/policy_adherence_rate", "eval/policy_adherence_n", True, True),
    "adherence rate, reference": ("evaluate", "eval/reference_adherence_rate", "eval/reference_adherence_n", True, True),
    "KL to reference, held-out (nats per response, exact)": ("evaluate", "eval/kl", "eval/prompts", True, False),
    **{f"change vs reference: {label}": ("evaluate", f"probe/{name}_diff", f"probe/{name}_n", True, False)
       for name, label in (("refusal_harmful", "refusal rate, harmful prompts"),
                           ("refusal_benign", "refusal rate, other prompts"),
                           ("length", "mean length (tokens)"), ("no_eos", "share cut off without EOS"),
                           ("distinct_2", "distinct-2"), ("ref_perplexity", "reference perplexity"))},
    "over-optimisation flagged": ("evaluate", "eval/overoptimisation", "eval/curve_points", False, True),
}


def fmt(v) -> str:
    if isinstance(v, float):
        return "nan" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def judge_doubts(stages: Stages) -> list[str]:
    """Why the judge cannot be trusted, as the feedback stage's gate found (empty: no doubt
    found, or the stage did not run)."""
    feedback = stages.ran().get("feedback")
    reasons = str(feedback.get("judge/gate_reasons")) if feedback else ""
    return [r for r in reasons.split("; ") if r and r != "nan"]


def headline(stages: Stages) -> dict[str, Figure]:
    """The headline figures of the stages that ran (the feedback and training flows run some
    only), each with its n and 95% interval, marked when it rests on fewer than FEW samples or
    comes from a judge the gate found near chance."""
    ran, near_chance = stages.ran(), bool(judge_doubts(stages))
    out = {}
    for label, (stage, metric, n_metric, has_ci, judged) in HEADLINE.items():
        if stage not in ran or metric not in ran[stage].metrics:
            continue
        r = ran[stage]
        n = int(r.get(n_metric)) if n_metric and n_metric in r.metrics else None
        notes = [f"fewer than {FEW} samples"] if n is not None and n < FEW and has_ci else []
        notes += ["judge near chance"] if judged and near_chance and stage == "evaluate" else []
        out[label] = Figure(value=r.get(metric), n=n, notes=notes,
                            ci_low=r.get(f"{metric}_ci_low") if has_ci else None,
                            ci_high=r.get(f"{metric}_ci_high") if has_ci else None)
    return out


def aligned(rows: dict, indent: str = "  ") -> list[str]:
    """`label  value` lines with the values in one column, whatever the labels' lengths."""
    width = max(map(len, rows), default=0) + 2
    return [f"{indent}{k:<{width}}{fmt(v)}" for k, v in rows.items()]


def summary_markdown(title: str, summary: dict, paths: dict | None = None) -> str:
    lines = [f"## {title}", "", "| metric | value |", "|---|---|"]
    lines += [f"| `{k}` | {fmt(v)} |" for k, v in summary.items()]
    if paths:
        lines += ["", *[f"- {k}: `{v}`" for k, v in paths.items()]]
    return "\n".join(lines)


def curve_markdown(curve: pd.DataFrame, flagged: bool) -> str:
    lines = ["| PPO step | KL (nats, exact) | 95% CI | RM score | win rate | 95% CI | n |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r.step} | {fmt(r.kl)} | {fmt(getattr(r, 'kl_ci_low', float('nan')))} to "
              f"{fmt(getattr(r, 'kl_ci_high', float('nan')))} | {fmt(r.rm_score)} | {fmt(r.win_rate)} "
              f"| {fmt(r.ci_low)} to {fmt(r.ci_high)} | {fmt(getattr(r, 'n', ''))} |" for r in curve.itertuples()]
    verdict = ("**Over-optimisation:** the reward-model score rose while the judged win rate fell; "
               "the policy is gaming the reward model." if flagged else
               "No over-optimisation flagged (the proxy did not rise while the judged win rate fell).")
    return "\n".join(["### Reward-model score and win rate against KL", "", *lines, "", verdict])


def _ci(lo, hi) -> str:
    return f"95% CI {fmt(lo)} to {fmt(hi)}"


def ladder_markdown(ladder: pd.DataFrame, near_chance: bool = False,
                    title: str = "Ladder of policies (head-to-head judging)") -> str:
    """The ladder table (evaluation.ladder), one row per policy in ladder order, the reference
    first: P(beats the reference) and BT strength with their bootstrap intervals over prompts,
    Elo with its range over orders, wins / losses / ties and n."""
    lines = [f"### {title}", "",
             f"Ranked by the judge's head-to-head verdicts ({int(ladder['prompts'].max())} held-out prompts with a "
             "valid one): each policy against the reference, and policy against policy (the `matches` table). "
             "P(beats the reference) is the Bradley-Terry fit, the reference anchored at strength 0, with a 95% bootstrap interval over "
             "prompts; Elo is the mean over shuffled orders, the reference at 1000, with the 2.5-97.5% range over "
             "the orders. n counts valid comparisons (identical answers and unlabelled pairs are none); a policy "
             "with none is not ranked.", ""]
    if near_chance:
        lines += ["**Judge near chance** (the feedback stage's gate): read this ranking as noise.", ""]
    lines += ["| rank | policy | PPO step | P(beats reference) (95% CI) | Elo (range over orders) "
              "| BT strength (95% CI) | W / L / T | n |", "|---|---|---|---|---|---|---|---|"]
    for k, r in enumerate(ladder.itertuples()):
        name = "reference" if k == 0 else f"`{Path(str(r.policy)).name}`"
        rank = "-" if r.rank is None or (isinstance(r.rank, float) and math.isnan(r.rank)) else int(r.rank)
        anchor = k == 0 and not math.isnan(r.bt_strength)  # 0.5 and 0 by definition: no interval
        win = "0.5 (anchor)" if anchor else f"{fmt(r.win_prob)} ({fmt(r.win_prob_ci_low)} to {fmt(r.win_prob_ci_high)})"
        bt = "0 (anchor)" if anchor else f"{fmt(r.bt_strength)} ({fmt(r.bt_ci_low)} to {fmt(r.bt_ci_high)})"
        lines.append(f"| {rank} | {name} | {r.step} | {win} | {fmt(r.elo)} ({fmt(r.elo_ci_low)} to {fmt(r.elo_ci_high)}) "
                     f"| {bt} "
                     f"| {r.wins} / {r.losses} / {r.ties} | {r.comparisons}"
                     f"{' (fewer than ' + str(FEW) + ')' if r.comparisons < FEW else ''} |")
    return "\n".join(lines)


def probes_markdown(probes: pd.DataFrame, final_only: bool = True) -> str:
    """The probes table: each probe for the reference and the policy, and the difference, each
    with its interval; a difference whose interval excludes 0 is in bold."""
    if probes.empty:
        return "### Behaviour probes (no judge)\n\nNo probes in this evaluation."
    rows = probes[probes["final"]] if final_only else probes
    lines = ["### Behaviour probes (no judge)", "",
             "Read from the responses and the reference model alone; 95% intervals from a bootstrap over prompts.", "",
             "| policy (PPO step) | probe | n | reference | policy | policy - reference |", "|---|---|---|---|---|---|"]
    for r in rows.itertuples():
        diff = f"{fmt(r.diff)} ({fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)})"
        changed = r.diff_ci_low > 0 or r.diff_ci_high < 0
        lines.append(f"| {r.step} | {r.label} | {r.n}{' (fewer than 20)' if r.few else ''} "
                     f"| {fmt(r.reference)} ({fmt(r.reference_ci_low)} to {fmt(r.reference_ci_high)}) "
                     f"| {fmt(r.policy)} ({fmt(r.policy_ci_low)} to {fmt(r.policy_ci_high)}) "
                     f"| {'**' + diff + '**' if changed else diff} |")
    return "\n".join(lines)


def verdict(stages: Stages) -> list[str]:
    """The report's opening, in plain words: what changed in the policy, how far the judge can
    be trusted, and what is flagged."""
    ran, doubts = stages.ran(), judge_doubts(stages)
    lines = ["## Verdict", ""]
    ev = ran.get("evaluate")
    if ev is not None:
        m, probes = ev.metrics, pd.DataFrame(ev.probes)
        lines.append(f"**What changed in the policy** (the final policy against the reference, on {m['eval/prompts']} "
                     "held-out prompts with the same sampling seeds; 95% intervals):")
        if not probes.empty:
            final = probes[probes["final"]]
            unread = final[final["n"] == 0]
            final = final[final["n"] > 0]
            moved = final[(final["diff_ci_low"] > 0) | (final["diff_ci_high"] < 0)]
            still = final.drop(moved.index)
            lines += [f"- Changed beyond its interval (no judge involved): " + ("; ".join(
                f"{r.label} {fmt(r.reference)} -> {fmt(r.policy)} (difference {fmt(r.diff)}, {_ci(r.diff_ci_low, r.diff_ci_high)}, "
                f"n={r.n})" for r in moved.itertuples()) if len(moved) else "nothing.")]
            lines += [f"- Not distinguishable from the reference: " + (", ".join(
                f"{r.label} ({fmt(r.reference)} -> {fmt(r.policy)}{', n=' + str(r.n) + ', fewer than 20' if r.few else ''})"
                for r in still.itertuples()) if len(still) else "none") + "."]
            lines += [f"- Not measured: {r.label} (no prompt in that category; the prompt file's `category` column "
                      "and --eval.harmful-categories say which are harmful)." for r in unread.itertuples()]
        lines.append(f"- KL to the reference: {fmt(m['eval/kl'])} nats per response "
                     f"({_ci(m['eval/kl_ci_low'], m['eval/kl_ci_high'])}; exact, over the vocabulary).")
        lo, hi = m["eval/win_rate_ci_low"], m["eval/win_rate_ci_high"]
        side = ("prefers the policy" if lo > 0.5 else "prefers the reference" if hi < 0.5 else
                "cannot tell the policy from the reference")
        if m["eval/compared"]:
            lines.append(f"- The judge {side}: win rate {fmt(m['eval/win_rate'])} ({_ci(lo, hi)}, n={m['eval/compared']}, "
                         f"{m['eval/ties']} ties where its two orders disagree)"
                         + (" - a judge near chance, see below." if doubts else "."))
        else:
            lines.append(f"- The judge compared no pair ({m['eval/invalid']} invalid: identical answers or no label).")
        if "eval/policy_adherence_rate" in m:
            lines.append(f"- Adherence (the judge rates a response as following the constitution): policy "
                         f"{fmt(m['eval/policy_adherence_rate'])}, reference {fmt(m['eval/reference_adherence_rate'])} "
                         f"(n={m['eval/policy_adherence_n']} each).")
    fb = ran.get("feedback")
    lines += ["", "**How far the judge can be trusted:**"]
    if fb is None:
        lines.append("- Not measured in this run (the feedback stage did not run).")
    else:
        f = fb.metrics
        lines.append(f"- Position consistency {fmt(f.get('judge/position_consistency'))} "
                     f"({_ci(f.get('judge/position_consistency_ci_low'), f.get('judge/position_consistency_ci_high'))}, "
                     f"n={f.get('judge/valid_pairs')}): the share of pairs whose verdict survives swapping the order "
                     "(a judge answering at random: 0.5).")
        if f.get("judge/triples"):
            lines.append(f"- Intransitive triples {fmt(f['judge/intransitive_triples'])} "
                         f"({_ci(f['judge/intransitive_triples_ci_low'], f['judge/intransitive_triples_ci_high'])}, "
                         f"n={f['judge/triples']}): the share of a prompt's judged triples that form a cycle "
                         "a > b > c > a (a consistent judge: 0; one answering at random: 0.25).")
        if "judge/agreement" in f:
            lines.append(f"- Agreement with human labels {fmt(f['judge/agreement'])} "
                         f"({_ci(f['judge/agreement_ci_low'], f['judge/agreement_ci_high'])}, n={f['judge/agreement_n']}); "
                         f"'the longer response wins' agrees {fmt(f['baseline/longer_wins'])}; chance is 0.5.")
        else:
            lines.append("- Agreement with human labels: not measured (set `--feedback.calibration FILE`, "
                         "hh-rlhf-style pairs).")
        lines.append(f"- Gate ({f.get('judge/gate_mode', 'warn')}): " + (
            "the judge cannot be told apart from " + "; ".join(doubts) + ". Every figure the judge produced in this "
            "report is a judge near chance." if doubts else "passed."))
    flags = [f"a judge near chance (gate: {fb.metrics.get('judge/gate_mode')}): read its win rate and adherence "
             "rates as noise" ] if doubts else []
    if ev is not None and ev.get("eval/overoptimisation") == 1.0:
        flags.append("over-optimisation: the reward-model score rose while the judged win rate fell")
    if fb is not None and fb.metrics.get("judge/injection_suspected", 0):
        flags.append(f"{fb.metrics['judge/injection_suspected']} preference pairs with text addressing the judge")
    few = [label for label, fig in headline(stages).items() if any("fewer than" in n for n in fig.notes)]
    if few:
        flags.append(f"{len(few)} headline figures rest on fewer than {FEW} samples (marked below)")
    lines += ["", "**Flagged:** " + ("; ".join(flags) + "." if flags else "nothing."), ""]
    if stages.promotion is not None:
        lines += [f"**Promotion gate:** {gate_line(stages.promotion)}", ""]
    return lines


def gate_line(r) -> str:
    """The promotion gate's verdict (a PromotionResult) in one line."""
    verb = "promoted to champion" if r.status == "champion" else r.status
    return f"candidate `{r.policy_id}` (trained from `{r.parent_id}`): {verb}: {r.reason}"


def gate_markdown(r) -> str:
    return "\n".join(["## Promotion gate", "", gate_line(r), "", "| check | passed | detail |", "|---|---|---|",
                      *[f"| {c['check']} | {'yes' if c['passed'] else '**no**'} | {c['detail']} |" for c in r.checks]])


def report_markdown(ctx: RunContext, constitution_name: str, stages: Stages) -> list[str]:
    """report.md's lines: the run, the verdict, the headline, then each stage's figures, tables
    and plots."""
    lines = [
        f"# RLAIF run `{ctx.run_id}`", "",
        f"- constitution: **{constitution_name}** (`{ctx.constitution_path}`)",
        f"- constitution_sha: `{ctx.constitution_sha}`",
        f"- policy / reference: `{ctx.policy_model}` ({ctx.policy_engine.kind} engine); judge: `{ctx.judge.model}` "
        f"({ctx.judge.engine.kind} engine); device: {ctx.runtime.device}, {ctx.runtime.dtype_name}",
        f"- finished: {datetime.now(timezone.utc).isoformat(timespec='seconds')}", "",
        *verdict(stages),
        "## Headline", "", "| | |", "|---|---|",
        *[f"| {k} | {v.text()} |" for k, v in headline(stages).items()],
    ]
    for name, result in stages.ran().items():
        paths = {k: v for k, v in result.model_dump().items() if isinstance(v, str)}
        lines += ["", f"## {name}", ""]
        if name == "promotion":
            lines += [gate_markdown(result).split("\n", 2)[2], ""]
        if name == "evaluate":
            lines += [probes_markdown(pd.DataFrame(result.probes), final_only=False), ""]
            if result.curve:
                lines += [curve_markdown(pd.DataFrame(result.curve), bool(result.get("eval/overoptimisation"))), ""]
            if result.ladder:
                lines += [ladder_markdown(pd.DataFrame(result.ladder), bool(judge_doubts(stages))), ""]
        lines += ["| | |", "|---|---|", *[f"| `{k}` | {fmt(v)} |" for k, v in {**result.metrics, **paths}.items()]]
        # the PNGs sit next to report.md; the UI cannot show a local file
        lines += ["", *[f"![{name}: {k}]({Path(v).name})" for k, v in result.plots.items()]]
    return lines


def compare_markdown(cid: str, names: dict[str, str], table: pd.DataFrame, agreement: dict,
                     differ: dict, samples: pd.DataFrame, probes: pd.DataFrame, diffs: pd.DataFrame,
                     ladders: dict[str, pd.DataFrame] | None = None, near_chance: dict[str, bool] | None = None) -> str:
    lines = [f"# Constitution A/B `{cid}`", "",
             *[f"- **{n}**: `{path}`" for n, path in names.items()], "",
             "## How each trained policy fares under each constitution", "",
             "Each trained policy against the shared reference, on the same held-out prompts and seeds,",
             "judged under each constitution (its judge prompts and its principles; the reward-model",
             "score is that constitution's reward model). A pair is a win or a loss only when the judge",
             "picks the same answer in both orders; otherwise it is a tie, counted as half a win.", "",
             "| trained under | judged under | compared | wins / losses / ties | win rate | 95% CI | at equal length "
             "| adherence (policy) | adherence (reference) | n rated | RM score |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.trained_under} | {r.judged_under} | {r.compared} | {r.wins} / {r.losses} / {r.ties} "
              f"| {fmt(r.win_rate)} | {fmt(r.win_rate_ci_low)} to {fmt(r.win_rate_ci_high)} "
              f"| {fmt(r.win_rate_length_corrected)} "
              f"| {fmt(r.policy_adherence_rate)} ({fmt(r.policy_adherence_rate_ci_low)} to {fmt(r.policy_adherence_rate_ci_high)}) "
              f"| {fmt(r.reference_adherence_rate)} | {fmt(r.policy_adherence_n)} | {fmt(r.policy_score)} |"
              for r in table.itertuples()]
    if ladders:
        lines += ["", "## Ladder under each judging constitution", "",
                  "Under each constitution's judge, the reference and each trained policy's final answers on the same "
                  "held-out prompts: each policy against the reference (the table above) and each two trained "
                  "policies against each other (the `matches` table).", ""]
        for judged, lad in ladders.items():
            lines += [ladder_markdown(lad, (near_chance or {}).get(judged, False), f"Ladder judged under {judged}"), ""]
    lines += ["", "## Behaviour of each trained policy, no judge involved", "",
              "The probes of each run's own evaluation (the same held-out prompts and seeds); 95% intervals from a "
              "bootstrap over prompts; bold: the interval of the difference from the reference excludes 0.", "",
              "| probe | n | reference | " + " | ".join(f"trained under {t}" for t in probes["trained_under"].unique())
              + " |", "|---|---|---|" + "---|" * probes["trained_under"].nunique()]
    for name, group in probes.groupby("probe", sort=False):
        first = group.iloc[0]
        cells = []
        for r in group.itertuples():
            text = (f"{fmt(r.policy)} ({fmt(r.policy_ci_low)} to {fmt(r.policy_ci_high)}); "
                    f"diff {fmt(r.diff)} ({fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)})")
            cells.append(f"**{text}**" if r.diff_ci_low > 0 or r.diff_ci_high < 0 else text)
        lines.append(f"| {first.label} | {first.n}{' (fewer than 20)' if first.few else ''} | {fmt(first.reference)} "
                     f"({fmt(first.reference_ci_low)} to {fmt(first.reference_ci_high)}) | " + " | ".join(cells) + " |")
    lines += ["", "## Policy against policy, no judge involved", "",
              "Each two trained policies on the same held-out prompts and seeds; the difference's 95% interval "
              "resamples both policies' answers to a prompt together; bold: it excludes 0.", "",
              "| probe | n | policy A | A | policy B | B | A - B (95% CI) |", "|---|---|---|---|---|---|---|"]
    for r in diffs.itertuples():
        text = f"{fmt(r.diff)} ({fmt(r.diff_ci_low)} to {fmt(r.diff_ci_high)})"
        lines.append(f"| {r.label} | {r.n}{' (fewer than 20)' if r.few else ''} "
                     f"| {r.a} | {fmt(r.policy)} ({fmt(r.policy_ci_low)} to {fmt(r.policy_ci_high)}) "
                     f"| {r.b} | {fmt(r.reference)} ({fmt(r.reference_ci_low)} to {fmt(r.reference_ci_high)}) "
                     f"| {f'**{text}**' if r.diff_ci_low > 0 or r.diff_ci_high < 0 else text} |")
    lines += ["", "## What the swap changed", ""]
    lines += [f"- Feedback: on the {a['pairs']} pairs both judged, the **{x}** and **{y}** judges chose the same "
              f"response on {a['same']} ({a['same_choice']:.0%}); the correlation of their P(a better) is "
              f"{fmt(a['p_correlation'])}."
              for (x, y), a in agreement.items()]
    lines += [f"- Behaviour: the policies trained under **{x}** and **{y}** answer differently on {k} of {n} "
              "held-out prompts (same sampling seeds)." for (x, y), (k, n) in differ.items()]
    lines += ["", "## Sample responses to the same prompts", ""]
    for prompt, group in samples.groupby("prompt", sort=False):
        lines += [f"**Prompt:** {prompt}", ""]
        lines += [f"- *{who}:* {text[:400]}" for who, text in zip(group["who"], group["response"])]
        lines += [""]
    return "\n".join(lines) + "\n"

