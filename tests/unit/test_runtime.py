"""The runtime: where models run, and the random state a checkpoint carries."""

import pytest
import torch

from rlaif.runtime import CPU, DeviceError, resolve


def test_auto_is_the_cpu_in_float32_without_a_gpu():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve() == resolve("auto", "auto") == CPU
    assert resolve("cpu", "bfloat16").dtype == torch.bfloat16


@pytest.mark.parametrize("device, message", [("gpu", "not a device"), ("tpu", "expected auto, cpu"),
                                              ("cuda:7", "GPU")])
def test_a_device_this_machine_lacks_is_an_error_naming_it(device, message):
    if device.startswith("cuda") and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    with pytest.raises(DeviceError, match=message):
        resolve(device)
    with pytest.raises(DeviceError, match="--dtype 'fp8'"):
        resolve("cpu", "fp8")


def test_rng_state_round_trips_and_reads_the_older_cpu_only_form():
    state = CPU.rng_state()
    a = torch.rand(3)
    CPU.set_rng_state(state)
    assert torch.equal(torch.rand(3), a)
    CPU.set_rng_state(state["cpu"])  # a checkpoint written before CUDA state was kept
    assert torch.equal(torch.rand(3), a)


def test_put_moves_a_tokenizer_batch_and_place_casts_a_model():
    batch = CPU.put({"input_ids": torch.ones(1, 2, dtype=torch.long), "n": 3})
    assert batch["input_ids"].dtype == torch.long and batch["n"] == 3
    bf16 = resolve("cpu", "bfloat16")
    assert bf16.place(torch.nn.Linear(2, 2)).weight.dtype == torch.bfloat16
