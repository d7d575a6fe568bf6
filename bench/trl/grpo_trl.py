"""The TRL side of bench/group.py: run TRL 1.16.0's GRPOTrainer or RLOOTrainer for a few
iterations and report the seconds per iteration and peak memory. Run by the TRL 1.16 venv's
python (bench/trl/setup.sh builds bench/.venv-trl-grpo):

    bench/.venv-trl-grpo/bin/python bench/trl/grpo_trl.py --algorithm grpo|rloo --policy DIR \
        --reward-model DIR --prompts PROMPTS.jsonl --config '{"steps": 3, ...}' --out DIR

--config is our training.config.PPOConfig as JSON; each of its settings is mapped onto TRL's
GRPOConfig / RLOOConfig below. One iteration is one generation round and its updates, as ours:

    ours                                   TRL 1.16
    batch_size (prompts per rollout)       generation_batch_size / num_generations
    group_size                             num_generations
    mini_batch_size (responses / step)     per_device_train_batch_size, gradient_accumulation_steps=1
    batch_size*group_size/mini_batch_size  steps_per_generation (optimizer steps per epoch)
    ppo_epochs                             num_iterations
    steps                                  max_steps / (steps_per_generation * num_iterations)
    sampling.max_new_tokens, temperature   max_completion_length, temperature (top_p 1, top_k 0)
    lr, AdamW eps 1e-5, constant, clip 1.0 learning_rate, adam_epsilon, lr_scheduler_type, max_grad_norm
    init_kl_coef (fixed: adaptive_kl off)  beta
    cliprange                              epsilon (epsilon_high = epsilon)
    trainable lora r/alpha, q/k/v/o        peft_config (reference: the adapter switched off, both)
    reward model folder, gain              reward_funcs (the model), reward_weights=[gain]
    grpo: token-mean loss, k3 in the loss  loss_type="bnpo", use_bias_correction_kl=False
    rloo: whiten_advantages                normalize_advantages
    fp32 on the CPU, no grad checkpointing bf16=False, gradient_checkpointing=False, no vLLM

What cannot be matched is listed in bench/group.py (UNMATCHED) and written into the result.
Prints one line `RESULT {json}`.
"""

from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

import torch
import trl
from datasets import Dataset
from peft import LoraConfig
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer, TrainerCallback
from transformers.trainer_utils import set_seed
from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer


