"""SL-CAI supervised fine-tuning on a tiny random-weight model: labels cover the response only,
the final revision is the target, the loss falls, weights change and the folder loads as a
policy and as a reward-model backbone; a non-finite loss saves nothing."""

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from rlaif.models import load_causal_lm, load_sequence_scorer, load_tokenizer
from training import TrainingError
from training.config import SFTConfig
from training.sft import IGNORE, final_revisions, sft_labels, tokenize_examples, train_sft

Q = "model.layers.0.self_attn.q_proj.weight"  # a LoRA target, so both modes must move it


def critiques_frame(n=4, rounds=2):
    """n responses x rounds; round r's revision is 'rev r of i'."""
    return pd.DataFrame([
        {"response_id": f"r{i}", "prompt_id": f"p{i}", "prompt": f"question {i}",
         "response": f"draft {i}", "round": rnd, "principle_id": "harmless",
         "critique": "be kinder", "revision": f"rev {rnd} of {i}: a kind and careful answer",
         "template_version": "t"}
        for i in range(n) for rnd in range(rounds)
    ])


# ---------------------------------------------------------------- labels and data

def test_sft_labels_mask_prompt_and_padding_right_and_left():
    pad = 2  # pad == EOS, as with the embedded tokenizer: the trailing EOS must stay a target
    ids = torch.tensor([[10, 11, 12, 13, 2],     # prompt 2, response 12 13 EOS
                        [20, 21, 22, 2, pad]])   # prompt 3, response EOS, one pad
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 1, 0]])
    labels = sft_labels(ids, torch.tensor([2, 3]), mask)
    assert labels.tolist() == [[IGNORE, IGNORE, 12, 13, 2], [IGNORE, IGNORE, IGNORE, 2, IGNORE]]

    left_ids = torch.tensor([[pad, pad, 20, 21, 22, 2], [10, 11, 12, 13, 14, 2]])
    left_mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    labels = sft_labels(left_ids, torch.tensor([3, 1]), left_mask)
    assert labels.tolist() == [[IGNORE] * 5 + [2], [IGNORE, 11, 12, 13, 14, 2]]


def test_final_revisions_takes_the_last_round_and_drops_empty():
    df = critiques_frame(n=3, rounds=3).sample(frac=1, random_state=0)  # order must not matter
    df.loc[(df["response_id"] == "r1") & (df["round"] == 2), "revision"] = "   "
    df.loc[(df["response_id"] == "r2") & (df["round"] == 2), "revision"] = None
    out = final_revisions(df)
    # r1 and r2 end with an empty revision: dropped, not replaced by round 1
    assert out.to_dict("records") == [{"response_id": "r0", "prompt_id": "p0", "prompt": "question 0",
                                       "revision": "rev 2 of 0: a kind and careful answer"}]
    with pytest.raises(TrainingError, match="all 3 final revisions are empty"):
        final_revisions(critiques_frame(n=3).assign(revision=" \n"))
    with pytest.raises(TrainingError, match="critiques table is empty"):
        final_revisions(critiques_frame().iloc[:0])


