"""The pure maths of PPO and the reward model, against hand-computed numbers."""

import math

import numpy as np
import pytest
import torch

from judges.feedback import debias
import pandas as pd

from evaluation.evaluate import length_corrected_win_rate, overoptimised, win_rate
from rlaif.stats import wilson_interval
from rlaif.generation import response_mask
from training.ppo import (AdaptiveKLController, FixedKLController, compute_rewards, exact_kl, gae,
                          grpo_advantages, kl_estimate, logprobs_from_logits, masked_mean, masked_whiten,
                          ppo_losses, rloo_advantages, truncated_is_weights)
from training.reward import expected_calibration_error, soft_bt_loss, split_by_prompt


def t(x):
    return torch.tensor(x, dtype=torch.float32)


def test_gae_full_mask():
    adv, ret = gae(t([[1.0, 2.0, 3.0]]), t([[0.5, 1.0, 1.5]]), t([[1, 1, 1]]), gamma=0.9, lam=0.8)
    # t=2: 3 - 1.5 = 1.5; t=1: 2 + .9*1.5 - 1 = 2.35 -> 2.35 + .72*1.5 = 3.43;
    # t=0: 1 + .9*1 - .5 = 1.4 -> 1.4 + .72*3.43 = 3.8696
    torch.testing.assert_close(adv, t([[3.8696, 3.43, 1.5]]))
    torch.testing.assert_close(ret, t([[4.3696, 4.43, 3.0]]))


def test_gae_ignores_everything_after_the_response_ends():
    adv, ret = gae(t([[1.0, 2.0, 99.0]]), t([[0.5, 1.0, 42.0]]), t([[1, 1, 0]]), gamma=0.9, lam=0.8)
    # the value past the end is treated as 0: t=1: 2 - 1 = 1; t=0: 1 + .9 - .5 = 1.4 -> 1.4 + .72 = 2.12
    torch.testing.assert_close(adv, t([[2.12, 1.0, 0.0]]))
    torch.testing.assert_close(ret, t([[2.62, 2.0, 0.0]]))


def test_masked_whiten_and_mean():
    x, m = t([[1.0, 2.0, 3.0, 100.0]]), t([[1, 1, 1, 0]])
    assert masked_mean(x, m).item() == pytest.approx(2.0)
    w = masked_whiten(x, m)
    # mean 2, population var 2/3 -> (x - 2) / sqrt(2/3); the masked entry is zeroed
    torch.testing.assert_close(w, t([[-1.224744, 0.0, 1.224744, 0.0]]), atol=1e-5, rtol=0)
    w2 = masked_whiten(x, m, shift_mean=False)
    torch.testing.assert_close(w2[0, :3], w[0, :3] + 2.0)


def test_kl_estimators():
    logp, ref = t([[-1.0, -0.5]]), t([[-2.0, -0.5]])
    torch.testing.assert_close(kl_estimate(logp, ref, "k1"), t([[1.0, 0.0]]))
    # k3 = (r - 1) - log r with r = exp(ref - logp) = e^-1 -> e^-1 - 1 + 1 = e^-1
    torch.testing.assert_close(kl_estimate(logp, ref, "k3"), t([[math.exp(-1), 0.0]]))
    assert (kl_estimate(torch.randn(4, 5), torch.randn(4, 5), "k3") >= 0).all()
    with pytest.raises(ValueError, match="unknown KL estimator"):
        kl_estimate(logp, ref, "k2")


def test_exact_kl_is_the_expectation_of_k1_and_never_negative():
    torch.manual_seed(0)
    logits, ref_logits = torch.randn(2, 3, 11) * 2, torch.randn(2, 3, 11) * 2  # (B, R, V)
    kl = exact_kl(logits.log_softmax(-1), ref_logits.log_softmax(-1))  # (B, R)
    p, q = logits.softmax(-1), ref_logits.softmax(-1)
    assert torch.allclose(kl, (p * (p / q).log()).sum(-1), atol=1e-5) and (kl > 0).all()
    assert torch.allclose(exact_kl(logits.log_softmax(-1), logits.log_softmax(-1)), torch.zeros(2, 3), atol=1e-6)
    # k1 on sampled tokens is unbiased for it, but single samples are noisy and can be negative
    tokens = torch.distributions.Categorical(logits=logits[0, 0]).sample((20000,))
    k1 = (p[0, 0].log() - q[0, 0].log())[tokens]
    assert k1.mean() == pytest.approx(kl[0, 0].item(), abs=0.05) and (k1 < 0).any()


def test_rewards_put_the_score_on_the_last_response_token():
    kl, mask = t([[0.5, 1.0, 2.0], [1.0, 1.0, 1.0]]), t([[1, 1, 0], [1, 1, 1]])
    rewards, non_score = compute_rewards(t([10.0, -1.0]), kl, mask, kl_coef=0.1)
    torch.testing.assert_close(non_score, t([[-0.05, -0.1, 0.0], [-0.1, -0.1, -0.1]]))
    torch.testing.assert_close(rewards, t([[-0.05, 9.9, 0.0], [-0.1, -0.1, -1.1]]))


