import json
import shutil
import warnings

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


def test_over_long_prompts_are_cut_to_fit_with_a_warning_and_a_count(tmp_path, tiny_model_dir):
    from rlaif.models import load_tokenizer
    from rlaif.prompts import fit_to_context

    tok = load_tokenizer(tiny_model_dir)
    long = "word " * 3000
    (tmp_path / "p.csv").write_text(f"prompt\nshort one\n{long}\n{long}x\n")
    prompts = load_prompts(tmp_path / "p.csv")
    with pytest.warns(UserWarning, match=r"2 of 3 prompts are longer than 1024 tokens; cut to 1024"):
        fitted = fit_to_context(prompts, tok)
    n_tokens = [len(tok(p, add_special_tokens=False)["input_ids"]) for p in fitted["prompt"]]
    assert n_tokens[0] < 10 and all(1000 <= n <= 1024 for n in n_tokens[1:])
    assert fitted["prompt"][1].startswith("word word") and fitted["prompt_id"].equals(prompts["prompt_id"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing to cut: no warning, the same frame
        assert fit_to_context(prompts.iloc[:1], tok).equals(prompts.iloc[:1])


def test_a_prompt_file_that_is_not_utf8_is_named(tmp_path):
    for name in ("bad.csv", "bad.jsonl"):
        (tmp_path / name).write_bytes(b'prompt\n\xff\xfe hello\n' if name.endswith("csv")
                                      else b'{"prompt": "\xff\xfe hello"}\n')
        with pytest.raises(PromptError, match=rf"{name}: cannot read prompts"):
            load_prompts(tmp_path / name)


def test_rows_without_a_split_column_are_checked_by_prompt_id():
    """Critiques and preferences carry no `split`: a held-out prompt among them is caught by its id."""
    from rlaif.prompts import assert_no_eval, eval_prompt_ids

    held_out = eval_prompt_ids()
    train_id = load_prompts(split="train")["prompt_id"].iloc[0]
    critiques = pd.DataFrame({"prompt_id": [train_id, sorted(held_out)[0]], "revision": ["a", "b"]})
    with pytest.raises(AssertionError, match=r"sft: received 1 rows of held-out eval prompts"):
        assert_no_eval(critiques, "sft", held_out)
    assert_no_eval(critiques.iloc[:1], "sft", held_out)  # train prompts only: fine


def test_a_deployment_reads_prompts_and_other_input_files_only_from_allowed_folders(tmp_path, monkeypatch,
                                                                                    tiny_model_dir):
    """A local command line may name any file; a deployment run, whose parameters anyone who
    can reach the Prefect API may set, reads prompts, human-labelled pairs, refusal patterns
    and accelerate configs only from the shipped folders and RLAIF_INPUT_DIRS, and is refused
    before any model work."""
    from evaluation.probes import ProbeError
    from flows.config import PipelineConfig, RunError
    from flows.pipeline import prepare_run
    from judges.human_eval import PairsFileError
    from rlaif.prompts import default_prompts_path
    from training.config import SHIPPED_ACCELERATE_CONFIGS

    mine = tmp_path / "mine"
    mine.mkdir()
    pd.DataFrame({"prompt": [f"question number {i}?" for i in range(40)]}).to_csv(mine / "prompts.csv", index=False)
    (mine / "human.jsonl").write_text('{"chosen": "\\n\\nHuman: Hi?\\n\\nAssistant: Hello.", '
                                      '"rejected": "\\n\\nHuman: Hi?\\n\\nAssistant: No."}\n')
    (mine / "refusals.txt").write_text("^I will not\n")
    (mine / "accelerate.yaml").write_text("num_processes: 1\n")
    files = {"prompts": (mine / "prompts.csv", PromptError),
             "feedback.calibration": (mine / "human.jsonl", PairsFileError),
             "eval.refusal_patterns": (mine / "refusals.txt", ProbeError),
             "train.accelerate_config": (mine / "accelerate.yaml", RunError)}
    base = {"data": str(tmp_path / "data"), "policy_model": str(tiny_model_dir),
            "judge": {"model": str(tiny_model_dir)}}

    def config(**paths) -> PipelineConfig:
        settings = json.loads(json.dumps(base))
        for parameter, path in paths.items():
            *outer, field = parameter.split(".")
            (settings.setdefault(outer[0], {}) if outer else settings)[field] = str(path)
        return PipelineConfig.model_validate(settings)

    everything = config(**{p: path for p, (path, _) in files.items()})
    prepare_run(everything)  # a local run: any file
    shutil.rmtree(tmp_path / "data")  # a refused run creates none

    monkeypatch.setenv("PREFECT__RUNTIME__DEPLOYMENT__ID", "6f1b0c3e-0000-4000-8000-000000000002")
    monkeypatch.delenv("RLAIF_INPUT_DIRS", raising=False)
    with monkeypatch.context() as m:  # no model is loaded before the refusal
        def no_model_work(name):
            raise AssertionError(f"model work began: {name}")
        m.setattr("flows.pipeline.resolve_model", no_model_work)
        m.setattr("flows.pipeline.load_tokenizer", no_model_work)
        for parameter, (path, error) in files.items():
            with pytest.raises(error, match=rf"^{parameter}: {path} is outside the folders a deployment may read it "
                                            r"from \(.*\); add its folder to RLAIF_INPUT_DIRS where the flow runs$"):
                prepare_run(config(**{parameter: path}))
        assert not (tmp_path / "data").exists()
        # the shipped prompts and accelerate configs pass the check (and the run goes on to its models)
        with pytest.raises(AssertionError, match="model work began"):
            prepare_run(config(prompts=default_prompts_path(),
                               **{"train.accelerate_config": SHIPPED_ACCELERATE_CONFIGS / "one-process.yaml"}))
    monkeypatch.setenv("RLAIF_INPUT_DIRS", str(mine))
    prepare_run(everything)


def test_a_deployment_may_not_choose_the_judges_key_variable_or_the_tracking_destination(tmp_path, monkeypatch):
    """Through the Prefect API, a parameter naming any environment variable as the judge's API
    key (sent to a base URL the same parameters choose) would leak the worker's secrets; one
    choosing the MLflow URI would send the run's data anywhere. Both are refused; a local run
    may set either."""
    from flows.config import PipelineConfig, RunError
    from flows.pipeline import check_deployment_parameters

    leak = PipelineConfig.model_validate({"judge": {"engine": {"kind": "openai", "base_url": "http://evil:1/v1",
                                                               "api_key_env": "AWS_SECRET_ACCESS_KEY"}}})
    with pytest.raises(RunError, match="judge.engine.api-key-env 'AWS_SECRET_ACCESS_KEY'"):
        check_deployment_parameters(leak)
    with pytest.raises(RunError, match="--mlflow-tracking-uri"):
        check_deployment_parameters(PipelineConfig(mlflow_tracking_uri="http://evil:5000"))
    check_deployment_parameters(PipelineConfig.model_validate(
        {"judge": {"engine": {"kind": "openai", "api_key_env": "RLAIF_JUDGE_API_KEY"}}}))
