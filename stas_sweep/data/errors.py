"""The errors a data set raises: missing (or unusable as laid out), or a file in it that cannot be read."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError

__all__ = ["DataError", "DatasetNotFoundError"]


class DataError(UserError, ValueError):
    """A data set, or one file of it, that cannot be used (a corrupt image or event file, a bad
    data-set name or recipe key); the message names the file or key."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """A data set is not where it was looked for, or is there but cannot be used as is.

    Raised by :func:`stas_sweep.data.build_datasets` *before* any library (torchvision,
    spikingjelly) is asked to load or process the data, so no half-processed state is
    left behind. The message states, in this order: which data set, the absolute path
    that was searched, what was wrong there, the on-disk layout that is expected, and
    how to obtain the data.

    Attributes:
        dataset: the data set name (``"cifar10"``, ``"cifar10-dvs"`` ...).
        path: absolute path that was searched.
        layout: the expected on-disk layout, as printed in the message.
        how_to_get: how to obtain the data, as printed in the message.
        problem: what exactly was missing or wrong.
    """

    def __init__(self, dataset: str, path: str | Path, problem: str, layout: str, how_to_get: str) -> None:
        self.dataset = dataset
        self.path = str(Path(path).expanduser().absolute())
        self.problem = problem
        self.layout = layout.strip("\n")
        self.how_to_get = how_to_get.strip("\n")
        # one line (the CLI prints a user error as one line): the layout's and the remedy's
        # lines are joined with " | "
        message = (
            f"{dataset} data set not found at {self.path}: {problem}. "
            f"Expected layout: {_one_line(self.layout)}. "
            f"How to get it: {_one_line(self.how_to_get)}"
        )
        super().__init__(message)  # one argument: str(err) is exactly the message

    def __reduce__(self):  # keep it picklable (Ray ships exceptions between processes)
        return type(self), (self.dataset, self.path, self.problem, self.layout, self.how_to_get)


def _one_line(text: str) -> str:
    return " | ".join(" ".join(line.split()) for line in text.splitlines() if line.strip())
