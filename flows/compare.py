"""Constitution A/B: the pipeline under each constitution, then every trained policy judged
under every constitution, side by side."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from prefect import flow
from prefect.artifacts import create_markdown_artifact

from flows.common import fmt, write_text_atomic
from flows.evaluate import evaluate_flow
from flows.pipeline import pipeline, prepare_run
from rlaif.config import CompareConfig
from rlaif.paths import report_dir
from rlaif.store import Store


def compare_id(config: CompareConfig) -> str:
    """A name fixed by the settings, so running the same comparison again reuses every
    finished step (the pipelines' steps are cached by run id and inputs); --run-id names it."""
    if config.run_id:
        return config.run_id
    settings = config.model_dump(mode="json", exclude={"run_id", "data"})
    return "compare-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def cell(evaluation: dict) -> dict:
    return {k.removeprefix("eval/"): evaluation[k] for k in (
        "eval/compared", "eval/wins", "eval/losses", "eval/ties", "eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/win_rate_length_corrected",
        "eval/policy_harmless_rate", "eval/reference_harmless_rate", "eval/policy_score", "eval/policy_length")}


def label_agreement(a: pd.DataFrame, b: pd.DataFrame) -> dict:
    """How the two constitutions' judges labelled the same pairs (both runs sample the pairs
    from the same policy with the same seeds): the share where they chose the same response,
    and the correlation of P(a better). Pairs whose texts differ are left out."""
    m = a.merge(b, on=["pair_id", "response_a", "response_b"], suffixes=("_1", "_2"))
    m = m[m["valid_1"] & m["valid_2"]]
    p1 = (m["p_a_first_1"] + 1 - m["p_a_second_1"]) / 2
    p2 = (m["p_a_first_2"] + 1 - m["p_a_second_2"]) / 2
    same = int((m["chosen_1"] == m["chosen_2"]).sum())
    return {"pairs": len(m), "same": same, "same_choice": same / len(m) if len(m) else float("nan"),
            "p_correlation": float(p1.corr(p2)) if len(m) > 1 else float("nan")}


def answers_differ(evals: dict[str, pd.DataFrame]) -> dict:
    """For each two trained policies, on how many of the shared held-out prompts (same
    sampling seeds) their answers differ."""
    names, out = list(evals), {}
    for i, x in enumerate(names):
        for y in names[i + 1:]:
            m = evals[x].merge(evals[y], on="prompt_id", suffixes=("_x", "_y"))
            out[(x, y)] = (int((m["policy_response_x"] != m["policy_response_y"]).sum()), len(m))
    return out


def compare_markdown(cid: str, names: dict[str, str], table: pd.DataFrame, agreement: dict,
                     differ: dict, samples: pd.DataFrame) -> str:
    lines = [f"# Constitution A/B `{cid}`", "",
             *[f"- **{n}**: `{path}`" for n, path in names.items()], "",
             "## How each trained policy fares under each constitution", "",
             "Each trained policy against the shared reference, on the same held-out prompts and seeds,",
             "judged under each constitution (its judge prompts and its principles; the reward-model",
             "score is that constitution's reward model). A pair is a win or a loss only when the judge",
             "picks the same answer in both orders; otherwise it is a tie, counted as half a win.", "",
             "| trained under | judged under | compared | wins / losses / ties | win rate | 95% CI | at equal length "
             "| harmless (policy) | harmless (reference) | RM score | length (tokens) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.trained_under} | {r.judged_under} | {r.compared} | {r.wins} / {r.losses} / {r.ties} "
              f"| {fmt(r.win_rate)} | {fmt(r.win_rate_ci_low)}-{fmt(r.win_rate_ci_high)} "
              f"| {fmt(r.win_rate_length_corrected)} | {fmt(r.policy_harmless_rate)} "
              f"| {fmt(r.reference_harmless_rate)} | {fmt(r.policy_score)} | {fmt(r.policy_length)} |"
              for r in table.itertuples()]
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


@flow(name="rlaif-compare", log_prints=True)
def compare_pipeline(config: CompareConfig = CompareConfig()) -> dict:
    """Run (or reuse) the pipeline for each constitution, then judge each trained policy under
    each constitution. Returns the table and the report's path."""
    constitutions = list(config.constitution)
    cid = compare_id(config)
    runs, ctxs = {}, {}
    for c in constitutions:
        cfg = config.pipeline_config(c, f"{cid}-{Path(c).stem}")
        ctxs[c] = prepare_run(cfg)
        runs[c] = pipeline(cfg)
    cross_cfg = config.eval.model_copy(update={"snapshots": False})
    rows = []
    for trained in constitutions:
        for judged in constitutions:
            if trained == judged:  # the run's own evaluation
                evaluation = runs[trained]["stages"]["evaluate"]
            else:  # the trained policy, judged under the other constitution, as its own evaluation run
                ctx = ctxs[judged].model_copy(update={"run_id": f"{cid}-{Path(trained).stem}-judged-by-{Path(judged).stem}"})
                evaluation = evaluate_flow(ctx, runs[trained]["stages"]["ppo"]["policy"],
                                           runs[judged]["stages"]["reward"]["reward_model"], cross_cfg)
            rows.append({"trained_under": Path(trained).stem, "judged_under": Path(judged).stem,
                         "eval": evaluation["eval"], **cell(evaluation)})
    table = pd.DataFrame(rows)

    # what the swap changed: the labels on the shared pairs, and the trained policies' answers
    store = Store(config.data)
    prefs = {Path(c).stem: store.read_part("preferences", runs[c]["stages"]["feedback"]["preferences"]).to_pandas()
             for c in constitutions}
    evals = {}
    for c in constitutions:
        ev = store.read_part("eval", runs[c]["stages"]["evaluate"]["eval"]).to_pandas()
        evals[Path(c).stem] = ev[ev["final"]]
    stems = list(prefs)
    agreement = {(x, y): label_agreement(prefs[x], prefs[y]) for i, x in enumerate(stems) for y in stems[i + 1:]}

    # the same prompts: the reference and each trained policy (from the runs' own evaluations)
    samples = []
    for i, (stem, ev) in enumerate(evals.items()):
        ev = ev.head(3)
        if i == 0:
            samples += [{"prompt": p, "who": "reference", "response": r}
                        for p, r in zip(ev["prompt"], ev["reference_response"])]
        samples += [{"prompt": p, "who": f"trained under {stem}", "response": r}
                    for p, r in zip(ev["prompt"], ev["policy_response"])]
    samples = pd.DataFrame(samples)
    samples["order"] = samples.groupby("prompt", sort=False).ngroup()
    samples = samples.sort_values("order", kind="stable")

    names = {Path(c).stem: ctxs[c].constitution_path for c in constitutions}
    markdown = compare_markdown(cid, names, table, agreement, answers_differ(evals), samples)
    out = write_text_atomic(report_dir(config.data, cid) / "compare.md", markdown)
    create_markdown_artifact(key="compare-report", markdown=markdown, description=f"constitution A/B {cid}")
    return {"compare_id": cid, "report": str(out.resolve()), "table": table.to_dict("records"),
            "label_agreement": {f"{x}/{y}": a for (x, y), a in agreement.items()},
            "runs": {Path(c).stem: runs[c]["run_id"] for c in constitutions}}
