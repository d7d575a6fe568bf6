"""The whole pipeline as Prefect flows (under prefect_test_harness), on a tiny model."""

import asyncio
import json

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from evaluation.config import PromotionConfig
from flows.config import PipelineConfig
from rlaif.store import LINEAGE_COLUMNS, TABLES, Store

TINY = {
    # a tournament: 4 samples per prompt, all 6 pairs judged
    "generate": {"n_prompts": 5, "samples_per_prompt": 4, "sampling": {"max_new_tokens": 6}},
    "feedback": {"pairing": "all", "sampling": {"max_new_tokens": 5}},
    "sft": {"enabled": True, "max_length": 64},
    "reward": {"epochs": 1, "batch_size": 2},
    "ppo": {"steps": 2, "batch_size": 3, "mini_batch_size": 3, "ppo_epochs": 1, "sampling": {"max_new_tokens": 6}},
    "eval": {"n_prompts": 3, "sampling": {"max_new_tokens": 6}},
}
_N, _K = TINY["generate"]["n_prompts"], TINY["generate"]["samples_per_prompt"]
TINY_RESPONSES, TINY_PAIRS = _N * _K, _N * _K * (_K - 1) // 2  # what TINY generates and judges (pairing all)


@pytest.fixture(scope="module")
def pipeline_run(prefect_harness, tiny_model_dir, tmp_path_factory):
    from flows.pipeline import pipeline

    data = tmp_path_factory.mktemp("data")
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "tiny-run", **TINY})
    return data, pipeline(cfg)


def test_every_table_has_rows_with_lineage(pipeline_run):
    data, result = pipeline_run
    store = Store(data)
    # labelled in one shard: no scratch parts; the registry is the training flow's (the service loop test)
    for table in set(TABLES) - {"preference_shards", "policies"}:
        df = store.read(table)
        assert len(df) > 0, table
        for col in LINEAGE_COLUMNS:
            assert df[col].notna().all(), (table, col)
        assert set(df["run_id"]) == {"tiny-run"}, table
        assert set(df["constitution_sha"]) == {result.constitution_sha}, table
        assert df["flow_run_id"].str.len().gt(0).all(), table
        assert len(pd.read_parquet(data / table)) == len(df), table


def test_a_tournament_is_ranked_with_lineage_and_trains_the_reward_model_on_every_pair(pipeline_run):
    """K = 4 samples per prompt, pairing all: 6 judged pairs per prompt, one `rankings` row per
    sample with BT, Elo and rank, and the reward model trained on every valid pair."""
    data, result = pipeline_run
    store = Store(data)
    prefs, responses, ranks = store.read("preferences"), store.read("responses"), store.read("rankings")
    assert len(prefs) == TINY_PAIRS and (prefs.groupby("prompt_id").size() == 6).all()
    assert set(prefs["response_a_id"]) | set(prefs["response_b_id"]) == set(responses["response_id"])
    assert result.stages.feedback.rankings and Path(result.stages.feedback.rankings).is_file()
    judged = store.read_parts("preferences", [result.stages.feedback.preferences])
    prompts_ranked = judged[judged["valid"]]["prompt_id"].unique()
    assert set(ranks["prompt_id"]) == set(prompts_ranked)
    for pid, g in ranks.groupby("prompt_id"):
        assert sorted(g["rank"]) == list(range(1, len(g) + 1)), pid
        assert g["response"].notna().all() and set(g["response_id"]) <= set(responses["response_id"])
        assert g.sort_values("rank")["bt_strength"].is_monotonic_decreasing
        # each sample met every other valid sample of its prompt once
        mine = judged[judged["valid"] & (judged["prompt_id"] == pid)]
        met = pd.concat([mine["response_a_id"], mine["response_b_id"]]).value_counts()
        assert g.set_index("response_id")["comparisons"].to_dict() == met.to_dict(), pid
    assert set(ranks["judge_model"]) == set(prefs["judge_model"]) and set(ranks["run_id"]) == {"tiny-run"}
    # the reward model saw every valid pair: prompts whole on one side of its split
    rm = result.stages.reward.metrics
    valid = prefs[prefs["valid"]]
    assert rm["rm/train_pairs"] + rm["rm/heldout_pairs"] == len(valid)
    assert rm["rm/train_prompts"] == valid["prompt_id"].nunique() - round(valid["prompt_id"].nunique() * 0.25)
    lineage = json.loads((Path(result.checkpoints) / "reward_model" / "lineage.json").read_text())
    assert sorted(lineage["preference_pair_ids"]) == sorted(valid["pair_id"])


