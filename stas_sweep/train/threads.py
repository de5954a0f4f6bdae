"""CPU thread policy that holds on shared machines.

torch's OpenMP pool (libgomp) spins its idle threads by default (``OMP_WAIT_POLICY=ACTIVE``
behaviour). When any other busy process shares the cores, a spinning thread holds a core the
working thread needs, and a training step becomes 10-30x slower. The command line therefore
sets ``OMP_WAIT_POLICY=PASSIVE`` before torch loads (unless the user chose a policy), runs
``stas-sweep train`` on the cores this process may use (``--threads`` to change it), and runs
each Ray trial on exactly the CPUs of its ``resources.cpu``.
"""

from __future__ import annotations

import os


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity), not the machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when the user set it, else :func:`available_cores`."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else available_cores()


def threads_for_cpus(cpus: float) -> int:
    """Threads for a Ray allocation of ``cpus`` CPUs: its whole CPUs, at least one."""
    return max(1, int(cpus))


def set_threads(n: int | None = None) -> int:
    """Run torch's intra-op pool on ``n`` threads (default :func:`default_threads`); returns n."""
    import torch

    n = default_threads() if n is None else int(n)
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    return n
