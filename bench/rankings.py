"""Tournaments at equal judge compute: does K = 4 responses per prompt, every pair judged, give a
better reward model than K = 2 (one pair per prompt), for the same number of judged pairs? And
what does each tournament schedule cost the judge?

What is compared, in one run, both sides on the same models, judge, constitution and settings:

- Prompts: the shipped train split (rlaif/data/prompts.jsonl, 144 prompts), in file order.
  K = 2 side: the first N2 prompts (default 72), 2 samples each -> N2 judged pairs.
  K = 4 side: the first N4 = N2 / 6 prompts (12), 4 samples each, `pairing="all"` -> 6 pairs
  per prompt, N2 judged pairs as well. Its first two samples of each prompt are the K = 2
  side's (same seeds), so K = 4 generates fewer responses (4 N4 against 2 N2).
  Held-out: the last H prompts (default 48), disjoint from both, 2 samples each -> H judged
  pairs, the same for both sides.
- Responses: the embedded policy (SmolLM2-135M-Instruct) through the project's engine
  (`rlaif.engines.make_engine`; vllm by default, `--engine hf` for transformers), sampled as
  the generate stage samples (GenerateConfig's sampling, seed + 7919 x sample index), with
  `--max-new-tokens` (default 64).
- Labels: the default judge (JudgeConfig: the embedded Gemma-3-270M, on the same engine kind)
  under the default constitution (harmless), `judges.feedback.make_pairs` +
  `label_preferences` (both orders, debiased).
- Reward models: `training.reward.train_reward_model` on each side's valid pairs, with
  RewardConfig's defaults but `eval_fraction=0` (the held-out set is ours, outside), one model
  per `--rm-seeds` seed, then scored with `training.reward.RewardModel`:
  (a) held-out accuracy against the judge's labels (the RM ranks the judge's chosen response
      first; pairs the judge left invalid are skipped), also on the position-consistent
      held-out pairs only;
  (b) accuracy on the first `--hh-pairs` (200) hh-rlhf harmless dev pairs (human chosen vs
      rejected), from ../shared/data.
  The reward model batches whole prompts (RewardConfig.batch_size prompts per step, each
  prompt the mean of its pairs), so at equal pairs the K = 4 side takes about a sixth of the
  K = 2 side's optimizer steps; the result records both sides' steps.
  Each accuracy per seed and over seeds (the mean of each pair's correctness over the
  seeds), with a Wilson 95% interval ("near chance" where it contains 0.5); the K4 - K2
  difference with a paired bootstrap 95% interval over the pairs. A tie counts half.
- Tournament cost: on the K = 4 responses, with one judge opened once and warmed up on a few
  pairs first, `label_preferences` is timed for each schedule (all, round_robin, random:3):
  judged pairs per second (each pair is read in both orders), pairs and seconds per prompt.
  vLLM's prefix cache is emptied before each schedule (their pairs overlap). One timed pass
  each. The schedule `all` is the K = 4 side's labelling itself.
- How the judge decided: position consistency, and the share of pairs where the response
  shown first (or second) won in both orders, per side and on the held-out pairs.
- The judge's intransitive triples on the K = 4 tournaments (`judges.rankings`), summed over
  prompts: cyclic out of decided triples (a random judge has a quarter cyclic).

    .venv/bin/python -m bench.rankings                  # the full run: about an hour on 2 cores
    .venv/bin/python -m bench.rankings --quick          # N2=12, H=6, 1 seed, 16 tokens: checks the script
    .venv/bin/python -m bench.rankings --engine hf      # without vLLM

Writes bench/results/<date>-rankings.json (<date>-rankings-quick.json with --quick) and prints
a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd

if __package__ in (None, ""):  # run as a script (bench/run.py): make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import ROOT, comparison, machine, result_path

HH_PAIRS = ROOT.parent / "shared" / "data" / "hh-rlhf-harmless-dev.jsonl.gz"
SCHEDULES = ("all", "round_robin", "random:3")
K_SMALL, K_LARGE = 2, 4
PAIRS_PER_LARGE = K_LARGE * (K_LARGE - 1) // 2  # 6: every pair of 4 samples
# The reward model batches whole prompts (RewardConfig.batch_size counts prompts), so at equal
# judged pairs the K = 4 side takes a sixth of K = 2's optimizer steps at the default batch. This
# third side trains on the same K = 4 labels one prompt (6 pairs) per step: 12 steps an epoch
# against K = 2's 18 (4 pairs each), so a K = 4 deficit cannot be just fewer steps.
K4_SMALL_BATCH = "K=4, 1 prompt/step"
SAMPLE_SEED_STRIDE = 7919  # flows/generate.py: sample s is drawn with seed + 7919 s
T0 = time.perf_counter()


def stage(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


# ---------------------------------------------------------------- pure parts (tests/unit/test_bench.py)

def prompt_sets(prompt_ids: list[str], n2: int, heldout: int) -> dict[str, list[str]]:
    """The deterministic prompt sets: K = 2 trains on the first n2, K = 4 on the first n2 / 6
    (6 judged pairs each: the same number of pairs), the held-out set is the last `heldout`
    (disjoint from both)."""
    if n2 < PAIRS_PER_LARGE or n2 % PAIRS_PER_LARGE:
        raise ValueError(f"--n2 {n2}: must be a positive multiple of {PAIRS_PER_LARGE}, so both sides judge "
                         f"the same number of pairs")
    if heldout < 1 or n2 + heldout > len(prompt_ids):
        raise ValueError(f"--n2 {n2} + --heldout {heldout} prompts: the train split has {len(prompt_ids)}; "
                         "the held-out prompts must be disjoint from the training ones")
    return {"k2": list(prompt_ids[:n2]), "k4": list(prompt_ids[:n2 // PAIRS_PER_LARGE]),
            "heldout": list(prompt_ids[len(prompt_ids) - heldout:])}


def correctness(r_chosen, r_rejected) -> np.ndarray:
    """Per pair: 1 where the reward model scores the chosen response higher, 0 where lower,
    0.5 on a tie. (N,)"""
    c, r = np.asarray(r_chosen, float), np.asarray(r_rejected, float)
    return np.where(c > r, 1.0, np.where(c < r, 0.0, 0.5))


def accuracy(correct) -> dict:
    """Accuracy over pairs, its Wilson 95% interval, and whether that interval contains 0.5."""
    from rlaif.stats import wilson_interval

    correct = np.asarray(correct, float)
    n = len(correct)
    lo, hi = wilson_interval(float(correct.sum()), n)
    return {"n": n, "accuracy": float(correct.mean()) if n else float("nan"), "ci_low": lo, "ci_high": hi,
            "near_chance": bool(n and lo <= 0.5 <= hi), "ties": int((correct == 0.5).sum())}


def paired_difference(k4, k2, resamples: int = 2000, seed: int = 0) -> dict:
    """K4 - K2 accuracy on the same pairs: k4 and k2 are (seeds, pairs) correctness arrays,
    averaged over seeds per pair, then a paired percentile bootstrap over the pairs."""
    from rlaif.stats import bootstrap_interval

    a, b = np.atleast_2d(np.asarray(k4, float)).mean(0), np.atleast_2d(np.asarray(k2, float)).mean(0)
    if a.shape != b.shape:
        raise ValueError(f"paired difference needs the same pairs on both sides: {a.shape} vs {b.shape}")
    lo, hi = bootstrap_interval(lambda idx: float(a[idx].mean() - b[idx].mean()), len(a), resamples, seed)
    diff = float(a.mean() - b.mean()) if len(a) else float("nan")
    return {"n": len(a), "difference": diff, "ci_low": lo, "ci_high": hi,
            "contains_zero": bool(len(a) and lo <= 0.0 <= hi)}


def intransitivity(prefs: pd.DataFrame) -> dict:
    """The judge's cyclic triples over every prompt's tournament (its valid pairs), and how many
    judged pairs `tournament_comparisons` read back (all of them, unless a pair lacks its
    response ids)."""
    from judges.rankings import intransitive_triples, tournament_comparisons
    from rlaif.stats import wilson_interval

    cyclic = decided = read = 0
    valid = prefs[prefs["valid"]]
    for _, g in valid.groupby("prompt_id", sort=False):
        ids, comps = tournament_comparisons(g)  # from the response_a_id/response_b_id columns
        read += len(comps)
        if len(ids) >= 3:
            c, m = intransitive_triples(len(ids), comps)
            cyclic, decided = cyclic + c, decided + m
    lo, hi = wilson_interval(float(cyclic), decided)
    return {"cyclic": cyclic, "decided": decided, "share": cyclic / decided if decided else float("nan"),
            "ci_low": lo, "ci_high": hi, "pairs_read": read, "valid_pairs": len(valid)}


def label_summary(prefs: pd.DataFrame) -> dict:
    """How the judge decided its valid pairs: position-consistent, or the same position shown
    first (A) or second (B) won in both orders (a position bias), and the mean distance of its
    debiased P(a better) from 0.5."""
    v = prefs[prefs["valid"]]
    first, second = v["p_a_first"].to_numpy(float), v["p_a_second"].to_numpy(float)
    n = len(v)

    def share(mask) -> float:
        return float(np.mean(mask)) if n else float("nan")

    return {"valid": n, "position_consistent": share(v["position_consistent"].to_numpy(bool)),
            "always_first_shown": share((first > 0.5) & (second > 0.5)),
            "always_second_shown": share((first < 0.5) & (second < 0.5)),
            "mean_margin": float(np.mean(np.abs(v["p_a"].to_numpy(float) - 0.5))) if n else float("nan")}


def schedule_cost(schedule: str, n_pairs: int, n_prompts: int, seconds: float, valid: int) -> dict:
    return {"schedule": schedule, "pairs": n_pairs, "valid_pairs": valid, "prompts": n_prompts, "seconds": seconds,
            "pairs_per_s": n_pairs / seconds if seconds > 0 else float("nan"),
            "pairs_per_prompt": n_pairs / n_prompts if n_prompts else float("nan"),
            "seconds_per_prompt": seconds / n_prompts if n_prompts else float("nan")}


def _acc(a: dict, half: str = "ties") -> str:
    """half names what a 0.5 means: a tie on one seed's row, seeds that split on the mean row."""
    if not a["n"]:
        return "n/a (0 pairs)"
    flag = " (near chance)" if a["near_chance"] else ""
    ties = f", {a['ties']} {half}" if a.get("ties") else ""
    return f"{a['accuracy']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}]{flag}{ties}"


