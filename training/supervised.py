"""The one supervised training loop, shared by SFT and the reward model: AdamW over the
trainable parameters, gradient accumulation over micro-batches, a progress bar, one metric
row per step, and a stop on the first non-finite loss or weight (nothing is saved then)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from training import TrainingError


def fit(model, batches: Callable[[torch.Generator], Iterable[torch.Tensor]],
        loss_fn: Callable[[torch.Tensor], torch.Tensor], *, lr: float, epochs: int, steps_per_epoch: int,
        seed: int, name: str, metric: str, micro_batch_size: int | None = None) -> list[dict]:
    """Train `model` for `epochs` passes; returns metric rows {step, metric, value, text}.

    `batches(generator)` yields one epoch's batches as index tensors (the order drawn from the
    seeded generator); `loss_fn(indices)` returns the mean loss of those examples. Each batch
    is one optimizer step, its forward and backward passes taken `micro_batch_size` examples
    at a time (None: the whole batch), each micro-batch's loss weighted by its share of the
    batch: the same gradient as one pass over the batch, with the activations of a
    micro-batch only (the reward model's peak memory is its activations).
    """
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
                opt.zero_grad(set_to_none=True)
                loss = 0.0
                for micro in batch.split(micro_batch_size or len(batch)):
                    micro_loss = loss_fn(micro) * (len(micro) / len(batch))
                    if not torch.isfinite(micro_loss):
                        raise TrainingError(f"{name}: non-finite loss at step {step}; nothing saved")
                    micro_loss.backward()
                    loss += micro_loss.item()
                opt.step()
                metrics.append({"step": step, "metric": metric, "value": loss, "text": None})
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    model.eval()
    # the last update is never followed by a loss: check the weights it wrote
    if not all(torch.isfinite(p).all() for p in params):
        raise TrainingError(f"{name}: non-finite weights after step {step - 1}; nothing saved")
    return metrics
