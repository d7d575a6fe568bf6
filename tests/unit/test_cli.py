"""The command line: light to start, positional constitution paths, one-line user errors and
tracebacks for bugs, an aligned headline."""

import subprocess
import sys

import pytest

from flows.cli import _or_exit, compare, print_result
from flows.results import RunResult, Stages

HEAVY = ("torch", "transformers", "peft", "prefect", "vllm")


@pytest.mark.parametrize("argv", [["--help"], ["run", "--help"], ["compare", "--help"], ["evaluate", "--help"]])
def test_help_imports_neither_torch_nor_prefect(argv):
    code = ("import sys\nsys.argv = ['rlaif', *%r]\nfrom flows.cli import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "print('LOADED', sorted(m for m in %r if m in sys.modules))") % (argv, HEAVY)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "usage:" in out.stdout and out.stdout.strip().endswith("LOADED []"), out.stdout[-500:]


def test_validate_takes_the_paths_as_the_readme_writes_them(tmp_path):
    rlaif = [sys.executable, "-c", "from flows.cli import main; main()"]
    ok = subprocess.run([*rlaif, "validate", "constitution/harmless.yaml", "concise"], capture_output=True,
                        text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "constitution/harmless.yaml: ok (harmless" in ok.stdout and "concise: ok (concise" in ok.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\n")
    failed = subprocess.run([*rlaif, "validate", str(bad)], capture_output=True, text=True, timeout=120)
    assert failed.returncode == 1 and f"{bad}: principles: Field required" in failed.stderr


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback(capsys):
    from constitution import ConstitutionError

    def bad_input():
        raise ConstitutionError("my.yaml", ["principles: Field required"])

    with pytest.raises(SystemExit) as exit_:
        _or_exit("run", bad_input)
    assert exit_.value.code == 1
    assert capsys.readouterr().err == "rlaif run: my.yaml: principles: Field required\n"

    def bug():
        raise ValueError("an internal bug")

    with pytest.raises(ValueError, match="an internal bug"):  # not swallowed into one line
        _or_exit("run", bug)


def test_compare_ends_bad_input_with_one_line(monkeypatch, capsys):
    import flows.compare
    from flows.config import CompareConfig, RunError

    def fail(config):
        raise RunError("no preferences collected yet")

    monkeypatch.setattr(flows.compare, "compare_pipeline", fail)
    with pytest.raises(SystemExit) as exit_:
        compare(CompareConfig())
    assert exit_.value.code == 1 and capsys.readouterr().err == "rlaif compare: no preferences collected yet\n"


def test_the_headline_keeps_labels_and_values_apart(capsys):
    from flows.results import Figure

    result = RunResult(run_id="r", constitution_sha="abc", data="d", checkpoints="c", report="r.md",
                       stages=Stages(), headline={"held-out ties (the judge's two orders disagree)": Figure(value=12),
                                                  "pairs labelled": Figure(value=30)})
    print_result(result)
    lines = capsys.readouterr().out.splitlines()
    ties = next(line for line in lines if "ties" in line)
    assert ties.endswith("disagree)  12"), ties
    # the values stand in one column
    assert ties.index("12") == next(line for line in lines if "pairs labelled" in line).index("30")


def test_the_verdict_says_what_changed_and_marks_a_judge_near_chance():
    from flows.reports import headline, verdict
    from flows.results import EvalResult, FeedbackResult

    probe = {"step": 8, "final": True, "n": 36, "few": False, "reference_ci_low": 0.0, "reference_ci_high": 1.0,
             "policy_ci_low": 0.0, "policy_ci_high": 1.0}
    ev = EvalResult(eval="e", metrics={
        "eval/prompts": 36, "eval/compared": 30, "eval/ties": 20, "eval/invalid": 6, "eval/win_rate": 0.6,
        "eval/win_rate_ci_low": 0.42, "eval/win_rate_ci_high": 0.75, "eval/kl": 1.2, "eval/kl_ci_low": 0.9,
        "eval/kl_ci_high": 1.5, "eval/overoptimisation": 0.0},
        probes=[{**probe, "probe": "length", "label": "mean response length (tokens)", "reference": 30.0,
                 "policy": 21.0, "diff": -9.0, "diff_ci_low": -12.0, "diff_ci_high": -6.0},
                {**probe, "probe": "refusal_harmful", "label": "refusal rate, harmful prompts", "n": 12, "few": True,
                 "reference": 0.25, "policy": 0.33, "diff": 0.08, "diff_ci_low": -0.2, "diff_ci_high": 0.3}])
    fb = FeedbackResult(critiques="c", preferences="p", metrics={
        "judge/valid_pairs": 40, "judge/position_consistency": 0.3, "judge/position_consistency_ci_low": 0.18,
        "judge/position_consistency_ci_high": 0.45, "judge/gate_mode": "warn",
        "judge/gate_reasons": "chance on its own pairs (...)", "judge/intransitive_triples": 0.15,
        "judge/intransitive_triples_ci_low": 0.05, "judge/intransitive_triples_ci_high": 0.36, "judge/triples": 20})
    stages = Stages(feedback=fb, evaluate=ev)
    text = "\n".join(verdict(stages))
    changed, unchanged = text.split("Not distinguishable")
    assert "mean response length (tokens) 30 -> 21" in changed and "refusal rate" not in changed
    assert "refusal rate, harmful prompts (0.25 -> 0.33, n=12, fewer than 20)" in unchanged
    assert "cannot tell the policy from the reference" in text and "judge near chance" in text
    assert "Agreement with human labels: not measured" in text
    figures = headline(stages)
    assert "judge near chance" in figures["held-out win rate vs reference"].notes
    assert figures["KL to reference, held-out (nats per response, exact)"].notes == []  # no judge in it
    cycles = figures["judge intransitive triples (a random judge: 0.25)"]  # K >= 3: the tournaments' cycles
    assert (cycles.value, cycles.n, cycles.ci_low, cycles.ci_high) == (0.15, 20, 0.05, 0.36)
    # the same run with a judge that passed the gate: no mark
    passed = fb.model_copy(update={"metrics": {**fb.metrics, "judge/gate_reasons": ""}})
    assert headline(Stages(feedback=passed, evaluate=ev))["held-out win rate vs reference"].notes == []