def _diff(d: dict) -> str:
    if not d["n"]:
        return "n/a (0 pairs)"
    flag = " (interval contains 0)" if d["contains_zero"] else ""
    return f"{d['difference']:+.3f} [{d['ci_low']:+.3f}, {d['ci_high']:+.3f}]{flag}"


def markdown(result: dict) -> str:
    """The run's tables: reward-model accuracy per side, the K4 - K2 differences, the tournament
    cost per schedule and the judge's intransitive triples."""
    s, sides = result["settings"], result["sides"]
    lines = [f"{'QUICK settings: not a result. ' if result.get('quick') else ''}"
             f"Equal judge compute: {sides['K=2']['judged_pairs']} judged pairs per side; held-out "
             f"{result['heldout']['judged_pairs']} pairs ({result['heldout']['valid_pairs']} valid, "
             f"{result['heldout']['consistent_pairs']} position-consistent); hh-rlhf {s['hh_pairs']} pairs; "
             f"RM seeds {s['rm_seeds']}; engine {s['engine']}; {s['max_new_tokens']} new tokens.", "",
             "| side | prompts | responses generated | judged pairs (valid, position-consistent) | RM trained on | "
             "held-out acc. vs judge | held-out, consistent only | hh-rlhf dev acc. |",
             "|---|---|---|---|---|---|---|---|"]
    split = "split between seeds or tied"  # a pair's mean correctness is 0.5
    for name, side in sides.items():
        m = side["mean"]
        lines.append(f"| {name} (mean of {len(side['seeds'])} seed(s)) | {side['prompts']} | {side['responses']} | "
                     f"{side['judged_pairs']} ({side['valid_pairs']}, {side['position_consistent_pairs']}) | "
                     f"{side['seeds'][0]['train_pairs']} pairs, {side['seeds'][0]['optimizer_steps']} steps | "
                     f"{_acc(m['heldout'], split)} | {_acc(m['heldout_consistent'], split)} | {_acc(m['hh'], split)} |")
        for r in side["seeds"]:
            lines.append(f"| {name}, seed {r['seed']} | | | | {r['train_pairs']} pairs, {r['optimizer_steps']} steps "
                         f"| {_acc(r['heldout'])} | "
                         f"{_acc(r['heldout_consistent'])} | {_acc(r['hh'])} |")
    d = result["difference"]
    lines += ["", "| K4 - K2 (paired bootstrap 95%, seeds averaged per pair) | difference |", "|---|---|",
              f"| held-out accuracy vs judge | {_diff(d['heldout'])} |",
              f"| held-out, position-consistent only | {_diff(d['heldout_consistent'])} |",
              f"| hh-rlhf dev accuracy | {_diff(d['hh'])} |"]
    if "difference_small_batch" in result:
        d = result["difference_small_batch"]
        lines += ["", f"| {K4_SMALL_BATCH} - K2 (paired bootstrap 95%) | difference |", "|---|---|",
                  f"| held-out accuracy vs judge | {_diff(d['heldout'])} |",
                  f"| held-out, position-consistent only | {_diff(d['heldout_consistent'])} |",
                  f"| hh-rlhf dev accuracy | {_diff(d['hh'])} |"]
    lines += ["",
              "| schedule (K=4) | pairs | pairs/prompt | seconds | judged pairs/s | s/prompt |",
              "|---|---|---|---|---|---|"]
    for c in result["tournament"]:
        lines.append(f"| {c['schedule']} | {c['pairs']} | {c['pairs_per_prompt']:.2f} | {c['seconds']:.1f} | "
                     f"{c['pairs_per_s']:.2f} | {c['seconds_per_prompt']:.2f} |")
    if all("labels" in x for x in (*sides.values(), result["heldout"])):
        lines += ["", "| judge's labels (valid pairs) | position-consistent | first-shown won both orders | "
                      "second-shown won both orders | mean abs(P(a better) - 0.5) |", "|---|---|---|---|---|"]
        for name, lab in [*((n, x["labels"]) for n, x in sides.items()), ("held-out", result["heldout"]["labels"])]:
            lines.append(f"| {name} | {lab['position_consistent']:.2f} | {lab['always_first_shown']:.2f} | "
                         f"{lab['always_second_shown']:.2f} | {lab['mean_margin']:.3f} |")
    t = result["intransitive"]
    share = (f"{t['share']:.3f} [{t['ci_low']:.3f}, {t['ci_high']:.3f}]" if t["decided"] else "n/a")
    lines += ["", f"Judge intransitive triples on the K=4 tournaments: {t['cyclic']} cyclic of {t['decided']} "
                  f"decided ({share}; a random judge: 0.25); {t['pairs_read']} of {t['valid_pairs']} valid pairs "
                  "parsed."]
    lines += [f"\nNote: {n}" for n in result.get("notes", [])]
    return "\n".join(lines)


