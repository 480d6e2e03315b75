"""Helpers around accelerate's process group: the accelerator a launch asked for (DDP, FSDP2 also on CPU,
DeepSpeed only on CUDA), the one line saying which distribution a run got, metrics to metrics.jsonl and the
trackers, sharding work, gathering results, stopping together on a signal.

Data parallelism and sharding themselves come from accelerate (DDP/FSDP/DeepSpeed); nothing here reduces
gradients by hand. torch, accelerate and the checkpoint module (which needs torch) are imported inside the
functions that use them: the API scripts import this module too and never need torch.
"""
from __future__ import annotations

import math
import os
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


def requested_distribution() -> dict[str, Any]:
    """What `accelerate launch --config_file X` asked for, from the environment it sets for every process:
    {"kind": "fsdp"|"deepspeed"|"ddp"|"single", plus "fsdp_version" / "zero_stage" / "gradient_clipping"}."""
    env = os.environ
    if env.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        return {"kind": "deepspeed", "zero_stage": env.get("ACCELERATE_DEEPSPEED_ZERO_STAGE", "?"),
                "gradient_clipping": env.get("ACCELERATE_GRADIENT_CLIPPING")}
    if env.get("ACCELERATE_USE_FSDP", "false").lower() == "true":
        return {"kind": "fsdp", "fsdp_version": env.get("FSDP_VERSION", "1")}
    world = int(env.get("WORLD_SIZE", "1") or 1)
    return {"kind": "ddp" if world > 1 else "single"}


def refuse_unavailable_distribution(device_type: str, fsdp_on_cpu: bool = True) -> dict[str, Any]:
    """The launch's request, or a one-line UserInputError where it cannot run here, instead of accelerate's silent
    fallback to DDP: DeepSpeed needs CUDA; FSDP on a CPU needs FSDP2 (fsdp_version: 2) and a trainer that supports
    it (fsdp_on_cpu)."""
    req = requested_distribution()
    if req["kind"] == "deepspeed" and device_type != "cuda":
        raise UserInputError(f"the accelerate config asks for DeepSpeed ZeRO-{req['zero_stage']}, which needs CUDA "
                             f"GPUs; this run is on the {device_type}, so it is refused rather than run as plain DDP "
                             "(on a CPU use configs/accelerate/fsdp.yaml, which shards, or ddp.yaml)")
    if req["kind"] == "fsdp" and device_type == "cpu":
        if not fsdp_on_cpu:
            raise UserInputError("the accelerate config asks for FSDP, which this trainer runs only on GPUs; on a CPU "
                                 "launch it with configs/accelerate/ddp.yaml")
        if req["fsdp_version"] != "2":
            raise UserInputError(f"the accelerate config asks for FSDP version {req['fsdp_version']}; on a CPU only "
                                 "FSDP2 runs (fsdp_version: 2, as in configs/accelerate/fsdp.yaml)")
    return req


