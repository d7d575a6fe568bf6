"""The TRL side of bench/reward.py: train TRL's RewardTrainer on the given pairs and report
throughput and held-out accuracy. Run by the TRL venv's python (bench/trl/setup.sh):

    bench/.venv-trl/bin/python bench/trl/reward_trl.py --model DIR --pairs PAIRS.jsonl [options]

PAIRS.jsonl holds {"prompt", "chosen", "rejected", "split": "train"|"heldout"} rows, written by
bench/reward.py from the same split our side uses. Prints one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import trl
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoTokenizer, TrainerCallback
from trl import RewardConfig, RewardTrainer


class TrainTimer(TrainerCallback):
    """Wall time of the training loop alone: model loading and dataset tokenisation happen
    before on_train_begin."""

    def on_train_begin(self, args, state, control, **kw):
        self.start = time.perf_counter()

    def on_train_end(self, args, state, control, **kw):
        self.seconds = time.perf_counter() - self.start


def conversation(row: dict) -> dict:
    # Conversational format, so TRL applies the chat template as our side does
    # (training.common.conversation_texts: one user turn, one assistant turn).
    return {"prompt": [{"role": "user", "content": row["prompt"]}],
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}]}


@torch.inference_mode()
def heldout_accuracy(model, tok, rows: list[dict], batch_size: int = 8) -> float:
    """Share of held-out pairs whose chosen response scores above the rejected one."""
    model.eval()
    correct = 0
    for start in range(0, len(rows), batch_size):
        batch = rows[start:start + batch_size]
        scores = []
        for key in ("chosen", "rejected"):
            ids = [tok.apply_chat_template([{"role": "user", "content": r["prompt"]},
                                            {"role": "assistant", "content": r[key]}], tokenize=True)["input_ids"]
                   for r in batch]
            enc = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt")  # right padding
            scores.append(model(**enc).logits.squeeze(-1))
        correct += int((scores[0] > scores[1]).sum())
    return correct / len(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="HF model folder (the converted embedded model)")
    ap.add_argument("--pairs", required=True, help="JSONL written by bench/reward.py")
    ap.add_argument("--batch-size", type=int, required=True, help="pairs per optimisation step")
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--lr", type=float, required=True)
    ap.add_argument("--max-length", type=int, required=True)
    ap.add_argument("--lora-r", type=int, required=True)
    ap.add_argument("--lora-alpha", type=int, required=True)
    ap.add_argument("--center-coef", type=float, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True, help="TRL's output_dir (nothing is saved there)")
    a = ap.parse_args()

    rows = [json.loads(line) for line in open(a.pairs, encoding="utf-8")]
    train = [conversation(r) for r in rows if r["split"] == "train"]
    held = [r for r in rows if r["split"] == "heldout"]

    tok = AutoTokenizer.from_pretrained(a.model)
    tok.padding_side = "right"  # TRL's collator pads on the right; the model pools the last non-pad token
    args = RewardConfig(
        output_dir=a.out, per_device_train_batch_size=a.batch_size, num_train_epochs=a.epochs,
        learning_rate=a.lr, max_length=a.max_length, center_rewards_coefficient=a.center_coef, seed=a.seed,
        # our side: fp32, plain AdamW (torch defaults, weight decay 0.01), constant lr, no grad clipping,
        # no gradient checkpointing, no evaluation, logging or saving during training
        bf16=False, fp16=False, gradient_checkpointing=False, optim="adamw_torch", weight_decay=0.01,
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=0.0,
        eval_strategy="no", save_strategy="no", logging_strategy="no", report_to="none",
        model_init_kwargs={"dtype": torch.float32},
    )
    # Same adapter as training.common.lora_config("SEQ_CLS", r, alpha): peft adds the score head
    # to modules_to_save for SEQ_CLS, as on our side.
    peft_config = LoraConfig(task_type="SEQ_CLS", r=a.lora_r, lora_alpha=a.lora_alpha, lora_dropout=0.0,
                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    timer = TrainTimer()
    trainer = RewardTrainer(model=a.model, args=args, train_dataset=Dataset.from_list(train),
                            processing_class=tok, peft_config=peft_config, callbacks=[timer])
    if len(trainer.train_dataset) != len(train):  # TRL drops pairs longer than max_length
        raise SystemExit(f"TRL dropped {len(train) - len(trainer.train_dataset)} of {len(train)} training pairs "
                         f"longer than max_length={a.max_length}; the driver should have filtered them")
    trainer.train()
    acc = heldout_accuracy(trainer.model, tok, held)
    print("RESULT " + json.dumps({
        "pairs_per_s": len(train) * a.epochs / timer.seconds, "train_seconds": timer.seconds,
        "train_pairs": len(train), "heldout_pairs": len(held), "heldout_accuracy": acc,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "trl": trl.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