# ---------------------------------------------------------------- the run

def generate(prompts: pd.DataFrame, sets: dict, engine_cfg, max_new_tokens: int, seed: int, runtime) -> pd.DataFrame:
    """The responses table (as flows/generate.py writes it): samples 0 and 1 for every training
    and held-out prompt, samples 2 and 3 for the K = 4 prompts only."""
    from rlaif.config import GenerateConfig
    from rlaif.engines import make_engine
    from rlaif.generation import chat_text
    from rlaif.models import EMBEDDED_MODEL, load_tokenizer
    from rlaif.prompts import fit_to_context

    sampling = GenerateConfig().sampling.model_copy(update={"max_new_tokens": max_new_tokens})
    tok = load_tokenizer(EMBEDDED_MODEL)
    prompts = fit_to_context(prompts.set_index("prompt_id").loc[list(dict.fromkeys(
        sets["k2"] + sets["heldout"]))].reset_index(), tok)
    first_two = prompts
    all_four = prompts[prompts["prompt_id"].isin(sets["k4"])]
    frames = []
    with make_engine(engine_cfg, EMBEDDED_MODEL, runtime) as engine:
        for s in range(K_LARGE):
            todo = first_two if s < K_SMALL else all_four
            texts = [chat_text(tok, [{"role": "user", "content": p}]) for p in todo["prompt"]]
            gens = engine.generate(texts, sampling, seed=seed + SAMPLE_SEED_STRIDE * s,
                                   desc=f"responses (sample {s + 1}/{K_LARGE})")
            frames.append(pd.DataFrame({
                "prompt_id": todo["prompt_id"].values, "prompt": todo["prompt"].values,
                "response_id": [f"{pid}/s{s}" for pid in todo["prompt_id"]], "sample_idx": s,
                "response": [g.text for g in gens], "n_tokens": [g.n_tokens for g in gens],
                "has_eos": [g.has_eos for g in gens]}))
            stage(f"generated sample {s + 1}/{K_LARGE}: {len(gens)} responses")
    return pd.concat(frames, ignore_index=True)