def _enable_fsdp_on_cpu(accelerator) -> None:
    """accelerate turns an FSDP launch into plain DDP (MULTI_CPU) on a CPU: its state switches to FSDP only for
    accelerator devices. FSDP2 itself (fully_shard) runs over gloo, so the state is set to what the launch asked
    for, with the plugin built from the launch's environment, before anything is prepared."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin()  # reads FSDP_* as accelerate launch set them
    if accelerator.mixed_precision != "no":
        plugin.set_mixed_precision(accelerator.mixed_precision)
    accelerator.state.fsdp_plugin = plugin
    accelerator.state.distributed_type = DistributedType.FSDP  # AcceleratorState's shared state
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP


def build_accelerator(cfg, gradient_accumulation_steps: int = 1, fsdp_on_cpu: bool = True):
    """accelerate's Accelerator for a run (cfg: a RunConfig): CPU or GPU, the distribution the launch asked for (FSDP2
    also on a CPU; DeepSpeed refused off CUDA), mixed precision from --dtype/--pure_bf16, gradient accumulation,
    trackers writing into --output_dir."""
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs

    dev = resolve_device(cfg.device)
    req = refuse_unavailable_distribution(dev.type, fsdp_on_cpu=fsdp_on_cpu)
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
    accelerator = Accelerator(cpu=dev.type == "cpu", mixed_precision=mixed,
                              gradient_accumulation_steps=gradient_accumulation_steps, kwargs_handlers=[ddp],
                              log_with=None if cfg.report_to == "none" else cfg.report_to,
                              project_dir=cfg.output_dir)
    if req["kind"] == "fsdp" and dev.type == "cpu":
        _enable_fsdp_on_cpu(accelerator)
    return accelerator


def uses_deepspeed(accelerator) -> bool:
    from accelerate.utils import DistributedType

    return accelerator.distributed_type == DistributedType.DEEPSPEED


def configure_deepspeed(accelerator, micro_batch_size: int, max_grad_norm: float) -> None:
    """What DeepSpeed must know before prepare() when no dataloader is prepared: the micro-batch size, and the
    gradient clipping, which DeepSpeed applies in its engine. --max_grad_norm is the one clipping setting: a config
    file with its own gradient_clipping is refused unless the two agree (0 = off in both)."""
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is None:
        return
    given = requested_distribution().get("gradient_clipping")
    if given not in (None, "", "auto", "none") and not math.isclose(float(given), max(0.0, max_grad_norm)):
        raise UserInputError(f"the accelerate config sets gradient_clipping {given}, but --max_grad_norm "
                             f"{max_grad_norm} is this run's clipping; remove gradient_clipping from the config "
                             "(or pass the same value)")
    plugin.deepspeed_config["train_micro_batch_size_per_gpu"] = micro_batch_size
    plugin.deepspeed_config["gradient_clipping"] = max(0.0, float(max_grad_norm))


def describe_distribution(accelerator, model=None) -> dict[str, Any]:
    """What a run actually got, after accelerator.prepare: the mode (single process, DDP, FSDP2 with its units,
    DeepSpeed ZeRO-n), processes, backend and device, the weights' dtype and mixed precision, the attention
    kernel. model: the prepared model (default: the first one accelerate prepared)."""
    from accelerate.utils import DistributedType

    if model is None and getattr(accelerator, "_models", None):
        model = accelerator._models[0]
    kind = accelerator.distributed_type
    out: dict[str, Any] = {"processes": accelerator.num_processes, "device": accelerator.device.type,
                           "backend": getattr(accelerator.state, "backend", None) or "none"}
    if kind == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        out["mode"] = f"FSDP{plugin.fsdp_version}"
        if model is not None:
            try:
                from torch.distributed.fsdp import FSDPModule
                units = [type(m).__name__.removeprefix("FSDP") for m in model.modules()
                         if isinstance(m, FSDPModule) and m is not model]
            except ImportError:
                units = []
            out["sharding"] = (f"fully_shard on {len(units)} {'/'.join(sorted(set(units))) or 'modules'} + root; "
                               f"{str(plugin.state_dict_type).split('.')[-1]} checkpoints")
    elif kind == DistributedType.DEEPSPEED:
        cfg = accelerator.state.deepspeed_plugin.deepspeed_config
        out["mode"] = f"DeepSpeed ZeRO-{cfg.get('zero_optimization', {}).get('stage', '?')}"
        out["gradient_clipping"] = cfg.get("gradient_clipping")
    elif kind == DistributedType.NO:
        out["mode"] = "single process"
    else:
        out["mode"] = "DDP"
    out["mixed_precision"] = accelerator.mixed_precision
    if model is not None:
        inner = accelerator.unwrap_model(model)
        p = next(inner.parameters(), None)
        out["weights"] = str(p.dtype).removeprefix("torch.") if p is not None else None
        attn = getattr(inner, "attn_implementation", None)
        if attn is None:
            config = getattr(getattr(inner, "base_lm", lambda: inner)(), "config", None)
            attn = getattr(config, "_attn_implementation", None)
        out["attention"] = attn
    return out


def distribution_line(d: dict[str, Any]) -> str:
    """describe_distribution's dict as the one line a trainer prints at start."""
    mode = d["mode"] + (f" ({d['sharding']})" if d.get("sharding") else "")
    if d.get("gradient_clipping") is not None:
        mode += f" (clipping {d['gradient_clipping']})"
    where = d["device"] if d["backend"] == "none" else f"{d['backend']} on {d['device']}"
    line = (f"distribution: {mode}, {d['processes']} process{'es' if d['processes'] != 1 else ''} ({where}), "
            f"mixed precision {d['mixed_precision']}")
    if d.get("weights"):
        line += f", {d['weights']} weights"
    if d.get("attention"):
        line += f", attention {d['attention']}"
    return line


