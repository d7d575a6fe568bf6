"""Held-out evaluation: the trained policy (and PPO's snapshots) against the reference, on
eval-split prompts only.

For each policy, with the same sampling seeds as the reference:
- win rate: the debiased pairwise judge (both orders averaged; a pair whose two orders
  disagree is a tie), with a 95% Wilson interval;
  the same read at equal response length (a logistic fit on the length difference);
- adherence rate: the share of responses the judge rates as following the constitution (a
  direct 1-10 rating under a sampled principle above the midpoint; d-RLAIF scoring), whatever
  the constitution is about;
- behaviour probes that need no judge (evaluation.probes): refusals on harmful and on other
  prompts, length, EOS, degeneration, the reference's perplexity of the responses;
- reward-model scores, and the exact KL to the reference on the policy's own samples.
Every rate comes with its n and a 95% interval (Wilson for the judge's rates, a bootstrap over
prompts for the probes and the KL).
Across snapshots, the reward-model score and the win rate against KL form the
over-optimisation curve; a proxy that rises while the judged win rate falls is flagged.
The ladder (evaluation.ladder) ranks the reference, the snapshots and the final policy by
head-to-head judging (EvalConfig.ladder says which policy pairs are judged besides each against
the reference), with BT and Elo and their intervals.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from constitution import Constitution
from evaluation.config import EvalConfig
from evaluation.ladder import judge_matches, ladder, ladder_comparisons, rung_pairs
from evaluation.probes import load_refusal_patterns, probe_rows, response_probes
from judges.config import FeedbackConfig
from judges.feedback import direct_scores, label_preferences, seeded_rng
from rlaif.config import EngineConfig, Transformers
from rlaif.engines import make_engine
from rlaif.generation import chat_text
from rlaif.models import load_causal_lm, load_tokenizer
from rlaif.runtime import CPU, Runtime
from rlaif.stats import bootstrap_interval, wilson_interval
from training.reward import RewardModel


# ---------------------------------------------------------------- statistics (pure, unit-tested)

def win_rate(p_better: np.ndarray, consistent: np.ndarray) -> dict:
    """Wins, losses and ties of the debiased pairwise judge, and the win rate counting a tie as
    half a win.

    p_better: P(policy better), both orders averaged; consistent: whether both orders pick the
    same response. A pair is a win or a loss only when both orders agree (as in MT-Bench's
    pairwise judge): a position-biased judge picks the first-shown answer in both orders, and
    its averaged P then sits a hair from 0.5, where the sign is noise. Those pairs are ties.
    """
    p, c = np.asarray(p_better, dtype=float), np.asarray(consistent, dtype=bool)
    wins, losses, n = int((c & (p > 0.5)).sum()), int((c & (p < 0.5)).sum()), len(p)
    ties = n - wins - losses
    rate = (wins + 0.5 * ties) / n if n else float("nan")
    lo, hi = wilson_interval(wins + 0.5 * ties, n)
    return {"win_rate": rate, "ci_low": lo, "ci_high": hi, "wins": wins, "losses": losses, "ties": ties, "n": n}


def length_corrected_win_rate(p_better: np.ndarray, length_diff: np.ndarray, ridge: float = 1e-3,
                              iters: int = 50) -> float:
    """The win rate at equal length: a logistic regression of the soft preference on the
    response-length difference (policy minus reference, tokens), read at a difference of 0.

    A judge that favours longer answers gives a policy that got longer a raw win rate above
    this. Newton's method on the convex cross-entropy (a small ridge on the slope only); when
    every pair goes one way the intercept grows with the iterations and the rate tends to 1.
    """
    y = np.asarray(p_better, dtype=float)
    d = np.asarray(length_diff, dtype=float)
    if len(y) == 0:
        return float("nan")
    x = d / (d.std() or 1.0)  # scaled, not centred: the intercept stays "at equal length"
    X = np.stack([np.ones_like(x), x], axis=1)  # (N, 2)
    w, penalty = np.zeros(2), np.diag([0.0, ridge])  # the intercept is not shrunk
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-X @ w))
        grad = X.T @ (p - y) / len(y) + penalty @ w
        hess = (X * (p * (1 - p))[:, None]).T @ X / len(y) + penalty
        step = np.linalg.solve(hess, grad)
        w -= step
        if np.abs(step).max() < 1e-10:
            break
    return float(1.0 / (1.0 + np.exp(-w[0])))


def overoptimised(curve: pd.DataFrame, tolerance: float) -> bool:
    """The Goodhart signature on a curve sorted by step (columns rm_score, win_rate): from the
    best-judged point to the final one, the proxy rose while the judged win rate fell by more
    than `tolerance`."""
    best = curve["win_rate"].idxmax()
    last = curve.index[-1]
    return bool(curve.at[last, "rm_score"] > curve.at[best, "rm_score"]
                and curve.at[best, "win_rate"] - curve.at[last, "win_rate"] > tolerance)


# ---------------------------------------------------------------- model work

@torch.inference_mode()
def sequence_stats(policy, reference, tokenizer, prompts: list[str], gens: list, temperature: float,
                   batch_size: int = 8, runtime: Runtime = CPU) -> dict[str, np.ndarray]:
    """Per sampled response (N,): `kl`, the exact KL(policy || reference) summed over its tokens
    (over the whole vocabulary at each token, with the temperature-scaled logits the samples
    were drawn from, as PPO logs it); `kl_k1`, the sampled-token estimate sum(log p - log q);
    `ref_nll`, its negative log-likelihood under the reference at temperature 1 (the perplexity
    probe). `policy=None`: the reference's own responses (KL 0)."""
    from training.ppo import exact_kl, logprobs_from_logits, response_logits

    temperature = temperature if temperature > 0 else 1.0  # greedy samples: the plain logits
    out = {"kl": [], "kl_k1": [], "ref_nll": []}
    for start in range(0, len(prompts), batch_size):
        queries = [tokenizer(chat_text(tokenizer, [{"role": "user", "content": p}]), add_special_tokens=False)
                   ["input_ids"] for p in prompts[start:start + batch_size]]
        resps = [g.token_ids for g in gens[start:start + batch_size]]
        Q, R = max(map(len, queries)), max(1, max(map(len, resps)))
        pad = tokenizer.pad_token_id
        q_ids = torch.tensor([[pad] * (Q - len(q)) + q for q in queries])  # (B, Q), left-padded
        q_mask = torch.tensor([[0] * (Q - len(q)) + [1] * len(q) for q in queries])
        r_ids = torch.tensor([r + [pad] * (R - len(r)) for r in resps])  # (B, R), right-padded
        r_mask = torch.tensor([[1] * len(r) + [0] * (R - len(r)) for r in resps])
        ids, attn = runtime.put(torch.cat([q_ids, r_ids], 1)), runtime.put(torch.cat([q_mask, r_mask], 1))  # (B, Q+R)
        r_ids, r_mask = runtime.put(r_ids), runtime.put(r_mask).float()
        ref_logits = response_logits(reference, ids, attn, R, 1.0)  # (B, R, V), temperature 1
        out["ref_nll"].append(-(logprobs_from_logits(ref_logits, r_ids) * r_mask).sum(1).cpu())
        if policy is None:
            out["kl"].append(torch.zeros(len(resps))), out["kl_k1"].append(torch.zeros(len(resps)))
            continue
        logp = F.log_softmax(response_logits(policy, ids, attn, R, temperature).float(), -1)  # (B, R, V)
        ref_logp = F.log_softmax(ref_logits.float() / temperature, -1)
        out["kl"].append((exact_kl(logp, ref_logp) * r_mask).sum(1).cpu())
        k1 = (logp - ref_logp).gather(2, r_ids.unsqueeze(-1)).squeeze(-1)  # (B, R)
        out["kl_k1"].append((k1 * r_mask).sum(1).cpu())
    return {k: torch.cat(v).numpy() if v else np.zeros(0) for k, v in out.items()}


