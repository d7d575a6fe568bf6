"""The policies registry (rlaif.registry) and the promotion gate (evaluation.gate): pure
logic on real Parquet parts, and real processes deciding at once."""

import multiprocessing as mp

import pandas as pd
import pytest

from evaluation.config import PromotionConfig
from evaluation.gate import gate
from rlaif.registry import BASE, Registry, RegistryError
from rlaif.store import Lineage

SHA = "c" * 64
BASE_MODEL = "smollm2-135m-instruct"


def lin(run="r"):
    return Lineage(run_id=run, constitution_sha=SHA)


def register(reg, pid, parent=BASE):
    return reg.register(pid, parent, BASE_MODEL, f"/ckpt/{pid}", {"eval/win_rate": 0.7}, lin(pid))


def statuses(reg):
    return {p.policy_id: p.status for p in reg.policies(SHA)}


def test_a_passing_candidate_becomes_champion_and_retires_the_last(tmp_path):
    reg = Registry(tmp_path)
    assert reg.champion(SHA, BASE_MODEL) is None
    register(reg, "a")
    assert statuses(reg) == {"a": "candidate"}
    reg.decide("a", True, "passed", lin("a"))
    assert reg.champion(SHA, BASE_MODEL).policy_id == "a"
    register(reg, "b", parent="a")
    b = reg.decide("b", True, "passed", lin("b"), {"checks": []})
    assert b.status == "champion" and b.replaced == "a" and b.metrics["gate"] == {"checks": []}
    assert statuses(reg) == {"a": "retired", "b": "champion"}
    assert reg.get("a").reason == "replaced by b"
    # every change is a row with its time and reason, in order
    ev = reg.events(SHA)
    assert list(ev["event"]) == ["registered", "promoted", "registered", "promoted", "retired"]
    assert ev["created_at"].notna().all() and ev["reason"].str.len().gt(0).all()
    assert len(pd.read_parquet(tmp_path / "policies")) == 5  # plain Parquet for any reader


def test_a_failing_candidate_is_rejected_with_its_reason_and_the_champion_stays(tmp_path):
    reg = Registry(tmp_path)
    register(reg, "a"), reg.decide("a", True, "passed", lin())
    register(reg, "b", parent="a")
    b = reg.decide("b", False, "win rate: 0.41 (95% CI 0.30 to 0.52)", lin())
    assert b.status == "rejected" and b.reason.startswith("win rate")
    assert reg.champion(SHA, BASE_MODEL).policy_id == "a"
    # a rerun of b's training run changes nothing: neither registration nor decision repeats
    register(reg, "b", parent="a")
    assert reg.decide("b", True, "passed", lin()).status == "rejected"
    assert len(reg.events(SHA)) == 4


def test_a_candidate_trained_from_a_replaced_champion_is_rejected_as_stale(tmp_path):
    reg = Registry(tmp_path)
    register(reg, "a"), register(reg, "b")  # both trained from the base model at once
    reg.decide("a", True, "passed", lin())
    b = reg.decide("b", True, "passed", lin())
    assert b.status == "rejected" and "stale" in b.reason and "a became champion" in b.reason
    assert [p.policy_id for p in reg.policies(SHA) if p.status == "champion"] == ["a"]


def test_promote_by_hand_and_rollback_twice(tmp_path):
    reg = Registry(tmp_path)
    register(reg, "a"), reg.decide("a", True, "passed", lin())
    register(reg, "b", "a"), reg.decide("b", False, "win rate", lin())
    p = reg.promote("b", "the judge was wrong", lambda sha: lin("cli"))
    assert p.status == "champion" and p.reason == "promoted by hand: the judge was wrong" and p.replaced == "a"
    with pytest.raises(RegistryError, match="already the champion"):
        reg.promote("b", "again", lambda sha: lin("cli"))
    register(reg, "c", "b"), reg.decide("c", True, "passed", lin())
    # c -> b -> a -> base
    assert reg.rollback(SHA, BASE_MODEL, "bad outputs", lin("cli")).policy_id == "b"
    assert statuses(reg) == {"a": "retired", "b": "champion", "c": "rejected"}
    assert reg.get("c").reason == "rolled back: bad outputs"
    assert reg.rollback(SHA, BASE_MODEL, "still bad", lin("cli")).policy_id == "a"
    assert reg.rollback(SHA, BASE_MODEL, "back to base", lin("cli")) is None
    assert reg.champion(SHA, BASE_MODEL) is None
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback(SHA, BASE_MODEL, "x", lin("cli"))
    with pytest.raises(RegistryError, match="no policy 'zzz'"):
        reg.promote("zzz", "x", lambda sha: lin("cli"))


