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
from rlaif.paths import checkpoint_file as checkpoint_path
from training.config import PPOConfig, RewardConfig
from training.ppo import train_ppo
from training.reward import RewardModel, split_by_prompt, train_reward_model


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
    assert np.isfinite(summary["rm/ece"])
    # the held-out accuracy is that of the saved model on the held-out pairs
    _, held = split_by_prompt(prefs_frame(), RewardConfig().eval_fraction, RewardConfig().seed)
    rm = RewardModel(out)
    wins = rm.score(list(held["prompt"]), list(held["chosen"])) > rm.score(list(held["prompt"]), list(held["rejected"]))
    assert summary["rm/accuracy"] == wins.float().mean().item()
    losses = [m["value"] for m in metrics if m["metric"] == "rm/loss"]
    assert len(losses) == 6 and all(np.isfinite(losses))  # 2 epochs x ceil(6 / 2)
    for f in ("normalization.json", "rlaif_config.json", "lineage.json", "metrics.json", "config.json"):
        assert (out / f).exists(), f
    assert json.loads((out / "lineage.json").read_text())["preference_pair_ids"] == [f"q{i}" for i in range(8)]
    # normalised on the reference responses: mean 0, std 1
    scores = RewardModel(out).score(list(reference_frame()["prompt"]), list(reference_frame()["response"]))
    assert scores.mean().item() == pytest.approx(0.0, abs=1e-4)
    assert scores.std().item() == pytest.approx(1.0, abs=1e-3)


def test_reward_model_learns_a_planted_preference(tiny_model_dir, tmp_path):
    """Chosen responses contain a marker word somewhere, rejected ones never do."""
    rng = np.random.default_rng(0)
    words = "apple river stone cloud paper garden window market silver orange yellow table candle".split()

    def response(marker: bool) -> str:
        w = list(rng.choice(words, 6))
        if marker:
            w.insert(int(rng.integers(0, 7)), "banana")
        return " ".join(w)

    n = 96
    prefs = pd.DataFrame({"pair_id": [f"q{i}" for i in range(n)], "prompt_id": [f"q{i}" for i in range(n)],
                          "prompt": [f"question {i}" for i in range(n)],
                          "chosen": [response(True) for _ in range(n)],
                          "rejected": [response(False) for _ in range(n)], "p_chosen": 0.9, "valid": True})
    summary, _ = train_reward_model(prefs, reference_frame(), str(tiny_model_dir), tmp_path / "rm",
                                    RewardConfig(epochs=6, batch_size=8, lr=1e-2), {})
    assert summary["rm/heldout_pairs"] == 24
    assert summary["rm/accuracy"] >= 0.95
    assert summary["rm/ece"] < 0.1  # soft labels of 0.9: it should also say "about 0.9"


def test_reward_model_takes_a_prompts_whole_tournament_as_one_example(tiny_model_dir, tmp_path, monkeypatch):
    """K = 4 samples per prompt, all 6 pairs judged: each prompt is one example of a batch, its
    loss the mean over all its pairs (InstructGPT), each distinct response scored once."""
    import training.reward as R

    rng = np.random.default_rng(1)
    rows = []
    for q in range(6):
        texts = [f"answer {q}.{k} " + "kind " * k for k in range(4)]  # the kinder, the better
        for i, j in [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]:
            rows.append({"pair_id": f"q{q}/r{i}/r{j}", "prompt_id": f"q{q}", "prompt": f"question {q}",
                         "chosen": texts[j], "rejected": texts[i], "p_chosen": rng.uniform(0.6, 0.9), "valid": True})
    prefs = pd.DataFrame(rows)
    seen = []  # (pairs, distinct responses scored) per prompt, as the loss receives them

    def spy(r_chosen, r_rejected, p_chosen, *a, **k):
        seen.append((len(r_chosen), p_chosen.tolist()))
        return real(r_chosen, r_rejected, p_chosen, *a, **k)

    real = R.soft_bt_loss
    monkeypatch.setattr(R, "soft_bt_loss", spy)
    texts_per_pass = []
    real_fwd = R.LastTokenScore.forward
    monkeypatch.setattr(R.LastTokenScore, "forward",
                        lambda self, ids, mask: texts_per_pass.append(len(ids)) or real_fwd(self, ids, mask))
    summary, metrics = train_reward_model(prefs, reference_frame(), str(tiny_model_dir), tmp_path / "rm",
                                          RewardConfig(epochs=1, batch_size=2, micro_batch_size=None, lr=1e-2,
                                                       eval_fraction=0.0), {})
    assert summary["rm/train_pairs"] == 36 and summary["rm/train_prompts"] == 6 and summary["rm/heldout_pairs"] == 0
    assert "rm/accuracy" not in summary  # nothing held out: no accuracy to report
    assert len([m for m in metrics if m["metric"] == "rm/loss"]) == 3  # 6 prompts, 2 per step
    assert [n for n, _ in seen] == [6] * 6  # every prompt with all its pairs, once an epoch
    assert sorted(p for _, ps in seen for p in ps) == pytest.approx(sorted(prefs["p_chosen"]))
    assert texts_per_pass == [8, 8, 8]  # 2 prompts x 4 distinct responses, not 2 x 6 x 2 texts


