"""SL-CAI: supervised fine-tuning of the policy on its own final critique->revision outputs.

Each example is the chat user=prompt / assistant=final revision, ending with the template's
end-of-turn (EOS) so the model learns to stop. The loss is next-token cross-entropy over the
response tokens only (prompt and padding are masked with -100). The result is a plain HF
causal-LM folder (LoRA merged in), so the reward model, PPO policy and its reference load it
like any other model folder.
"""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from rlaif.generation import chat_text
from rlaif.models import load_causal_lm, load_tokenizer, resolve_model
from rlaif.runtime import CPU, Runtime
from training import TrainingError
from training.common import make_trainable, save_model
from training.config import SFTConfig
from training.distributed import Parallel
from training.supervised import fit

IGNORE = -100  # label value that F.cross_entropy skips


# ---------------------------------------------------------------- maths (pure, unit-tested)

def final_revisions(critiques: pd.DataFrame) -> pd.DataFrame:
    """The last round's revision of each response, one row per response_id (sorted by id).

    Rows whose final revision is empty are dropped, not replaced by an earlier round: the
    last round is the target the critique loop produced.
    """
    if critiques.empty:
        raise TrainingError("sft: the critiques table is empty; run the critique step first")
    # drop_duplicates rather than groupby().last(): the latter skips NaN per column and would
    # silently take an earlier round's revision.
    last = (critiques.sort_values(["response_id", "round"], kind="stable")
            .drop_duplicates("response_id", keep="last"))
    keep = last["revision"].fillna("").astype(str).str.strip() != ""
    out = last.loc[keep, ["response_id", "prompt_id", "prompt", "revision"]].reset_index(drop=True)
    if out.empty:
        raise TrainingError(f"sft: all {len(last)} final revisions are empty; nothing to train on")
    return out


def sft_labels(input_ids: torch.Tensor, prompt_lengths: torch.Tensor,
               attention_mask: torch.Tensor) -> torch.Tensor:
    """input_ids with prompt and padding tokens set to -100. (B, T)

    The prompt is the first prompt_lengths[b] *real* tokens of row b, so left or right padding
    both work. Padding is read from attention_mask, not from the token id, because pad == EOS
    and the EOS that ends the response must stay a target.
    """
    pos = attention_mask.cumsum(-1) - 1  # (B, T) index among real tokens; -1 before left padding
    is_prompt = pos < prompt_lengths.unsqueeze(-1)  # (B, T)
    return input_ids.masked_fill(is_prompt | (attention_mask == 0), IGNORE)


def collate(examples: list[tuple[list[int], int]], pad_id: int):
    """Right-pad (ids, prompt_length) pairs. Returns input_ids, attention_mask (B, T), prompt_lengths (B,)."""
    T = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(examples), T), dtype=torch.long)
    for b, (ids, _) in enumerate(examples):
        input_ids[b, :len(ids)] = torch.tensor(ids)
        attention_mask[b, :len(ids)] = 1
    return input_ids, attention_mask, torch.tensor([n for _, n in examples])


# ---------------------------------------------------------------- data

def tokenize_examples(tok, prompts: list[str], responses: list[str],
                      max_length: int) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) per example.

    Prompt and response are tokenized separately and concatenated, so the prompt tokens are
    exactly what the policy sees at generation time and the boundary is known.
    """
    examples = []
    for p, r in zip(prompts, responses):
        user = [{"role": "user", "content": p}]
        head = chat_text(tok, user, add_generation_prompt=True)
        full = chat_text(tok, user + [{"role": "assistant", "content": r}], add_generation_prompt=False)
        if not full.startswith(head):
            raise TrainingError("sft: the chat template's prompt is not a prefix of the full "
                                "conversation; cannot tell prompt tokens from response tokens")
        body = full[len(head):]
        end = body.rfind(tok.eos_token)  # stop at the end-of-turn: what follows is never generated
        body = body[:end + len(tok.eos_token)] if end >= 0 else body.rstrip() + tok.eos_token
        p_ids = tok(head, add_special_tokens=False)["input_ids"]
        r_ids = tok(body, add_special_tokens=False)["input_ids"]
        ids = (p_ids + r_ids)[-max_length:]  # left truncation keeps the response end and EOS
        examples.append((ids, max(0, len(ids) - len(r_ids))))
    return examples


# ---------------------------------------------------------------- training

def train_sft(critiques: pd.DataFrame, policy_model: str, out_dir: Path, cfg: SFTConfig,
              lineage: dict, runtime: Runtime = CPU, parallel: Parallel = Parallel()) -> tuple[dict, list[dict]] | None:
    """Fine-tune on the final revisions and save a merged causal LM. Returns (summary, metric
    rows) on rank 0, None on the other ranks (training.distributed)."""
    data = final_revisions(critiques)
    if cfg.batch_size < 1:
        raise TrainingError(f"sft: batch_size={cfg.batch_size}: no training step")
    torch.manual_seed(cfg.seed)
    tok = load_tokenizer(policy_model)

    def build():
        return make_trainable(load_causal_lm(policy_model, runtime), cfg.trainable, "CAUSAL_LM")

    model = build()
    examples = tokenize_examples(tok, data["prompt"].tolist(), data["revision"].tolist(), cfg.max_length)
    # each example weighs its response tokens: a step's loss is the mean over the global batch's tokens
    n_targets = torch.tensor([len(ids) - max(n_prompt, 1) for ids, n_prompt in examples], dtype=torch.float64)

    def batches(gen: torch.Generator):
        return torch.randperm(len(examples), generator=gen).split(cfg.batch_size)

    def loss_fn(module: torch.nn.Module, idx: torch.Tensor) -> torch.Tensor:
        input_ids, attention_mask, prompt_lengths = collate([examples[i] for i in idx], tok.pad_token_id)
        labels = sft_labels(input_ids, prompt_lengths, attention_mask)  # (B, T)
        input_ids, attention_mask, labels = runtime.put(input_ids), runtime.put(attention_mask), runtime.put(labels)
        logits = module(input_ids=input_ids, attention_mask=attention_mask).logits  # (B, T, V)
        # position t predicts token t+1; summed over every response token (fit divides by the batch's count)
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE,
                               reduction="sum")

    module, metrics = fit(model, batches, loss_fn, lr=cfg.lr, epochs=cfg.epochs, seed=cfg.seed, name="sft",
                          metric="sft/loss", steps_per_epoch=math.ceil(len(examples) / cfg.batch_size),
                          micro_batch_size=cfg.micro_batch_size, weights=n_targets, parallel=parallel)
    model = parallel.plain(module, build)
    if model is None:  # not rank 0: rank 0 saves
        return None
    summary = {"sft/train_loss_first": metrics[0]["value"], "sft/train_loss_last": metrics[-1]["value"],
               "sft/examples": len(examples)}
    save_model(out_dir, model, tok, {
        "rlaif_config.json": cfg.model_dump(), "metrics.json": summary,
        "lineage.json": {**lineage, "policy_model": str(resolve_model(policy_model)),
                         "response_ids": data["response_id"].tolist()}})
    return summary, metrics
