"""Print the pinned versions of everything ``pip install -e ".[dev]"`` brings in, as installed here.

    python tools/freeze_constraints.py > constraints.txt

Run it in an environment where the suite has just passed: the file it writes is what README's
install command and ``.ci/run`` install with (``-c constraints.txt``), so a fresh machine gets the
versions the suite was green with. It walks the requirements of ``stas-sweep[dev]`` through the
installed distributions' metadata (markers evaluated for this machine), so packages that happen to
be installed but are not needed are left out.
"""

from __future__ import annotations

import sys
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = "stas-sweep"


def closure(root: str, extras: tuple[str, ...]) -> dict[str, str]:
    """``{name: version}`` of every installed distribution that ``root[extras]`` needs."""
    seen: dict[str, str] = {}
    todo: list[tuple[str, tuple[str, ...]]] = [(root, extras)]
    done: set[tuple[str, tuple[str, ...]]] = set()
    while todo:
        name, wanted = todo.pop()
        if (name, wanted) in done:
            continue
        done.add((name, wanted))
        dist = metadata.distribution(name)
        for text in dist.requires or []:
            req = Requirement(text)
            envs = [{"extra": e} for e in wanted] or [{"extra": ""}]
            if req.marker is not None and not any(req.marker.evaluate(env) for env in envs):
                continue
            key = canonicalize_name(req.name)
            try:
                seen[key] = metadata.version(req.name)
            except metadata.PackageNotFoundError:  # an optional dependency this machine did not need
                continue
            todo.append((req.name, tuple(sorted(req.extras))))
    seen.pop(canonicalize_name(root), None)
    return seen


def main() -> int:
    pins = closure(ROOT, ("dev",))
    print(f"# Versions the test suite passed with on Python {sys.version_info.major}.{sys.version_info.minor} "
          f"({sys.platform}). Refresh: python tools/freeze_constraints.py > constraints.txt")
    for name in sorted(pins):
        print(f"{name}=={pins[name]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
