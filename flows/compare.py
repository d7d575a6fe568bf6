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
        "eval/compared", "eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/win_rate_length_corrected",
        "eval/policy_harmless_rate", "eval/reference_harmless_rate", "eval/policy_score", "eval/policy_length")}


def compare_markdown(cid: str, names: dict[str, str], table: pd.DataFrame, samples: pd.DataFrame) -> str:
    lines = [f"# Constitution A/B `{cid}`", "",
             *[f"- **{n}**: `{path}`" for n, path in names.items()], "",
             "Each trained policy against the shared reference, on the same held-out prompts and seeds,",
             "judged under each constitution (its judge prompts and its principles; the reward-model",
             "score is that constitution's reward model).", "",
             "| trained under | judged under | pairs compared | win rate | 95% CI | at equal length "
             "| harmless (policy) | harmless (reference) | RM score | length (tokens) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r.trained_under} | {r.judged_under} | {r.compared} | {fmt(r.win_rate)} | {fmt(r.win_rate_ci_low)}-"
              f"{fmt(r.win_rate_ci_high)} | {fmt(r.win_rate_length_corrected)} | {fmt(r.policy_harmless_rate)} "
              f"| {fmt(r.reference_harmless_rate)} | {fmt(r.policy_score)} | {fmt(r.policy_length)} |"
              for r in table.itertuples()]
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

    # the same prompts: the reference and each trained policy (from the runs' own evaluations)
    store, samples = Store(config.data), []
    for i, c in enumerate(constitutions):
        ev = store.read_part("eval", runs[c]["stages"]["evaluate"]["eval"]).to_pandas()
        ev = ev[ev["final"]].head(3)
        if i == 0:
            samples += [{"prompt": p, "who": "reference", "response": r}
                        for p, r in zip(ev["prompt"], ev["reference_response"])]
        samples += [{"prompt": p, "who": f"trained under {Path(c).stem}", "response": r}
                    for p, r in zip(ev["prompt"], ev["policy_response"])]
    samples = pd.DataFrame(samples)
    samples["order"] = samples.groupby("prompt", sort=False).ngroup()
    samples = samples.sort_values("order", kind="stable")

    names = {Path(c).stem: ctxs[c].constitution_path for c in constitutions}
    markdown = compare_markdown(cid, names, table, samples)
    out = write_text_atomic(report_dir(config.data, cid) / "compare.md", markdown)
    create_markdown_artifact(key="compare-report", markdown=markdown, description=f"constitution A/B {cid}")
    return {"compare_id": cid, "report": str(out.resolve()), "table": table.to_dict("records"),
            "runs": {Path(c).stem: runs[c]["run_id"] for c in constitutions}}
