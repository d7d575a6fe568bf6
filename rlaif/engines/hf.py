"""The transformers engine: in process, batched, padding-aware, on the runtime's device."""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from rlaif.config import Transformers
from rlaif.engines import Engine, TokenLogprobs
from rlaif.generation import Generation, position_ids, response_mask, sample
from rlaif.models import load_causal_lm, load_tokenizer
from rlaif.runtime import Runtime


class TransformersEngine(Engine):
    kind = "transformers"
    sort_by_length = True  # batch texts of similar length together: less padding, same results

    def __init__(self, cfg: Transformers, model, runtime: Runtime, module=None):
        super().__init__(model, load_tokenizer(model), runtime)
        self.cfg = cfg
        self.module = module if module is not None else load_causal_lm(model, runtime)

    def generate(self, texts, sampling, *, seed=0, desc="generating", on_batch=None, logprobs=False):
        """Batch b is sampled with seed + b."""
        results: list[Generation] = []
        eos, bs = self.tokenizer.eos_token_id, self.cfg.batch_size
        for b, start in enumerate(tqdm(range(0, len(texts), bs), desc=desc, unit="batch", leave=False)):
            _, _, resp, lp = sample(self.module, self.tokenizer, texts[start:start + bs], sampling,
                                    seed=seed + b, logprobs=logprobs)
            resp = resp.cpu()
            for i, (ids, m) in enumerate(zip(resp, response_mask(resp, eos))):
                n = int(m.sum())
                results.append(Generation(
                    text=self.tokenizer.decode(ids[:n], skip_special_tokens=True).strip(),
                    n_tokens=n, has_eos=bool((ids[:n] == eos).any()), token_ids=ids[:n].tolist(),
                    logprobs=lp[i, :n].tolist() if logprobs else None))
            if on_batch:
                on_batch(len(results))
        return results

    def _order(self, lengths):
        return np.argsort(lengths, kind="stable") if self.sort_by_length else np.arange(len(lengths))

    @torch.inference_mode()
    def next_token_logprobs(self, texts, candidates, desc="judging"):
        out = np.zeros((len(texts), len(candidates)))
        order, bs = self._order([len(t) for t in texts]), self.cfg.batch_size
        for start in tqdm(range(0, len(texts), bs), desc=desc, unit="batch"):
            idx = order[start:start + bs]
            enc = self.runtime.put(self.tokenizer([texts[i] for i in idx], return_tensors="pt", padding=True,
                                                  add_special_tokens=False))
            logits = self.module(**enc, position_ids=position_ids(enc["attention_mask"]),
                                 logits_to_keep=1).logits[:, -1].float()  # (B, V): left padding
            out[idx] = torch.log_softmax(logits, dim=-1)[:, candidates].cpu().numpy()  # (B, C)
        return TokenLogprobs(out, [None] * len(texts))

    @torch.inference_mode()
    def sequence_logprobs(self, texts, continuations, desc="likelihoods"):
        ctx = [self.tokenizer.encode(t, add_special_tokens=False) for t in texts]
        cont = [self.tokenizer.encode(t, add_special_tokens=False) for t in continuations]
        seqs = [a + b for a, b in zip(ctx, cont)]
        order, bs, pad = self._order([len(x) for x in seqs]), self.cfg.batch_size, self.tokenizer.pad_token_id
        out = np.zeros(len(seqs))
        for start in tqdm(range(0, len(seqs), bs), desc=desc, unit="batch"):
            idx = order[start:start + bs]
            width = max(len(seqs[i]) for i in idx)
            ids = torch.tensor([[pad] * (width - len(seqs[i])) + seqs[i] for i in idx])  # (B, T)
            mask = (torch.arange(width) >= torch.tensor([width - len(seqs[i]) for i in idx])[:, None]).long()
            ids, mask = self.runtime.put(ids), self.runtime.put(mask)
            logits = self.module(input_ids=ids, attention_mask=mask, position_ids=position_ids(mask)).logits
            logp = torch.log_softmax(logits[:, :-1].float(), -1).gather(-1, ids[:, 1:, None])[..., 0]  # (B, T-1)
            n_cont = torch.tensor([len(cont[i]) for i in idx], device=ids.device)[:, None]
            is_cont = torch.arange(1, width, device=ids.device)[None] >= width - n_cont  # predicts a continuation token
            out[idx] = (logp * is_cont).sum(-1).cpu().numpy()
        return out

    def sync(self, module, version: int) -> None:
        self.module = module  # PPO's live policy is already this module; evaluation swaps policies

    def close(self) -> None:
        self.module = None  # a live module passed in stays with its owner
