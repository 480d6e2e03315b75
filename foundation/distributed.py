"""Helpers around accelerate's process group: sharding work, gathering results, stopping together on a signal.

Data parallelism and sharding themselves come from accelerate (DDP/FSDP/DeepSpeed); nothing here reduces
gradients by hand. torch, accelerate and the checkpoint module (which needs torch) are imported inside the
functions that use them: the API scripts import this module too and never need torch.
"""
from __future__ import annotations

import signal
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterator, Sequence, TypeVar

from foundation.errors import UserInputError

if TYPE_CHECKING:
    from foundation.config import RunConfig

T = TypeVar("T")


def shard(items: Sequence[T], rank: int, world_size: int) -> list[T]:
    """This process's share of a list: items[rank::world_size] (a strided split keeps shards balanced and the
    merged order recoverable)."""
    return list(items[rank::world_size])


def gather_objects(accelerator, obj: Any) -> list[Any]:
    """[obj of rank 0, obj of rank 1, ...] on every process (picklable objects)."""
    if accelerator.num_processes == 1:
        return [obj]
    import torch.distributed as dist

    out: list[Any] = [None] * accelerator.num_processes
    dist.all_gather_object(out, obj)
    return out


def any_process(accelerator, flag: bool) -> bool:
    """True on every process if flag is True on at least one (so all processes stop at the same step)."""
    if accelerator.num_processes == 1:
        return bool(flag)
    import torch

    t = torch.tensor([1.0 if flag else 0.0], device=accelerator.device)
    return bool(accelerator.reduce(t, reduction="sum").item() > 0)


class StopRequest:
    """SIGTERM/SIGINT set a flag instead of killing the process, so a training loop can finish its step, save a
    checkpoint and exit cleanly (cluster preemption). A second signal of the same kind restores the default
    behaviour (a second Ctrl-C kills at once)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "StopRequest":
        for s in self.SIGNALS:
            try:
                self._previous[s] = signal.signal(s, self._handle)
            except ValueError:  # not the main thread: signals cannot be caught here
                pass
        return self

    def _handle(self, signum, frame) -> None:  # noqa: ARG002
        if self.signal_name is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.signal_name = signal.Signals(signum).name

    @property
    def requested(self) -> bool:
        return self.signal_name is not None

    def __exit__(self, *exc) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)


@contextmanager
def locked_run(accelerator, output_dir: str, flag: str = "--output_dir", lock_name: str | None = None
               ) -> Iterator[None]:
    """A run's hold on its output dir: the main process takes the run lock (checkpoints.RunLock; `lock_name`, e.g.
    one per result file, instead of the dir's .lock) and every process raises the same one-line UserInputError when
    another run holds it; on exit the lock is released and the process group torn down."""
    from foundation.files import LOCK_FILE, RunLock
    from foundation.errors import UserInputError

    lock = RunLock(output_dir, flag=flag, name=lock_name or LOCK_FILE)
    err = None
    if accelerator.is_main_process:
        try:
            lock.acquire()
        except UserInputError as e:
            err = str(e)
    errors = [e for e in gather_objects(accelerator, err) if e]
    if errors:
        raise UserInputError(errors[0])
    try:
        yield
    finally:
        lock.release()
        if accelerator.num_processes > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def is_sharded(accelerator) -> bool:
    """Whether the run shards weights and optimiser state (FSDP or DeepSpeed), so saving, loading and gradient
    clipping must be collective."""
    from accelerate.utils import DistributedType

    return accelerator.distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED)


def resolve_device(device: str | None = None):
    """auto -> cuda when available, else cpu; an explicit device is checked (one-line error)."""
    import torch

    if device in (None, "", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"--device {device}: CUDA is not available on this machine; use --device cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise UserInputError(f"--device {device!r}: {e}")


def build_accelerator(cfg, gradient_accumulation_steps: int = 1):
    """accelerate's Accelerator for a run (cfg: a RunConfig): CPU or GPU, mixed precision from --dtype/--pure_bf16,
    gradient accumulation, trackers."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    dev = resolve_device(cfg.device)
    if dev.type == "cuda" and dev.index is not None:
        torch.cuda.set_device(dev)
    if cfg.pure_bf16:
        mixed = "no"
    elif cfg.dtype == "auto":
        mixed = ("bf16" if torch.cuda.is_bf16_supported() else "fp16") if dev.type == "cuda" else "no"
    else:
        mixed = {"bf16": "bf16", "fp16": "fp16", "fp32": "no"}[cfg.dtype]
    # Buffers (rotary tables) are constant: not broadcasting them keeps every forward free of collectives, so
    # processes may run different numbers of no-grad forwards (evaluation) without deadlock.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    return Accelerator(cpu=dev.type == "cpu", mixed_precision=mixed,
                       gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=[ddp],
                       log_with=None if cfg.report_to == "none" else cfg.report_to, project_dir=cfg.output_dir)