def test_chains_of_different_base_models_have_their_own_champions(tmp_path):
    reg = Registry(tmp_path)
    register(reg, "a"), reg.decide("a", True, "passed", lin())
    reg.register("x", BASE, "/models/other", "/ckpt/x", {}, lin())
    reg.decide("x", True, "passed", lin())
    assert reg.champion(SHA, BASE_MODEL).policy_id == "a" and reg.champion(SHA, "/models/other").policy_id == "x"


def _decide(root, pid, barrier):
    reg = Registry(root)
    barrier.wait()  # every process decides at the same moment
    reg.decide(pid, True, "passed", lin(pid))


def test_runs_deciding_at_once_leave_one_champion(tmp_path):
    """Four real processes promote four candidates of the same champion at the same moment:
    the lock makes them take turns, so one wins and the others see it and are rejected as stale."""
    reg = Registry(tmp_path)
    ids = ["p0", "p1", "p2", "p3"]
    for pid in ids:
        register(reg, pid)
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(len(ids))
    procs = [ctx.Process(target=_decide, args=(str(tmp_path), pid, barrier)) for pid in ids]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    st = statuses(reg)
    assert sorted(st.values()) == ["champion", "rejected", "rejected", "rejected"]
    assert all("stale" in reg.get(pid).reason for pid, s in st.items() if s == "rejected")
    assert sorted(reg.events(SHA)["seq"]) == list(range(8))  # no change lost or numbered twice


# -- the gate -------------------------------------------------------------------------------
def summary(lo=0.55, hi=0.8, **probes):
    s = {"eval/win_rate": (lo + hi) / 2, "eval/win_rate_ci_low": lo, "eval/win_rate_ci_high": hi,
         "eval/compared": 40, "eval/overoptimisation": 0.0}
    for name in PromotionConfig().probes:
        d_lo, d_hi = probes.get(name, (-0.1, 0.1))
        s |= {f"probe/{name}_diff": (d_lo + d_hi) / 2, f"probe/{name}_diff_ci_low": d_lo,
              f"probe/{name}_diff_ci_high": d_hi, f"probe/{name}_n": 40}
    return s


def test_the_gate_passes_a_clear_win_with_no_probe_worse():
    v = gate(summary())
    assert v["promote"] and v["reason"].startswith("passed") and all(c["passed"] for c in v["checks"])


@pytest.mark.parametrize("changes, failed", [
    ({"lo": 0.45}, "win rate"),  # the interval reaches below 0.5
    ({"lo": float("nan"), "hi": float("nan")}, "win rate"),  # no valid judgement: no evidence
    ({"no_eos": (0.05, 0.3)}, "probe no_eos"),  # cut off more often, beyond the interval
    ({"distinct_2": (-0.3, -0.05)}, "probe distinct_2"),  # loops more: lower is worse
    ({"refusal_harmful": (-0.4, -0.1)}, "probe refusal_harmful"),  # refuses harmful requests less
    ({"ref_perplexity": (float("nan"), float("nan"))}, "probe ref_perplexity"),  # not measured
])
def test_the_gate_refuses_naming_the_failed_check(changes, failed):
    probes = {k: v for k, v in changes.items() if k not in ("lo", "hi")}
    v = gate(summary(changes.get("lo", 0.55), changes.get("hi", 0.8), **probes))
    assert not v["promote"] and v["reason"].startswith(failed)
    assert [c["check"] for c in v["checks"] if not c["passed"]] == [failed]


def test_the_gate_reads_the_better_side_of_a_probe_as_no_regression_and_honours_its_settings():
    # better beyond the interval on every probe: not a regression
    better = {"no_eos": (-0.3, -0.1), "distinct_2": (0.1, 0.3), "refusal_harmful": (0.1, 0.4)}
    assert gate(summary(**better))["promote"]
    over = summary() | {"eval/overoptimisation": 1.0}
    assert gate(over)["reason"] == "over-optimisation: flagged on the reward-KL curve"
    assert gate(over, PromotionConfig(overoptimisation=False))["promote"]
    assert not gate(summary(0.55, 0.8), PromotionConfig(min_win_rate=0.6))["promote"]
    assert gate(summary(no_eos=(0.1, 0.3)), PromotionConfig(probes=("distinct_2",)))["promote"]


def test_a_policy_keeps_its_evaluation_and_its_gate_verdict_after_it_is_retired(tmp_path):
    reg = Registry(tmp_path)
    register(reg, "a"), reg.decide("a", True, "passed", lin(), {"promote": True})
    register(reg, "b", "a"), reg.decide("b", True, "passed", lin(), {"promote": True})
    a = reg.get("a")
    assert a.status == "retired" and a.metrics == {"eval/win_rate": 0.7, "gate": {"promote": True}}
