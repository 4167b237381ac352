"""Progress on stderr while a notebook runs: a redrawn bar on a terminal, plain lines otherwise.

Cells are numbered as everywhere in nbrefactor: 1-based over all cells, markdown included, so
`cell 4/12` is the fourth cell the user sees. With `-v` the notebook's own output is streamed too,
above the bar.
"""

from __future__ import annotations

import shutil
import sys
import time


def clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else f"{seconds // 60}:{seconds % 60:02d}"


def preview(source: str) -> str:
    """The first line of a cell that is code, to show what is running."""
    for line in source.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            return line
    return ""


class Progress:
    def __init__(self, total_cells: int, code_cells: int, *, stream=None, label: str = "", verbose: bool = False, quiet: bool = False):
        self.stream = stream if stream is not None else sys.stderr
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self.total_cells = total_cells
        self.code_cells = max(code_cells, 1)
        self.label = label
        self.verbose = verbose
        self.quiet = quiet
        self.started = time.monotonic()
        self.done = 0
        self.current: tuple[int, str] | None = None
        self.cell_started = 0.0
        self.note = ""
        self._drawn = False
        self._partial = ""

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def start_cell(self, number: int, source: str) -> None:
        self.current = (number, preview(source))
        self.cell_started = time.monotonic()
        self.draw()

    def end_cell(self, number: int, status: str, seconds: float) -> None:
        self.flush_output()
        self.done += 1
        self.current = None
        self.note = ""
        if self.quiet:
            return
        if not self.tty:
            self._write(f"{self.label}cell {number}/{self.total_cells} {status} {seconds:.2f}s ({clock(self.elapsed())})\n")
        else:
            self.draw()

    def message(self, text: str) -> None:
        if not self.quiet:
            self._clear()
            self._write(text.rstrip("\n") + "\n")
            self.draw()

    def output(self, text: str) -> None:
        """The notebook's own output (`-v`), a whole line at a time so the bar never cuts one."""
        if not self.verbose or not text:
            return
        self._partial += text
        if "\n" in self._partial:
            lines, self._partial = self._partial.rsplit("\n", 1)
            self._clear()
            self._write(lines + "\n")
            self.draw()

    def flush_output(self) -> None:
        if self._partial:
            text, self._partial = self._partial, ""
            self._clear()
            self._write(text + "\n")
            self.draw()

    def draw(self) -> None:
        if not self.tty or self.quiet:
            return
        width = shutil.get_terminal_size((80, 20)).columns
        filled = int(20 * self.done / self.code_cells)
        bar = "#" * filled + "-" * (20 - filled)
        if self.current:
            number, code = self.current
            note = f"  [{self.note}]" if self.note else ""
            what = f"cell {number}/{self.total_cells} {clock(time.monotonic() - self.cell_started)}{note}  {code}"
        else:
            what = f"{self.done}/{self.code_cells} code cells"
        line = f"{self.label}[{bar}] {clock(self.elapsed())}  {what}"
        self.stream.write("\r\x1b[2K" + line[: max(width - 1, 10)])
        self.stream.flush()
        self._drawn = True

    def close(self) -> None:
        self._clear()

    def _clear(self) -> None:
        if self.tty and self._drawn:
            self.stream.write("\r\x1b[2K")
            self.stream.flush()
            self._drawn = False

    def _write(self, text: str) -> None:
        self.stream.write(text)
        self.stream.flush()