class IterationTimer(TrainerCallback):
    """Wall time of each optimizer step: on_train_begin fires right before the first one,
    on_step_end after each (model loading and setup come before). An iteration (one generation
    round and its updates) is `per_iteration` consecutive optimizer steps."""

    def __init__(self, per_iteration: int):
        self.per_iteration = per_iteration
        self.marks: list[float] = []
        self.rss_at_end = 0.0

    def on_train_begin(self, args, state, control, **kw):
        self.marks = [time.perf_counter()]

    def on_step_end(self, args, state, control, **kw):
        self.marks.append(time.perf_counter())
        self.rss_at_end = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20

    @property
    def seconds(self) -> list[float]:
        m = self.marks[::self.per_iteration]
        return [b - a for a, b in zip(m, m[1:])]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--algorithm", required=True, choices=["grpo", "rloo"])
    ap.add_argument("--policy", required=True, help="HF causal-LM folder (the converted embedded model)")
    ap.add_argument("--reward-model", required=True, help="our reward-model folder (HF sequence classifier)")
    ap.add_argument("--prompts", required=True, help='JSONL of {"prompt": ...}, written by bench/group.py')
    ap.add_argument("--config", required=True, help="our PPOConfig as JSON")
    ap.add_argument("--out", required=True, help="TRL's output_dir (nothing is saved there)")
    a = ap.parse_args()
    cfg = json.loads(a.config)
    B, K, mini, epochs = cfg["batch_size"], cfg["group_size"], cfg["mini_batch_size"], cfg["ppo_epochs"]
    if (B * K) % mini:
        raise SystemExit(f"batch_size*group_size ({B * K}) must be a multiple of mini_batch_size ({mini})")
    if cfg["algorithm"] != a.algorithm:
        raise SystemExit(f"--algorithm {a.algorithm} but the config says {cfg['algorithm']}")
    steps_per_generation = B * K // mini
    per_iteration = steps_per_generation * epochs  # optimizer steps per generation round
    trainable = cfg["trainable"]
    if trainable["method"] != "lora":
        raise SystemExit("this benchmark maps LoRA only")
    if cfg.get("adaptive_kl"):
        raise SystemExit("TRL's beta is fixed: run ours with adaptive_kl=False")

    tok = AutoTokenizer.from_pretrained(a.policy)
    tok.padding_side = "left"
    # The reward model reads the score at the last non-pad token of right-padded text; this
    # tokenizer's pad is its EOS (<|im_end|>), which also closes every chat turn. A pad that never
    # occurs in the text makes "last non-pad" the text's last token, the one ours reads.
    rm_tok = AutoTokenizer.from_pretrained(a.reward_model)
    rm_tok.pad_token = "<|endoftext|>"
    gain = json.loads((Path(a.reward_model) / "normalization.json").read_text())["gain"]
    prompts = [json.loads(line)["prompt"] for line in open(a.prompts, encoding="utf-8")]
    if len(prompts) != cfg["steps"] * B:
        raise SystemExit(f"{len(prompts)} prompts for {cfg['steps']} x {B}")
    # Conversational: TRL applies the chat template with the generation prompt, as ours does,
    # and scores the prompt + completion conversation through the template, as ours does.
    dataset = Dataset.from_list([{"prompt": [{"role": "user", "content": p}]} for p in prompts])

    set_seed(cfg["seed"])
    policy = AutoModelForCausalLM.from_pretrained(a.policy, dtype=torch.float32)
    reward_model = AutoModelForSequenceClassification.from_pretrained(a.reward_model, num_labels=1,
                                                                      dtype=torch.float32)
    peft_config = LoraConfig(task_type="CAUSAL_LM", r=trainable["lora_r"], lora_alpha=trainable["lora_alpha"],
                             lora_dropout=0.0, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"])
    common = dict(
        output_dir=a.out, seed=cfg["seed"],
        per_device_train_batch_size=mini, gradient_accumulation_steps=1, steps_per_generation=steps_per_generation,
        num_generations=K, num_iterations=epochs, max_steps=cfg["steps"] * per_iteration,
        max_completion_length=cfg["sampling"]["max_new_tokens"], temperature=cfg["sampling"]["temperature"],
        top_p=1.0, top_k=0,
        learning_rate=cfg["lr"], adam_epsilon=1e-5, weight_decay=0.01, optim="adamw_torch",  # ours: AdamW(eps=1e-5)
        lr_scheduler_type="constant", warmup_steps=0, max_grad_norm=cfg["max_grad_norm"],
        beta=cfg["init_kl_coef"], epsilon=cfg["cliprange"], reward_weights=[gain],
        # fp32, no gradient checkpointing, no vLLM (ours: its transformers engine), no checkpoints
        bf16=False, fp16=False, gradient_checkpointing=False, use_vllm=False,
        report_to="none", save_strategy="no", logging_strategy="steps", logging_steps=1, disable_tqdm=True,
    )
    if a.algorithm == "grpo":
        # ours: the clipped loss and the k3 KL, a mean over the minibatch's tokens (bnpo with no
        # gradient accumulation); k3 without TRL's importance-ratio correction; group scaling.
        kl_in_loss = (cfg.get("kl_penalty") or "loss") == "loss"
        if not kl_in_loss:
            raise SystemExit("TRL's GRPO puts the KL in the loss: run ours with kl_penalty loss (or None)")
        args = GRPOConfig(**common, loss_type="bnpo", scale_rewards="group", use_bias_correction_kl=False)
        Trainer = GRPOTrainer
    else:
        if (cfg.get("kl_penalty") or "reward") != "reward":
            raise SystemExit("TRL's RLOO puts the KL in the reward: run ours with kl_penalty reward (or None)")
        if cfg.get("kl_estimator", "k1") != "k1":
            raise SystemExit("TRL's RLOO penalises with k1: run ours with kl_estimator k1")
        args = RLOOConfig(**common, normalize_advantages=cfg["whiten_advantages"])
        Trainer = RLOOTrainer
    timer = IterationTimer(per_iteration)
    trainer = Trainer(model=policy, reward_funcs=reward_model, args=args, train_dataset=dataset,
                      processing_class=tok, reward_processing_classes=rm_tok, peft_config=peft_config,
                      callbacks=[timer])
    n_trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    trainer.train()
    seconds = timer.seconds
    if len(seconds) != cfg["steps"] or trainer.state.global_step != cfg["steps"] * per_iteration:
        raise SystemExit(f"TRL ran {trainer.state.global_step} optimizer steps ({len(seconds)} iterations), "
                         f"expected {cfg['steps'] * per_iteration} ({cfg['steps']})")
    logs = [h for h in trainer.state.log_history if "completions/mean_length" in h]
    print("RESULT " + json.dumps({
        "step_seconds": seconds, "optimizer_steps": trainer.state.global_step, "trainable_params": n_trainable,
        "mean_response_length": sum(h["completions/mean_length"] for h in logs) / max(len(logs), 1),
        "peak_rss_gib_training": timer.rss_at_end,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "threads": torch.get_num_threads(), "trl": trl.__version__,
    }), flush=True)


if __name__ == "__main__":
    main()