def test_no_training_table_contains_eval_prompts(pipeline_run):
    data, _ = pipeline_run
    store = Store(data)
    eval_ids = set(store.read("eval")["prompt_id"])
    for table in ("responses", "critiques", "preferences"):
        assert not set(store.read(table)["prompt_id"]) & eval_ids, table


def test_outputs_report_and_artifacts(pipeline_run):
    data, result = pipeline_run
    assert result.headline["pairs labelled"].value >= 1
    report = open(result.report).read()
    assert result.constitution_sha in report and "## Headline" in report
    # the story first: the verdict opens the report, before the headline and the tables
    assert report.index("## Verdict") < report.index("## Headline") < report.index("## generate")
    assert "**How far the judge can be trusted:**" in report and "Position consistency" in report
    # every rate in the headline carries its n and interval; a handful of samples is marked
    accuracy = result.headline["reward model held-out accuracy"]
    assert accuracy.n == result.stages.reward.metrics["rm/heldout_pairs"] and accuracy.ci_low <= accuracy.value
    assert "fewer than 20 samples" in accuracy.text() and "95% CI" in accuracy.text()
    for plot in ("reward_model.png", "ppo.png"):  # training curves next to the report, linked from it
        assert (Path(result.report).parent / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", plot
        assert f"]({plot})" in report, plot
    run_dir = data / "checkpoints" / result.constitution_sha[:12] / "tiny-run"
    for sub in ("sft", "reward_model", "policy"):
        assert (run_dir / sub / "lineage.json").exists(), sub
    # with SFT on, the reward model and PPO start from the SFT model, not the base
    assert json.loads((run_dir / "policy" / "lineage.json").read_text())["policy_model"] == str(run_dir / "sft")

    from prefect.client.orchestration import get_client

    async def artifacts():
        async with get_client() as client:
            return await client.read_artifacts()

    everything = asyncio.run(artifacts())  # other tests' runs share the harness: match on content
    arts = {a.key: a for a in everything}
    table = arts["feedback-preferences"].data
    rows = json.loads(table) if isinstance(table, str) else table
    assert 1 <= len(rows) <= 5 and {"p_chosen", "response_a", "principle_ids"} <= set(rows[0])
    assert {"generate-summary", "feedback-summary", "feedback-critiques", "feedback-preferences",
            "sft-summary", "reward-model-summary", "ppo-summary", "evaluate-summary", "evaluate-samples",
            "pipeline-report", "ppo-progress", "generate-progress"} <= set(arts)
    # the progress artifacts were updated batch by batch and step by step, to the end
    progress = {(a.key, a.description.split(" (")[0], float(a.data)) for a in everything if a.type == "progress"}
    assert ("ppo-progress", "PPO steps: 2/2", 100.0) in progress
    assert "Ladder of policies" in arts["evaluate-summary"].data and "| rank | policy | PPO step |" in report
    assert ("generate-progress", "Responses generated: 20/20", 100.0) in progress
    # this run's: the feedback flow run its `rankings` rows name (other modules' runs publish the same key)
    mine = set(Store(data).read("rankings", run_id="tiny-run")["flow_run_id"])
    ranking = next(a for a in everything if a.key == "feedback-rankings" and str(a.flow_run_id) in mine)
    ranked = json.loads(ranking.data) if isinstance(ranking.data, str) else ranking.data
    assert len(ranked) == 12 and {"prompt", "rank", "response", "bt_strength", "elo", "wins"} <= set(ranked[0])


def test_rerun_with_same_run_id_duplicates_nothing(pipeline_run, tiny_model_dir):
    from flows.pipeline import pipeline

    data, _ = pipeline_run
    before = {t: len(Store(data).read(t)) for t in TABLES}
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "tiny-run", **TINY})
    pipeline(cfg)
    assert {t: len(Store(data).read(t)) for t in TABLES} == before


