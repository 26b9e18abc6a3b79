"""Runtime policy: the Accelerator (built the same way for train, eval and predict), precision,
TF32, CPU features, heap reuse, and which process speaks.

Everything about processes and devices goes through the Accelerator: ftcli never reads rank
variables. Batches are *split* (`split_batches=True`): ftcli's samplers produce micro batches of
`batch_size x processes` rows and the Accelerator hands each process its `batch_size` share.
That keeps the order of rows, and therefore the training trajectory, independent of how many
processes share the work (2 x 4 rows trains like 1 x 8), including the last, short batch.

Process-wide settings are made for one run and restored (`accelerator_session`), or, where they
cannot be undone (glibc's malloc tuning), only by the `ftcli` command itself, never by a library
call.
"""

from __future__ import annotations

import contextlib
import os
from datetime import timedelta
from pathlib import Path

from ftcli.config import Config, TrainConfig
from ftcli.errors import FtcliError


def cpu_supports_bf16() -> bool:
    """bf16 autocast pays off on CPUs with native bf16 instructions (AVX512_BF16 or AMX)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(train: TrainConfig, on_cuda: bool, on_cpu: bool) -> str | None:
    """The precision to give the Accelerator, or None to let `accelerate launch
    --mixed_precision` (which reaches us as ACCELERATE_MIXED_PRECISION) decide."""
    if os.environ.get("ACCELERATE_MIXED_PRECISION", "no") not in ("", "no"):
        return None
    want = train.mixed_precision
    if want == "auto":
        # Measured (scripts/bench.py, batch 8, MRPC): on CPUs with native bf16, autocast is ~2x
        # faster than fp32. On an H100, fp32 with TF32 matmuls beat bf16 autocast by 2.2x (MiniLM)
        # and 1.6x (bert-base): at these sizes a step is bound by kernel launches, and autocast
        # adds cast kernels. Ask for bf16 explicitly for large models or batches.
        return "bf16" if on_cpu and not on_cuda and cpu_supports_bf16() else "no"
    if want == "fp16" and not on_cuda:
        raise FtcliError("train.mixed_precision: fp16 needs a CUDA GPU; use bf16 or no on this machine")
    return want


def tf32_enabled(train: TrainConfig) -> bool:
    """Whether CUDA matmuls run in TF32: as asked, or with `mixed_precision: auto`, where fp32 +
    TF32 measured fastest on an H100 at batch 8. `no` means real fp32."""
    if train.tf32 is not None:
        return train.tf32
    return train.mixed_precision == "auto"


def precision_label(accelerator, train: TrainConfig) -> str:
    """The precision as the start-up summary states it (fp32 + TF32 is not plain fp32)."""
    if accelerator.mixed_precision != "no":
        return accelerator.mixed_precision
    return "fp32 + TF32" if accelerator.device.type == "cuda" and tf32_enabled(train) else "fp32"


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


def sharded_launch() -> str | None:
    """`FSDP` or `DeepSpeed` when `accelerate launch` was given such a config (Accelerate passes it
    to the processes as ACCELERATE_USE_FSDP / ACCELERATE_USE_DEEPSPEED), else None."""
    from accelerate.utils import parse_flag_from_env

    if parse_flag_from_env("ACCELERATE_USE_FSDP"):
        return "FSDP"
    if parse_flag_from_env("ACCELERATE_USE_DEEPSPEED"):
        return "DeepSpeed"
    return None


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


def make_accelerator(train: TrainConfig, *, gradient_accumulation_steps: int = 1, log_with=None, project_dir=None):
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, InitProcessGroupKwargs

    cpu = use_cpu()
    if cpu and (sharded := sharded_launch()):
        raise FtcliError(
            f"the accelerate launch config asks for {sharded}, which shards over GPUs, but this run is on the CPU "
            f"({'ACCELERATE_USE_CPU is set' if has_accelerator_device() else 'no GPU here'}): Accelerate would "
            "quietly run plain multi-process CPU training instead. For CPU processes use "
            "--config_file configs/accelerate/multi-cpu.yaml")
    precision = resolve_precision(train, on_cuda=torch.cuda.is_available() and not cpu, on_cpu=cpu)
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_steps=gradient_accumulation_steps,
        dataloader_config=DataLoaderConfiguration(split_batches=True, even_batches=True),
        # The learning-rate schedule is defined in optimizer steps and ftcli steps it itself, once
        # per optimizer step that was not skipped. (With split_batches Accelerate would also step
        # it once per step; stepping it in the loop keeps the rule visible there.)
        step_scheduler_with_optimizer=False,
        kwargs_handlers=[InitProcessGroupKwargs(timeout=timedelta(seconds=train.distributed_timeout_s))],
        log_with=log_with,
        project_dir=project_dir,
    )
    return accelerator


@contextlib.contextmanager
def accelerator_session(train: TrainConfig, **kwargs):
    """An Accelerator for one command. On exit, trackers are closed and Accelerate's process-wide
    state is put back as the caller had it (cleared, or the caller's own Accelerator's), so that
    one Python session (a notebook, the tests) can run `train` and then `evaluate` with other
    settings. The process group is destroyed if this session brought it up;
    one that was up before (a sweep's `process_group`) is left up for the caller's next run,
    because torch cannot bring a destroyed group up again under one launch (the store keeps the
    old group's keys and the second rendezvous hangs). The global random generators (Python's,
    NumPy's, torch's), which training seeds (`train.seed`), are restored on exit too."""
    owns_group = not _process_group_up()
    rng_before = _rng_states()
    callers_state = _set_aside_accelerate_state(reset_partial=owns_group)
    try:
        accelerator = make_accelerator(train, **kwargs)
    except BaseException:
        _put_back_accelerate_state(callers_state, reset_partial=owns_group)
        raise
    tf32_before = None
    if accelerator.device.type == "cuda":
        tf32_before = _tf32()
        _set_tf32(tf32_enabled(train))
    try:
        yield accelerator
        if owns_group:
            accelerator.wait_for_everyone()  # see process_group: no process tears down first
    except FtcliError as exc:
        exc.main_process = accelerator.is_main_process  # the CLI reports it once, from the main process
        raise
    finally:
        if tf32_before is not None:
            _restore_tf32(tf32_before)
        if owns_group:
            accelerator.end_training()  # closes trackers, destroys the process group
        else:
            for tracker in accelerator.trackers:
                tracker.finish()
        _put_back_accelerate_state(callers_state, reset_partial=owns_group)
        _restore_rng(rng_before)


def _set_aside_accelerate_state(reset_partial: bool) -> dict:
    """Accelerate keeps its state process-wide, in dicts shared by every instance of
    `AcceleratorState`, `PartialState` and `GradientState`; while a caller's Accelerator holds
    them, one with other settings is refused. Accelerate has no public way to set that state
    aside, so ftcli copies those dicts, clears them for its own Accelerator (their `_reset_state`,
    which Accelerate reserves for itself and its tests), and `_put_back_accelerate_state` refills
    the same dicts afterwards: the caller's Accelerator works on. The partial state (the process
    group) is kept when the group was up before. test_side_effects checks all of this."""
    from accelerate.state import AcceleratorState, GradientState, PartialState

    saved = {cls: dict(cls._shared_state) for cls in (PartialState, AcceleratorState, GradientState)}
    AcceleratorState._reset_state(reset_partial_state=reset_partial)
    GradientState._reset_state()
    return saved


def _put_back_accelerate_state(saved: dict, reset_partial: bool) -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=reset_partial)
    GradientState._reset_state()
    for cls, state in saved.items():
        if state:
            cls._shared_state.update(state)


def _rng_states() -> tuple:
    """The states of the global generators a run seeds: Python's, NumPy's, torch's (and CUDA's,
    when it is initialized), to be put back by `_restore_rng`."""
    import random

    import numpy as np
    import torch

    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return random.getstate(), np.random.get_state(), torch.get_rng_state(), cuda


def _restore_rng(states: tuple) -> None:
    import random

    import numpy as np
    import torch

    python, numpy_state, torch_state, cuda = states
    random.setstate(python)
    np.random.set_state(numpy_state)
    torch.set_rng_state(torch_state)
    if cuda is not None:
        torch.cuda.set_rng_state_all(cuda)


def _process_group_up() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


@contextlib.contextmanager
def process_group(train: TrainConfig):
    """The processes of this launch, connected for a command that runs several trainings in turn
    (a sweep's trials): each run's `accelerator_session` finds the group up and leaves it up.
    Yields Accelerate's PartialState, or None outside `accelerate launch` (one process, and no
    state made that could disagree with the Accelerator a run builds). On exit the group is
    destroyed and Accelerate's state cleared."""
    from accelerate import PartialState
    from accelerate.state import AcceleratorState

    if not launched_by_accelerate():
        yield None
        return
    state = PartialState(cpu=use_cpu(), timeout=timedelta(seconds=train.distributed_timeout_s))
    try:
        yield state
        # Every process is done with the group before any destroys it: a process that closed its
        # connections while another was still closing made that one abort at exit (SIGABRT,
        # "terminate called without an active exception"), after a sweep that had succeeded.
        state.wait_for_everyone()
    finally:
        state.destroy_process_group()
        AcceleratorState._reset_state(reset_partial_state=True)


