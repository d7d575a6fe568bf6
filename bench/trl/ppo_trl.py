"""The TRL side of bench/ppo.py: run TRL's PPO trainer (trl.experimental.ppo, TRL 1.12.0, the
last release that has one) for a few iterations and report the seconds per iteration and peak
memory. Run by the TRL venv's python (bench/trl/setup.sh):

    bench/.venv-trl/bin/python bench/trl/ppo_trl.py --policy DIR --reward-model DIR \
        --prompts PROMPTS.jsonl --config '{"steps": 3, ...}' --out DIR

--config is our training.ppo.PPOConfig as JSON; each of its settings is mapped onto TRL's
PPOConfig below. Prints one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import torch
import trl
from datasets import Dataset
from peft import LoraConfig, get_peft_model
from transformers import (AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer,
                          DataCollatorWithPadding, TrainerCallback)
from trl.experimental.ppo import PPOConfig, PPOTrainer


class IterationTimer(TrainerCallback):
    """Wall time of each PPO iteration (rollout + update): on_train_begin fires right before
    the first one, on_step_end after each. Model loading and setup come before."""

    def __init__(self):
        self.marks: list[float] = []

    def on_train_begin(self, args, state, control, **kw):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())

    @property
    def seconds(self) -> list[float]:
        return [b - a for a, b in zip(self.marks, self.marks[1:])]


def lora(task_type: str, cfg: dict) -> LoraConfig:
    # As training.common.lora_config: attention projections, no dropout (and, for SEQ_CLS,
    # peft trains the score head too).
    return LoraConfig(task_type=task_type, r=cfg["lora_r"], lora_alpha=cfg["lora_alpha"], lora_dropout=0.0,
                      target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policy", required=True, help="HF causal-LM folder (the converted embedded model)")
    ap.add_argument("--reward-model", required=True, help="our reward-model folder (HF sequence classifier)")
    ap.add_argument("--prompts", required=True, help='JSONL of {"prompt": ...}, written by bench/ppo.py')
    ap.add_argument("--config", required=True, help="our PPOConfig as JSON")
    ap.add_argument("--out", required=True, help="TRL's output_dir (nothing is saved there)")
    a = ap.parse_args()
    cfg = json.loads(a.config)
    if cfg["batch_size"] % cfg["mini_batch_size"]:
        raise SystemExit("batch_size must be a multiple of mini_batch_size")

    tok = AutoTokenizer.from_pretrained(a.policy)
    # TRL finds padding by comparing with pad_token_id; this tokenizer's pad is its EOS
    # (<|im_end|>), which also closes every chat turn inside the prompt. A token that never
    # occurs in the text keeps TRL from masking those out.
    tok.pad_token = "<|endoftext|>"
    tok.padding_side = "left"  # TRL generates from left-padded queries
    prompts = [json.loads(line)["prompt"] for line in open(a.prompts, encoding="utf-8")]
    # The same query text as ours: the chat template with the generation prompt.
    dataset = Dataset.from_list([{"input_ids": tok.apply_chat_template(
        [{"role": "user", "content": p}], add_generation_prompt=True, tokenize=True)["input_ids"]} for p in prompts])

    torch.manual_seed(cfg["seed"])
    policy = AutoModelForCausalLM.from_pretrained(a.policy, dtype=torch.float32)
    value_model = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1, dtype=torch.float32)
    for m in (value_model, reward_model):
        m.config.pad_token_id = tok.pad_token_id
    if cfg["lora"]:
        # TRL puts LoRA on the policy only (its reference is then the policy with the adapter
        # off). Ours also puts LoRA on the value model, so the same adapter is applied here;
        # TRL takes any module with a `score` head and a backbone as the value model.
        value_model = get_peft_model(value_model, lora("SEQ_CLS", cfg))

    args = PPOConfig(
        output_dir=a.out, seed=cfg["seed"],
        per_device_train_batch_size=cfg["batch_size"], gradient_accumulation_steps=1,  # one rollout batch
        num_mini_batches=cfg["batch_size"] // cfg["mini_batch_size"],  # one optimizer step per minibatch
        local_rollout_forward_batch_size=cfg["batch_size"],  # rollout forwards over the whole batch, as ours
        total_episodes=cfg["steps"] * cfg["batch_size"], num_ppo_epochs=cfg["ppo_epochs"],
        response_length=cfg["max_new_tokens"], temperature=cfg["temperature"], stop_token="eos",
        learning_rate=cfg["lr"], adam_epsilon=1e-5, weight_decay=0.01, optim="adamw_torch",  # ours: AdamW(eps=1e-5)
        lr_scheduler_type="constant", warmup_steps=0,
        kl_coef=cfg["init_kl_coef"], kl_estimator=cfg["kl_estimator"], whiten_rewards=cfg["whiten_rewards"],
        cliprange=cfg["cliprange"], cliprange_value=cfg["cliprange_value"], vf_coef=cfg["vf_coef"],
        gamma=cfg["gamma"], lam=cfg["lam"], missing_eos_penalty=cfg["missing_eos_penalty"] or None,
        # fp32, no gradient checkpointing, no sample generations, logging sinks or checkpoints
        bf16=False, fp16=False, gradient_checkpointing=False, num_sample_generations=0,
        report_to="none", save_strategy="no", logging_strategy="no",
    )
    timer = IterationTimer()
    trainer = PPOTrainer(
        args=args, processing_class=tok, model=policy, ref_model=None, reward_model=reward_model,
        train_dataset=dataset, value_model=value_model, data_collator=DataCollatorWithPadding(tok),
        peft_config=lora("CAUSAL_LM", cfg) if cfg["lora"] else None, callbacks=[timer],
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    seconds = timer.seconds
    if len(seconds) != cfg["steps"]:
        raise SystemExit(f"TRL ran {len(seconds)} iterations, expected {cfg['steps']}")
    print("RESULT " + json.dumps({
        "step_seconds": seconds, "trainable_params": trainable,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "trl": trl.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