def test_the_judge_gate_measures_the_judge_and_stops_before_training(prefect_harness, tiny_model_dir, tmp_path):
    """A random-weight judge on a calibration file: its agreement with the humans is measured
    and reported with its interval, the gate finds it near chance, and `stop` ends the run
    before the reward model, keeping the responses and labels."""
    from flows.config import RunError
    from flows.feedback import feedback_flow
    from flows.pipeline import pipeline, prepare_run

    with open(tmp_path / "human.jsonl", "w") as fh:  # hh-rlhf style: the humans chose the helpful answer
        for i in range(12):
            prefix = f"\n\nHuman: How do I boil {i} eggs?"
            fh.write(json.dumps({"chosen": f"{prefix}\n\nAssistant: Simmer them for nine minutes.",
                                 "rejected": f"{prefix}\n\nAssistant: No."}) + "\n")
    settings = {"data": str(tmp_path / "data"), "policy_model": str(tiny_model_dir), "run_id": "gated",
                "judge": {"model": str(tiny_model_dir)}, **TINY,
                "feedback": {**TINY["feedback"], "calibration": str(tmp_path / "human.jsonl"),
                             "calibration_pairs": 10, "judge_gate": "stop"}}
    with pytest.raises(RunError, match="judge gate: the judge cannot be told apart from chance"):
        pipeline(PipelineConfig.model_validate(settings))
    store = Store(tmp_path / "data")
    assert len(store.read("preferences")) == TINY_PAIRS and not store.parts("rm_metrics")  # labels kept, nothing trained
    # the feedback stage's figures (cached: the same run again does not label anew)
    cfg = PipelineConfig.model_validate(settings)
    ctx = prepare_run(cfg)
    responses = str(store.parts("responses")[0])
    metrics = feedback_flow(ctx, responses, cfg.feedback).metrics
    assert metrics["judge/agreement_n"] == 10 and metrics["judge/agreement_ci_low"] < 0.5 < metrics["judge/agreement_ci_high"]
    assert "chance" in metrics["judge/gate_reasons"] and metrics["judge/gate_mode"] == "stop"
    # a calibration file that is not there fails before any model work
    missing = PipelineConfig.model_validate({**settings, "feedback": {"calibration": str(tmp_path / "nope.jsonl")}})
    from judges.human_eval import PairsFileError
    with pytest.raises(PairsFileError, match="no such pairs file"):
        pipeline(missing)


def test_bad_constitution_fails_before_any_model_work(prefect_harness, tmp_path):
    from constitution import ConstitutionError
    from flows.pipeline import pipeline

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    with pytest.raises(ConstitutionError, match="principles: Field required"):
        pipeline(PipelineConfig(constitution=str(bad), data=str(tmp_path / "data")))
    assert not (tmp_path / "data").exists()


def test_revision_pairs_through_the_flow(pipeline_run, tiny_model_dir):
    from flows.pipeline import pipeline

    data, _ = pipeline_run
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "rev-run",
                                         **TINY, "feedback": {"sampling": {"max_new_tokens": 5}, "pair_source": "revision",
                                                                  "chain_of_thought": True, "cot_max_new_tokens": 3,
                                                                  "direct_scores": True},
                                         # GRPO on the judge's direct score (d-RLAIF), 2 samples per prompt
                                         "ppo": {**TINY["ppo"], "reward_source": "judge", "algorithm": "grpo",
                                                 "group_size": 2, "mini_batch_size": 6}})
    result = pipeline(cfg)
    store = Store(data)
    prefs = store.read("preferences", run_id="rev-run").set_index("prompt_id")
    crit = store.read("critiques", run_id="rev-run")
    assert sorted(crit["round"].unique()) == [0, 1]  # two critique rounds by default
    first = crit[crit["round"] == 0].set_index("prompt_id")
    final = crit[crit["round"] == 1].set_index("prompt_id")
    assert len(prefs) == len(first) == len(final) == 5
    assert (prefs["response_a"] == first.loc[prefs.index, "response"]).all()
    assert (prefs["response_b"] == final.loc[prefs.index, "revision"]).all()
    # Chain of thought and direct scores went through the flow into the table.
    assert prefs["rationales"].map(len).eq(2).all() and prefs["p_chosen"].between(0.5, 0.6).all()
    assert prefs[["score_a", "score_b"]].notna().all().all()
    # GRPO took the judge's direct score as its reward (d-RLAIF), with its KL in the loss
    ppo = store.read("ppo_metrics", run_id="rev-run")
    assert set(ppo["judge_model"]) == {str(tiny_model_dir)}
    assert {"ppo/kl_loss", "objective/zero_std_groups"} <= set(ppo["metric"]) and "ppo/value_loss" not in set(ppo["metric"])
    lineage = json.loads((Path(result.checkpoints) / "policy" / "lineage.json").read_text())
    assert lineage["reward_source"] == "judge" and lineage["judge_model"] == str(tiny_model_dir)


