"""Generation uses exactly the sampling settings the trainer assumes (the transformers engine)."""

import torch

from rlaif.config import Sampling, Transformers
from rlaif.engines import make_engine
from rlaif.models import load_causal_lm, load_tokenizer


def generate_texts(model, tok, texts, sampling, seed=0, logprobs=False):
    engine = make_engine(Transformers(batch_size=16), tok.name_or_path, module=model)
    return engine.generate(texts, sampling, seed=seed, logprobs=logprobs)


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


def test_sampled_logprobs_are_the_temperature_scaled_softmax(peaked_tiny_model_dir):
    """The logprobs an engine returns are those PPO's trainer recomputes: log_softmax(logits / T)
    of each sampled token, teacher-forced (rollout/logprob_diff is ~0 on this engine)."""
    model, tok = load_causal_lm(peaked_tiny_model_dir), load_tokenizer(peaked_tiny_model_dir)
    text, T = "Tell me a story", 0.7
    g = generate_texts(model, tok, [text], Sampling(max_new_tokens=6, temperature=T), seed=3, logprobs=True)[0]
    assert len(g.logprobs) == len(g.token_ids) == g.n_tokens > 0
    ids = tok(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    full = torch.cat([ids, torch.tensor([g.token_ids])], 1)
    with torch.no_grad():
        logits = model(input_ids=full).logits[0, ids.shape[1] - 1:-1] / T  # (R, V): predicts each response token
    expect = torch.log_softmax(logits, -1).gather(-1, torch.tensor(g.token_ids)[:, None])[:, 0]
    torch.testing.assert_close(torch.tensor(g.logprobs), expect, atol=1e-4, rtol=0)
