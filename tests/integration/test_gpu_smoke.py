"""The GPU smoke check (bench/gpu_smoke.py) runs here on the CPU, as a GPU machine runs it on
CUDA: SFT, reward model and PPO on a tiny model from a config, every parameter and loss on the
asked device and finite, nothing from Prefect or vLLM imported."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_smoke_script_passes_on_the_cpu():
    out = subprocess.run([sys.executable, "bench/gpu_smoke.py", "--device", "cpu", "--ppo-steps", "2"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.rstrip().endswith("gpu smoke: ok")
    report = json.loads(out.stdout[:out.stdout.rindex("}") + 1])
    assert (report["device"], report["dtype"], report["imported"]) == ("cpu", "float32", [])
    assert {k: v["steps"] for k, v in report["stages"].items()} == {"sft": 4, "reward": 4, "ppo": 2}
    assert all(v["losses_checked"] >= v["steps"] and v["parameter_uses_checked"] > 0 for v in report["stages"].values())


def test_the_smoke_check_catches_a_model_left_on_another_device(monkeypatch):
    """The check can fail: a stage whose parameter is not where the runtime says is reported."""
    import torch

    sys.path.insert(0, str(ROOT))
    from bench.gpu_smoke import Watch
    from rlaif.runtime import Runtime

    elsewhere = Runtime(torch.device("cuda"), torch.float32)  # what the CPU model should have been on
    with Watch(elsewhere) as watch:
        loss = torch.nn.Linear(2, 1)(torch.ones(1, 2)).sum()
        loss.backward()
    assert len(watch.bad) == 3 and "on cpu" in watch.bad[0]  # weight, bias, and the loss
