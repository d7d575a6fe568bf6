"""The openai engine: any OpenAI-compatible completions endpoint (`vllm serve`, a hosted model).

The client retries timeouts, 429 and 5xx with exponential backoff; a next-token read that
still fails gives NaN and the reason (the pair becomes invalid), a generation that still fails
raises EngineError. The API key is read from the environment variable the config names; it is
never stored, logged or written anywhere, and errors carry the exception's class and HTTP status
only, since its text may echo request details.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from tqdm.auto import tqdm

from rlaif.config import Openai
from rlaif.engines import Engine, EngineError, TokenLogprobs, missing_labels
from rlaif.generation import Generation
from rlaif.models import load_tokenizer
from rlaif.runtime import Runtime

try:
    import openai
except ImportError:  # only this engine needs it
    openai = None


def _request_error(e: Exception, retries: int) -> str:
    status = getattr(e, "status_code", None)
    return f"request failed after {retries} retries: {type(e).__name__}" + (f" (HTTP {status})" if status else "")


class OpenAIEngine(Engine):
    kind = "openai"

    def __init__(self, cfg: Openai, model, runtime: Runtime):
        # The tokenizer is local: it builds the prompts and checks the option labels.
        super().__init__(model, load_tokenizer(model), runtime)
        if openai is None:
            raise EngineError("the openai engine needs the `openai` package (pip install openai)")
        self.cfg = cfg
        # A local `vllm serve` needs no key; the client insists on a non-empty string.
        self.client = openai.OpenAI(base_url=cfg.base_url, api_key=os.environ.get(cfg.api_key_env) or "none",
                                    timeout=cfg.timeout_s, max_retries=cfg.max_retries)
        self.served_model = cfg.served_model or str(model)

    def _map(self, fn, items, desc):
        """fn over items with at most max_concurrency requests in flight, in input order."""
        with ThreadPoolExecutor(self.cfg.max_concurrency) as pool:
            return list(tqdm(pool.map(fn, items), total=len(items), desc=desc, unit="req"))

    def next_token_logprobs(self, texts, candidates, desc="judging"):
        names = [self.tokenizer.decode([i]) for i in candidates]  # endpoints key logprobs by token text
        k, nan = self.cfg.top_logprobs, [np.nan] * len(candidates)

        def one(text: str) -> tuple[list[float], str | None]:
            try:
                r = self.client.completions.create(model=self.served_model, prompt=text, max_tokens=1,
                                                   temperature=0.0, logprobs=k)
            except openai.APIError as e:  # timeouts, 429 and 5xx after the client's retries
                return nan, _request_error(e, self.cfg.max_retries)
            except ValueError as e:  # a body that is not JSON
                return nan, f"malformed answer ({type(e).__name__})"
            try:
                top = r.choices[0].logprobs.top_logprobs[0]
                top.items()
            except (AttributeError, IndexError, TypeError) as e:
                return nan, f"answer without next-token logprobs ({type(e).__name__})"
            return [top.get(n, np.nan) for n in names], missing_labels([n for n in names if n not in top], k)

        rows = self._map(one, texts, desc)
        return TokenLogprobs(np.array([r[0] for r in rows], dtype=float).reshape(len(texts), len(candidates)),
                             [r[1] for r in rows])

    def generate(self, texts, sampling, *, seed=0, desc="generating", on_batch=None, logprobs=False):
        if logprobs:
            raise EngineError("the openai engine does not return the sampled tokens' logprobs here; "
                              "PPO rollouts need the transformers or vllm engine")

        def one(args) -> Generation:
            i, text = args
            try:
                r = self.client.completions.create(model=self.served_model, prompt=text,
                                                   max_tokens=sampling.max_new_tokens,
                                                   temperature=sampling.temperature,
                                                   top_p=sampling.top_p, seed=seed + i)
                c = r.choices[0]
            except openai.APIError as e:
                raise EngineError(_request_error(e, self.cfg.max_retries)) from None
            except (ValueError, AttributeError, IndexError, TypeError) as e:
                raise EngineError(f"malformed answer ({type(e).__name__})") from None
            n = r.usage.completion_tokens if r.usage else len(self.tokenizer.encode(c.text))
            return Generation(text=c.text.strip(), n_tokens=n, has_eos=c.finish_reason == "stop")

        results = self._map(one, list(enumerate(texts)), desc)
        if on_batch:
            on_batch(len(results))
        return results

    def close(self) -> None:
        self.client.close()