def test_a_tournament_reward_stores_its_judged_pairs_with_lineage(pipeline_run, tiny_model_dir):
    """RLOO rewarded by head-to-head judging of each prompt's 2 samples, no reward model in
    between: every batch's pairs land in `preferences` with the run's lineage."""
    from flows.pipeline import training_pipeline

    data, first = pipeline_run
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "online", **TINY,
                                         "sft": {"enabled": False},
                                         "ppo": {**TINY["ppo"], "algorithm": "rloo", "group_size": 2,
                                                 "mini_batch_size": 6, "reward_source": "tournament"}})
    result = training_pipeline(cfg)
    store = Store(data)
    pairs = store.read("preferences", run_id="online")  # the weekly job labels nothing else
    ppo = TINY["ppo"]
    assert len(pairs) == ppo["steps"] * ppo["batch_size"]  # one pair per group of 2, both orders
    assert set(pairs["judge_model"]) == {str(tiny_model_dir)} and set(pairs["constitution_sha"]) == {first.constitution_sha}
    assert pairs["flow_run_id"].str.len().gt(0).all() and pairs["p_a_second"].notna().all()
    assert pairs["response_a_id"].notna().all() and (pairs["response_a_id"] != pairs["response_b_id"]).all()
    from rlaif.prompts import load_prompts

    assert set(pairs["prompt_id"]) <= set(load_prompts(split="train")["prompt_id"])  # the prompts' own ids
    lineage = json.loads((Path(result.checkpoints) / "policy" / "lineage.json").read_text())
    assert lineage["reward_source"] == "tournament" and lineage["judge_model"] == str(tiny_model_dir)
    metrics = store.read("ppo_metrics", run_id="online")
    assert "ppo/value_loss" not in set(metrics["metric"])


