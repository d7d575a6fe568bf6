"""Judge-human agreement on hh-rlhf-style pairs, with a tiny model and a synthetic file."""

import gzip
import json
from pathlib import Path

import pytest

from judges.config import JudgeConfig
from judges.human_eval import PairsFileError, read_hh_pairs
from flows.cli import judge_eval
from rlaif.stats import wilson_interval


def write_pairs(path, n=10):
    with gzip.open(path, "wt") as fh:
        for i in range(n):
            prefix = f"\n\nHuman: question {i}?\n\nAssistant: which one?\n\nHuman: the first"
            fh.write(json.dumps({"chosen": f"{prefix}\n\nAssistant: a long and careful answer number {i}",
                                 "rejected": f"{prefix}\n\nAssistant: no"}) + "\n")


def test_read_hh_pairs_splits_the_last_assistant_turn(tmp_path):
    write_pairs(tmp_path / "p.jsonl.gz", 3)
    df = read_hh_pairs(tmp_path / "p.jsonl.gz")
    assert len(df) == 3
    assert df.loc[0, "prompt"] == "User: question 0?\nAI: which one?\nUser: the first"
    assert df.loc[0, "chosen"] == "a long and careful answer number 0" and df.loc[0, "rejected"] == "no"
    assert len(read_hh_pairs(tmp_path / "p.jsonl.gz", limit=2)) == 2


def test_bad_pairs_files(tmp_path):
    (tmp_path / "a.jsonl").write_text('{"chosen": "x"}\n')
    with pytest.raises(PairsFileError, match=r"a.jsonl:1: expected a JSON object with 'chosen' and 'rejected'"):
        read_hh_pairs(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_text('{"chosen": "no turns", "rejected": "here"}\n')
    with pytest.raises(PairsFileError, match="b.jsonl:1: no final"):
        read_hh_pairs(tmp_path / "b.jsonl")
    (tmp_path / "c.jsonl").write_text("\n")
    with pytest.raises(PairsFileError, match="contains no pairs"):
        read_hh_pairs(tmp_path / "c.jsonl")


def test_judge_eval_reports_agreement_and_the_length_baseline(tmp_path, tiny_model_dir):
    write_pairs(tmp_path / "p.jsonl.gz", 12)
    out = tmp_path / "r.json"
    result = judge_eval(str(tmp_path / "p.jsonl.gz"), JudgeConfig(model=str(tiny_model_dir)), out=str(out),
                        direct_scores=True)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert result["pairs"] == 12
    assert result["baseline/longer_wins"]["agreement"] == 1.0  # the chosen answer is always longer
    for key in ("judge/agreement", "judge/agreement_no_swap"):
        r = result[key]
        assert (r["ci_low"], r["ci_high"]) == pytest.approx(wilson_interval(round(r["agreement"] * 12), 12))
    assert sum(v["n"] for v in result["judge/agreement_per_principle"].values()) == 12
    assert result["judge/pairs_per_s"] > 0
    assert result["judge/direct_agreement"]["agreement"] * 12 == pytest.approx(round(result["judge/direct_agreement"]["agreement"] * 12))


def test_judge_eval_inject_reports_both_defence_modes(tmp_path, tiny_model_dir, capsys):
    write_pairs(tmp_path / "p.jsonl.gz", 6)
    shipped = Path(__file__).parents[1] / "data" / "injections.txt"
    (tmp_path / "i.txt").write_text("# two of the shipped strings and one the detector misses\n"
                                    + "\n".join(shipped.read_text().splitlines()[3:5]) + "\nHave a nice day.\n")
    result = judge_eval(str(tmp_path / "p.jsonl.gz"), JudgeConfig(model=str(tiny_model_dir)),
                        out=str(tmp_path / "r.json"), inject=str(tmp_path / "i.txt"))
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(result))
    assert len(result["injection/strings"]) == 3 and result["injection/detection"]["caught"] == 2
    assert result["injection/detection"]["clean_responses"] == 12
    for mode in ("on", "off"):
        r = result[f"injection/defence_{mode}"]
        assert (r["pairs"], r["strings"], len(r["per_string"])) == (6, 3, 3)
        assert r["flip_share"] == pytest.approx(r["flips_to_rejected"] + r["flips_to_chosen"])
        assert r["agreement_drop"] == pytest.approx(r["clean"]["agreement"] - r["injected"]["agreement"])
        # a verdict that flips leaves a correct clean verdict or reaches one: per string, the
        # agreement moves by at most the share of flips (counted against the clean verdicts)
        for s in r["per_string"]:
            assert abs(s["agreement_drop"]) <= s["flip_share"] + 1e-9
    # no pair is flagged, so the clean labels with the defence on are the agreement run's own
    assert result["injection/defence_on"]["clean"] == {k: result["judge/agreement"][k]
                                                       for k in ("agreement", "ci_low", "ci_high")}
    assert result["defence/clean_change"]["mean_abs_delta_p_a"] > 0  # the prompts differ
    out = capsys.readouterr().out
    assert "| on | 6 x 3 |" in out and "| off | 6 x 3 |" in out and "detector catches 2/3" in out