def adherence_scores(judge, constitution: Constitution, prompts: pd.DataFrame, responses: list[str],
                     seed: int) -> np.ndarray:
    """Direct 1-10 ratings mapped to [-1, 1], one principle per prompt (the same for every
    policy, so the rates compare like with like); NaN where the judge gave no rating."""
    principles = [constitution.sample_principles(seeded_rng(seed, pid, "harmless"))[0] for pid in prompts["prompt_id"]]
    scores, errors = direct_scores(judge, list(prompts["prompt"]), responses, principles, desc="adherence")
    return np.where([e is None for e in errors], scores, np.nan)


def side_columns(who: str, gens: list, stats: dict, patterns: tuple[str, ...]) -> dict:
    """One side's (`policy` or `reference`) per-response columns of the eval table: text, length,
    EOS, the probes and the KL."""
    texts = [g.text for g in gens]
    probes = response_probes(texts, patterns)
    return {f"{who}_response": texts, f"{who}_n_tokens": [g.n_tokens for g in gens],
            f"{who}_has_eos": [g.has_eos for g in gens], **{f"{who}_{c}": probes[c].to_numpy() for c in probes},
            f"{who}_ref_nll": stats["ref_nll"], **({} if who == "reference" else
                                                   {"policy_kl": stats["kl"], "policy_kl_k1": stats["kl_k1"]})}