@pytest.mark.slow  # ~2.5 min; the loop against a real server is tests/system/test_service_loop.py
def test_the_service_loop_samples_the_champion_and_gates_each_candidate(prefect_harness, peaked_tiny_model_dir,
                                                                        tmp_path, capsys):
    """Two cycles of nightly feedback and weekly training. The first week trains from the base
    model on the night's labels and its candidate, let through by an open gate, becomes
    champion. The next night samples that champion (the rows' lineage says so); the second week
    trains from it on that night's labels only and, held to a gate no candidate can pass, is
    rejected with its reason while the champion stays. A rollback sends the next night back to
    the base model. (The peaked tiny model and a large learning rate make PPO move the policy,
    so its held-out answers differ from the champion's and the judge has pairs to compare.)"""
    from flows.pipeline import feedback_pipeline, training_pipeline
    from flows.cli import policies
    from flows.policies import cli_lineage, export_policy
    from rlaif.registry import Registry

    data, base = tmp_path / "data", str(peaked_tiny_model_dir)
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": base, "judge": {"model": base},
                                         "run_id": "night-1", **TINY, "sft": {"enabled": False},
                                         "ppo": {**TINY["ppo"], "lr": 1e-3}})
    night = feedback_pipeline(cfg)
    assert set(night.stages.ran()) == {"generate", "feedback"}
    sha = night.constitution_sha
    open_gate = PromotionConfig(min_win_rate=0.0, probes=(), overoptimisation=False)
    week = training_pipeline(cfg.model_copy(update={"run_id": "week-1", "promotion": open_gate}))
    assert set(week.stages.ran()) == {"reward", "ppo", "evaluate", "promotion"}
    lineage = json.loads((Path(week.checkpoints) / "reward_model" / "lineage.json").read_text())
    assert [i for i in lineage["inputs"] if "/preferences/" in i] == [night.stages.feedback.preferences]
    gate = week.stages.promotion
    assert (gate.policy_id, gate.parent_id, gate.status) == ("week-1", "base", "champion"), gate.reason
    assert "promoted to champion" in Path(week.report).read_text()
    registry = Registry(data)
    champion = registry.champion(sha, base)
    assert champion.policy_id == "week-1" and champion.checkpoint == str(Path(week.stages.ppo.policy).resolve())
    assert champion.metrics["eval/compared"] == week.stages.evaluate.metrics["eval/compared"] > 0

    # cycle 2: the night samples the champion; the week trains on that night only, from it
    night2 = feedback_pipeline(cfg.model_copy(update={"run_id": "night-2"}))
    responses = Store(data).read("responses", run_id="night-2")
    assert set(responses["policy_model"]) == {champion.checkpoint}
    shut = PromotionConfig(min_win_rate=1.0)
    week2 = training_pipeline(cfg.model_copy(update={"run_id": "week-2", "promotion": shut}))
    lineage = json.loads((Path(week2.checkpoints) / "reward_model" / "lineage.json").read_text())
    assert [i for i in lineage["inputs"] if "/preferences/" in i] == [night2.stages.feedback.preferences]
    assert json.loads((Path(week2.stages.ppo.policy) / "lineage.json").read_text())["policy_model"] == champion.checkpoint
    gate2 = week2.stages.promotion
    assert (gate2.parent_id, gate2.status) == ("week-1", "rejected") and gate2.reason.startswith("win rate")
    assert registry.champion(sha, base).policy_id == "week-1"
    assert {p.policy_id: p.status for p in registry.policies(sha)} == {"week-1": "champion", "week-2": "rejected"}
    # the same run id again: its decision stands, nothing is registered twice
    again = training_pipeline(cfg.model_copy(update={"run_id": "week-2", "promotion": open_gate}))
    assert again.stages.promotion.status == "rejected" and len(registry.events(sha)) == 4
    # the lineage as `rlaif policies` lists it, and the champion's model card
    policies(data=str(data))
    listed = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert listed["week-1"].split()[1:3] == ["base", "champion"] and "week-2" in listed
    assert listed["week-2"].split()[1:3] == ["week-1", "rejected"] and gate2.reason[:30] in listed["week-2"]
    pairs = json.loads((Path(week.checkpoints) / "reward_model" / "lineage.json").read_text())["preference_pair_ids"]
    card = (export_policy(data, "week-1", tmp_path / "export") / "README.md").read_text()
    assert f"| `week-1` | `base` | champion | {len(pairs)}: `night-1` {len(pairs)} |" in card, [l for l in card.splitlines() if l.startswith("|")]

    # a rollback: the next night samples the base model again
    registry.rollback(sha, base, "test", cli_lineage(sha))
    feedback_pipeline(cfg.model_copy(update={"run_id": "night-3"}))
    assert set(Store(data).read("responses", run_id="night-3")["policy_model"]) == {base}
    empty = cfg.model_copy(update={"data": str(tmp_path / "empty"), "run_id": "weekly-empty"})
    with pytest.raises(ValueError, match="no preferences collected yet.*run the feedback flow first"):
        training_pipeline(empty)


