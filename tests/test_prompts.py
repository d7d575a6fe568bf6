import pandas as pd
import pytest

from rlaif.prompts import PromptError, assert_no_eval, load_prompts


def test_default_prompt_set():
    df = load_prompts()
    assert len(df) >= 150
    assert df["prompt_id"].is_unique
    assert set(df["split"]) == {"train", "eval"}
    assert {"harmful", "borderline", "helpful"} <= set(df["category"])
    assert (load_prompts(split="eval")["split"] == "eval").all()
    assert len(load_prompts(split="train", limit=5)) == 5


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_user_files_with_only_a_prompt_column(tmp_path, suffix):
    df = pd.DataFrame({"prompt": [f"question number {i}?" for i in range(40)]})
    path = tmp_path / f"p{suffix}"
    {".jsonl": lambda: df.to_json(path, orient="records", lines=True),
     ".csv": lambda: df.to_csv(path, index=False),
     ".parquet": lambda: df.to_parquet(path)}[suffix]()
    a, b = load_prompts(path), load_prompts(path)
    assert len(a) == 40 and a["prompt_id"].is_unique
    pd.testing.assert_frame_equal(a, b)  # ids and splits are stable
    assert set(a["split"]) == {"train", "eval"}


def test_bad_prompt_files(tmp_path):
    (tmp_path / "cols.csv").write_text("text\nhello\n")
    with pytest.raises(PromptError, match=r"cols.csv: needs a 'prompt' column; found \['text'\]"):
        load_prompts(tmp_path / "cols.csv")
    (tmp_path / "empty.csv").write_text("prompt\n\n  \n")
    with pytest.raises(PromptError, match="contains no non-empty prompts"):
        load_prompts(tmp_path / "empty.csv")
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(PromptError, match="unsupported prompt file type '.txt'"):
        load_prompts(tmp_path / "x.txt")
    with pytest.raises(PromptError, match="no such prompt file"):
        load_prompts(tmp_path / "missing.jsonl")
    (tmp_path / "split.csv").write_text("prompt,split\nhi,test\n")
    with pytest.raises(PromptError, match=r"unknown split values \['test'\]"):
        load_prompts(tmp_path / "split.csv")


def test_training_guard_rejects_eval_prompts():
    with pytest.raises(AssertionError, match="held-out"):
        assert_no_eval(load_prompts(), "ppo")
    assert_no_eval(load_prompts(split="train"), "ppo")