def test_reward_model_rejects_bad_data(tiny_model_dir, tmp_path):
    with pytest.raises(TrainingError, match="no valid preference pairs"):
        train_reward_model(prefs_frame().assign(valid=False), reference_frame(), str(tiny_model_dir),
                           tmp_path / "rm", RewardConfig(), {})
    nan = prefs_frame().assign(p_chosen=float("nan"))
    with pytest.raises(TrainingError, match="non-finite loss at step 0; nothing saved"):
        train_reward_model(nan, reference_frame(), str(tiny_model_dir), tmp_path / "rm",
                           RewardConfig(batch_size=2), {})
    assert not (tmp_path / "rm").exists()


@pytest.mark.parametrize("shared_value_head", [True, False])
def test_ppo_updates_the_policy_and_logs_every_metric(tiny_model_dir, reward_model_dir, tmp_path, shared_value_head):
    out = tmp_path / "policy"
    prompts = load_prompts(split="train", limit=6)
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1, sampling={"max_new_tokens": 6}, lr=1e-2,
                    shared_value_head=shared_value_head)
    metrics = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), out, cfg, {}))
    # saved merged (a plain HF folder): the attention projections LoRA trains moved, nothing else did
    before, after = load_file(tiny_model_dir / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(after) == set(before)
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight", "o_proj.weight"))
                         for k in moved), moved
    # the critic trained too: the shared head starts at zero, the value model's LoRA B too
    critic = torch.load(checkpoint_path(out), weights_only=False)["value_model"]
    moved = [v for k, v in critic.items() if shared_value_head or "lora_B" in k]
    assert moved and any(v.abs().sum() > 0 for v in moved)
    if shared_value_head:
        assert set(critic) == {"weight", "bias"}
    else:  # LoRA on the value model, and its score head
        assert all("lora_" in k or "score" in k for k in critic) and any("score" in k for k in critic)
    for name in ("objective/kl", "objective/kl_coef", "objective/scores", "objective/non_score_reward",
                 "objective/rlhf_reward", "objective/entropy", "ppo/clipfrac", "ppo/approxkl",
                 "ppo/value_loss", "ppo/policy_loss", "ppo/mean_response_length"):
        vals = metrics.loc[metrics["metric"] == name, "value"]
        assert len(vals) == 2 and np.isfinite(vals).all(), name
    assert (metrics["metric"] == "sample/response").sum() == 4
    # the transformers engine samples with the policy being trained: its logprobs are the trainer's
    assert metrics.loc[metrics["metric"] == "rollout/logprob_diff", "value"].max() < 1e-4
    # the first step's reference is the policy itself (adapter starts at zero): KL is 0
    assert metrics.query("step == 0 and metric == 'objective/kl'")["value"].item() == pytest.approx(0, abs=1e-4)
    cfg_saved = json.loads((out / "rlaif_config.json").read_text())
    assert cfg_saved["steps"] == 2 and (out / "kl_controller.json").exists()


