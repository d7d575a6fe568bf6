"""Training across processes, on accelerate and torchrun.

    num_processes 1 (the default)   the stage runs in the caller's process, as it always did
    num_processes N                 `launch`: the stage's arguments are pickled into a folder,
                                    `torchrun --standalone --nproc_per_node N -m training.distributed
                                    FOLDER` starts N ranks, each runs the same trainer, and the
                                    caller reads back what rank 0 wrote
    accelerate_config FILE          the same, started by `accelerate launch --config_file FILE`
                                    (GPUs, several machines; training/accelerate/*.yaml)

Inside a trainer, `Parallel` is all that differs from one process: which rank this is, this
rank's share of a global batch, the module that trains wrapped for the strategy (DDP through
`Accelerator.prepare`, or FSDP2's `fully_shard` per decoder layer), sums over ranks, and who
writes. Every file a stage writes (models, checkpoints, Parquet parts, reports) comes from
rank 0 only, so N ranks never write a row twice.

On CPU, torchrun gives N processes on the gloo backend; `accelerate launch --cpu
--num_processes N` starts one process here (accelerate 1.15), and accelerate's own FSDP
plugin falls back to DDP on CPU, which is why FSDP is applied here with torch's `fully_shard`.
"""

from __future__ import annotations

import importlib
import os
import pickle
import shutil
import signal
import subprocess
import sys
import traceback
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rlaif.io import write_file_atomic
from rlaif.runtime import Runtime
from training import TrainingError
from training.config import DistributedConfig


@dataclass
class Parallel:
    """This process's place among the ranks of one training stage. The default, one process,
    wraps nothing and sums nothing."""

    accelerator: object | None = None  # accelerate.Accelerator; None: one process, no accelerate
    strategy: str = "ddp"

    @property
    def world(self) -> int:
        return self.accelerator.num_processes if self.accelerator else 1

    @property
    def rank(self) -> int:
        return self.accelerator.process_index if self.accelerator else 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, batch: torch.Tensor) -> torch.Tensor:
        """This rank's contiguous share of a global batch (of indices); the shares of a batch
        that does not divide differ by one, and a rank may get none."""
        return batch.tensor_split(self.world)[self.rank]

    def wrap(self, module: torch.nn.Module, make_optimizer: Callable[[list], torch.optim.Optimizer]):
        """The module that trains, ready for this strategy, and its optimizer over the
        trainable parameters (made after sharding: FSDP2 replaces them with shards)."""
        if self.world > 1 and self.strategy == "fsdp":
            from torch.distributed.fsdp import fully_shard

            blocks = set(getattr(_inner(module), "_no_split_modules", None) or ())
            for sub in module.modules():  # each decoder layer is one unit, then the rest
                if type(sub).__name__ in blocks:
                    fully_shard(sub)
            fully_shard(module)
        optimizer = make_optimizer([p for p in module.parameters() if p.requires_grad])
        if self.world > 1 and self.strategy == "ddp":
            module, optimizer = self.accelerator.prepare(module, optimizer)
        return module, optimizer

    def no_sync(self, module, skip: bool):
        """Skip DDP's gradient all-reduce on a backward pass that is not the batch's last."""
        return self.accelerator.no_sync(module) if skip and self.world > 1 and self.strategy == "ddp" else nullcontext()

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """`t` summed over the ranks, on every rank (on t's device)."""
        if self.world == 1:
            return t
        return self.accelerator.reduce(t.to(self.accelerator.device), "sum").to(t.device)

    def sum(self, value: float) -> float:
        return float(self.all_sum(torch.tensor(value, dtype=torch.float64)))

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        from accelerate.utils import gather_object

        return gather_object([obj])

    def plain(self, module: torch.nn.Module, rebuild: Callable[[], torch.nn.Module]) -> torch.nn.Module | None:
        """After training: the trained module as a plain one (no DDP or FSDP wrapper) on rank 0,
        None on the others. Under FSDP every rank takes part in gathering the full weights,
        which rank 0 loads into a fresh module from `rebuild()`."""
        if self.world == 1:
            return module
        if self.strategy == "fsdp":
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

            state = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if not self.is_main:
                return None
            fresh = rebuild()
            fresh.load_state_dict(state)
            return fresh.eval()
        return self.accelerator.unwrap_model(module) if self.is_main else None