def test_kl_controllers():
    fixed = FixedKLController(0.1)
    fixed.update(100.0, 64)
    assert fixed.value == 0.1
    ctl = AdaptiveKLController(0.1, target=6.0, horizon=10000)
    ctl.update(12.0, 100)  # error clipped to +0.2 -> x(1 + 0.2 * 100 / 10000)
    assert ctl.value == pytest.approx(0.1002)
    ctl.update(3.0, 100)  # error -0.5 clipped to -0.2
    assert ctl.value == pytest.approx(0.1002 * 0.998)
    ctl.update(6.0, 100)  # on target: unchanged
    assert ctl.value == pytest.approx(0.1002 * 0.998)


def test_ppo_losses_clip():
    mask = t([[1, 1]])
    old = t([[0.0, 0.0]])
    new = t([[math.log(1.5), math.log(0.9)]])  # ratios 1.5 (clipped at 1.2) and 0.9
    adv = t([[1.0, 1.0]])
    v, ret = t([[0.0, 0.0]]), t([[1.0, 1.0]])
    pg, vf, stats = ppo_losses(new, old, adv, v + 0.5, v, ret, mask, cliprange=0.2, cliprange_value=0.2)
    # max(-1.5, -1.2) = -1.2 ; max(-0.9, -0.9) = -0.9 -> mean -1.05
    assert pg.item() == pytest.approx(-1.05)
    # value 0.5 clipped to 0.2: max(0.25, 0.64) = 0.64 -> 0.5 * 0.64
    assert vf.item() == pytest.approx(0.32)
    assert stats["ppo/clipfrac"] == pytest.approx(0.5)
    assert stats["ppo/vf_clipfrac"] == pytest.approx(1.0)


def test_without_values_there_is_no_value_loss():
    mask, old, new, adv = t([[1, 1]]), t([[0.0, 0.0]]), t([[math.log(1.5), 0.0]]), t([[1.0, -2.0]])
    pg, vf, stats = ppo_losses(new, old, adv, None, None, None, mask, cliprange=0.2, cliprange_value=0.2)
    assert pg.item() == pytest.approx((-1.2 + 2.0) / 2) and vf.item() == 0.0
    assert "ppo/vf_clipfrac" not in stats


def test_rloo_baseline_is_the_mean_of_the_other_rewards():
    rewards = t([[1.0, 2.0, 3.0, 6.0],  # baselines (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3
                 [0.5, 0.5, 0.5, 0.5]])
    expected = t([[1 - 11 / 3, 2 - 10 / 3, 3 - 3.0, 6 - 2.0], [0.0] * 4])
    torch.testing.assert_close(rloo_advantages(rewards), expected)
    # two samples: each is judged against the other alone
    torch.testing.assert_close(rloo_advantages(t([[1.0, -1.0]])), t([[2.0, -2.0]]))


def test_grpo_advantages_are_normalised_within_each_group_and_zero_for_equal_rewards():
    rewards = t([[1.0, 2.0, 3.0, 6.0], [0.7, 0.7, 0.7, 0.7], [0.0, 0.0, 0.0, 1.0]])
    adv = grpo_advantages(rewards)
    std = math.sqrt((4 + 1 + 0 + 9) / 3)  # mean 3, unbiased std
    torch.testing.assert_close(adv[0], t([-2, -1, 0, 3]) / (std + 1e-4))
    assert torch.equal(adv[1], torch.zeros(4))  # no signal: 0, not NaN
    # one response better than three equal ones: std 0.5, mean 0.25
    torch.testing.assert_close(adv[2], t([-0.25, -0.25, -0.25, 0.75]) / (0.5 + 1e-4))


def test_truncated_importance_weights_reweight_each_tokens_policy_term():
    trainer, engine = t([[math.log(0.5), math.log(0.9)]]), t([[math.log(0.25), math.log(0.9)]])
    w = truncated_is_weights(trainer, engine, cap=1.5)
    torch.testing.assert_close(w, t([[1.5, 1.0]]))  # p_trainer / p_engine = 2, capped at 1.5; and 1
    mask, old, new, adv = t([[1, 1]]), t([[0.0, 0.0]]), t([[0.0, 0.0]]), t([[1.0, 3.0]])
    v = t([[0.0, 0.0]])
    plain, _, _ = ppo_losses(new, old, adv, v, v, v, mask, 0.2, 0.2)
    weighted, _, _ = ppo_losses(new, old, adv, v, v, v, mask, 0.2, 0.2, is_weights=w)
    assert plain.item() == pytest.approx(-2.0) and weighted.item() == pytest.approx(-(1.5 * 1 + 1 * 3) / 2)


def test_logprobs_from_logits():
    logits = t([[[0.0, math.log(3.0)]]])  # p = [0.25, 0.75]
    torch.testing.assert_close(logprobs_from_logits(logits, torch.tensor([[1]])), t([[math.log(0.75)]]))