def cold_prefix_cache(judge) -> bool:
    """Empty the vllm engine's prefix cache, so a schedule timed after another does not reuse
    the judge texts the other computed (round_robin's and random:3's pairs are among all's).
    False where there is none to empty (the transformers engine caches nothing)."""
    reset = getattr(getattr(judge.engine, "llm", None), "reset_prefix_cache", None)
    return bool(reset()) if reset is not None else False


def label(judge, responses: pd.DataFrame, prompt_ids: list[str], samples: int, schedule: str, constitution,
          seed: int) -> tuple[pd.DataFrame, float]:
    """The judge's preferences over `samples` responses of each prompt, paired by `schedule`,
    and the seconds label_preferences took."""
    from judges.config import FeedbackConfig
    from judges.feedback import label_preferences, make_pairs

    chosen = responses[responses["prompt_id"].isin(prompt_ids) & (responses["sample_idx"] < samples)]
    pairs = make_pairs(chosen, schedule, seed)
    t0 = time.perf_counter()
    prefs = label_preferences(judge, pairs, constitution, FeedbackConfig(pairing=schedule, seed=seed))
    return prefs, time.perf_counter() - t0


def train_and_score(prefs: pd.DataFrame, reference: pd.DataFrame, heldout: pd.DataFrame, hh: pd.DataFrame,
                    rm_seed: int, epochs: int | None, eval_fraction: float, runtime, work: Path,
                    batch_size: int | None = None) -> dict:
    """One reward model on `prefs`, scored on the judged held-out pairs and the hh-rlhf pairs;
    per-pair correctness arrays come back with the summary."""
    import torch

    from rlaif.models import EMBEDDED_MODEL
    from training.config import RewardConfig
    from training.reward import RewardModel, train_reward_model

    cfg = RewardConfig(eval_fraction=eval_fraction, seed=rm_seed, **({"epochs": epochs} if epochs else {}),
                       **({"batch_size": batch_size} if batch_size else {}))
    out = work / f"rm-{rm_seed}"
    t0 = time.perf_counter()
    summary, _ = train_reward_model(prefs, reference, EMBEDDED_MODEL, out, cfg, lineage={}, runtime=runtime)
    train_s = time.perf_counter() - t0
    rm = RewardModel(out, runtime)

    def correct(df: pd.DataFrame) -> np.ndarray:
        if df.empty:
            return np.zeros(0)
        prompts = list(df["prompt"])
        return correctness(rm.score(prompts, list(df["chosen"])).numpy(),
                           rm.score(prompts, list(df["rejected"])).numpy())

    t0 = time.perf_counter()
    held = correct(heldout)
    human = correct(hh)
    score_s = time.perf_counter() - t0
    del rm
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    prompts = summary.get("rm/train_prompts")  # since the reward model batches whole prompts
    steps = math.ceil((prompts if prompts is not None else summary["rm/train_pairs"]) / cfg.batch_size) * cfg.epochs
    return {"seed": rm_seed, "train_pairs": int(summary["rm/train_pairs"]), "optimizer_steps": steps,
            "train_prompts": None if prompts is None else int(prompts),
            "internal_heldout_pairs": int(summary["rm/heldout_pairs"]), "train_seconds": train_s,
            "score_seconds": score_s, "correct_heldout": held, "correct_hh": human}