def test_dropping_a_minibatch_padding_changes_no_logprob_or_value(tiny_model_dir):
    """PPO's minibatches drop the columns that are padding in every row; the response tokens'
    logprobs and values must not change."""
    from rlaif.models import load_causal_lm
    from training.ppo import policy_and_values, unpadded

    torch.manual_seed(0)
    model = load_causal_lm(tiny_model_dir)
    head = torch.nn.Linear(model.config.hidden_size, 1)
    # two queries of 3 and 5 tokens, left-padded to 7; responses of 2 and 4 tokens, right-padded to 6
    attn = torch.tensor([[0, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0],
                         [0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0]])
    ids = torch.randint(3, 50, attn.shape) * attn
    Q, R = 7, 6
    cols, r = unpadded(attn, Q)
    assert (cols, r) == (slice(2, 11), 4)
    with torch.no_grad():
        logits, values = policy_and_values(model, head, ids, attn, R, 0.7)  # (2, 6, V), (2, 6)
        t_logits, t_values = policy_and_values(model, head, ids[:, cols], attn[:, cols], r, 0.7)
    mask = attn[:, Q:Q + r].bool()  # (2, 4)
    torch.testing.assert_close(t_logits[mask], logits[:, :r][mask], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(t_values[mask], values[:, :r][mask], atol=1e-4, rtol=1e-4)


def test_ppo_is_deterministic_for_a_seed(tiny_model_dir, reward_model_dir, tmp_path):
    prompts = load_prompts(split="train", limit=4)
    cfg = PPOConfig(steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1, sampling={"max_new_tokens": 5})
    a = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), tmp_path / "a", cfg, {}))
    b = pd.DataFrame(train_ppo(prompts, str(tiny_model_dir), str(reward_model_dir[0]), tmp_path / "b", cfg, {}))
    pd.testing.assert_frame_equal(without_timings(a), without_timings(b))


def without_timings(metrics) -> pd.DataFrame:
    df = pd.DataFrame(metrics)
    return df[~df["metric"].str.startswith("time/")].reset_index(drop=True)


def saved_weights(d):
    return load_file(d / "model.safetensors")


@pytest.mark.parametrize("method,algorithm", [("lora", "ppo"), ("full", "ppo"), ("lora", "rloo"), ("lora", "grpo")])
def test_ppo_resume_gives_the_same_weights_as_one_run(tiny_model_dir, reward_model_dir, tmp_path, method, algorithm):
    """N + N steps equal 2N steps, for each algorithm."""
    prompts, rm = load_prompts(split="train", limit=6), str(reward_model_dir[0])
    cfg = PPOConfig(steps=4, batch_size=2, mini_batch_size=1, ppo_epochs=2, sampling={"max_new_tokens": 5}, lr=1e-2,
                    trainable={"method": method}, target_kl=0.01, kl_horizon=10,  # the KL coefficient moves every step
                    algorithm=algorithm, group_size=1 if algorithm == "ppo" else 2)
    one_go = train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "one_go", cfg, {})
    train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "resumed", cfg.model_copy(update={"steps": 2}), {})
    assert torch.load(checkpoint_path(tmp_path / "resumed"), weights_only=False)["step"] == 2
    resumed = train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "resumed", cfg, {})
    a, b = saved_weights(tmp_path / "one_go"), saved_weights(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6, msg=k)
    base = load_file(tiny_model_dir / "model.safetensors")  # the run trained: some weight left its start
    assert any(not torch.equal(v, base.get(k, torch.zeros_like(v))) for k, v in a.items())
    pd.testing.assert_frame_equal(without_timings(one_go), without_timings(resumed))
    kl = [json.loads((tmp_path / d / "kl_controller.json").read_text())["kl_coef"] for d in ("one_go", "resumed")]
    assert kl[0] == kl[1] != cfg.init_kl_coef
    # a checkpoint is only continued with the settings that wrote it
    with pytest.raises(TrainingError, match=r"different settings or inputs \(lr\)"):
        train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "resumed", cfg.model_copy(update={"lr": 1e-3}), {})
    with pytest.raises(TrainingError, match="at step 4, beyond steps=3"):
        train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "resumed", cfg.model_copy(update={"steps": 3}), {})
    checkpoint_path(tmp_path / "resumed").write_bytes(b"truncated")
    with pytest.raises(TrainingError, match="cannot read the checkpoint"):
        train_ppo(prompts, str(tiny_model_dir), rm, tmp_path / "resumed", cfg, {})


def test_ppo_nan_reward_stops_and_keeps_the_last_good_checkpoint(tiny_model_dir, reward_model_dir, tmp_path):
    prompts, rm, out = load_prompts(split="train", limit=4), str(reward_model_dir[0]), tmp_path / "policy"
    cfg = PPOConfig(steps=3, batch_size=2, mini_batch_size=2, ppo_epochs=1, sampling={"max_new_tokens": 4},
                    reward_source="judge")
    calls = []

    def flaky(queries, responses):  # fine for two steps, then NaN
        calls.append(len(queries))
        return torch.full((len(queries),), float("nan") if len(calls) == 3 else 0.5)

    with pytest.raises(TrainingError, match="non-finite judge score at step 2.*last good checkpoint"):
        train_ppo(prompts, str(tiny_model_dir), rm, out, cfg, {}, scorer=flaky)
    assert not out.exists(), "no policy is saved from a failed run"
    assert torch.load(checkpoint_path(out), weights_only=False)["step"] == 2
    metrics = train_ppo(prompts, str(tiny_model_dir), rm, out, cfg, {}, scorer=lambda q, r: torch.zeros(len(q)))
    assert sorted({m["step"] for m in metrics}) == [0, 1, 2] and len(calls) == 3  # resumed at step 2
    assert (out / "model.safetensors").exists()


