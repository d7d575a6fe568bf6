"""Reward model and PPO on a tiny random-weight model: parameters change, outputs are saved,
and bad data stops training with a clear error."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from rlaif.prompts import load_prompts
from training import TrainingError
from training.ppo import PPOConfig, train_ppo
from training.reward import RewardConfig, RewardModel, train_reward_model


def prefs_frame(n=8):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "pair_id": [f"q{i}" for i in range(n)], "prompt_id": [f"q{i}" for i in range(n)],
        "prompt": [f"question {i}" for i in range(n)],
        "chosen": [f"a kind and careful answer {i}" for i in range(n)],
        "rejected": [f"go away {i}" for i in range(n)],
        "p_chosen": rng.uniform(0.6, 0.9, n), "valid": True,
    })


def reference_frame(n=6):
    return pd.DataFrame({"prompt": [f"question {i}" for i in range(n)],
                         "response": [f"some answer {i}" for i in range(n)]})


@pytest.fixture(scope="module")
def reward_model_dir(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("rm") / "reward_model"
    summary, metrics = train_reward_model(prefs_frame(), reference_frame(), str(tiny_model_dir), out,
                                          RewardConfig(epochs=2, batch_size=2, lr=1e-2), {"run_id": "t"})
    return out, summary, metrics


def test_reward_model_trains_saves_and_normalises(tiny_model_dir, reward_model_dir):
    out, summary, metrics = reward_model_dir
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(out / "model.safetensors")
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(base[q], trained[q]), "LoRA update was not merged into the backbone"
    assert "score.weight" in trained
    assert summary["rm/train_pairs"] + summary["rm/heldout_pairs"] == 8 and summary["rm/heldout_pairs"] == 2
    assert 0.0 <= summary["rm/accuracy"] <= 1.0 and np.isfinite(summary["rm/ece"])
    losses = [m["value"] for m in metrics if m["metric"] == "rm/loss"]
    assert len(losses) == 6 and all(np.isfinite(losses))  # 2 epochs x ceil(6 / 2)
    for f in ("normalization.json", "rlaif_config.json", "lineage.json", "metrics.json", "config.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "lineage.json").read_text())["preference_pair_ids"] == [f"q{i}" for i in range(8)]
    # normalised on the reference responses: mean 0, std 1
    scores = RewardModel(out).score(list(reference_frame()["prompt"]), list(reference_frame()["response"]))
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-3)


def test_reward_model_rejects_bad_data(tiny_model_dir, tmp_path):
    with pytest.raises(TrainingError, match="no valid preference pairs"):
        train_reward_model(prefs_frame().assign(valid=False), reference_frame(), str(tiny_model_dir),
                           tmp_path / "rm", RewardConfig(), {})
    nan = prefs_frame().assign(p_chosen=float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss at step 0; nothing saved"):
        train_reward_model(nan, reference_frame(), str(tiny_model_dir), tmp_path / "rm",
                           RewardConfig(batch_size=2), {})
    assert not (tmp_path / "rm").exists()


def test_ppo_updates_the_policy_and_logs_every_metric(tiny_model_dir, reward_model_dir, tmp_path):
    out = tmp_path / "policy"
    prompts = load_prompts(split="train", limit=6)
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1, max_new_tokens=6, lr=1e-2)
    metrics = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), out, cfg, {}))
    adapter = load_file(out / "adapter_model.safetensors")
    lora_b = [v for k, v in adapter.items() if "lora_B" in k]
    assert lora_b and any(v.abs().sum() > 0 for v in lora_b), "LoRA B starts at zero and must move"
    for name in ("objective/kl", "objective/kl_coef", "objective/scores", "objective/non_score_reward",
                 "objective/rlhf_reward", "objective/entropy", "ppo/clipfrac", "ppo/approxkl",
                 "ppo/value_loss", "ppo/policy_loss", "ppo/mean_response_length"):
        vals = metrics.loc[metrics["metric"] == name, "value"]
        assert len(vals) == 2 and np.isfinite(vals).all(), name
    assert (metrics["metric"] == "sample/response").sum() == 4
    # the first step's reference is the policy itself (adapter starts at zero): KL is 0
    assert metrics.query("step == 0 and metric == 'objective/kl'")["value"].item() == pytest.approx(0, abs=1e-4)
    cfg_saved = json.loads((out / "rlaif_config.json").read_text())
    assert cfg_saved["steps"] == 2 and (out / "kl_controller.json").exists()


def test_ppo_is_deterministic_for_a_seed(tiny_model_dir, reward_model_dir, tmp_path):
    prompts = load_prompts(split="train", limit=4)
    cfg = PPOConfig(steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1, max_new_tokens=5)
    a = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), tmp_path / "a", cfg, {}))
    b = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), tmp_path / "b", cfg, {}))
    pd.testing.assert_frame_equal(a, b)


def test_ppo_rejects_empty_prompts(tiny_model_dir, reward_model_dir, tmp_path):
    with pytest.raises(TrainingError, match="no training prompts"):
        train_ppo(load_prompts().iloc[:0], str(tiny_model_dir), str(reward_model_dir[0]), tmp_path, PPOConfig(), {})
