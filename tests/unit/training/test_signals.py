"""SIGINT/SIGTERM: processes agree on stopping without a host-device sync at every step."""

from __future__ import annotations

import signal

import torch

from ftcli.training.signals import StopFlag


class _Acc:
    """The Accelerator's surface StopFlag uses, with one other process whose flag is `others`."""

    def __init__(self, processes: int, others: float = 0.0):
        self.num_processes, self.device, self.others, self.reduces = processes, torch.device("cpu"), others, 0

    def reduce(self, tensor, reduction):
        self.reduces += 1
        return tensor + self.others


def test_one_process_reads_its_own_flag_every_step():
    flag, acc = StopFlag(), _Acc(1)
    assert not flag.agreed(acc, due=False)
    flag.signum = signal.SIGINT
    assert flag.agreed(acc, due=False) and acc.reduces == 0


def test_several_processes_agree_only_where_due():
    flag, acc = StopFlag(), _Acc(2, others=float(signal.SIGTERM))
    every = 10
    stops = [step for step in range(1, 31) if flag.agreed(acc, due=step % every == 0)]
    assert acc.reduces == 3  # one collective per log line, not one per step
    assert stops == [10, 20, 30] and flag.signum == signal.SIGTERM  # another process was signalled
