"""benchmarks/bench_cpu.py's own logic: the public code's checksum and backend switch, the warm-up
rule, the load label and a failed worker's one line (no model is built; well under a second)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_cpu", Path(__file__).resolve().parents[1] / "benchmarks" / "bench_cpu.py")
bench_cpu = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench_cpu)


def _public_like(folder: Path, switches: int) -> tuple[Path, str]:
    """A stand-in for the public model.py with ``switches`` cupy LIFs, and its SHA-256."""
    lif = "        self.lif = MultiStepLIFNode(tau=2.0, detach_reset=True, backend='cupy')\n"
    text = "import torch\n" + lif * switches + "x = \"backend='cupyx'\"\n"
    (folder / "cifar10").mkdir()
    path = folder / "cifar10" / "model.py"
    path.write_text(text)
    return path, hashlib.sha256(text.encode()).hexdigest()


def test_public_code_copied_with_every_lif_on_the_torch_backend(tmp_path):
    (tmp_path / "repo").mkdir()
    src, digest = _public_like(tmp_path / "repo", bench_cpu.PUBLIC_SWITCHES)
    dest = tmp_path / "copy"
    dest.mkdir()
    found, n = bench_cpu.prepare_public_code(tmp_path / "repo", dest, sha256=digest)
    assert (found, n) == (src, bench_cpu.PUBLIC_SWITCHES)
    copied = (dest / "model.py").read_text()
    assert "backend='cupy')" not in copied
    assert copied.count("backend='torch')") == bench_cpu.PUBLIC_SWITCHES
    assert src.read_text().count("backend='cupy')") == bench_cpu.PUBLIC_SWITCHES  # the source is left alone


def test_public_code_that_is_not_the_expected_file_is_one_line(tmp_path):
    (tmp_path / "repo").mkdir()
    src, digest = _public_like(tmp_path / "repo", bench_cpu.PUBLIC_SWITCHES)
    with pytest.raises(bench_cpu.BenchError) as err:
        bench_cpu.prepare_public_code(tmp_path / "repo", tmp_path)  # the real checksum: this file differs
    msg = str(err.value)
    assert "\n" not in msg and str(src) in msg and bench_cpu.PUBLIC_SHA256[:16] in msg and digest[:16] in msg
    assert not (tmp_path / "model.py").exists()
    with pytest.raises(bench_cpu.BenchError, match="neither cifar10/model.py nor model.py"):
        bench_cpu.prepare_public_code(tmp_path / "repo" / "cifar10" / "missing", tmp_path)


def test_warm_up_ends_when_two_consecutive_steps_agree():
    assert not bench_cpu.steady([], 0.1)
    assert not bench_cpu.steady([1.0], 0.1)
    assert not bench_cpu.steady([2.0, 1.5], 0.1)  # the first step 1.3x slow: keep warming up
    assert bench_cpu.steady([2.0, 1.5, 1.42], 0.1)
    assert bench_cpu.steady([1.0, 1.09], 0.1) and not bench_cpu.steady([1.0, 1.11], 0.1)


def test_load_label_compares_the_load_with_the_benchmarks_own_threads():
    watch = bench_cpu.LoadWatch(own_threads=2)
    watch.loads = [1.9, 2.3]  # the benchmark's own two threads: quiet
    assert watch.label().startswith("Quiet")
    watch.busy = {"python -m pytest": 0.9}
    label = watch.label()
    assert label.startswith("**Taken under load**") and "`python -m pytest` 0.9" in label
    watch.busy, watch.loads = {}, [2.0, 3.4]
    assert "no other busy process" in watch.label()


def test_a_failed_worker_is_one_line_naming_the_cause():
    cmd = [sys.executable, "-c", "import sys; sys.stderr.write('Traceback ...\\nValueError: CuPy is not "
                                 "installed!\\n'); sys.exit(3)"]
    worker = bench_cpu.Worker("public-code", cmd, {})
    with pytest.raises(bench_cpu.BenchError) as err:
        worker.reply()
    worker.close()
    assert str(err.value) == (f"the public-code worker ({sys.executable}) failed (exit code 3): "
                              "ValueError: CuPy is not installed!")
    assert err.value.code == 1
