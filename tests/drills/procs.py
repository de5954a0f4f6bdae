"""Processes a test or drill started, found by a temp dir their command lines name (its own Ray's,
say), and stopped by PID: ``ray stop --force`` would end every Ray on the machine."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


def pids_naming(text: str) -> list[int]:
    """Processes whose command line contains ``text`` (a temp dir of ours), this one excepted."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                if text.encode() in (proc / "cmdline").read_bytes():
                    pids.append(int(proc.name))
            except OSError:
                pass
    return pids


def kill_all(text: str, grace_s: float = 3.0) -> None:
    """SIGTERM, then SIGKILL, each process naming ``text``, by PID."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in pids_naming(text):
            try:
                os.kill(pid, sig)
            except OSError:
                pass
        deadline = time.time() + grace_s
        while pids_naming(text) and time.time() < deadline:
            time.sleep(0.2)