def test_a_crashed_run_restarts_from_its_finished_steps(prefect_harness, tiny_model_dir, tmp_path, monkeypatch):
    """PPO crashes (simulated: its training function raises); the same run id started again
    skips the finished steps (cached, parts not rewritten), finishes, and duplicates nothing."""
    import flows.train
    from flows.pipeline import pipeline

    settings = {"data": str(tmp_path), "policy_model": str(tiny_model_dir), "judge": {"model": str(tiny_model_dir)},
                "run_id": "crash-run", **TINY, "sft": {"enabled": False}}
    cfg = PipelineConfig.model_validate(settings)

    def crash(*args, **kwargs):
        raise RuntimeError("simulated crash in PPO")

    monkeypatch.setattr(flows.train, "train_ppo", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        pipeline(cfg)
    store = Store(tmp_path)
    done = ("responses", "critiques", "preferences", "rm_metrics")
    written = {t: store.read(t)["created_at"].tolist() for t in done}
    assert all(written.values()) and not store.parts("ppo_metrics")

    monkeypatch.undo()
    result = pipeline(cfg)
    for t in done:  # cache hits: the same parts, not rewritten
        assert store.read(t)["created_at"].tolist() == written[t], t
    assert len(store.read("ppo_metrics")) > 0 and np.isfinite(result.stages.ppo.metrics["objective/kl"])
    responses, prefs = store.read("responses"), store.read("preferences")
    assert len(responses) == TINY_RESPONSES and responses["response_id"].is_unique
    assert prefs["pair_id"].is_unique and len(prefs) == TINY_PAIRS

    # Another constitution under the same run id is a cache miss: everything is recomputed.
    other = pipeline(PipelineConfig.model_validate({**settings, "constitution": "concise"}))
    assert other.constitution_sha != result.constitution_sha
    assert len(store.read("responses", constitution_sha=other.constitution_sha)) == TINY_RESPONSES
    assert store.read("responses", constitution_sha=result.constitution_sha)["created_at"].tolist() == written["responses"]


def test_evaluation_reports_the_curve_adherence_probes_and_length_correction(pipeline_run):
    data, result = pipeline_run
    ev = result.stages.evaluate
    rows = Store(data).read_part("eval", ev.eval).to_pandas()
    final = rows[rows["final"]]
    assert len(final) == 3 and set(final["prompt_id"]) == set(rows["prompt_id"])  # held-out prompts only
    # TINY trains 2 PPO steps and keeps one snapshot (step 1): reference, step 1, final
    assert sorted(rows["policy_step"].unique()) == [1, 2] and ev.metrics["eval/curve_points"] == 3
    assert [p["step"] for p in ev.curve] == [0, 1, 2]
    assert final["policy_adherence"].notna().all() and final["reference_adherence"].notna().all()
    assert rows.loc[~rows["final"], "policy_adherence"].isna().all()  # rated for the final policy only
    for who in ("policy", "reference"):
        assert ev.metrics[f"eval/{who}_adherence_rate"] == pytest.approx((final[f"{who}_adherence"] > 0).mean())
        assert ev.metrics[f"eval/{who}_adherence_n"] == 3
    # The tiny policy barely moves in 2 LoRA steps, so it answers as the reference does: a pair
    # of identical answers is no comparison, and the win rate is NaN, not 0.5.
    assert (final["policy_response"] == final["reference_response"]).all()
    assert ev.metrics["eval/invalid"] == 3 and ev.metrics["eval/compared"] == 0
    assert np.isnan(ev.metrics["eval/win_rate"]) and np.isnan(ev.metrics["eval/win_rate_length_corrected"])
    # the exact KL: never negative, and the estimate beside it
    assert ev.metrics["eval/kl"] == pytest.approx(final["policy_kl"].mean()) and (rows["policy_kl"] >= 0).all()
    assert ev.metrics["eval/kl_ci_low"] <= ev.metrics["eval/kl"] <= ev.metrics["eval/kl_ci_high"]
    assert rows["policy_kl_k1"].notna().all()
    # the probes: per response in the table, per policy (snapshot and final) in the result
    assert set(final["category"]) <= {"harmful", "helpful", "borderline"}
    assert (final["harmful"] == (final["category"] == "harmful")).all()
    assert final["reference_ref_nll"].gt(0).all() and final["policy_has_eos"].notna().all()
    probes = pd.DataFrame(ev.probes)
    assert sorted(probes["step"].unique()) == [1, 2] and probes["final"].sum() == len(probes) / 2
    length = probes[(probes["probe"] == "length") & probes["final"]].iloc[0]
    assert length["policy"] == pytest.approx(final["policy_n_tokens"].mean()) and length["n"] == 3 and length["few"]
    assert ev.metrics["probe/length"] == length["policy"]
    report = Path(result.report).read_text()
    assert "win rate at equal length" in report and "Reward-model score and win rate against KL" in report
    assert "Behaviour probes (no judge)" in report and "share cut off without EOS" in report
    for plot in ("eval.png", "reward_kl.png", "ladder.png"):
        assert (Path(result.report).parent / plot).read_bytes()[:4] == b"\x89PNG", plot
        assert f"]({plot})" in report, plot
    # the ladder: the reference (the SFT model PPO started from), the snapshot, the final policy;
    # the snapshot against the final policy (--eval.ladder adjacent) in `matches`, with lineage
    ladder = pd.DataFrame(ev.ladder)
    policies = rows.drop_duplicates("policy_step").sort_values("policy_step")["policy"].tolist()
    assert Path(ladder["policy"].iloc[0]).name == "sft" and ladder["policy"].tolist()[1:] == policies
    assert ladder["step"].tolist() == [0, 1, 2]
    matches = Store(data).read_part("matches", ev.matches).to_pandas()
    assert len(matches) == 3 and set(zip(matches["policy_a"], matches["policy_b"])) == {tuple(policies)}
    assert matches[LINEAGE_COLUMNS].notna().all().all() and set(matches["run_id"]) == {"tiny-run"}
    assert set(matches["prompt_id"]) == set(final["prompt_id"]) and ev.metrics["ladder/matches"] == 3
    # every valid verdict counts once for each side; identical answers count for none
    assert ladder["comparisons"].sum() == 2 * (rows["valid"].sum() + matches["valid"].sum())
    assert ladder.loc[ladder["comparisons"] == 0, "bt_strength"].isna().all()
    assert "Ladder of policies (head-to-head judging)" in report


def test_evaluate_again_writes_evaluation_md_beside_the_report(pipeline_run, tiny_model_dir):
    from flows.config import RunError
    from flows.pipeline import evaluation_pipeline

    data, result = pipeline_run
    before = Path(result.report).read_text()
    cfg = PipelineConfig.model_validate({"data": str(data), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": "tiny-run",
                                         "eval": {"n_prompts": 2, "sampling": {"max_new_tokens": 4}, "snapshots": False}})
    again = evaluation_pipeline(cfg)
    assert Path(again.report).name == "evaluation.md" and Path(result.report).read_text() == before
    rows = Store(data).read("eval", run_id="tiny-run")
    assert len(rows[rows["final"]]) == 3 + 2  # a new part beside the pipeline's, which stays
    missing = cfg.model_copy(update={"run_id": "no-such-run"})
    with pytest.raises(RunError, match="no policy at .*no-such-run.*did that run finish"):
        evaluation_pipeline(missing)


def test_compare_two_constitutions(prefect_harness, tiny_model_dir, tmp_path):
    from flows.compare import compare_pipeline
    from flows.config import CompareConfig

    cfg = CompareConfig.model_validate({
        "data": str(tmp_path), "policy_model": str(tiny_model_dir), "judge": {"model": str(tiny_model_dir)},
        "constitution": ["harmless", "concise"], **TINY, "sft": {"enabled": False},
        "eval": {"n_prompts": 2, "sampling": {"max_new_tokens": 4}}})
    result = compare_pipeline(cfg)
    table = pd.DataFrame(result.table)
    assert sorted(zip(table["trained_under"], table["judged_under"])) == [
        ("concise", "concise"), ("concise", "harmless"), ("harmless", "concise"), ("harmless", "harmless")]
    # a tie counts half; identical answers are no comparison, and their win rate is NaN
    compared = table["compared"] > 0
    assert np.allclose(table.loc[compared, "win_rate"],
                       (table["wins"] + 0.5 * table["ties"])[compared] / table["compared"][compared])
    assert table.loc[~compared, "win_rate"].isna().all()
    report = Path(result.report).read_text()
    assert "| harmless | concise |" in report and "trained under concise" in report and "*reference:*" in report
    store = Store(tmp_path)
    # each constitution's data stays under its own sha; the cross cells are judged under the other's
    shas = {c: store.read("preferences", run_id=r)["constitution_sha"].unique().tolist()
            for c, r in result.runs.items()}
    assert len(shas["harmless"]) == len(shas["concise"]) == 1 and shas["harmless"] != shas["concise"]
    cross = store.read("eval", constitution_sha=shas["concise"][0])
    assert any("harmless-judged-by-concise" in r for r in cross["run_id"].unique())
    assert (table["wins"] + table["losses"] + table["ties"] == table["compared"]).all()
    # both runs sample their pairs from the same policy with the same seeds: every valid pair is
    # labelled under both constitutions, and the report says how often the two judges agreed
    prefs = {c: store.read("preferences", run_id=r).set_index("pair_id") for c, r in result.runs.items()}
    both_valid = (prefs["harmless"]["valid"] & prefs["concise"]["valid"].reindex(prefs["harmless"].index)).sum()
    agreement = result.label_agreement["harmless/concise"]
    assert agreement["pairs"] == both_valid > 0
    assert agreement["same_choice"] == pytest.approx(agreement["same"] / agreement["pairs"])
    assert "judges chose the same response" in report and "answer differently on" in report
    # the probes of each trained policy, side by side, no judge involved
    assert "Behaviour of each trained policy, no judge involved" in report
    assert {p["trained_under"] for p in result.probes} == {"harmless", "concise"}
    # and against each other: harmless - concise, probe by probe
    assert "Policy against policy, no judge involved" in report
    # the ladder under each judge: the reference and both trained policies, the head-to-head in `matches`
    assert "## Ladder under each judging constitution" in report and "### Ladder judged under concise" in report
    assert set(result.ladders) == {"harmless", "concise"}
    for judged, rungs in result.ladders.items():
        rungs = pd.DataFrame(rungs).set_index("policy")
        assert list(rungs.index) == ["reference", "harmless", "concise"]
        h2h = store.read("matches", run_id=f"{result.compare_id}-ladder-judged-by-{judged}")
        assert len(h2h) == 2 and set(h2h["constitution_sha"]) == set(shas[judged])
        cells = table[table["judged_under"] == judged].set_index("trained_under")["compared"]
        for trained in ("harmless", "concise"):
            assert rungs.loc[trained, "comparisons"] == cells[trained] + h2h["valid"].sum(), (judged, trained)
    assert {(d["a"], d["b"]) for d in result.policy_diffs} == {("harmless", "concise")}
    by_probe = {(p["trained_under"], p["probe"]): p["policy"] for p in result.probes}
    for d in result.policy_diffs:
        if d["n"]:
            assert d["policy"] == pytest.approx(by_probe["harmless", d["probe"]], nan_ok=True), d["probe"]
            assert d["reference"] == pytest.approx(by_probe["concise", d["probe"]], nan_ok=True), d["probe"]
    # the same comparison again reuses every finished step: same id, same table
    again = compare_pipeline(cfg)
    assert again.compare_id == result.compare_id
    pd.testing.assert_frame_equal(pd.DataFrame(again.table), table)
    with pytest.raises(ValueError, match="two or more constitutions"):
        CompareConfig(constitution=("harmless", "harmless"))


def test_label_agreement_counts_the_same_choice_on_the_same_pairs():
    from flows.compare import label_agreement

    def prefs(p_first, chosen):
        return pd.DataFrame({"pair_id": ["a", "b", "c", "d"], "response_a": ["x", "y", "z", "w"],
                             "response_b": ["X", "Y", "Z", "W"], "p_a_first": p_first,
                             "p_a_second": [0.5] * 4, "chosen": chosen, "valid": True})

    one = prefs([0.9, 0.2, 0.7, 0.6], ["x", "Y", "z", "w"])
    two = prefs([0.8, 0.6, 0.6, 0.6], ["x", "y", "z", "w"])
    two.loc[3, "response_b"] = "other"  # a pair whose texts differ is not the same pair
    a = label_agreement(one, two)
    assert a["pairs"] == 3 and a["same"] == 2 and a["same_choice"] == pytest.approx(2 / 3)
    assert a["p_correlation"] == pytest.approx(np.corrcoef([0.9, 0.2, 0.7], [0.8, 0.6, 0.6])[0, 1])


def test_reward_kl_plot_takes_the_reference_point_and_a_rounded_interval(tmp_path):
    from flows.plots import plot_reward_kl

    # the reference has no interval; a 100% win rate's Wilson bound can round to just below 1
    curve = pd.DataFrame({"step": [0, 1, 2], "kl": [0.0, 0.1, 0.3], "rm_score": [0.0, 0.5, 0.9],
                          "win_rate": [0.5, 1.0, 0.4], "ci_low": [np.nan, 0.51, 0.2],
                          "ci_high": [np.nan, 1.0 - 1e-12, 0.6]})
    path = plot_reward_kl(curve, tmp_path / "reward_kl.png", "t", flagged=True)
    assert Path(path).read_bytes()[:4] == b"\x89PNG"
