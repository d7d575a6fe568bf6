"""One end-to-end run on the real embedded models (SmolLM2-135M-Instruct as the policy, the
default Gemma-3-270M judge), tiny settings: swapping the constitution changes
constitution_sha in every table."""

import numpy as np
import pytest

from constitution import load_constitution
from flows.config import PipelineConfig
from rlaif.models import EMBEDDED_JUDGE, EMBEDDED_MODEL
from rlaif.store import TABLES, Store

SMALL = {
    "generate": {"n_prompts": 4, "sampling": {"max_new_tokens": 16}},
    "feedback": {"sampling": {"max_new_tokens": 12}, "few_shot": 0, "critique_rounds": 1},
    "sft": {"enabled": True, "max_length": 128},  # every table gets rows
    "reward": {"epochs": 1, "batch_size": 2, "max_length": 160},
    "ppo": {"steps": 1, "batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1, "sampling": {"max_new_tokens": 12}},
    "eval": {"n_prompts": 2, "sampling": {"max_new_tokens": 12}},
}


@pytest.mark.slow
def test_swapping_the_constitution_changes_sha_in_every_table(prefect_harness, tmp_path):
    from flows.pipeline import pipeline

    results = {}
    for name in ("harmless", "concise"):
        cfg = PipelineConfig.model_validate({"data": str(tmp_path), "constitution": name,
                                             "policy_model": EMBEDDED_MODEL, "judge": {"engine": {"batch_size": 4}},
                                             "run_id": f"e2e-{name}", **SMALL})
        results[name] = pipeline(cfg)
    sha = {n: load_constitution(n).sha for n in results}
    assert sha["harmless"] != sha["concise"]
    store = Store(tmp_path)
    # The policy critiques and revises itself (CAI); the default judge labels the pairs.
    assert set(store.read("critiques")["judge_model"]) == {EMBEDDED_MODEL}
    assert set(store.read("preferences")["judge_model"]) == {EMBEDDED_JUDGE}
    assert set(store.read("preferences")["template_version"]) == {"v2-raw"}  # v2: the injection defence
    # labelled in one shard: no scratch parts; one PPO step: no snapshot, so no policy-against-policy rung;
    # a one-off pipeline run registers no policy (the training flow does)
    for table in set(TABLES) - {"preference_shards", "matches", "policies"}:
        df = store.read(table)
        by_run = df.groupby("run_id")["constitution_sha"].unique()
        assert list(by_run["e2e-harmless"]) == [sha["harmless"]], table
        assert list(by_run["e2e-concise"]) == [sha["concise"]], table
        assert len(store.read(table, constitution_sha=sha["concise"])) == (df["run_id"] == "e2e-concise").sum()
    for name, r in results.items():
        assert r.constitution_sha == sha[name]
        assert r.stages.ppo.metrics["objective/kl"] >= 0  # the exact KL
        # the headline carries what the stages measured, with its n and interval
        accuracy = r.headline["reward model held-out accuracy"]
        assert accuracy.value == r.stages.reward.metrics["rm/accuracy"]
        assert accuracy.n == r.stages.reward.metrics["rm/heldout_pairs"] and accuracy.ci_low <= accuracy.value
        # the Gemma judge rated every final-policy and reference response (direct scoring), and
        # the adherence rates are the shares of those ratings above the midpoint
        ev = r.stages.evaluate
        final = store.read("eval", run_id=f"e2e-{name}").query("final")
        assert final["policy_adherence"].notna().all() and final["reference_adherence"].notna().all()
        assert ev.metrics["eval/policy_adherence_rate"] == pytest.approx((final["policy_adherence"] > 0).mean())
        assert ev.metrics["eval/reference_adherence_rate"] == pytest.approx((final["reference_adherence"] > 0).mean())
        # the probes read the real responses: the reference's perplexity of its own samples is finite
        assert np.isfinite(final["reference_ref_nll"]).all() and (final["policy_kl"] >= 0).all()
        assert "## Verdict" in open(r.report).read()
