"""Constitution A/B: the pipeline under each constitution, then every trained policy judged
under every constitution, side by side."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pandas as pd
from prefect import flow, task
from prefect.artifacts import create_markdown_artifact

from constitution import load_constitution
from flows.common import MODEL_TASK, cached
from flows.config import CompareConfig, RunContext
from flows.evaluate import evaluate_flow
from flows.pipeline import pipeline, prepare_run
from flows.reports import compare_markdown, judge_doubts
from flows.results import CompareResult, EvalResult, RunResult
from evaluation.ladder import judge_matches, ladder, ladder_comparisons, rung_pairs
from evaluation.probes import policy_against_policy
from judges.judge import make_judge
from rlaif.io import write_text_atomic
from rlaif.paths import report_dir
from rlaif.store import Store


def compare_id(config: CompareConfig) -> str:
    """A name fixed by the settings, so running the same comparison again reuses every
    finished step (the pipelines' steps are cached by run id and inputs); --run-id names it."""
    if config.run_id:
        return config.run_id
    settings = config.model_dump(mode="json", exclude={"run_id", "data"})
    return "compare-" + hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:10]


def cell(evaluation: EvalResult) -> dict:
    return {k.removeprefix("eval/"): evaluation.get(k) for k in (
        "eval/compared", "eval/wins", "eval/losses", "eval/ties", "eval/win_rate", "eval/win_rate_ci_low", "eval/win_rate_ci_high", "eval/win_rate_length_corrected",
        "eval/policy_adherence_rate", "eval/policy_adherence_rate_ci_low", "eval/policy_adherence_rate_ci_high",
        "eval/policy_adherence_n", "eval/reference_adherence_rate", "eval/policy_score", "eval/policy_length")}


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


@flow(name="rlaif-compare", log_prints=True)
def compare_pipeline(config: CompareConfig = CompareConfig()) -> CompareResult:
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
                evaluation = runs[trained].stages.evaluate
            else:  # the trained policy, judged under the other constitution, as its own evaluation run
                ctx = ctxs[judged].model_copy(update={"run_id": f"{cid}-{Path(trained).stem}-judged-by-{Path(judged).stem}"})
                evaluation = evaluate_flow(ctx, runs[trained].stages.ppo.policy,
                                           runs[judged].stages.reward.reward_model, cross_cfg)
            rows.append({"trained_under": Path(trained).stem, "judged_under": Path(judged).stem,
                         "eval": evaluation.eval, **cell(evaluation)})
    # the ladder's missing rungs: under each constitution's judge, each two trained policies head to head
    matches = {}
    for judged in constitutions:
        stem = Path(judged).stem
        ctx = ctxs[judged].model_copy(update={"run_id": f"{cid}-ladder-judged-by-{stem}"})
        matches[stem] = cached(policy_matches, ctx)(ctx, config.eval.seed, {
            r["trained_under"]: r["eval"] for r in rows if r["judged_under"] == stem})
    names = {Path(c).stem: ctxs[c].constitution_path for c in constitutions}
    return compare_report(config, cid, names, {Path(c).stem: runs[c] for c in constitutions}, rows, matches)


def final_rows(store: Store, evals: dict[str, str]) -> dict[str, pd.DataFrame]:
    """Each trained policy's final rows of its `eval` part, on the prompts all of them share."""
    out = {}
    for t, path in evals.items():
        ev = store.read_part("eval", path).to_pandas()
        out[t] = ev[ev["final"]]
    shared = set.intersection(*(set(ev["prompt_id"]) for ev in out.values()))
    return {t: ev[ev["prompt_id"].isin(shared)].sort_values("prompt_id").reset_index(drop=True)
            for t, ev in out.items()}


@task(**MODEL_TASK)
def policy_matches(ctx: RunContext, seed: int, evals: dict[str, str]) -> str | None:
    """Judge each two trained policies' final answers (`evals`: trained-under -> its eval part
    judged under ctx's constitution) on the shared held-out prompts, under ctx's constitution
    and judge; the `matches` part written (None: fewer than two policies)."""
    if len(evals) < 2:
        return None
    store = Store(ctx.data)
    finals = final_rows(store, evals)
    first = next(iter(finals.values()))
    sides = [(t, int(ev["policy_step"].iloc[0]), list(ev["policy_response"])) for t, ev in finals.items()]
    with make_judge(ctx.judge, ctx.runtime) as judge:
        matches = judge_matches(judge, load_constitution(ctx.constitution_path), first[["prompt_id", "prompt"]],
                                sides, rung_pairs(len(sides), "all"), seed)
    return str(store.write("matches", matches, key=f"{ctx.run_id}/matches", lineage=ctx.lineage(
        judge_model=ctx.judge.model), metadata={"evals": evals}))


@task
def compare_report(config: CompareConfig, cid: str, names: dict[str, str], runs: dict[str, RunResult],
                   rows: list[dict], matches: dict[str, str | None]) -> CompareResult:
    """What the swap changed (the labels on the shared pairs, the trained policies' answers)
    and the ladder under each judging constitution, written to compare.md beside the table."""
    table = pd.DataFrame(rows)
    store = Store(config.data)
    prefs = {stem: store.read_part("preferences", run.stages.feedback.preferences).to_pandas()
             for stem, run in runs.items()}
    evals = {}
    for stem, run in runs.items():
        ev = store.read_part("eval", run.stages.evaluate.eval).to_pandas()
        evals[stem] = ev[ev["final"]]
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

    probes = pd.DataFrame([{"trained_under": stem, **r} for stem, run in runs.items()
                           for r in run.stages.evaluate.probes if r["final"]])
    diffs = pd.DataFrame([{"a": x, "b": y, **r} for i, x in enumerate(stems) for y in stems[i + 1:]
                          for r in policy_against_policy(evals[x], evals[y], config.eval.seed,
                                                         config.eval.probe_resamples)])
    # one ladder per judging constitution: the reference and each trained policy's final answers
    ladders = {}
    for judged, part in matches.items():
        finals = final_rows(store, {r.trained_under: r.eval for r in table[table["judged_under"] == judged].itertuples()})
        h2h = store.read_part("matches", part).to_pandas() if part else None
        comparisons = ladder_comparisons(pd.concat([ev.assign(policy=t) for t, ev in finals.items()]), h2h, "reference")
        ladders[judged] = ladder(comparisons, [("reference", 0), *[(t, int(ev["policy_step"].iloc[0]))
                                                                  for t, ev in finals.items()]],
                                 resamples=config.eval.probe_resamples, seed=config.eval.seed)
    near_chance = {stem: bool(judge_doubts(run.stages)) for stem, run in runs.items()}
    markdown = compare_markdown(cid, names, table, agreement, answers_differ(evals), samples, probes, diffs,
                                ladders, near_chance)
    out = write_text_atomic(report_dir(config.data, cid) / "compare.md", markdown)
    create_markdown_artifact(key="compare-report", markdown=markdown, description=f"constitution A/B {cid}")
    return CompareResult(compare_id=cid, report=str(out.resolve()), table=table.to_dict("records"),
                         probes=probes.to_dict("records"), policy_diffs=diffs.to_dict("records"),
                         label_agreement={f"{x}/{y}": a for (x, y), a in agreement.items()},
                         ladders={stem: lad.to_dict("records") for stem, lad in ladders.items()},
                         runs={stem: run.run_id for stem, run in runs.items()})