def run(n2: int, heldout_n: int, rm_seeds: list[int], engine: str, max_new_tokens: int, hh_n: int,
        epochs: int | None, eval_fraction: float, quick: bool, seed: int = 0) -> dict:
    from constitution import load_constitution
    from judges.config import JudgeConfig
    from judges.human_eval import read_hh_pairs
    from judges.judge import make_judge
    from rlaif.config import VLLM, Transformers
    from rlaif.prompts import load_prompts
    from rlaif.runtime import resolve

    notes: list[str] = []
    if engine == "vllm":
        try:
            import vllm  # noqa: F401
        except ImportError:
            engine = "hf"
            notes.append("--engine vllm asked, but vLLM is not installed (`make setup-vllm`): ran on transformers")
            stage(notes[-1])
    policy_engine = VLLM() if engine == "vllm" else Transformers(batch_size=16)
    judge_cfg = JudgeConfig(engine=VLLM() if engine == "vllm" else JudgeConfig().engine)
    runtime = resolve()
    if not HH_PAIRS.is_file():
        raise SystemExit(f"{HH_PAIRS}: not found; this benchmark needs the shared hh-rlhf dev pairs")
    hh = read_hh_pairs(HH_PAIRS, hh_n)
    prompts = load_prompts(None, split="train")
    sets = prompt_sets(list(prompts["prompt_id"]), n2, heldout_n)
    constitution = load_constitution("harmless")
    stage(f"prompts: K=2 {len(sets['k2'])}, K=4 {len(sets['k4'])}, held-out {len(sets['heldout'])} "
          f"(train split of {len(prompts)}); engine {engine}; runtime {runtime.device}/{runtime.dtype_name}")

    t0 = time.perf_counter()
    responses = generate(prompts, sets, policy_engine, max_new_tokens, seed, runtime)
    generate_s = time.perf_counter() - t0
    n_resp = {"K=2": int((responses["prompt_id"].isin(sets["k2"]) & (responses["sample_idx"] < K_SMALL)).sum()),
              "K=4": int(responses["prompt_id"].isin(sets["k4"]).sum())}
    stage(f"generated in {generate_s:.0f}s; responses the sides train on: K=2 {n_resp['K=2']}, K=4 {n_resp['K=4']}; "
          f"mean {responses['n_tokens'].mean():.1f} tokens")

    t0 = time.perf_counter()
    with make_judge(judge_cfg, runtime) as judge:
        stage(f"judge {judge_cfg.model} open on {judge.backend} ({time.perf_counter() - t0:.0f}s); warming up")
        label(judge, responses, sets["k4"][:1], K_LARGE, "random:2", constitution, seed)  # start-up, not timed
        tournament, by_schedule = [], {}
        for schedule in SCHEDULES:
            cold = cold_prefix_cache(judge)
            prefs, secs = label(judge, responses, sets["k4"], K_LARGE, schedule, constitution, seed)
            by_schedule[schedule] = prefs
            tournament.append({**schedule_cost(schedule, len(prefs), len(sets["k4"]), secs, int(prefs["valid"].sum())),
                               "prefix_cache_emptied": cold})
            stage(f"schedule {schedule}: {len(prefs)} pairs in {secs:.1f}s ({len(prefs) / secs:.2f} pairs/s)")
        k2_prefs, k2_s = label(judge, responses, sets["k2"], K_SMALL, "all", constitution, seed)
        stage(f"K=2 labelled: {len(k2_prefs)} pairs in {k2_s:.1f}s")
        held_prefs, held_s = label(judge, responses, sets["heldout"], K_SMALL, "all", constitution, seed)
        stage(f"held-out labelled: {len(held_prefs)} pairs in {held_s:.1f}s")
    judge_s = time.perf_counter() - t0
    side_prefs = {"K=2": k2_prefs, "K=4": by_schedule["all"], K4_SMALL_BATCH: by_schedule["all"]}
    if len(side_prefs["K=2"]) != len(side_prefs["K=4"]):
        raise RuntimeError(f"unequal judge compute: K=2 {len(side_prefs['K=2'])} pairs, K=4 {len(side_prefs['K=4'])}")
    intrans = intransitivity(by_schedule["all"])
    if intrans["pairs_read"] != intrans["valid_pairs"]:
        notes.append(f"tournament_comparisons read {intrans['pairs_read']} of {intrans['valid_pairs']} valid pairs")

    held_valid = held_prefs[held_prefs["valid"]].reset_index(drop=True)
    consistent = held_valid["position_consistent"].to_numpy(bool)
    # normalisation only (an affine map with a positive gain: no accuracy depends on it)
    reference = responses[responses["prompt_id"].isin(sets["heldout"]) & (responses["sample_idx"] == 0)].head(8)

    sides, correct = {}, {}
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="rlaif-bench-rankings-") as tmp:
        for name, prefs in side_prefs.items():
            valid = int(prefs["valid"].sum())
            runs = []
            for rm_seed in rm_seeds:
                r = train_and_score(prefs, reference, held_valid, hh, rm_seed, epochs, eval_fraction, runtime,
                                    Path(tmp) / f"side{len(sides)}", batch_size=1 if name == K4_SMALL_BATCH else None)
                runs.append(r)
                stage(f"{name} RM seed {rm_seed}: trained on {r['train_pairs']} of {valid} valid pairs "
                      f"({r['optimizer_steps']} optimizer steps) in {r['train_seconds']:.0f}s; held-out {r['correct_heldout'].mean():.3f}, "
                      f"hh {r['correct_hh'].mean():.3f}")
            if any(r["train_pairs"] < valid for r in runs):
                notes.append(f"{name}: training.reward held out {valid - runs[0]['train_pairs']} of {valid} pairs "
                             f"itself at eval_fraction={eval_fraction:g} (split_by_prompt keeps at least one "
                             "prompt out): the sides did not train on all their judged pairs")
            c_held = np.stack([r["correct_heldout"] for r in runs])  # (seeds, pairs)
            c_hh = np.stack([r["correct_hh"] for r in runs])
            correct[name] = {"heldout": c_held, "heldout_consistent": c_held[:, consistent], "hh": c_hh}
            sides[name] = {
                "k": K_SMALL if name == "K=2" else K_LARGE,
                "prompts": len(sets["k2" if name == "K=2" else "k4"]), "responses": n_resp[name.split(",")[0]],
                "judged_pairs": len(prefs), "valid_pairs": valid,
                "position_consistent_pairs": int((prefs["valid"] & prefs["position_consistent"]).sum()),
                "labels": label_summary(prefs),
                "seeds": [{"seed": r["seed"], "train_pairs": r["train_pairs"], "train_prompts": r["train_prompts"],
                           "optimizer_steps": r["optimizer_steps"],
                           "internal_heldout_pairs": r["internal_heldout_pairs"],
                           "train_seconds": r["train_seconds"], "score_seconds": r["score_seconds"],
                           "heldout": accuracy(r["correct_heldout"]),
                           "heldout_consistent": accuracy(r["correct_heldout"][consistent]),
                           "hh": accuracy(r["correct_hh"])} for r in runs],
                "mean": {k: accuracy(v.mean(0)) for k, v in correct[name].items()},
                # per RM seed, per pair (1 right, 0 wrong, 0.5 tie): for re-analysis
                "correct": {k: correct[name][k].tolist() for k in ("heldout", "hh")},
            }
    rm_s = time.perf_counter() - t0
    difference = {k: paired_difference(correct["K=4"][k], correct["K=2"][k], seed=seed)
                  for k in ("heldout", "heldout_consistent", "hh")}
    difference_small_batch = {k: paired_difference(correct[K4_SMALL_BATCH][k], correct["K=2"][k], seed=seed)
                              for k in ("heldout", "heldout_consistent", "hh")}

    def per_seed(name: str, key: str, metric: str) -> list[dict]:
        return [{metric: r[key]["accuracy"]} for r in sides[name]["seeds"]]

    setting = (f"{'QUICK, ' if quick else ''}{len(k2_prefs)} judged pairs per side (K=2: {sides['K=2']['prompts']} "
               f"prompts x 1 pair; K=4: {sides['K=4']['prompts']} prompts x 6 pairs), {len(held_valid)} valid "
               f"held-out pairs, RM seeds {rm_seeds}, engine {engine}, {max_new_tokens} new tokens; {machine()}")
    records = [comparison(f"reward model {what}: K=4 all pairs / K=2, equal judged pairs", metric, "accuracy",
                          {"K=4": per_seed("K=4", key, metric), "K=2": per_seed("K=2", key, metric)},
                          "K=4", "K=2", target=None, higher_is_better=True,
                          note=f"K4 - K2 {_diff(difference[key])}; medians over RM seeds. {setting}")
               for what, key, metric in (("held-out accuracy vs judge labels", "heldout", "heldout_accuracy"),
                                         ("hh-rlhf dev accuracy", "hh", "hh_accuracy"))]
    records += [comparison(f"reward model {what}: {K4_SMALL_BATCH} / K=2, equal judged pairs", metric, "accuracy",
                           {K4_SMALL_BATCH: per_seed(K4_SMALL_BATCH, key, metric), "K=2": per_seed("K=2", key, metric)},
                           K4_SMALL_BATCH, "K=2", target=None, higher_is_better=True,
                           note=f"difference {_diff(difference_small_batch[key])}; medians over RM seeds. {setting}")
                for what, key, metric in (("held-out accuracy vs judge labels", "heldout", "heldout_accuracy"),
                                          ("hh-rlhf dev accuracy", "hh", "hh_accuracy"))]
    base = next(c for c in tournament if c["schedule"] == "all")
    records += [comparison(f"judge tournament throughput: {c['schedule']} / all (K=4)", "pairs_per_s", "pairs/s",
                           {c["schedule"]: [c], "all": [base]}, c["schedule"], "all", target=None,
                           higher_is_better=True, note=f"one timed pass each, judge warmed up. {setting}")
                for c in tournament if c["schedule"] != "all"]
    return {"date": date.today().isoformat(), "machine": machine(), "quick": quick, "comparisons": records,
            "settings": {"n2": n2, "n4": len(sets["k4"]), "heldout": heldout_n, "rm_seeds": rm_seeds,
                         "engine": engine, "max_new_tokens": max_new_tokens, "hh_pairs": len(hh), "seed": seed,
                         "epochs": epochs, "eval_fraction": eval_fraction, "judge": judge_cfg.model,
                         "constitution": "harmless", "runtime": f"{runtime.device}/{runtime.dtype_name}"},
            "sides": sides, "difference": difference, "difference_small_batch": difference_small_batch,
            "tournament": tournament, "intransitive": intrans,
            "heldout": {"prompts": len(sets["heldout"]), "judged_pairs": len(held_prefs),
                        "valid_pairs": len(held_valid), "consistent_pairs": int(consistent.sum()),
                        "labels": label_summary(held_prefs),
                        "consistent": consistent.tolist(), "pair_ids": held_valid["pair_id"].tolist()},
            "seconds": {"generate": generate_s, "judge": judge_s, "reward_models": rm_s,
                        "total": time.perf_counter() - T0},
            "notes": notes}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    ap.add_argument("--quick", action="store_true",
                    help="N2=12, H=6, 1 RM seed of 1 epoch, 16 new tokens, 20 hh pairs: checks the script, no result")
    ap.add_argument("--n2", type=int, help="K=2 training prompts = judged pairs per side (default 72; a multiple of 6)")
    ap.add_argument("--heldout", type=int, help="held-out prompts, the last of the train split (default 48)")
    ap.add_argument("--rm-seeds", type=int, nargs="+", help="reward-model seeds per side (default 0 1 2)")
    ap.add_argument("--engine", choices=("vllm", "hf"), default="vllm",
                    help="policy and judge engine (default vllm; hf: transformers)")
    ap.add_argument("--max-new-tokens", type=int, help="response length cap (default 64)")
    ap.add_argument("--hh-pairs", type=int, help="hh-rlhf dev pairs to score (default 200)")
    ap.add_argument("--epochs", type=int, help="reward-model epochs (default: RewardConfig's)")
    ap.add_argument("--eval-fraction", type=float, default=0.0,
                    help="RewardConfig.eval_fraction (default 0: every judged pair trains; the held-out set is ours)")
    args = ap.parse_args()
    q = args.quick
    result = run(n2=args.n2 or (12 if q else 72), heldout_n=args.heldout or (6 if q else 48),
                 rm_seeds=args.rm_seeds or ([0] if q else [0, 1, 2]), engine=args.engine,
                 max_new_tokens=args.max_new_tokens or (16 if q else 64), hh_n=args.hh_pairs or (20 if q else 200),
                 epochs=args.epochs or (1 if q else None), eval_fraction=args.eval_fraction, quick=q)
    out = result_path("rankings", q)
    out.write_text(json.dumps(result, indent=2))
    print(markdown(result))
    print(f"written to {out}", flush=True)


if __name__ == "__main__":
    main()
