"""The engine's console (rho.experiment.engine): on a terminal one live line per running stage
(its name, seconds and the last line of its log), elsewhere one plain line per start and end."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from tqdm.auto import tqdm


def last_line(log: Path, tail: int = 4096) -> str:
    """The last non-blank line of ``log`` (a progress bar's last refresh counts as a line)."""
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - tail))
            text = f.read().decode("utf-8", "replace")
    except FileNotFoundError:
        return ""
    lines = [line.strip() for line in text.replace("\r", "\n").split("\n")]
    return next((line for line in reversed(lines) if line), "")


class Console:
    """On a terminal, one live line per running stage (its name, seconds and the last line of
    its log), under the lines of stages that ended; elsewhere one plain line per start and
    end."""

    def __init__(self, logs: Path, file=None):
        self.logs, self.file = logs, file or sys.stdout
        self.live = self.file.isatty()
        self.bars: list[tqdm] = []
        self.log_of: dict[str, Path] = {}  # a stage's log, where it is not logs/NAME.log

    def line(self, text: str) -> None:
        tqdm.write(text, file=self.file)
        self.file.flush()  # a pipe's reader (a log, a test) sees each line as it happens

    def started(self, key: str, where: str, log: Path | None = None) -> None:
        if log is not None:
            self.log_of[key] = log
        if not self.live:
            self.line(f"  {key} ... ({where})")

    def show(self, running: dict[str, float]) -> None:
        """Redraw the live lines: one per stage in ``running`` (its start time)."""
        if not self.live:
            return
        while len(self.bars) < len(running):
            self.bars.append(
                tqdm(
                    total=0,
                    position=len(self.bars),
                    leave=False,
                    bar_format="{desc}",
                    dynamic_ncols=True,
                    file=self.file,
                )  # fmt: skip
            )
        now = time.perf_counter()
        logs = {key: self.log_of.get(key, self.logs / f"{key}.log") for key in running}
        texts = [
            f"  {key} {now - started:5.0f} s | {last_line(logs[key])}"
            for key, started in running.items()
        ]
        for i, bar in enumerate(self.bars):
            bar.set_description_str(texts[i] if i < len(texts) else "", refresh=True)

    def close(self) -> None:
        for bar in self.bars:
            bar.close()
        self.bars = []