def test_ppo_with_the_judge_as_reward(tiny_model_dir, reward_model_dir, tmp_path):
    from constitution import load_constitution
    from judges.judge import make_judge
    from judges.config import JudgeConfig
    from judges.feedback import judge_reward

    scorer = judge_reward(make_judge(JudgeConfig(model=str(tiny_model_dir))), load_constitution("harmless"))
    scores = scorer(["How do I bake bread?"] * 2, ["Mix flour and water.", "No."])
    assert scores.shape == (2,) and torch.isfinite(scores).all() and scores[0] != scores[1]
    cfg = PPOConfig(steps=1, batch_size=2, mini_batch_size=2, ppo_epochs=1, sampling={"max_new_tokens": 4},
                    reward_source="judge", missing_eos_penalty=0.0)
    metrics = pd.DataFrame(train_ppo(load_prompts(split="train", limit=2), str(tiny_model_dir),
                                     str(reward_model_dir[0]), tmp_path / "p", cfg, {}, scorer=scorer))
    # PPO's score is the judge's rating of its own rollouts, not the reward model's
    sample = metrics.query("metric == 'sample/response'")
    prompt, response = sample["text"].iloc[0].split("\n---\n")
    assert sample["value"].iloc[0] == pytest.approx(scorer([prompt], [response]).item(), abs=1e-5)
    with pytest.raises(TrainingError, match="needs a judge scorer"):
        train_ppo(load_prompts(split="train", limit=2), str(tiny_model_dir), str(reward_model_dir[0]),
                  tmp_path / "q", cfg, {})


def test_ppo_rejects_empty_prompts(tiny_model_dir, reward_model_dir, tmp_path):
    with pytest.raises(TrainingError, match="no training prompts"):
        train_ppo(load_prompts().iloc[:0], str(tiny_model_dir), str(reward_model_dir[0]), tmp_path, PPOConfig(), {})


def good_token_reward(model_dir):
    """A programmatic reward: the share of response tokens from a fixed half of the vocabulary
    (the half whose embeddings point along one direction). Returns (tokenizer, scorer)."""
    from rlaif.models import load_tokenizer

    tok = load_tokenizer(model_dir)
    emb = load_file(model_dir / "model.safetensors")["model.embed_tokens.weight"]  # (V, H)
    good = emb @ torch.randn(emb.shape[1], generator=torch.Generator().manual_seed(1)) > 0  # (V,)

    def share_of_good_tokens(queries, responses):
        ids = [tok(r, add_special_tokens=False)["input_ids"] for r in responses]
        return torch.tensor([good[i].float().mean().item() if i else 0.0 for i in ids])

    return tok, share_of_good_tokens


def fresh_mean_reward(model, model_dir, queries, sampling, scorer) -> float:
    """The mean reward on 8 fresh samples per query (the per-step scores are too noisy)."""
    from rlaif.config import Transformers
    from rlaif.engines import make_engine

    gens = make_engine(Transformers(batch_size=64), model_dir, module=model).generate(queries * 8, sampling, seed=11)
    return scorer(None, [g.text for g in gens]).mean().item()


