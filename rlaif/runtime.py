"""Where models run: one object that says which device and dtype, and that captures and
restores the random state (CPU and CUDA). Loaders, engines and trainers receive it; nothing
else decides placement (CleanRL's single `device = ...` line, made an object).

    runtime = resolve("auto", "auto")                         # CUDA + bf16 on a GPU, else CPU + fp32
    model = load_causal_lm(name, runtime)                     # on runtime.device, in runtime.dtype
    batch = runtime.put(tokenizer(texts, return_tensors="pt")) # every tensor of the batch
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rlaif.config import DType


class DeviceError(ValueError):
    """A --device or --dtype this machine cannot honour."""


@dataclass(frozen=True)
class Runtime:
    device: torch.device
    dtype: torch.dtype

    @property
    def on_gpu(self) -> bool:
        return self.device.type == "cuda"

    @property
    def dtype_name(self) -> str:
        return str(self.dtype).removeprefix("torch.")

    def put(self, batch):
        """A tensor, or a mapping of them (a tokenizer's output), on this device. Integer
        tensors keep their dtype; only models are cast."""
        if isinstance(batch, torch.Tensor):
            return batch.to(self.device)
        return type(batch)({k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()})

    def place(self, module: torch.nn.Module) -> torch.nn.Module:
        """A model (or head) on this device, in this dtype."""
        return module.to(device=self.device, dtype=self.dtype)

    def generator(self, seed: int) -> torch.Generator:
        """A seeded generator on the CPU: index permutations stay the same on every device."""
        return torch.Generator().manual_seed(seed)

    # -- random state: PPO's checkpoints save and restore both, so a resumed run samples the same
    def rng_state(self) -> dict:
        state = {"cpu": torch.get_rng_state()}
        if self.on_gpu:
            state["cuda"] = torch.cuda.get_rng_state(self.device)
        return state

    def set_rng_state(self, state: dict | torch.Tensor) -> None:
        if isinstance(state, torch.Tensor):  # written before the CUDA state was kept
            state = {"cpu": state}
        torch.set_rng_state(state["cpu"])
        if self.on_gpu and "cuda" in state:
            torch.cuda.set_rng_state(state["cuda"], self.device)


CPU = Runtime(torch.device("cpu"), torch.float32)


def resolve(device: str = "auto", dtype: DType = "auto") -> Runtime:
    """`auto` made concrete: CUDA and bfloat16 when a GPU is visible, else the CPU and float32
    (bfloat16 matmuls are slow on most CPUs, and float32 keeps the engines' logprobs within
    1e-3 of each other). A device that is not there is an error that names it, not a silent
    fall back to the CPU."""
    asked = device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise DeviceError(f"--device {asked!r}: not a device (expected auto, cpu, cuda or cuda:N)") from e
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"--device {asked!r}: expected auto, cpu, cuda or cuda:N")
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"--device {asked!r}: no CUDA GPU is visible to this process")
        index = device.index or 0
        if index >= torch.cuda.device_count():
            raise DeviceError(f"--device {asked!r}: only {torch.cuda.device_count()} GPU(s) visible")
        device = torch.device("cuda", index)
    if dtype not in ("auto", "float32", "bfloat16"):
        raise DeviceError(f"--dtype {dtype!r}: expected auto, float32 or bfloat16")
    dtype = dtype if dtype != "auto" else ("bfloat16" if device.type == "cuda" else "float32")
    return Runtime(device, getattr(torch, dtype))
