"""The one supervised training loop, shared by SFT and the reward model: AdamW over the
trainable parameters, a progress bar, one metric row per step, and a stop on the first
non-finite loss or weight (nothing is saved then)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from training import TrainingError


def fit(model, batches: Callable[[torch.Generator], Iterable], loss_fn: Callable[[object], torch.Tensor], *,
        lr: float, epochs: int, steps_per_epoch: int, seed: int, name: str, metric: str) -> list[dict]:
    """Train `model` for `epochs` passes. `batches(generator)` yields one epoch's batches (its
    order drawn from the seeded generator); `loss_fn(batch)` returns the scalar loss.
    Returns metric rows {step, metric, value, text}."""
    if epochs < 1 or steps_per_epoch < 1:
        raise TrainingError(f"{name}: epochs={epochs} with {steps_per_epoch} batches per epoch: no training step")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    metrics, step = [], 0
    model.train()
    with tqdm(total=epochs * steps_per_epoch, desc=name, unit="step") as bar:
        for _ in range(epochs):
            for batch in batches(gen):
                loss = loss_fn(batch)
                if not torch.isfinite(loss):
                    raise TrainingError(f"{name}: non-finite loss at step {step}; nothing saved")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                metrics.append({"step": step, "metric": metric, "value": loss.item(), "text": None})
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss.item():.3f}")
    model.eval()
    # the last update is never followed by a loss: check the weights it wrote
    if not all(torch.isfinite(p).all() for p in params):
        raise TrainingError(f"{name}: non-finite weights after step {step - 1}; nothing saved")
    return metrics
