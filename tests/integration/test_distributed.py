"""Training across real processes: torchrun starts 2 ranks on the gloo backend (this CPU), and
each stage must give what one process gives on the same global batch, within a float
tolerance measured here and stated in docs/distributed.md."""

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlaif.config import Trainable
from rlaif.runtime import CPU
from training import TrainingError
from training.config import DistributedConfig, RewardConfig, SFTConfig
from training.distributed import launch
from training.reward import train_reward_model
from training.sft import train_sft

# measured, 2 ranks against 1 process (float32 sums in another order): the reward model under
# DDP is bit-identical; under FSDP the losses differ by 1.0e-7 and the weights by 7.9e-7; SFT
# under DDP by 3.3e-7 and 1.8e-6. The bounds leave 3-5x room.
LOSS_TOL, WEIGHT_TOL = 1e-6, 1e-5


def prefs(n=10):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "pair_id": [f"q{i}" for i in range(n)], "prompt_id": [f"q{i}" for i in range(n)],
        "prompt": [f"question {i}" for i in range(n)],
        "chosen": [f"a kind and careful answer number {i}" * (1 + i % 3) for i in range(n)],
        "rejected": [f"go away {i}" for i in range(n)],
        "p_chosen": rng.uniform(0.6, 0.9, n), "valid": True,
    })


def reference(n=4):
    return pd.DataFrame({"prompt": [f"question {i}" for i in range(n)], "response": [f"answer {i}" for i in range(n)]})


def critiques(n=7):
    return pd.DataFrame([{"response_id": f"r{i}", "prompt_id": f"p{i}", "prompt": f"question {i}",
                          "response": f"draft {i}", "round": 0, "principle_id": "harmless", "critique": "be kinder",
                          "revision": "a kind and careful answer " * (1 + i % 4), "template_version": "t"}
                         for i in range(n)])


def losses(metrics, name):
    return [m["value"] for m in metrics if m["metric"] == name]


def assert_same_weights(a, b):
    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys()
    worst = max(float((wa[k] - wb[k]).abs().max()) for k in wa)
    assert worst < WEIGHT_TOL, f"largest weight difference {worst:.2e}"


def two_ranks(target, tmp_path, strategy="ddp", **kwargs):
    return launch(target, kwargs, DistributedConfig(num_processes=2, strategy=strategy), CPU, tmp_path / "launch")


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_reward_model_on_two_ranks_matches_one_process(tiny_model_dir, tmp_path, strategy):
    """8 training pairs in batches of 3 (shares of 2 and 1; the last batch of 2 gives each rank
    one), one pair per pass: the same loss curve and weights as one process, which also shows
    every row and file came from one rank (a second writer would have raced the first)."""
    cfg = RewardConfig(epochs=2, batch_size=3, micro_batch_size=1, lr=1e-2, eval_fraction=0.2,
                       trainable=Trainable(method="full" if strategy == "fsdp" else "lora"))
    args = dict(prefs=prefs(), reference_responses=reference(), base_model=str(tiny_model_dir), cfg=cfg,
                lineage={"run_id": "t"})
    one, one_metrics = train_reward_model(**args, out_dir=tmp_path / "one")
    summary, metrics = two_ranks("training.reward:train_reward_model", tmp_path, strategy, **args,
                                 out_dir=tmp_path / "two")
    assert len(losses(metrics, "rm/loss")) == len(losses(one_metrics, "rm/loss")) == 2 * 3
    np.testing.assert_allclose(losses(metrics, "rm/loss"), losses(one_metrics, "rm/loss"), atol=LOSS_TOL, rtol=0)
    assert summary["rm/heldout_pairs"] == one["rm/heldout_pairs"] == 2
    assert summary["rm/reward_mean"] == pytest.approx(one["rm/reward_mean"], abs=1e-4)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
    assert not (tmp_path / "launch").exists()  # the launch's copy of the inputs is gone once it succeeded


def test_sft_on_two_ranks_reaches_the_loss_of_one_process(tiny_model_dir, tmp_path):
    """Revisions of different lengths: each step's loss is the mean over the global batch's
    response tokens, so ranks holding unequal token counts still average to one process's."""
    cfg = SFTConfig(epochs=2, batch_size=4, lr=1e-3, trainable=Trainable(method="full"))
    args = dict(critiques=critiques(), policy_model=str(tiny_model_dir), cfg=cfg, lineage={})
    _, one = train_sft(**args, out_dir=tmp_path / "one")
    _, two = two_ranks("training.sft:train_sft", tmp_path, **args, out_dir=tmp_path / "two")
    assert len(losses(two, "sft/loss")) == 4
    np.testing.assert_allclose(losses(two, "sft/loss"), losses(one, "sft/loss"), atol=LOSS_TOL, rtol=0)
    assert_same_weights(tmp_path / "one", tmp_path / "two")


def test_a_failing_rank_fails_the_stage_with_its_error(tiny_model_dir, tmp_path):
    args = dict(prefs=prefs().assign(valid=False), reference_responses=reference(), base_model=str(tiny_model_dir),
                out_dir=tmp_path / "rm", cfg=RewardConfig(), lineage={})
    with pytest.raises(TrainingError, match=r"rank0 failed: training.TrainingError: reward model: no valid preference pairs"):
        two_ranks("training.reward:train_reward_model", tmp_path, **args)
    assert not (tmp_path / "rm").exists()
    assert "no valid preference pairs" in (tmp_path / "launch" / "error-rank0.txt").read_text()  # kept to read


def test_an_accelerate_config_file_launches_the_stage(tiny_model_dir, tmp_path):
    """`accelerate launch --config_file` with the shipped one-process file (on CPU, one rank):
    the same reward model as in process."""
    from pathlib import Path

    config = Path(__file__).parents[2] / "training" / "accelerate" / "one-process.yaml"
    args = dict(prefs=prefs(), reference_responses=reference(), base_model=str(tiny_model_dir),
                cfg=RewardConfig(epochs=1, batch_size=4), lineage={})
    one, _ = train_reward_model(**args, out_dir=tmp_path / "one")
    launched, _ = launch("training.reward:train_reward_model", {**args, "out_dir": tmp_path / "two"},
                         DistributedConfig(accelerate_config=str(config)), CPU, tmp_path / "launch")
    assert launched["rm/reward_mean"] == pytest.approx(one["rm/reward_mean"], abs=1e-6)
    assert_same_weights(tmp_path / "one", tmp_path / "two")
