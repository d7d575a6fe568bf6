"""Experiment tracking (flows.tracking): a tiny pipeline's stages read back from TensorBoard's
event files and from an MLflow store in tmp_path, each through its own API."""

from pathlib import Path

import pandas as pd
import pytest

from flows.config import PipelineConfig

# every stage, SFT included, at its smallest: the tracking is under test, not the stages
TINY = {
    "generate": {"n_prompts": 4, "samples_per_prompt": 2, "sampling": {"max_new_tokens": 5}},
    "feedback": {"critique_rounds": 1, "sampling": {"max_new_tokens": 4}},
    "sft": {"enabled": True, "max_length": 64},
    "reward": {"epochs": 1, "batch_size": 2},
    "ppo": {"steps": 2, "snapshots": 1, "batch_size": 2, "mini_batch_size": 2, "ppo_epochs": 1,
            "sampling": {"max_new_tokens": 5}},
    "eval": {"n_prompts": 2, "adherence": False, "ladder": "reference", "probe_resamples": 100,
             "sampling": {"max_new_tokens": 5}},
}
RUN = "tracked-run"
SECRET = "sk-tracking-test-0123456789"


@pytest.fixture(scope="module")
def tracked(prefect_harness, tiny_model_dir, tmp_path_factory):
    """One pipeline run with MLflow on a local SQLite store; the tests share it."""
    from mlflow import MlflowClient

    from flows.pipeline import pipeline

    tmp = tmp_path_factory.mktemp("tracking")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    # artifacts beside the database, not in ./mlruns of the working directory (MLflow's default)
    MlflowClient(uri).create_experiment("harmless", artifact_location=str(tmp / "artifacts"))
    cfg = PipelineConfig.model_validate({"data": str(tmp / "data"), "policy_model": str(tiny_model_dir),
                                         "judge": {"model": str(tiny_model_dir)}, "run_id": RUN,
                                         "mlflow_tracking_uri": uri, **TINY})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("RLAIF_JUDGE_API_KEY", SECRET)  # a judge API key (the variable the openai engine reads)
        return cfg, pipeline(cfg), MlflowClient(uri)


def events(result, stage: str):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(str(Path(result.report).parent / "tensorboard" / stage), size_guidance={"scalars": 0})
    ea.Reload()
    return ea


def mlflow_run(client):
    """The one live MLflow run of the pipeline run, found by its tag."""
    exp = client.get_experiment_by_name("harmless")
    runs = client.search_runs([exp.experiment_id], f"tags.`rlaif.run_id` = '{RUN}'")
    assert len(runs) == 1, [r.info.run_id for r in runs]
    return runs[0]