def init_tracking(accelerator, project: str, cfg) -> bool:
    """accelerate's experiment trackers (--report_to) with the run's scalar settings as their config, writing into
    --output_dir (tensorboard: {output_dir}/{project}/, wandb: {output_dir}/wandb/, never the working directory);
    returns whether tracking is on (then log_metrics forwards every record and accelerator.end_training applies)."""
    if getattr(cfg, "report_to", "none") == "none":
        return False
    init_kwargs = {}
    if cfg.report_to == "wandb":
        Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
        os.environ.setdefault("WANDB_DIR", str(Path(cfg.output_dir).resolve()))
        init_kwargs["wandb"] = {"dir": str(Path(cfg.output_dir).resolve())}
    accelerator.init_trackers(project, config={k: v for k, v in cfg.to_dict().items()
                                               if isinstance(v, (int, float, str, bool))},
                              init_kwargs=init_kwargs)
    return True


def tracker_scalars(record: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The numbers of a metrics record as trackers take them: nested dicts flattened to 'a/b' keys, booleans as
    0/1, everything else (strings, lists, None, NaN) left out; 'step' is the x-axis, not a value."""
    out: dict[str, float] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if key == "step":
            continue
        if isinstance(v, dict):
            out.update(tracker_scalars(v, f"{key}/"))
        elif isinstance(v, (int, float)) and (isinstance(v, bool) or math.isfinite(v)):
            out[key] = float(v)
    return out


def log_to_trackers(accelerator, record: dict[str, Any]) -> None:
    """Every number of a metrics record to the trackers (init_tracking), at record['step']."""
    step = record.get("step")
    accelerator.log(tracker_scalars(record), step=int(step) if step is not None else None)


def log_metrics(accelerator, path: str | Path, record: dict[str, Any], tracking: bool) -> None:
    """The one way a trainer logs a metrics record: appended to metrics.jsonl by the main process and, when
    tracking (init_tracking), sent to the trackers, so any key a trainer adds reaches TensorBoard/wandb too.
    Call it on every process."""
    from foundation.files import append_jsonl

    if accelerator.is_main_process:
        append_jsonl(path, [record])
    if tracking:
        log_to_trackers(accelerator, record)


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
    if accelerator.num_processes == 1:  # the mean of one value: no copy to the device and back (a read on a GPU)
        return {k: float(v) for k, v in stats.items()}
    t = torch.tensor([float(v) for v in stats.values()], dtype=torch.float64, device=accelerator.device)
    return dict(zip(stats, accelerator.reduce(t, reduction="mean").cpu().tolist()))


def max_over_processes(accelerator, stats: dict[str, float]) -> dict[str, float]:
    """The maximum of each scalar over all processes (one gather), keys in stats' order."""
    import torch

    if not stats:
        return {}
    if accelerator.num_processes == 1:
        return {k: float(v) for k, v in stats.items()}
    t = torch.tensor([float(v) for v in stats.values()], dtype=torch.float64, device=accelerator.device)
    return dict(zip(stats, accelerator.gather(t[None]).max(0).values.cpu().tolist()))


class TrainerProcess:
    """What one process of a training run knows about itself; the trainers (PL-PPO, RRec) build on it."""

    def __init__(self, cfg: RunConfig, accelerator) -> None:
        self.cfg, self.acc = cfg, accelerator
        self.out = Path(cfg.output_dir)
        self.rank, self.world = accelerator.process_index, accelerator.num_processes
        self.is_main = accelerator.is_main_process
        self.distribution: dict[str, Any] = {}  # describe_distribution, set by run_trainer once the model is prepared

    def run_args(self) -> dict[str, Any]:
        """What args.json records: the settings and the distribution the run actually got."""
        return {**self.cfg.to_dict(), "distribution": self.distribution}

    def train(self) -> dict[str, Any]:  # pragma: no cover - every trainer implements it
        raise NotImplementedError


def run_trainer(cfg: RunConfig, make_trainer: Callable[[Any, Any], TrainerProcess]) -> dict[str, Any]:
    """A training run from a validated-on-the-spot config (a foundation.config.RunConfig): the output dir checked,
    the accelerator built, the run lock held while make_trainer(cfg, accelerator).train() runs. Bad input raises
    UserInputError on every process, so all of them stop."""
    from foundation.checkpoints import TRAINING_RUN_ENTRIES, check_output_dir

    cfg.validate()
    check_output_dir(cfg.output_dir, cfg.resume_from, cfg.overwrite_output_dir, collides=TRAINING_RUN_ENTRIES)
    accelerator = build_accelerator(cfg, getattr(cfg, "gradient_accumulation_steps", 1))
    with locked_run(accelerator, cfg.output_dir):
        trainer = make_trainer(cfg, accelerator)
        trainer.distribution = describe_distribution(accelerator)
        if trainer.is_main:
            print(distribution_line(trainer.distribution), flush=True)
        return trainer.train()