def test_ppo_raises_a_programmatic_reward_with_kl_held_near_the_target(peaked_tiny_model_dir, reward_model_dir,
                                                                       tmp_path):
    """The reward is the share of response tokens from a fixed half of the vocabulary (the half
    whose embeddings point along one direction), so the policy can raise it by turning its
    hidden state; the adaptive controller keeps the KL to the reference near its target."""
    tok, share_of_good_tokens = good_token_reward(peaked_tiny_model_dir)
    target = 0.5
    cfg = PPOConfig(steps=8, batch_size=32, mini_batch_size=16, ppo_epochs=4, sampling={"max_new_tokens": 2}, lr=1e-3,
                    init_kl_coef=0.05, target_kl=target, kl_horizon=32, missing_eos_penalty=0.0, snapshots=3)
    m = pd.DataFrame(train_ppo(load_prompts(split="train", limit=32), str(peaked_tiny_model_dir),
                               str(reward_model_dir[0]), tmp_path / "p", cfg, {}, scorer=share_of_good_tokens))
    per_step = m[m["metric"].str.startswith("objective/")].pivot(index="step", columns="metric", values="value")
    print(per_step.round(3).to_string())
    assert per_step["objective/kl"].iloc[-3:].mean() <= 2 * target
    # the controller pushes kl_coef up while the KL is above the target, down while below
    kl, coef = per_step["objective/kl"].to_numpy(), per_step["objective/kl_coef"].to_numpy()
    assert (np.sign(np.diff(coef)) == np.sign(kl[:-1] - target)).all()

    # Snapshots for the over-optimisation curve, spread over the run, each a loadable policy.
    from evaluation.evaluate import sequence_stats
    from rlaif.config import Transformers
    from rlaif.engines import make_engine
    from rlaif.generation import chat_text
    from rlaif.models import load_causal_lm
    from rlaif.paths import snapshot_dirs

    assert [step for step, _ in snapshot_dirs(tmp_path / "p")] == [2, 4, 6]
    assert json.loads((tmp_path / "p-snapshots" / "step-0004" / "lineage.json").read_text())["step"] == 4
    # The evaluation's KL on the final policy's own samples agrees with what PPO measured in
    # its last steps; the reference against itself is exactly 0.
    prompts = load_prompts(split="train", limit=32)
    policy, ref = load_causal_lm(tmp_path / "p"), load_causal_lm(peaked_tiny_model_dir)
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]

    def mean_reward(model) -> float:
        return fresh_mean_reward(model, peaked_tiny_model_dir, queries, cfg.sampling, share_of_good_tokens)

    # 5 seeds gave gains of 0.04-0.11 (0.06-0.09 with a separate value model)
    assert mean_reward(policy) >= mean_reward(ref) + 0.03
    gens = make_engine(Transformers(batch_size=32), peaked_tiny_model_dir, module=policy).generate(
        queries, cfg.sampling, seed=5)
    stats = sequence_stats(policy, ref, tok, list(prompts["prompt"]), gens, cfg.sampling.temperature)
    kl_eval, ppo_kl = stats["kl"], per_step["objective/kl"].iloc[-3:].mean()
    print(f"held-out KL {kl_eval.mean():.3f} (k1 {stats['kl_k1'].mean():.3f}) vs PPO's last steps {ppo_kl:.3f}")
    assert 0.33 * ppo_kl <= kl_eval.mean() <= 3 * ppo_kl
    # the exact KL is never negative; the k1 estimate of a single response can be, yet agrees on average
    assert (kl_eval >= 0).all() and stats["kl_k1"].mean() == pytest.approx(kl_eval.mean(), rel=0.5)
    assert np.abs(sequence_stats(ref, ref, tok, list(prompts["prompt"]), gens, cfg.sampling.temperature)["kl"]).max() < 1e-5


@pytest.mark.parametrize("algorithm", ["rloo", "grpo"])
def test_group_baselines_raise_the_programmatic_reward_without_a_value_model(peaked_tiny_model_dir, reward_model_dir,
                                                                            tmp_path, algorithm):
    """The reward of the PPO test above, with K = 4 samples per prompt and the group's other
    rewards as the baseline, judged on fresh samples after training."""
    from rlaif.generation import chat_text
    from rlaif.models import load_causal_lm

    tok, share_of_good_tokens = good_token_reward(peaked_tiny_model_dir)
    prompts = load_prompts(split="train", limit=32)
    cfg = PPOConfig(algorithm=algorithm, group_size=4, steps=8, batch_size=8, mini_batch_size=16, ppo_epochs=4,
                    sampling={"max_new_tokens": 2}, lr=1e-3, init_kl_coef=0.05, adaptive_kl=False,
                    missing_eos_penalty=0.0, snapshots=0)
    m = pd.DataFrame(train_ppo(prompts, str(peaked_tiny_model_dir), str(reward_model_dir[0]), tmp_path / "p", cfg, {},
                               scorer=share_of_good_tokens))
    per_step = m[m["metric"].str.startswith(("objective/", "ppo/"))].pivot(index="step", columns="metric", values="value")
    print(per_step.round(3).to_string())
    assert "ppo/value_loss" not in per_step and (per_step["objective/zero_std_groups"] < 1).all()
    assert ("ppo/kl_loss" in per_step) == (algorithm == "grpo")  # GRPO's KL acts in the loss, RLOO's in the reward
    assert not torch.load(checkpoint_path(tmp_path / "p"), weights_only=False)["value_model"]  # no critic
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompts["prompt"]]
    gain = (fresh_mean_reward(load_causal_lm(tmp_path / "p"), peaked_tiny_model_dir, queries, cfg.sampling,
                              share_of_good_tokens)
            - fresh_mean_reward(load_causal_lm(peaked_tiny_model_dir), peaked_tiny_model_dir, queries, cfg.sampling,
                                share_of_good_tokens))
    print(f"{algorithm}: fresh-sample reward gain {gain:.3f}")
    assert gain >= 0.03  # 5 seeds gave 0.040-0.071 (rloo) and 0.045-0.080 (grpo)


