"""The one plain-text table printer (epsilon tables, the front, the model list).

A column is ``(header, cell, align)``: ``cell(row) -> str`` and ``align`` ``">"`` (right) or
``"<"`` (left). Each column is as wide as its header, its ``width`` if given, and its
widest cell.
"""

from __future__ import annotations

from typing import Callable, NamedTuple, Sequence


class Column(NamedTuple):
    header: str
    cell: Callable[[dict], str]
    align: str = ">"
    width: int = 0


def text_table(rows: Sequence[dict], columns: Sequence[Column], *, sep: str = " ", rule: bool = False) -> list[str]:
    """The table's lines: the header, a rule of dashes under it if ``rule``, one line per row."""
    cells = [[c.cell(r) for c in columns] for r in rows]
    widths = [max(len(c.header), c.width, *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return sep.join(f"{v:{c.align}{w}}" for v, c, w in zip(values, columns, widths))

    head = line([c.header for c in columns])
    return [head, *(["-" * len(head)] if rule else []), *(line(v) for v in cells)]


def number(value, spec: str = ".4g") -> str:
    """A cell: '' for None, floats with ``spec``, anything else as ``str``."""
    if value is None:
        return ""
    return format(value, spec) if isinstance(value, float) else str(value)


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """``'1 point'``, ``'0 points'``, ``'2 points'``: a count with its noun in the right number."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"