def init_tracking(accelerator, project: str, cfg) -> bool:
    """accelerate's experiment trackers (--report_to) with the run's scalar settings as their config; returns
    whether tracking is on (then accelerator.log and accelerator.end_training apply)."""
    if getattr(cfg, "report_to", "none") == "none":
        return False
    accelerator.init_trackers(project, config={k: v for k, v in cfg.to_dict().items()
                                               if isinstance(v, (int, float, str, bool))})
    return True


def step_resources(device, started: float) -> dict[str, float]:
    """What one training step took, for metrics.jsonl: step_seconds since `started` (time.time()) and, on CUDA,
    this process's peak_mem_gb since the previous call (the peak is reset for the next step)."""
    import torch

    out = {"step_seconds": time.time() - started}
    if torch.device(device).type == "cuda":
        out["peak_mem_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    return out


def mean_over_processes(accelerator, stats: dict[str, float]) -> dict[str, float]:
    """The mean of each scalar over all processes (float64, one all-reduce), keys in stats' order (the same code
    builds stats on every process, so the order agrees)."""
    import torch

    if not stats:
        return {}
    t = torch.tensor([float(v) for v in stats.values()], dtype=torch.float64, device=accelerator.device)
    return dict(zip(stats, accelerator.reduce(t, reduction="mean").cpu().tolist()))


def max_over_processes(accelerator, stats: dict[str, float]) -> dict[str, float]:
    """The maximum of each scalar over all processes (one gather), keys in stats' order."""
    import torch

    if not stats:
        return {}
    t = torch.tensor([float(v) for v in stats.values()], dtype=torch.float64, device=accelerator.device)
    return dict(zip(stats, accelerator.gather(t[None]).max(0).values.cpu().tolist()))


class TrainerProcess:
    """What one process of a training run knows about itself; the trainers (PL-PPO, RRec) build on it."""

    def __init__(self, cfg: RunConfig, accelerator) -> None:
        self.cfg, self.acc = cfg, accelerator
        self.out = Path(cfg.output_dir)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process

    def train(self) -> dict[str, Any]:  # pragma: no cover - every trainer implements it
        raise NotImplementedError


def run_trainer(cfg: RunConfig, make_trainer: Callable[[Any, Any], TrainerProcess]) -> dict[str, Any]:
    """A training run from a validated-on-the-spot config (a foundation.config.RunConfig): the output dir checked,
    the accelerator built, the run lock held while make_trainer(cfg, accelerator).train() runs. Bad input raises
    UserInputError on every process, so all of them stop."""
    from foundation.checkpoints import check_output_dir

    cfg.validate()
    check_output_dir(cfg.output_dir, cfg.resume_from, cfg.overwrite_output_dir)
    accelerator = build_accelerator(cfg, getattr(cfg, "gradient_accumulation_steps", 1))
    with locked_run(accelerator, cfg.output_dir):
        return make_trainer(cfg, accelerator).train()
