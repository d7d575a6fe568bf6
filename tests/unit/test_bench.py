"""The benchmark suite's bookkeeping (bench/common.py): medians, ratios and targets. The
benchmarks themselves are run by `make bench`, never timed in tests."""

import pytest

from bench.common import child, comparison


def test_comparison_takes_the_ratio_of_medians_against_the_target():
    runs = {"ours": [{"s": 1.0}, {"s": 3.0}, {"s": 2.0}], "theirs": [{"s": 4.0}, {"s": 5.0}, {"s": 9.0}]}
    time = comparison("t", "s", "s", runs, "ours", "theirs", target=0.7, higher_is_better=False)
    assert time["a_median"] == 2.0 and time["b_median"] == 5.0 and time["ratio"] == pytest.approx(0.4)
    assert time["met"] is True and time["target"] == "<= 0.7" and time["runs"]["ours"] == [1.0, 3.0, 2.0]
    speed = comparison("t", "s", "1/s", runs, "ours", "theirs", target=1.0, higher_is_better=True)
    assert speed["met"] is False and speed["target"] == ">= 1"
    assert comparison("t", "s", "s", runs, "ours", "theirs", None, True)["met"] is None


def test_child_parses_its_result_line_and_names_a_failure():
    assert child("print('noise'); print('RESULT {\"x\": 1}')", []) == {"x": 1}
    with pytest.raises(RuntimeError, match="ZeroDivisionError"):
        child("1/0", [])
    with pytest.raises(RuntimeError, match="no 'RESULT ' line"):
        child("print('nothing')", [])
