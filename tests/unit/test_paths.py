import os

import pytest

from rlaif.paths import check_allowed


class Refused(ValueError):
    pass


def test_a_file_is_allowed_only_inside_the_shipped_folders_or_those_of_the_env_var(tmp_path, monkeypatch):
    """Symlinks and `..` are resolved before the check, and the env var adds folders."""
    shipped, mine, other = (tmp_path / d for d in ("shipped", "mine", "other"))
    for d in (shipped, mine, other):
        d.mkdir()
        (d / "p.jsonl").write_text("{}\n")
    (shipped / "escape.jsonl").symlink_to(other / "p.jsonl")
    (other / "in.jsonl").symlink_to(shipped / "p.jsonl")
    monkeypatch.delenv("RLAIF_TEST_DIRS", raising=False)

    def check(path):
        return check_allowed(path, parameter="prompts", env="RLAIF_TEST_DIRS", shipped=[shipped], error=Refused)

    assert check(shipped / "p.jsonl") == shipped / "p.jsonl"
    assert check(other / "in.jsonl") == shipped / "p.jsonl"  # a link into an allowed folder reads what it names
    for path in (other / "p.jsonl", shipped / "escape.jsonl", shipped / ".." / "other" / "p.jsonl"):
        with pytest.raises(Refused) as e:
            check(path)
        assert str(e.value).startswith(f"prompts: {path}")  # the parameter and the file it names
        assert f"outside the folders a deployment may read it from ({shipped})" in str(e.value)
        assert str(e.value).endswith("add its folder to RLAIF_TEST_DIRS where the flow runs")
    assert f"(resolved: {other / 'p.jsonl'})" in str(pytest.raises(Refused, check, shipped / "escape.jsonl").value)

    monkeypatch.setenv("RLAIF_TEST_DIRS", os.pathsep.join([str(mine), "", str(tmp_path / "other" / ".." / "other")]))
    assert check(mine / "p.jsonl") == mine / "p.jsonl"
    assert check(shipped / "escape.jsonl") == other / "p.jsonl"
    monkeypatch.delenv("RLAIF_TEST_DIRS")
    with pytest.raises(Refused, match=r"\(none\); add its folder to RLAIF_TEST_DIRS"):  # none shipped, none listed
        check_allowed(mine / "p.jsonl", parameter="feedback.calibration", env="RLAIF_TEST_DIRS", error=Refused)