def _inner(module):
    """The transformers model inside a peft wrapper or one of the trainers' small modules."""
    for _ in range(4):
        if hasattr(module, "_no_split_modules"):
            return module
        module = getattr(module, "model", None) or getattr(module, "base_model", None)
        if module is None:
            break
    return module


# ---------------------------------------------------------------- launching a stage

def run_stage(fn: Callable, kwargs: dict, cfg: DistributedConfig, runtime: Runtime, folder: Path):
    """fn(**kwargs, runtime=runtime) in this process, or `launch`ed across processes when `cfg`
    asks for more than one (`folder` then holds the launch's files)."""
    if not cfg.launched:
        return fn(**kwargs, runtime=runtime)
    return launch(f"{fn.__module__}:{fn.__qualname__}", kwargs, cfg, runtime, folder)


def launch(target: str, kwargs: dict, cfg: DistributedConfig, runtime: Runtime, folder: Path):
    """Run `target` ("package.module:function", called as fn(**kwargs, runtime=, parallel=))
    on cfg.num_processes ranks (or as cfg.accelerate_config says) and return what rank 0
    returned. A rank that fails fails the stage with that rank's error. The arguments must
    pickle: data frames, configs and paths, not open models or judges."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in [*folder.glob("error-rank*.txt"), folder / "result.pkl"]:
        old.unlink(missing_ok=True)
    spec = {"target": target, "kwargs": kwargs, "device": runtime.device.type, "dtype": runtime.dtype_name,
            "strategy": cfg.strategy}
    write_file_atomic(folder / "spec.pkl", lambda tmp: tmp.write_bytes(pickle.dumps(spec)))
    if cfg.accelerate_config:
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", cfg.accelerate_config]
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
               str(cfg.num_processes)]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(_root()), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([*_ending_with_this_process(), *cmd, "-m", "training.distributed", str(folder)], env=env)
    try:
        proc.wait()
    except BaseException:  # a cancelled flow run (Prefect raises TerminationSignal on SIGTERM), Ctrl-C
        stop_launcher(proc)
        raise
    errors = sorted(folder.glob("error-rank*.txt"))
    if proc.returncode != 0 or errors:
        if errors:
            first = errors[0].read_text().strip().splitlines()
            raise TrainingError(f"{target}: {errors[0].stem.removeprefix('error-')} failed: {first[-1]} "
                                f"(traceback in {errors[0]})")
        raise TrainingError(f"{target}: the launcher exited with status {proc.returncode} before any rank "
                            f"reported an error (command: {' '.join(cmd)})")
    result = folder / "result.pkl"
    if not result.exists():
        raise TrainingError(f"{target}: rank 0 finished without writing {result}")
    result = pickle.loads(result.read_bytes())
    if not cfg.accelerate_config and result["world"] != cfg.num_processes:
        raise TrainingError(f"{target}: asked for {cfg.num_processes} processes, the launcher started "
                            f"{result['world']}")
    shutil.rmtree(folder, ignore_errors=True)  # a copy of the stage's inputs; kept only when it failed
    return result["out"]


def _root() -> Path:
    return Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------- no rank outlives its launch
#
# torchrun starts each rank in a session of its own, so neither a signal to the flow's process
# group nor the death of torchrun reaches the ranks: a cancelled or killed flow run would leave
# them training, writing PPO's checkpoint under a rerun's feet. Three links close that:
# - the flow's process, interrupted while it waits (SIGTERM -> Prefect's TerminationSignal,
#   Ctrl-C), stops the launcher first: SIGTERM, which torchrun passes on to every rank's group;
# - the launcher gets SIGTERM from the kernel when the flow's process dies, however it dies
#   (SIGKILL included: the runner's kill after its grace period, the OOM killer);
# - each rank gets SIGKILL from the kernel when its launcher dies.
# (Linux: prctl's PR_SET_PDEATHSIG; elsewhere only the first link holds.)

STOP_GRACE_S = 15  # for torchrun to stop its ranks; under the 30 s a Prefect runner waits before SIGKILL
_LAUNCHER_PID = "RLAIF_LAUNCHER_PID"
_PR_SET_PDEATHSIG = 1

# Run as `python -c _EXEC_DYING_WITH_PARENT PARENT_PID PROGRAM ARGS...`: arm the parent-death signal,
# give up if the parent is already gone, then exec the launcher (the signal survives exec).
_EXEC_DYING_WITH_PARENT = (
    "import ctypes, os, signal, sys\n"
    f"ctypes.CDLL(None).prctl({_PR_SET_PDEATHSIG}, signal.SIGTERM, 0, 0, 0)\n"
    "if os.getppid() != int(sys.argv[1]): sys.exit(143)\n"
    f"os.environ[{_LAUNCHER_PID!r}] = str(os.getpid())\n"
    "os.execv(sys.argv[2], sys.argv[2:])\n"
)


def _ending_with_this_process() -> list[str]:
    """The launcher's command prefix that makes it end with this process (Linux), else none."""
    if not sys.platform.startswith("linux"):
        return []
    return [sys.executable, "-c", _EXEC_DYING_WITH_PARENT, str(os.getpid())]


