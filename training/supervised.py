"""The one supervised training loop, shared by SFT and the reward model: AdamW over the
trainable parameters, gradient accumulation over micro-batches, data parallel over the ranks
of training.distributed, a progress bar, one metric row per step, and a stop on the first
non-finite loss or weight (nothing is saved then)."""

from __future__ import annotations

from typing import Callable, Iterable

import torch
from tqdm.auto import tqdm

from training import TrainingError
from training.distributed import Parallel


def fit(module: torch.nn.Module, batches: Callable[[torch.Generator], Iterable[torch.Tensor]],
        loss_fn: Callable[[torch.nn.Module, torch.Tensor], torch.Tensor], *, lr: float, epochs: int,
        steps_per_epoch: int, seed: int, name: str, metric: str, micro_batch_size: int | None = None,
        weights: torch.Tensor | None = None, parallel: Parallel = Parallel()) -> tuple[torch.nn.Module, list[dict]]:
    """Train `module` for `epochs` passes; returns (the module as trained, wrapped for the
    strategy: `parallel.plain` unwraps it; metric rows {step, metric, value, text}).

    `batches(generator)` yields one epoch's global batches as index tensors (the order drawn
    from the seeded generator, the same on every rank); `loss_fn(module, indices)` returns the
    *sum* of those examples' losses, computed through `module` (so DDP and FSDP see the
    forward pass). Each batch is one optimizer step, and its loss is that sum divided by the
    batch's total `weights` (one per example by default; SFT counts response tokens): the
    mean over the global batch, whichever rank and micro-batch an example falls in. Each rank
    takes its share of the batch (`parallel.share`) in micro-batches of `micro_batch_size`
    examples at most (None: the whole share), so memory holds one micro-batch's activations.
    """
    if epochs < 1 or steps_per_epoch < 1:
        raise TrainingError(f"{name}: epochs={epochs} with {steps_per_epoch} batches per epoch: no training step")
    module, opt = parallel.wrap(module, lambda params: torch.optim.AdamW(params, lr=lr))
    params = [p for p in module.parameters() if p.requires_grad]
    gen = torch.Generator().manual_seed(seed)
    metrics, step = [], 0
    module.train()
    with tqdm(total=epochs * steps_per_epoch, desc=name, unit="step", disable=not parallel.is_main) as bar:
        for _ in range(epochs):
            for batch in batches(gen):
                total = max(float(weights[batch].sum()), 1.0) if weights is not None else float(len(batch))
                share = parallel.share(batch)
                # every rank runs as many passes as the largest share needs, so each collective
                # (FSDP's per pass, DDP's on the last) is met by all; a pass with no examples runs
                # one example at weight 0
                largest = -(-len(batch) // parallel.world)
                n_micro = -(-largest // (micro_batch_size or largest))
                opt.zero_grad(set_to_none=True)
                loss = 0.0
                for i, micro in enumerate(share.tensor_split(n_micro)):
                    scale = parallel.world / total if len(micro) else 0.0  # DDP averages over ranks
                    micro = micro if len(micro) else batch[:1]
                    with parallel.no_sync(module, skip=i < n_micro - 1):
                        micro_loss = loss_fn(module, micro)
                        if not torch.isfinite(micro_loss):
                            raise TrainingError(f"{name}: non-finite loss at step {step}; nothing saved")
                        (micro_loss * scale).backward()
                    loss += micro_loss.item() * scale / parallel.world
                opt.step()
                loss = parallel.sum(loss)  # the global batch's mean loss
                metrics.append({"step": step, "metric": metric, "value": loss, "text": None})
                step += 1
                bar.update()
                bar.set_postfix(loss=f"{loss:.3f}")
    module.eval()
    # the last update is never followed by a loss: check the weights it wrote (this rank's shards)
    if not all(torch.isfinite(p.detach().to_local() if hasattr(p, "to_local") else p).all() for p in params):
        raise TrainingError(f"{name}: non-finite weights after step {step - 1}; nothing saved")
    return module, metrics