def _tf32() -> tuple:
    """The TF32 settings of matmuls and cuDNN, in whichever API this torch has (torch 2.9 added
    `fp32_precision` and warns on the old flags)."""
    import torch

    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        return matmul.fp32_precision, conv.conv.fp32_precision
    return matmul.allow_tf32, conv.allow_tf32


def _restore_tf32(state: tuple) -> None:
    """Put back what `_tf32()` returned."""
    import torch

    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    if hasattr(matmul, "fp32_precision"):
        matmul.fp32_precision, cudnn.conv.fp32_precision = state
    else:
        matmul.allow_tf32, cudnn.allow_tf32 = state


def _set_tf32(on: bool) -> None:
    import torch

    value = ("tf32" if on else "ieee") if hasattr(torch.backends.cuda.matmul, "fp32_precision") else on
    _restore_tf32((value, value))


def tune_process_for_training(cfg: Config) -> None:
    """What the `ftcli` commands do to their own process before torch loads, and a library call
    does not: OpenMP's wait policy (`train.openmp_wait`), and glibc heap reuse for CPU training
    (`train.cpu_heap_reuse`), which cannot be undone. Left out, heap reuse is on, except in a
    run that asks to save memory (a bf16 base, or gradient checkpointing): that one returns
    freed tensors to the OS instead."""
    train = cfg.train
    set_openmp_wait(openmp_wait_for(train))
    if not use_cpu():
        return
    saves_memory = cfg.model.dtype == "bfloat16" or train.gradient_checkpointing
    reuse = train.cpu_heap_reuse if train.cpu_heap_reuse is not None else not saves_memory
    if reuse:
        reuse_heap_memory()
    elif saves_memory:
        release_heap_memory()


