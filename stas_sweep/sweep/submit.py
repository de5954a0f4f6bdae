"""``stas-sweep submit``: run a sweep as a Ray job on a cluster.

The search-space file is validated here first. It is then staged, with its base training
config inlined, into a small working directory; the job's runtime environment carries that
folder and this package's code (``py_modules``), so the cluster runs exactly the submitted
code. The nodes need the dependencies installed (see ``cluster/``). The entrypoint is
``python -m stas_sweep.cli run space.yaml`` on the head node, where it is the Tune driver.
"""

from __future__ import annotations

import asyncio
import copy
import os
import shlex
import tempfile
import time
from pathlib import Path

import yaml

from ..errors import credentials_to_env, mask_text
from ..train.config import load_yaml
from .space import SweepSpec

_EXCLUDES = ["__pycache__", "*.pyc", "*.pt"]


def staged_space(spec: SweepSpec) -> dict:
    """The file as submitted: the base config inlined as written (data roots untouched)."""
    raw = copy.deepcopy(spec.raw)
    base = raw["base"]
    if isinstance(base, str):
        base = load_yaml((spec.path.parent / base).resolve())
    base = dict(base or {})
    base["init_from"] = None
    raw["base"] = base
    # tracking URIs without their credentials (those travel as MLflow's environment variables)
    if isinstance(base.get("tracking"), dict) and base["tracking"].get("uri"):
        base["tracking"] = {**base["tracking"], "uri": spec.base.tracking.uri}
    if isinstance(raw.get("mlflow"), dict) and raw["mlflow"].get("tracking_uri"):
        raw["mlflow"] = {**raw["mlflow"], "tracking_uri": spec.tracking_uri}
    return raw


AGENT_WAIT_S = 60  # how long a submission waits for the job agent of a head that has just started


def submit_when_ready(client, log=print, wait_s: float = AGENT_WAIT_S, every_s: float = 10.0, **job) -> str:
    """``client.submit_job(**job)``, waiting for the head's job agent: a head that has just
    started answers "No available agent to submit job" (HTTP 500) until its dashboard agent has
    registered, which takes seconds, or a minute on a busy machine. It retries with a growing
    pause, says so every ``every_s`` seconds, and after ``wait_s`` raises ``ConnectionError`` (one
    line for the CLI). Other errors are raised at once."""
    start = time.monotonic()
    said, pause = -every_s, 1.0
    while True:
        try:
            return client.submit_job(**job)
        except RuntimeError as e:
            if "No available agent" not in str(e):
                raise
            waited = time.monotonic() - start
            if waited >= wait_s:
                raise ConnectionError(f"the Ray head's job agent did not come up within {wait_s:g} s (it answers "
                                      f"'No available agent to submit job'); check the head with `ray status` "
                                      f"and submit again") from None
            if waited - said >= every_s:
                log(f"the head's job agent is not up yet (a cluster that has just started); waited {waited:.0f} s "
                    f"of {wait_s:g}")
                said = waited
            time.sleep(min(pause, max(0.0, wait_s - waited)))
            pause = min(2 * pause, 8.0)


def submit(spec: SweepSpec, address: str, *, tracking_uri: str | None = None, resume: bool = False,
           wait: bool = True, log=print, env_vars: dict | None = None,
           agent_wait_s: float = AGENT_WAIT_S) -> tuple[str, str]:
    """Submit the sweep; returns (submission id, final status or 'SUBMITTED' with ``wait=False``)."""
    from ray.job_submission import JobStatus, JobSubmissionClient

    try:
        client = JobSubmissionClient(address)
    except Exception as e:  # noqa: BLE001 - connection and version errors of every kind
        raise ConnectionError(f"cannot reach the Ray dashboard at {address} ({type(e).__name__}: {e}); "
                              f"is the cluster up and port 8265 forwarded (ray dashboard cluster.yaml)?") from None
    if "://" not in spec.storage_path and not Path(spec.storage_path).is_absolute():
        log(f"note: storage_path {spec.storage_path!r} is relative: on the cluster it lands in the job's "
            f"working directory on the head node. Use a shared path or s3:// URI for results that outlive the job.")
    staging = Path(tempfile.mkdtemp(prefix="stas-submit-"))
    (staging / "space.yaml").write_text(yaml.safe_dump(staged_space(spec), sort_keys=False))
    # Ray runs the entrypoint through a shell: every value is quoted, so it stays one argument
    argv = ["python", "-m", "stas_sweep.cli", "run", "space.yaml"]
    if tracking_uri:
        argv += ["--tracking-uri", credentials_to_env(str(tracking_uri))]
    # credentials reach the job as MLflow's environment variables, never in its command line
    secrets = {k: os.environ[k] for k in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD") if k in os.environ}
    if resume:
        argv.append("--resume")
    entry = shlex.join(argv)
    runtime_env = {
        "working_dir": str(staging),
        "py_modules": [str(Path(__file__).resolve().parents[1])],  # the stas_sweep package folder
        "excludes": _EXCLUDES,
        "env_vars": {"RAY_CHDIR_TO_TRIAL_DIR": "0", "OMP_WAIT_POLICY": "PASSIVE", **secrets, **(env_vars or {})},
    }
    job_id = submit_when_ready(client, log, agent_wait_s, entrypoint=entry, runtime_env=runtime_env,
                               submission_id=f"stas-{spec.name}-{int(time.time())}",
                               metadata={"stas.sweep": spec.name})
    log(f"submitted {job_id} to {mask_text(address)}: {entry}")
    if not wait:
        log(f"follow it with: ray job logs --address {address} --follow {job_id}")
        return job_id, "SUBMITTED"

    async def tail() -> None:
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    try:
        asyncio.run(tail())
    except KeyboardInterrupt:
        log(f"\nstopped following; the job goes on. Stop it with: ray job stop --address {address} {job_id}")
        raise
    status = client.get_job_status(job_id)
    while status not in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
        time.sleep(1)
        status = client.get_job_status(job_id)
    return job_id, str(status.value if hasattr(status, "value") else status)
