"""Judge backends. Every backend answers two questions:

- `option_probs(conversations)`: P(A) from the next-token probabilities of the two option
  labels after ANSWER_PREFIX, normalised over {A, B}. One forward pass, no text parsing.
- `generate(conversations, ...)`: one assistant turn per conversation (critiques, revisions).

`transformers` runs in process and is the default.
"""

from __future__ import annotations

import numpy as np
import torch
from tqdm.auto import tqdm

from judges.templates import ANSWER_PREFIX, LABELS
from rlaif.generation import Generation, chat_text, generate, position_ids
from rlaif.models import load_causal_lm, load_tokenizer


class JudgeError(RuntimeError):
    pass


def label_token_ids(tokenizer) -> list[int]:
    """Token ids of the option labels; each must be one token right after ANSWER_PREFIX."""
    prefix_ids = tokenizer.encode(ANSWER_PREFIX, add_special_tokens=False)
    ids = []
    for label in LABELS:
        full = tokenizer.encode(ANSWER_PREFIX + label, add_special_tokens=False)
        if full[:-1] != prefix_ids or tokenizer.encode(label, add_special_tokens=False) != full[-1:]:
            raise JudgeError(f"option label {label!r} is not a single token after "
                             f"{ANSWER_PREFIX!r} for this tokenizer; the judge cannot score it")
        ids.append(full[-1])
    return ids


class TransformersJudge:
    backend = "transformers"

    def __init__(self, model: str, batch_size: int = 8, sort_by_length: bool = True):
        self.model_id = str(model)
        self.sort_by_length = sort_by_length
        self.tokenizer = load_tokenizer(model)
        self.model = load_causal_lm(model)
        self.batch_size = batch_size
        self.label_ids = label_token_ids(self.tokenizer)

    @torch.inference_mode()
    def option_probs(self, conversations: list[list[dict]], desc: str = "judging") -> np.ndarray:
        texts = [chat_text(self.tokenizer, c) + ANSWER_PREFIX for c in conversations]
        # Batch texts of similar length together: less padding, same results.
        order = (np.argsort([len(t) for t in texts], kind="stable") if self.sort_by_length
                 else np.arange(len(texts)))
        p_a = np.zeros(len(texts))
        for start in tqdm(range(0, len(texts), self.batch_size), desc=desc, unit="batch"):
            idx = order[start:start + self.batch_size]
            enc = self.tokenizer([texts[i] for i in idx], return_tensors="pt",
                                 padding=True, add_special_tokens=False)
            logits = self.model(**enc, position_ids=position_ids(enc["attention_mask"]),
                                logits_to_keep=1).logits[:, -1]  # (B, V): left padding
            pair = logits[:, self.label_ids].float()  # (B, 2)
            p_a[idx] = torch.softmax(pair, dim=-1)[:, 0].numpy()
        return p_a

    def generate(self, conversations: list[list[dict]], *, max_new_tokens: int,
                 temperature: float, seed: int, desc: str = "judge writing") -> list[Generation]:
        return generate(self.model, self.tokenizer, conversations, max_new_tokens=max_new_tokens,
                        temperature=temperature, seed=seed, batch_size=self.batch_size, desc=desc)


def make_judge(model: str, backend: str = "transformers", batch_size: int = 8):
    if backend == "transformers":
        return TransformersJudge(model, batch_size=batch_size)
    raise JudgeError(f"unknown judge backend {backend!r}; available: transformers")