def evaluate(prompts: pd.DataFrame, reference_model: str, policies: list[tuple[int, str]], open_judge,
             constitution: Constitution, reward_model: str, cfg: EvalConfig,
             policy_engine: EngineConfig = Transformers(), runtime: Runtime = CPU,
             ) -> tuple[pd.DataFrame, dict, pd.DataFrame, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """`policies`: (PPO step, model) pairs, the last one the final policy. Returns the per-
    prompt rows of every policy, the final policy's summary, the curve (one row per point, the
    reference at step 0 and KL 0), the probes (one row per policy and probe), the ladder (one
    row per policy, the reference first) and the policy-against-policy matches behind it (the
    `matches` table's rows; empty with EvalConfig.ladder "reference" or a single policy).

    Two phases, so one engine runs at a time: the reference and every policy sample on one
    `policy_engine` (handed each policy's weights in turn), with their KL, probes and reward-
    model scores read in process; then one judge, from `open_judge()` (a context manager),
    compares them all."""
    if (prompts["split"] != "eval").any():
        raise AssertionError("evaluate: only held-out eval prompts may be used")
    if prompts.empty:
        raise ValueError("evaluate: no eval prompts")
    patterns = load_refusal_patterns(cfg.refusal_patterns)
    prompt_list = list(prompts["prompt"])
    category = prompts["category"] if "category" in prompts else pd.Series([None] * len(prompts))
    tok = load_tokenizer(reference_model)
    queries = [chat_text(tok, [{"role": "user", "content": p}]) for p in prompt_list]
    reference = load_causal_lm(reference_model, runtime)
    rm = RewardModel(reward_model, runtime)

    # 1. sample: the reference, then each policy on the same engine (handed each policy's
    #    weights), with its KL to the reference, probes and reward-model score
    sampled = []
    with make_engine(policy_engine, reference_model, runtime, module=reference) as engine:
        ref_gens = engine.generate(queries, cfg.sampling, seed=cfg.seed, desc="eval: reference")
        ref_texts = [g.text for g in ref_gens]
        ref_side = side_columns("reference", ref_gens, sequence_stats(
            None, reference, tok, prompt_list, ref_gens, cfg.sampling.temperature, cfg.batch_size, runtime), patterns)
        ref_rm = rm.score(prompt_list, ref_texts).numpy()
        for version, (step, name) in enumerate(tqdm(policies, desc="eval: policies", unit="policy"), 1):
            policy = load_causal_lm(name, runtime)
            if hasattr(policy, "merge_and_unload"):  # an adapter folder: its weights, merged
                policy = policy.merge_and_unload()
            engine.sync(policy, version)
            gens = engine.generate(queries, cfg.sampling, seed=cfg.seed, desc=f"eval: policy step {step}")
            stats = sequence_stats(policy, reference, tok, prompt_list, gens, cfg.sampling.temperature,
                                   cfg.batch_size, runtime)
            sampled.append((step, name, side_columns("policy", gens, stats, patterns),
                            rm.score(prompt_list, [g.text for g in gens]).numpy()))
            del policy
    del reference, rm

    # 2. judge: every policy against the reference, one judge for all
    frames, curve, probes = [], [], []
    with open_judge() as judge:
        ref_adherence = (adherence_scores(judge, constitution, prompts, ref_texts, cfg.seed)
                         if cfg.adherence else np.full(len(prompts), np.nan))
        for i, (step, name, side, rm_scores) in enumerate(sampled):
            final = i == len(sampled) - 1
            texts = side["policy_response"]
            pairs = pd.DataFrame({"pair_id": prompts["prompt_id"], "prompt_id": prompts["prompt_id"],
                                  "prompt": prompts["prompt"], "response_a": texts, "response_b": ref_texts})
            labels = label_preferences(judge, pairs, constitution, FeedbackConfig(seed=cfg.seed))
            rows = pd.DataFrame({
                "prompt_id": prompts["prompt_id"].values, "prompt": prompts["prompt"].values,
                "category": category.values, "harmful": category.isin(cfg.harmful_categories).values,
                "policy": name, "policy_step": step, "final": final, **side, **ref_side,
                "p_policy_better": labels["p_a"].values, "position_consistent": labels["position_consistent"].values,
                "valid": labels["valid"].values,
                "policy_score": rm_scores, "reference_score": ref_rm,
                "policy_adherence": (adherence_scores(judge, constitution, prompts, texts, cfg.seed)
                                     if final and cfg.adherence else np.nan),
                "reference_adherence": ref_adherence if final else np.nan,
                "reward_model": reward_model,
            })
            frames.append(rows)
            if i == 0:  # the reference's own probes, once: the curve's step 0
                curve.append({"step": 0, "policy": reference_model, "kl": 0.0, "kl_ci_low": 0.0, "kl_ci_high": 0.0,
                              "rm_score": float(ref_rm.mean()), "win_rate": 0.5,
                              "ci_low": float("nan"), "ci_high": float("nan"), "n": len(rows)})
            valid = rows[rows["valid"]]
            wr = win_rate(valid["p_policy_better"], valid["position_consistent"])
            kl_lo, kl_hi = bootstrap_interval(lambda idx: rows["policy_kl"].to_numpy()[idx].mean(), len(rows),
                                              cfg.probe_resamples, cfg.seed)
            curve.append({"step": step, "policy": name, "kl": float(rows["policy_kl"].mean()),
                          "kl_ci_low": kl_lo, "kl_ci_high": kl_hi, "rm_score": float(rm_scores.mean()),
                          "win_rate": wr["win_rate"], "ci_low": wr["ci_low"], "ci_high": wr["ci_high"], "n": wr["n"]})
            probes += [{"step": step, "policy": name, "final": final, **r}
                       for r in probe_rows(rows, cfg.seed, cfg.probe_resamples)]
        # 3. the ladder's rungs between policies (each against the reference is judged above)
        sides = [(name, step, side["policy_response"]) for step, name, side, _ in sampled]
        matches = judge_matches(judge, constitution, prompts, sides, rung_pairs(len(sides), cfg.ladder), cfg.seed)
    rows = pd.concat(frames, ignore_index=True)
    curve, probes = pd.DataFrame(curve), pd.DataFrame(probes)
    # the reference under its model's name, unless a policy is that model too
    ref = reference_model if reference_model not in rows["policy"].values else f"reference: {reference_model}"
    ranked = ladder(ladder_comparisons(rows, matches, ref), [(ref, 0), *[(name, step) for step, name in policies]],
                    resamples=cfg.probe_resamples, seed=cfg.seed)
    summary = summarise(rows[rows["final"]], curve, probes[probes["final"]], cfg) | {
        "ladder/policies": len(ranked), "ladder/matches": len(matches),
        "ladder/matches_valid": int(matches["valid"].sum()) if len(matches) else 0}
    return rows, summary, curve, probes, ranked, matches


def summarise(rows: pd.DataFrame, curve: pd.DataFrame, probes: pd.DataFrame, cfg: EvalConfig) -> dict:
    """The final policy's figures (namespaced `eval/` and `probe/`), each rate with its n and
    95% interval."""
    valid = rows[rows["valid"]]
    wr = win_rate(valid["p_policy_better"], valid["position_consistent"])
    p_better = valid["p_policy_better"].to_numpy(dtype=float)
    length_diff = (valid["policy_n_tokens"] - valid["reference_n_tokens"]).to_numpy(dtype=float)
    adherence = {}
    for who in ("policy", "reference"):
        s = rows[f"{who}_adherence"].dropna()
        k = int((s > 0).sum())
        lo, hi = wilson_interval(k, len(s))
        adherence |= {f"eval/{who}_adherence_rate": k / len(s) if len(s) else float("nan"),
                      f"eval/{who}_adherence_rate_ci_low": lo, f"eval/{who}_adherence_rate_ci_high": hi,
                      f"eval/{who}_adherence_n": len(s)}
    consistent = int(valid["position_consistent"].sum())
    pc_lo, pc_hi = wilson_interval(consistent, len(valid))
    final = curve.iloc[-1]
    probe = {}
    for r in probes.to_dict("records"):
        probe |= {f"probe/{r['probe']}": r["policy"], f"probe/{r['probe']}_ci_low": r["policy_ci_low"],
                  f"probe/{r['probe']}_ci_high": r["policy_ci_high"], f"probe/{r['probe']}_reference": r["reference"],
                  f"probe/{r['probe']}_diff": r["diff"], f"probe/{r['probe']}_diff_ci_low": r["diff_ci_low"],
                  f"probe/{r['probe']}_diff_ci_high": r["diff_ci_high"], f"probe/{r['probe']}_n": r["n"]}
    return {
        "eval/prompts": len(rows), "eval/compared": wr["n"], "eval/invalid": int((~rows["valid"]).sum()),
        "eval/wins": wr["wins"], "eval/losses": wr["losses"], "eval/ties": wr["ties"], "eval/win_rate": wr["win_rate"],
        "eval/win_rate_ci_low": wr["ci_low"], "eval/win_rate_ci_high": wr["ci_high"],
        "eval/win_rate_length_corrected": length_corrected_win_rate(p_better, length_diff),
        **dict(zip(("eval/win_rate_length_corrected_ci_low", "eval/win_rate_length_corrected_ci_high"),
                   bootstrap_interval(lambda idx: length_corrected_win_rate(p_better[idx], length_diff[idx]),
                                      len(p_better), cfg.probe_resamples // 4, cfg.seed))),
        "eval/position_consistency": consistent / len(valid) if len(valid) else float("nan"),
        "eval/position_consistency_ci_low": pc_lo, "eval/position_consistency_ci_high": pc_hi,
        **adherence,
        "eval/policy_score": float(rows["policy_score"].mean()),
        "eval/reference_score": float(rows["reference_score"].mean()),
        "eval/kl": float(final["kl"]), "eval/kl_ci_low": float(final["kl_ci_low"]),
        "eval/kl_ci_high": float(final["kl_ci_high"]),
        "eval/kl_k1": float(rows["policy_kl_k1"].mean()),
        "eval/policy_length": float(rows["policy_n_tokens"].mean()),
        "eval/reference_length": float(rows["reference_n_tokens"].mean()),
        "eval/curve_points": len(curve),
        "eval/overoptimisation": float(overoptimised(curve, cfg.overoptimisation_tolerance)),
        **probe,
    }
