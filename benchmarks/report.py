"""What the benchmark reports share (torch-free, so serving.py's client side can import it)."""

from __future__ import annotations


def say(line: str = "") -> None:
    print(line, flush=True)


def aligned_lines(table: list[list[str]]) -> list[str]:
    """The table as text: every column padded to its widest cell but the last (the notes)."""
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + "  " + row[-1]
            for row in table]


def markdown_lines(table: list[list[str]]) -> list[str]:
    """The table in Markdown; a ``|`` inside a cell becomes ``/``."""
    head, *rows = table
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head),
            *("| " + " | ".join(c.replace("|", "/") for c in row) + " |" for row in rows)]


class TableReport:
    """A benchmark report: header lines, one table, closing lines; printed or in Markdown."""

    def header_lines(self) -> list[str]:
        raise NotImplementedError

    def table(self) -> list[list[str]]:
        raise NotImplementedError

    def closing_lines(self) -> list[str]:
        """What follows the printed table (verdicts, errors)."""
        return []

    def print_table(self) -> None:
        for line in ["", *self.header_lines(), *aligned_lines(self.table()),
                     *self.closing_lines()]:
            say(line)