def stop_launcher(proc: subprocess.Popen, grace: float = STOP_GRACE_S) -> None:
    """SIGTERM the launcher (torchrun then stops its ranks and exits), SIGKILL it after `grace`
    seconds (its ranks die with it)."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _die_with_launcher() -> None:
    """In a rank: SIGKILL from the kernel when the launcher dies; exit now if it already has."""
    launcher = os.environ.get(_LAUNCHER_PID)
    if not launcher or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    try:
        os.kill(int(launcher), 0)
    except ProcessLookupError:
        raise SystemExit(f"rank of launcher {launcher}: the launcher is gone") from None


def main(folder: str) -> None:
    """One rank: run the stage the spec names, under an Accelerator on this rank's device."""
    _die_with_launcher()
    from accelerate import Accelerator

    folder = Path(folder)
    spec = pickle.loads((folder / "spec.pkl").read_bytes())
    accelerator = Accelerator(cpu=spec["device"] == "cpu")
    try:
        kind = accelerator.distributed_type.value  # what an accelerate config file asked for
        if kind == "DEEPSPEED":
            raise TrainingError("DeepSpeed configs are not supported: the trainers call backward and step "
                                "themselves; use DDP or --train.strategy fsdp (docs/distributed.md)")
        strategy = "fsdp" if kind == "FSDP" else spec["strategy"]  # FSDP is applied here, with fully_shard
        runtime = Runtime(accelerator.device if spec["device"] == "cuda" else torch.device("cpu"),
                          getattr(torch, spec["dtype"]))
        module, name = spec["target"].split(":")
        fn = getattr(importlib.import_module(module), name)
        out = fn(**spec["kwargs"], runtime=runtime, parallel=Parallel(accelerator, strategy))
        if accelerator.is_main_process:
            result = {"world": accelerator.num_processes, "out": out}
            write_file_atomic(folder / "result.pkl", lambda tmp: tmp.write_bytes(pickle.dumps(result)))
        accelerator.wait_for_everyone()
    except BaseException:
        (folder / f"error-rank{accelerator.process_index}.txt").write_text(traceback.format_exc())
        raise
    finally:
        accelerator.end_training()


if __name__ == "__main__":
    main(sys.argv[1])