def openmp_wait_for(train: TrainConfig) -> str:
    """`train.openmp_wait`; `auto`: passive when other processes already keep half a core or more
    busy (a shared CI runner, a second run), spin otherwise."""
    if train.openmp_wait != "auto":
        return train.openmp_wait
    return "passive" if cpu_load_of_others() >= 0.5 else "spin"


def cpu_load_of_others(seconds: float = 0.1) -> float:
    """Cores kept busy by other processes over `seconds` (Linux /proc/stat, less this process's
    own time); 0.0 where it cannot be read."""
    import time

    def sample() -> tuple[int, int, float]:
        with open("/proc/stat", encoding="ascii") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]) - idle, sum(fields[:8]), time.process_time()

    try:
        busy0, total0, own0 = sample()
        time.sleep(seconds)
        busy1, total1, own1 = sample()
    except (OSError, ValueError, IndexError):
        return 0.0
    ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    cores = (total1 - total0) / ticks / seconds  # jiffies of all cores over the interval
    if total1 <= total0 or cores <= 0:
        return 0.0
    busy = (busy1 - busy0) / (total1 - total0) * cores - (own1 - own0) / seconds
    return max(0.0, busy)


def set_openmp_wait(policy: str) -> bool:
    """Load torch with GNU OpenMP's wait policy `passive` (a thread that finished its share of a
    parallel region sleeps) or its default `spin` (it spins ~3 ms first), unless the user set
    OMP_WAIT_POLICY or GOMP_SPINCOUNT. Returns whether the policy was set.

    Measured with MiniLM on 2 cores (scripts/bench.py --contended): beside one single-threaded
    CPU hog, spinning threads burn the time slices their sibling (sharing a core with the hog)
    needs, at every one of a step's thousands of small parallel regions: 3.0x the idle step time
    (the plain course loop: 2.9x), against 1.55x passive. Idle, passive costs ~20% (0.57 against
    0.46 s a step): a sleeping thread is woken for each region after every gap of Python work.
    Hence `auto` in `openmp_wait_for`.

    GNU OpenMP reads the variable once, when torch loads it, so it is set only for that import and
    removed again: the process's environment is left as it was. A no-op when torch is loaded."""
    import sys

    if policy != "passive" or "torch" in sys.modules or "OMP_WAIT_POLICY" in os.environ \
            or "GOMP_SPINCOUNT" in os.environ:
        return False
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        import torch  # noqa: F401 - loads libgomp, which reads the policy now
    finally:
        del os.environ["OMP_WAIT_POLICY"]
    return True


def _mallopt():
    import ctypes
    import ctypes.util

    if os.name != "posix":
        return None
    try:
        return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return None


def release_heap_memory() -> bool:
    """Tell glibc's malloc to map every allocation of 1 MiB or more on its own and unmap it when
    freed, so the process's memory follows the live tensors. By default glibc raises that
    threshold each time such a block is freed, after which freed activations stay in the heap:
    measured on a 74M-parameter Llama with LoRA and a bf16 base, ~450 MB more resident memory
    than live tensors. Costs page faults (the speed `reuse_heap_memory` buys back), so only runs
    that ask to save memory use it. Linux/glibc only; process-wide and permanent."""
    mallopt = _mallopt()
    m_mmap_threshold = -3
    return bool(mallopt(m_mmap_threshold, 1 << 20)) if mallopt is not None else False


def reuse_heap_memory() -> bool:
    """Tell glibc's malloc to serve every allocation from the heap and keep freed memory there
    (no mmap, no trimming). Without it, each tensor over 32 MB (the 30k x 384 word-embedding
    gradient) is a fresh mmap whose pages fault in, zero-filled, on every step. Linux/glibc only;
    a no-op elsewhere. Process-wide and permanent (glibc has no undo), so only the `ftcli train`
    command calls it, for CPU training: a library call leaves the caller's process alone."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))
