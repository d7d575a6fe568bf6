"""GPU smoke check: a few steps of SFT, the reward model and PPO on a tiny random-weight model
built from a config (no downloads), on `--device` (cuda by default) in `--dtype` (bf16 on a
GPU). It asserts that every parameter a model runs with and every loss lives on that device
and is finite, and prints the peak GPU memory and the step times of each stage.

It imports only the core (rlaif) and training/: a GPU machine with torch, transformers, peft,
accelerate and pydantic runs it, without Prefect or vLLM. `make test` runs it with --device cpu.

    python bench/gpu_smoke.py                 # on a GPU
    python bench/gpu_smoke.py --device cpu    # anywhere
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pandas as pd
import torch

from rlaif.config import Sampling, Trainable
from rlaif.runtime import Runtime, resolve
from training.config import PPOConfig, RewardConfig, SFTConfig
from training.ppo import train_ppo
from training.reward import train_reward_model
from training.sft import train_sft

WORDS = ("the a an is was be to of and in that have it for not on with he as you do at this but his by "
         "from they we say her she or will my one all would there their what so up out if about who get "
         "which go me when make can like time no just him know take people into year your good some could "
         "them see other than then now look only come its over think also back after use two how our work "
         "help harm safe kind answer question please thank sorry cannot will would should").split()
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_model(path: Path) -> Path:
    """A byte-level BPE tokenizer trained here on a word list, and a 2-layer Llama with random
    weights: a model folder that every loader in the project reads, built offline."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    special = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    bpe.train_from_iterator([" ".join(WORDS)] * 4, trainers.BpeTrainer(
        vocab_size=600, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                  bos_token="<|im_start|>", chat_template=CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id, initializer_range=0.5)  # peaked: samples end
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    return path


class Watch:
    """Records the device and finiteness of every parameter a module runs with (a global
    forward hook) and of every loss a backward pass starts from."""

    def __init__(self, runtime: Runtime):
        self.runtime, self.bad, self.params, self.losses = runtime, [], 0, 0

    def _on_forward(self, module, args, output):
        for name, p in module.named_parameters(recurse=False):
            self.params += 1
            if p.device.type != self.runtime.device.type or not torch.isfinite(p).all():
                self.bad.append(f"parameter {type(module).__name__}.{name} on {p.device}, finite={bool(torch.isfinite(p).all())}")

    def __enter__(self):
        self.hook = torch.nn.modules.module.register_module_forward_hook(self._on_forward)
        self._backward = torch.Tensor.backward
        watch = self

        def backward(loss, *a, **kw):
            watch.losses += 1
            if loss.device.type != watch.runtime.device.type or not torch.isfinite(loss).all():
                watch.bad.append(f"loss on {loss.device}, value {loss.item()}")
            return watch._backward(loss, *a, **kw)

        torch.Tensor.backward = backward
        return self

    def __exit__(self, *exc):
        self.hook.remove()
        torch.Tensor.backward = self._backward


def data(n: int = 8):
    prompts = [f"question {i}: {' '.join(WORDS[i:i + 6])}?" for i in range(n)]
    good = [f"a kind and safe answer about {WORDS[i]}" for i in range(n)]
    bad = [f"harm harm {WORDS[i]} harm" for i in range(n)]
    ids = [f"p{i}" for i in range(n)]
    critiques = pd.DataFrame({"response_id": [f"{p}/s0" for p in ids], "prompt_id": ids, "prompt": prompts,
                              "response": bad, "round": 0, "principle_id": "x", "critique": "", "revision": good})
    prefs = pd.DataFrame({"pair_id": ids, "prompt_id": ids, "prompt": prompts, "chosen": good, "rejected": bad,
                          "p_chosen": 0.9, "valid": True})
    responses = pd.DataFrame({"prompt": prompts, "response": bad})
    return critiques, prefs, responses, pd.DataFrame({"prompt_id": ids, "prompt": prompts, "split": "train"})


def main(device: str = "cuda", dtype: str = "auto", ppo_steps: int = 3) -> dict:
    runtime = resolve(device, dtype)
    if runtime.on_gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
    critiques, prefs, responses, prompts = data()
    report = {"device": str(runtime.device), "dtype": runtime.dtype_name,
              "gpu": torch.cuda.get_device_name(runtime.device) if runtime.on_gpu else None, "stages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = str(tiny_model(tmp / "tiny"))
        stages = {
            "sft": lambda: train_sft(critiques, model, tmp / "sft", SFTConfig(enabled=True, epochs=2, batch_size=4,
                                                                              trainable=Trainable(method="full")), {}, runtime)[1],
            "reward": lambda: train_reward_model(prefs, responses, model, tmp / "rm",
                                                 RewardConfig(epochs=2, batch_size=4, eval_fraction=0.25), {}, runtime)[1],
            "ppo": lambda: train_ppo(prompts, model, str(tmp / "rm"), tmp / "ppo",
                                     PPOConfig(steps=ppo_steps, batch_size=4, mini_batch_size=2, ppo_epochs=1,
                                               sampling=Sampling(max_new_tokens=12, temperature=0.7)),
                                     {}, runtime=runtime),
        }
        for name, run in stages.items():
            if runtime.on_gpu:
                torch.cuda.synchronize(runtime.device)
                torch.cuda.reset_peak_memory_stats(runtime.device)
            with Watch(runtime) as watch:
                t0 = time.perf_counter()
                metrics = run()
                if runtime.on_gpu:
                    torch.cuda.synchronize(runtime.device)
                seconds = time.perf_counter() - t0
            steps = len({m["step"] for m in metrics if m["metric"] in ("sft/loss", "rm/loss", "objective/kl")})
            assert not watch.bad, f"{name}: " + "; ".join(watch.bad[:5])
            assert watch.params and watch.losses, f"{name}: no parameter or loss was seen"
            assert all(torch.isfinite(torch.tensor(m["value"])) for m in metrics if m["value"] is not None), name
            report["stages"][name] = {
                "steps": steps, "seconds": round(seconds, 2), "seconds_per_step": round(seconds / max(steps, 1), 3),
                "losses_checked": watch.losses, "parameter_uses_checked": watch.params,
                "peak_gpu_memory_mib": (round(torch.cuda.max_memory_allocated(runtime.device) / 2**20, 1)
                                        if runtime.on_gpu else None)}
    report["imported"] = sorted(m for m in ("prefect", "vllm") if m in sys.modules)
    assert not report["imported"], f"the smoke check imported {report['imported']}"
    return report


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda", help="cuda, cuda:N or cpu")
    ap.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16"])
    ap.add_argument("--ppo-steps", type=int, default=3)
    args = ap.parse_args()
    print(json.dumps(main(args.device, args.dtype, args.ppo_steps), indent=2))
    print("gpu smoke: ok")