def test_response_mask_stops_after_first_eos():
    m = response_mask(torch.tensor([[5, 2, 2, 2], [5, 6, 7, 8], [2, 9, 2, 9]]), eos_id=2)
    assert m.tolist() == [[1, 1, 0, 0], [1, 1, 1, 1], [1, 0, 0, 0]]


def test_soft_bt_loss():
    loss = soft_bt_loss(t([2.0]), t([0.0]), t([0.75]))
    # -(0.75 log sigmoid(2) + 0.25 log sigmoid(-2))
    assert loss.item() == pytest.approx(0.75 * 0.126928 + 0.25 * 2.126928, abs=1e-5)
    assert soft_bt_loss(t([0.0]), t([0.0]), t([1.0])).item() == pytest.approx(math.log(2))
    # margin shifts the difference; centering penalises the sum
    assert soft_bt_loss(t([1.0]), t([0.0]), t([1.0]), margin=1.0).item() == pytest.approx(math.log(2))
    assert soft_bt_loss(t([1.0]), t([1.0]), t([1.0]), center_coef=0.5).item() == pytest.approx(math.log(2) + 2.0)


def test_ece():
    assert expected_calibration_error(np.array([0.9, 0.9]), np.array([0.9, 0.9])) == pytest.approx(0.0)
    assert expected_calibration_error(np.array([0.95, 0.15]), np.array([0.55, 0.15])) == pytest.approx(0.2)


def test_split_by_prompt_never_leaks_a_prompt():
    import pandas as pd

    df = pd.DataFrame({"prompt_id": [f"p{i // 2}" for i in range(40)], "x": range(40)})
    train, held = split_by_prompt(df, 0.25, seed=0)
    assert not set(train["prompt_id"]) & set(held["prompt_id"])
    assert held["prompt_id"].nunique() == 5 and len(train) + len(held) == 40
    train1, held1 = split_by_prompt(df.iloc[:4], 0.25, seed=0)  # 2 prompts: one each side
    assert len(train1) == 2 and len(held1) == 2


def test_debias_averages_both_orders():
    p_a, consistent = debias(np.array([0.8, 0.7]), np.array([0.4, 0.9]))
    np.testing.assert_allclose(p_a, [0.7, 0.4])
    assert consistent.tolist() == [True, False]


def test_wilson_interval():
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)


def test_win_rate_counts_inconsistent_orders_as_ties():
    p = np.array([0.9, 0.6, 0.52, 0.2, 0.45])
    consistent = np.array([True, True, False, True, False])  # 0.52 and 0.45: the orders disagree
    r = win_rate(p, consistent)
    assert (r["wins"], r["losses"], r["ties"], r["n"]) == (2, 1, 2, 5)
    assert r["win_rate"] == pytest.approx(3 / 5)
    assert r["ci_low"] < 3 / 5 < r["ci_high"]
    # a judge that always picks the first-shown answer decides nothing: every pair is a tie
    assert win_rate(np.array([0.51, 0.49, 0.5]), np.zeros(3, bool))["win_rate"] == 0.5
    assert math.isnan(win_rate(np.array([]), np.array([], bool))["win_rate"])


def test_length_corrected_win_rate_removes_a_pure_length_preference():
    rng = np.random.default_rng(0)
    diff = rng.normal(10, 10, 400)  # the policy is longer on most prompts
    # a judge that only looks at length: P(policy better) rises with the length difference
    p = 1 / (1 + np.exp(-diff / 5))
    assert (p > 0.5).mean() > 0.8  # the raw win rate looks like a big win
    assert length_corrected_win_rate(p, diff) == pytest.approx(0.5, abs=0.02)
    # a real preference on top of length survives the correction: sigmoid(1) = 0.73 at equal length
    p_real = 1 / (1 + np.exp(-(1 + diff / 5)))
    assert length_corrected_win_rate(p_real, diff) == pytest.approx(0.731, abs=0.02)
    # no length difference at all: the correction is the mean preference
    assert length_corrected_win_rate(np.full(50, 0.7), np.zeros(50)) == pytest.approx(0.7, abs=1e-6)


def test_overoptimisation_is_flagged_when_the_proxy_rises_and_the_win_rate_falls():
    curve = pd.DataFrame({"step": [0, 2, 4, 6], "rm_score": [0.0, 0.5, 0.9, 1.4],
                          "win_rate": [0.5, 0.7, 0.6, 0.45]})
    assert overoptimised(curve, tolerance=0.1)
    assert not overoptimised(curve, tolerance=0.3)  # a fall within the tolerance
    rising = curve.assign(win_rate=[0.5, 0.6, 0.65, 0.7])
    assert not overoptimised(rising, tolerance=0.1)
    proxy_fell_too = curve.assign(rm_score=[0.0, 0.5, 0.3, 0.2])
    assert not overoptimised(proxy_fell_too, tolerance=0.1)


def test_snapshot_steps_are_spread_over_the_run():
    from training.checkpoint import snapshot_steps

    assert snapshot_steps(8, 3) == {2, 4, 6}
    assert snapshot_steps(4, 2) == {1, 3}
    assert snapshot_steps(2, 2) == {1}  # never the final step, never step 0
    assert snapshot_steps(10, 0) == set()
