"""The Accelerator, built the same way for train, eval and predict.

Everything about processes and devices goes through it: ftcli never reads rank variables.
Batches are *split* (`split_batches=True`): ftcli's samplers produce global batches of
`batch_size x processes` rows and the Accelerator hands each process its `batch_size` share.
That keeps the order of rows, and therefore the training trajectory, independent of how many
processes share the work (2 x 4 rows trains like 1 x 8), including the last, short batch.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from pathlib import Path

from ftcli.config import Config
from ftcli.errors import FtcliError


def cpu_supports_bf16() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 instructions (AVX512_BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(cfg: Config, on_cuda: bool, on_cpu: bool) -> str | None:
    """The precision to give the Accelerator, or None to let `accelerate launch
    --mixed_precision` (which reaches us as ACCELERATE_MIXED_PRECISION) decide."""
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") not in ("", "no"):
        return None
    want = cfg.train.mixed_precision
    if want == "auto":
        # Measured (scripts/bench.py, batch 8, MRPC): on CPUs with native bf16, autocast is ~2x
        # faster than fp32. On an H100, fp32 with TF32 matmuls beat bf16 autocast by 2.2x (MiniLM)
        # and 1.6x (bert-base): at these sizes a step is bound by kernel launches, and autocast
        # adds cast kernels. Ask for bf16 explicitly for large models or batches.
        return "bf16" if on_cpu and not on_cuda and cpu_supports_bf16() else "no"
    if want == "fp16" and not on_cuda:
        raise FtcliError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return want


def tf32_enabled(cfg: Config) -> bool:
    """Whether CUDA matmuls run in TF32: as asked, or with `mixed_precision: auto`, where fp32 +
    TF32 measured fastest on an H100 at batch 8. `no` means real fp32."""
    if cfg.train.tf32 is not None:
        return cfg.train.tf32
    return cfg.train.mixed_precision == "auto"


def precision_label(accelerator, cfg: Config) -> str:
    """The precision as the start-up summary states it (fp32 + TF32 is not plain fp32)."""
    if accelerator.mixed_precision != "no":
        return accelerator.mixed_precision
    return "fp32 + TF32" if accelerator.device.type == "cuda" and tf32_enabled(cfg) else "fp32"


def launched_by_accelerate() -> bool:
    """Whether `accelerate launch` or `notebook_launcher` started this process (they set
    ACCELERATE_* variables). Cheap: lets commands that need no Accelerator skip importing torch
    unless they may be one of several processes."""
    return any(k.startswith("ACCELERATE_") for k in os.environ)


def is_main_process() -> bool:
    """Whether this process should print and write (always true outside `accelerate launch`)."""
    if not launched_by_accelerate():
        return True
    from accelerate import PartialState

    return PartialState(cpu=use_cpu()).is_main_process


def use_cpu() -> bool:
    """Whether processes run on the CPU: asked for (ACCELERATE_USE_CPU, which `accelerate launch
    --cpu` sets), or no accelerator device. Said to Accelerate explicitly: processes that torchrun
    started then run on the CPU with gloo instead of each being alone in a "distributed" run of one."""
    force = os.environ.get("ACCELERATE_USE_CPU", "false").lower() in ("1", "true", "yes")
    return force or not has_accelerator_device()


def has_accelerator_device() -> bool:
    import torch
    from accelerate.utils import is_mps_available, is_npu_available, is_torch_xla_available, is_xpu_available

    return (torch.cuda.is_available() or is_torch_xla_available() or is_mps_available()
            or is_xpu_available() or is_npu_available())


def single_process_launch_hint(accelerator) -> str | None:
    """`accelerate launch --cpu --num_processes N` starts ONE process in Accelerate 1.x (its
    multi-CPU launcher is mpirun). Users expect N; tell them how to get N. Reads the launcher's
    command line (Linux /proc), best effort."""
    if accelerator.num_processes != 1 or os.environ.get("ACCELERATE_USE_CPU", "").lower() not in ("1", "true"):
        return None
    try:
        args = Path(f"/proc/{os.getppid()}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return None
    wanted = None
    for i, arg in enumerate(args):
        if arg in ("--num_processes", "--num-processes") and i + 1 < len(args):
            wanted = args[i + 1]
        elif arg.startswith(("--num_processes=", "--num-processes=")):
            wanted = arg.split("=", 1)[1]
    if not (wanted and wanted.isdigit() and int(wanted) > 1):
        return None
    return (
        f"accelerate launch --cpu runs a single process, not {wanted} (Accelerate starts several CPU "
        f"processes only through mpirun). For {wanted} CPU processes use: accelerate launch --config_file "
        f"configs/accelerate/multi-cpu.yaml --num_processes {wanted} -m ftcli ..."
    )


def check_trackers(names: list[str]) -> None:
    """Refuse unknown or uninstalled trackers up front (train.report_to)."""
    if not names:
        return
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(getattr(t, "value", t)) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise FtcliError(f"train.report_to: unknown tracker {name!r}; choose from "
                             f"{', '.join(sorted(LOGGER_TYPE_TO_CLASS))}")
        if name not in available:
            package = {"comet_ml": "comet-ml"}.get(name, name)
            raise FtcliError(f"train.report_to: tracker {name!r} is not installed; pip install {package}, "
                             "or remove it from train.report_to")


def make_accelerator(cfg: Config, *, gradient_accumulation_steps: int = 1, log_with=None, project_dir=None):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    cpu = use_cpu()
    precision = resolve_precision(cfg, on_cuda=torch.cuda.is_available() and not cpu, on_cpu=cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        # The learning-rate schedule is defined in optimizer steps; ftcli steps it once per
        # optimizer step itself (Accelerate would otherwise step it once per process).
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=cfg.train.distributed_timeout_s))],
        log_with=log_with,
        project_dir=project_dir,
    )
    if accelerator.device.type == "cpu" and cfg.train.cpu_heap_reuse:
        reuse_heap_memory()
    return accelerator


@contextlib.contextmanager
def accelerator_session(cfg: Config, **kwargs):
    """An Accelerator for one command. On exit, trackers are closed, the process group is
    destroyed and Accelerate's process-wide state is cleared, so that one Python session (a
    notebook, the tests) can run `train` and then `evaluate` with other settings."""
    import torch
    from accelerate.state import AcceleratorState, GradientState

    accelerator = make_accelerator(cfg, **kwargs)
    tf32_before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    if accelerator.device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32_enabled(cfg)
    try:
        yield accelerator
    except FtcliError as exc:
        exc.main_process = accelerator.is_main_process  # the CLI reports it once, from the main process
        raise
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32_before
        accelerator.end_training()
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()


def reuse_heap_memory() -> bool:
    """Tell glibc's malloc to serve every allocation from the heap and keep freed memory there
    (no mmap, no trimming). Without it, each tensor over 32 MB (the 30k x 384 word-embedding
    gradient) is a fresh mmap whose pages fault in, zero-filled, on every step. Linux/glibc only;
    a no-op elsewhere. Process-wide and permanent, so only called for CPU training."""
    import ctypes
    import ctypes.util

    if os.name != "posix":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def dataloader_kwargs(cfg: Config, accelerator) -> dict:
    """Workers and pinned memory help on GPUs; on CPU the cores are busy with the model, and a
    worker process only competes with it."""
    setting = cfg.train.dataloader_workers
    if accelerator.device.type != "cuda":
        return {"num_workers": 0 if setting == "auto" else setting}
    workers = max(0, min(4, (os.cpu_count() or 1) // max(1, accelerator.num_processes) - 1))
    workers = workers if setting == "auto" else setting
    return {"num_workers": workers, "pin_memory": True, "persistent_workers": workers > 0}


def pad_multiple(cfg: Config, accelerator) -> int | None:
    """`auto`: 8. Tensor cores want multiples of 8 on GPUs, and on CPU oneDNN's bf16 matmuls ran
    ~8% faster per step with lengths rounded to 8 (MiniLM, MRPC: 128 -> 118 ms per batch of 8)."""
    setting = cfg.data.pad_to_multiple_of
    return 8 if setting == "auto" else setting


def padding_mode(cfg: Config, accelerator) -> str:
    from accelerate.utils import DistributedType

    if cfg.data.padding == "dynamic" and accelerator.distributed_type == DistributedType.XLA:
        return "buckets"  # every new shape recompiles the XLA graph
    return cfg.data.padding