def history(client, run, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def same(points, expected) -> bool:
    """Two lists of (step, value): the same steps, the values equal up to float rounding."""
    return [s for s, _ in points] == [s for s, _ in expected] and \
        [v for _, v in points] == pytest.approx([v for _, v in expected], nan_ok=True)


def stored(path: str, metric: str) -> list[tuple[int, float]]:
    """(step, value) of `metric` in a metrics part (sft_metrics, rm_metrics, ppo_metrics)."""
    rows = pd.read_parquet(path)
    return sorted(rows[rows["metric"] == metric][["step", "value"]].itertuples(index=False, name=None))


def test_tensorboard_holds_every_stage(tracked):
    from tensorboard.plugins.hparams.plugin_data_pb2 import HParamsPluginData

    cfg, result, _ = tracked
    ppo = events(result, "ppo")
    kl = [(e.step, e.value) for e in ppo.Scalars("objective/kl")]
    assert [s for s, _ in kl] == list(range(cfg.ppo.steps))  # one point per step
    assert same(kl, stored(result.stages.ppo.ppo_metrics, "objective/kl"))
    assert "plot" in ppo.Tags()["images"]  # ppo.png
    assert any(t.startswith("sample/response") for t in ppo.Tags()["tensors"])  # the sampled responses, as text
    session = HParamsPluginData.FromString(ppo.PluginTagToContent("hparams")["_hparams_/session_start_info"])
    assert session.session_start_info.hparams["ppo.steps"].number_value == cfg.ppo.steps
    rm = events(result, "reward").Tags()["scalars"]
    assert {"rm/loss", "rm/accuracy"} <= set(rm)
    evaluation = events(result, "evaluate")
    assert {"eval/win_rate", "eval/kl", "curve/kl"} <= set(evaluation.Tags()["scalars"])
    assert evaluation.Scalars("eval/kl")[0].value == pytest.approx(result.stages.evaluate.metrics["eval/kl"])
    assert "sft/loss" in events(result, "sft").Tags()["scalars"]
    assert "judge/pairs" in events(result, "feedback").Tags()["scalars"]
    report = events(result, "report").Tensors("report/text_summary")[0].tensor_proto.string_val[0].decode()
    assert report == Path(result.report).read_text()


def test_mlflow_run_holds_params_metrics_artifacts_and_tags(tracked):
    cfg, result, client = tracked
    run = mlflow_run(client)
    assert run.info.run_name == RUN
    assert run.data.tags["rlaif.constitution_sha"] == result.constitution_sha
    assert same(history(client, run, "objective/kl"), stored(result.stages.ppo.ppo_metrics, "objective/kl"))
    assert same(history(client, run, "sft/loss"), stored(result.stages.sft.sft_metrics, "sft/loss"))
    assert history(client, run, "rm/accuracy")[0][1] == pytest.approx(result.stages.reward.metrics["rm/accuracy"])
    assert run.data.metrics["eval/kl"] == pytest.approx(result.stages.evaluate.metrics["eval/kl"])
    params = run.data.params
    assert params["ppo.steps"] == str(cfg.ppo.steps) and params["reward.epochs"] == "1"
    assert params["ppo.sampling.max_new_tokens"] == "5" and params["feedback.judge.model"] == cfg.judge.model
    assert params["ppo.policy_model"] == str(Path(result.checkpoints) / "sft")  # PPO starts from the SFT model
    artifacts = {a.path for d in (None, "ppo", "reward", "evaluate") for a in client.list_artifacts(run.info.run_id, d)}
    assert {"report.md", "ppo/ppo.png", "ppo/samples.json", "reward/reward_model.png", "evaluate/eval.png"} <= artifacts
    # no environment variable is logged (the judge's key lives in one)
    assert not any(SECRET in v for v in [*params.values(), *run.data.tags.values()])


def test_a_rerun_of_the_run_id_adds_no_points(tracked):
    from flows.pipeline import pipeline

    cfg, result, client = tracked
    before = mlflow_run(client)
    pipeline(cfg)  # every step cached
    after = mlflow_run(client)
    assert after.info.run_id == before.info.run_id
    for key in ("objective/kl", "sft/loss", "rm/loss", "eval/win_rate", "curve/kl"):
        assert same(history(client, after, key), history(client, before, key)), key
    assert len(events(result, "ppo").Scalars("objective/kl")) == cfg.ppo.steps


def test_a_stage_logged_again_with_other_figures_replaces_its_points(tracked):
    """`rlaif evaluate` again with other settings: the evaluation's points are replaced, the
    other stages' records kept (MLflow cannot drop a point, so they move to a new run)."""
    from constitution.loader import resolve_path
    from flows.config import RunContext
    from flows.tracking import track_stage

    cfg, result, client = tracked
    before = mlflow_run(client)
    ctx = RunContext(run_id=RUN, data=cfg.data, constitution_path=str(resolve_path("harmless").resolve()),
                     constitution_sha=result.constitution_sha, prompts=None, policy_model=cfg.policy_model,
                     judge=cfg.judge, mlflow_tracking_uri=cfg.mlflow_tracking_uri)
    changed = result.stages.evaluate.model_copy(
        update={"metrics": {**result.stages.evaluate.metrics, "eval/win_rate": 0.123}})
    track_stage.fn(ctx, "evaluate", changed, cfg.eval.model_copy(update={"n_prompts": 7}))
    after = mlflow_run(client)
    assert after.info.run_id != before.info.run_id
    assert client.get_run(before.info.run_id).info.lifecycle_stage == "deleted"
    assert history(client, after, "eval/win_rate") == [(cfg.ppo.steps, 0.123)]  # the old point is gone
    assert after.data.params["evaluate.n_prompts"] == "7"
    for key in ("objective/kl", "sft/loss", "rm/accuracy"):  # the other stages, kept whole
        assert same(history(client, after, key), history(client, before, key)), key
    assert {k: v for k, v in after.data.params.items() if not k.startswith("evaluate.")} == \
        {k: v for k, v in before.data.params.items() if not k.startswith("evaluate.")}
    assert {a.path for a in client.list_artifacts(after.info.run_id)} == \
        {a.path for a in client.list_artifacts(before.info.run_id)}
    assert after.data.tags["rlaif.constitution_sha"] == result.constitution_sha


def test_a_tracking_server_that_is_down_warns_once_and_the_run_finishes(tracked):
    from bench.load import free_port
    from flows.pipeline import evaluation_pipeline

    cfg, result, _ = tracked
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.warns(UserWarning) as caught:
        again = evaluation_pipeline(cfg.model_copy(update={"mlflow_tracking_uri": uri}))
    assert Path(again.report).is_file() and again.stages.evaluate.eval == result.stages.evaluate.eval
    about = [str(w.message) for w in caught if uri in str(w.message)]
    assert len(about) == 1 and "goes on without it" in about[0], about  # the stage and the report: one warning
    assert (Path(again.report).parent / "tensorboard" / "evaluation").is_dir()  # TensorBoard still written