def test_tokenized_targets_are_the_revision_and_end_of_turn(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    (ids, n_prompt), = tokenize_examples(tok, ["hi there"], ["hello, friend"], max_length=512)
    assert tok.decode(ids[:n_prompt]).endswith("<|im_start|>assistant\n")
    assert tok.decode(ids[n_prompt:]) == "hello, friend<|im_end|>"
    # left truncation keeps the response end and its EOS; the prompt shrinks first
    (short, n_short), = tokenize_examples(tok, ["hi there"], ["hello, friend"], max_length=8)
    assert short == ids[-8:] and n_short == 8 - (len(ids) - n_prompt)


# ---------------------------------------------------------------- training

@pytest.fixture(scope="module", params=["lora", "full"])
def sft_run(request, tiny_model_dir, tmp_path_factory):
    lora = request.param == "lora"
    out = tmp_path_factory.mktemp("sft") / "policy"
    cfg = SFTConfig(trainable={"method": request.param}, lr=1e-2 if lora else 3e-3, epochs=6, batch_size=2, max_length=64)
    summary, metrics = train_sft(critiques_frame(), str(tiny_model_dir), out, cfg, {"run_id": "t"})
    return out, cfg, summary, metrics


def test_sft_lowers_the_loss_and_changes_the_weights(tiny_model_dir, sft_run):
    out, cfg, summary, metrics = sft_run
    losses = [m["value"] for m in metrics]
    assert len(losses) == 12 and all(np.isfinite(losses))  # 6 epochs x ceil(4 / 2)
    assert all(m["metric"] == "sft/loss" and m["text"] is None for m in metrics)
    assert [m["step"] for m in metrics] == list(range(12))
    assert summary["sft/examples"] == 4
    assert summary["sft/train_loss_first"] == losses[0] and summary["sft/train_loss_last"] == losses[-1]
    # first vs last epoch (same 4 examples). LoRA on attention only moves a tiny random model
    # little: its lm_head and final norm are frozen, which caps how far the logits can move.
    assert np.mean(losses[-2:]) < np.mean(losses[:2]) - (0.05 if cfg.trainable.method == "lora" else 0.5), losses

    base, trained = load_causal_lm(tiny_model_dir), load_causal_lm(out)
    assert not hasattr(trained, "peft_config"), "LoRA must be merged into a plain causal LM"
    assert not (out / "adapter_config.json").exists()
    assert not torch.allclose(base.state_dict()[Q], trained.state_dict()[Q])
    assert trained.state_dict().keys() == base.state_dict().keys()

    assert json.loads((out / "rlaif_config.json").read_text()) == cfg.model_dump()
    lineage = json.loads((out / "lineage.json").read_text())
    assert lineage["run_id"] == "t" and lineage["response_ids"] == ["r0", "r1", "r2", "r3"]
    assert lineage["policy_model"] == str(tiny_model_dir)
    assert load_tokenizer(out).eos_token == "<|im_end|>"


def test_sft_model_has_learned_the_target(tiny_model_dir, sft_run):
    """The trained model gives the revision (targets) a lower loss than the base model does."""
    out = sft_run[0]
    tok = load_tokenizer(tiny_model_dir)
    (ids, n_prompt), = tokenize_examples(tok, ["question 1"], ["rev 1 of 1: a kind and careful answer"], 64)
    ids = torch.tensor([ids])

    def nll(model):
        with torch.inference_mode():
            logp = model(input_ids=ids).logits[0, :-1].log_softmax(-1)  # (T-1, V)
        return -logp[n_prompt - 1:].gather(-1, ids[0, n_prompt:, None]).mean().item()

    assert nll(load_causal_lm(out)) < nll(load_causal_lm(tiny_model_dir)) - (0.1 if sft_run[1].trainable.method == "lora" else 0.5)


def test_sft_folder_loads_as_a_reward_backbone(sft_run):
    scorer = load_sequence_scorer(sft_run[0])
    trained = load_causal_lm(sft_run[0])
    # same backbone weights under the new scalar head
    assert torch.equal(scorer.state_dict()[Q], trained.state_dict()[Q])
    assert scorer.score.out_features == 1


def test_sft_is_deterministic_for_a_seed(tiny_model_dir, tmp_path):
    cfg = SFTConfig(epochs=1, batch_size=2, max_length=48, lr=1e-2)
    _, a = train_sft(critiques_frame(), str(tiny_model_dir), tmp_path / "a", cfg, {})
    _, b = train_sft(critiques_frame(), str(tiny_model_dir), tmp_path / "b", cfg, {})
    assert a == b
    _, c = train_sft(critiques_frame(), str(tiny_model_dir), tmp_path / "c", cfg.model_copy(update={"seed": 1}), {})
    assert [m["value"] for m in c] != [m["value"] for m in a]


def test_sft_loss_targets_are_the_revisions_only(tiny_model_dir, tmp_path, monkeypatch):
    """Spy on the loss: its targets are exactly each revision's tokens plus EOS, nothing else."""
    import training.sft

    seen = []

    def spy(logits, target, **kw):
        seen.append(target.clone())
        return torch.nn.functional.cross_entropy(logits, target, **kw)

    monkeypatch.setattr(training.sft, "F", SimpleNamespace(cross_entropy=spy))
    df = critiques_frame()
    train_sft(df, str(tiny_model_dir), tmp_path / "sft", SFTConfig(epochs=1, batch_size=4), {})
    tok = load_tokenizer(tiny_model_dir)
    rows = seen[0].view(4, -1)  # (B, T-1): one step of all four examples
    got = sorted(tok.decode(r[r != IGNORE]) for r in rows)
    assert got == sorted(final_revisions(df)["revision"] + "<|im_end|>")


@pytest.mark.parametrize("n, match", [(2, "non-finite loss at step 1"), (1, "non-finite weights after step 0")])
def test_sft_non_finite_saves_nothing(tiny_model_dir, tmp_path, n, match):
    # lr=inf (AdamW refuses nan): step 0's loss is finite, its update makes the weights inf/NaN
    cfg = SFTConfig(lr=float("inf"), batch_size=1, max_length=32)
    with pytest.raises(TrainingError, match=f"{match}; nothing saved"):
        train_sft(critiques_frame(n=n), str(tiny_model_dir), tmp_path / "sft", cfg, {})
    assert not (tmp_path / "sft").exists()
    assert list(tmp_path.iterdir()) == []  # no temporary sibling left behind either
