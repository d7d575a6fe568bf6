"""Generation uses exactly the sampling settings the trainer assumes."""

import torch

from rlaif.config import Sampling
from rlaif.generation import generate_texts
from rlaif.models import load_causal_lm, load_tokenizer


def test_the_models_own_generation_config_is_not_applied(peaked_tiny_model_dir):
    """A model whose generation_config sets min_p=1.0 (keep only the most likely token) would
    sample greedily whatever the seed; generation must sample from the plain temperature-scaled
    softmax that PPO's logprobs assume, so two seeds give two different samples."""
    model, tok = load_causal_lm(peaked_tiny_model_dir), load_tokenizer(peaked_tiny_model_dir)
    model.generation_config.min_p = 1.0
    model.generation_config.repetition_penalty = 50.0
    texts = ["Hello there", "What is the capital of France?"]
    sampling = Sampling(max_new_tokens=8, temperature=1.0)
    a = generate_texts(model, tok, texts, sampling, seed=1)
    b = generate_texts(model, tok, texts, sampling, seed=2)
    assert [g.token_ids for g in a] != [g.token_ids for g in b]
    # ... and greedy decoding equals the argmax of the model's own logits, with no penalty on top
    greedy = generate_texts(model, tok, texts[:1], Sampling(max_new_tokens=4, temperature=0.0))[0].token_ids
    ids = tok(texts[0], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        for t in greedy:
            nxt = model(input_ids=ids).logits[0, -1].argmax().item()
            assert nxt == t
            ids = torch.cat([ids, torch.tensor([[nxt]])], 1)
    # the model keeps its own generation_config for other callers
    assert model.generation_config.min_p == 1.0 and model.generation_config.repetition_penalty == 50.0