def test_the_reward_model_scores_with_the_max_length_it_was_trained_with(tiny_model_dir, tmp_path):
    """Trained with max_length 24, it must read only the last 24 tokens when PPO or evaluation
    score with it: two texts that differ only before those tokens get the same score."""
    out = tmp_path / "rm"
    train_reward_model(prefs_frame(), reference_frame(), str(tiny_model_dir), out,
                       RewardConfig(epochs=1, batch_size=2, max_length=24), {})
    rm = RewardModel(out)
    assert rm.max_length == 24
    tail = " and then the same long ending of this response, word after word after word" * 3
    a, b = rm.score(["alpha question", "a very different opening question"], [tail, tail])
    assert a.item() == pytest.approx(b.item(), abs=1e-5)
    short = rm.score(["alpha question"], ["short"])  # shorter than the cap: the opening counts
    assert short.item() != pytest.approx(rm.score(["beta question"], ["short"]).item(), abs=1e-6)


def test_ppo_with_the_last_layers_trainable_moves_only_them(tiny_model_dir, reward_model_dir, tmp_path):
    """Partial fine-tuning: every weight frozen but the top decoder layer and the final norm;
    the reference is a frozen copy of the start, so the first step's KL is 0."""
    cfg = PPOConfig(steps=2, batch_size=4, mini_batch_size=2, ppo_epochs=1, sampling={"max_new_tokens": 6},
                    lr=1e-2, trainable={"method": "last_layers", "last_layers": 1})
    metrics = pd.DataFrame(train_ppo(load_prompts(split="train", limit=6), str(tiny_model_dir),
                                     str(reward_model_dir[0]), tmp_path / "p", cfg, {}))
    before, after = load_file(tiny_model_dir / "model.safetensors"), saved_weights(tmp_path / "p")
    moved = {k for k in before if not torch.equal(before[k], after[k])}
    assert moved and all(k.startswith(("model.layers.1.", "model.norm.")) for k in moved), moved
    assert any(k.startswith("model.norm.") for k in moved)
    assert metrics.query("step == 0 and metric == 'objective/kl'")["value"].item() == pytest.approx(0, abs=1e-4)
    with pytest.raises(TrainingError, match="last_layers=3, but the model has 2 layers"):
        train_ppo(load_prompts(split="train", limit=2), str(tiny_model_dir), str(reward_model_dir[0]),
                  tmp_path / "q", cfg.model_copy(update={"trainable": cfg.trainable.model_copy(update={"last_layers": 3})}),
                  {})


def test_micro_batches_give_the_gradient_of_the_whole_batch(tiny_model_dir, tmp_path):
    """Gradient accumulation is exact: one pair per forward pass trains the same reward model as
    four pairs at once (the same losses and weights, to float error), with less memory."""
    runs = {}
    for micro in (1, None):
        out = tmp_path / f"rm-{micro}"
        _, metrics = train_reward_model(prefs_frame(), reference_frame(), str(tiny_model_dir), out,
                                        RewardConfig(epochs=2, batch_size=4, lr=1e-2, micro_batch_size=micro), {})
        runs[micro] = ([m["value"] for m in metrics if m["metric"] == "rm/loss"], saved_weights(out))
    (losses_1, w_1), (losses_all, w_all) = runs[1], runs[None]
    np.testing.assert_allclose(losses_1, losses_all, rtol=1e-5, atol=1e-6)
    assert w_1.keys() == w_all.keys()
    for k in w_all:
        torch.testing.assert_close(w_1[k], w_all[k], rtol=1e-4, atol=1e-5)
    q = "model.layers.0.self_attn.q_proj.weight"  # and it trained: the merged LoRA moved the backbone
    assert not torch.allclose(w_all[q], load_file(tiny_model_dir / "model.safetensors")[q])
