"""Resumable stages: each stage of `rho experiment` writes into its own directory and records,
when it finishes, a key (a hash of its settings and of the keys of the stages it reads) and
its result. A rerun skips a stage whose record holds the same key, and redoes, from scratch, a
stage that is missing, unfinished (killed mid-way) or whose inputs or settings changed; a
changed stage changes the keys of every stage after it, so they are redone too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from tqdm.auto import tqdm

from rho.files import output_lock, read_json, remove_path, write_json_atomic

RECORD = "stage.json"


class Stages:
    """Runs and records the stages of one run directory (``root/stages/NAME``)."""

    def __init__(self, root: Path, log: Callable[[str], None] = tqdm.write):
        self.root, self.log = Path(root), log
        self.seconds: dict[str, float] = {}

    def path(self, name: str) -> Path:
        return self.root / "stages" / name

    def done(self, name: str, key: str) -> dict | None:
        record = self.path(name) / RECORD
        if record.is_file():
            saved = read_json(record)
            if saved.get("key") == key:
                return saved
        return None

    def run(
        self,
        name: str,
        key: str,
        build: Callable[[Path], dict],
        title: str = "",
        shared: bool = False,
    ) -> dict:
        """The stage's result: recorded, or built now by ``build(directory)``. A ``shared``
        stage (a cache entry other run directories use too) is built under a lock that a second
        process waits on; it then finds the record and skips. The record is written last, so a
        half-built stage is never trusted."""
        if not shared:
            return self._run(name, key, build, title)
        with output_lock(self.path(name), wait=True):
            return self._run(name, key, build, title)

    def _run(self, name: str, key: str, build: Callable[[Path], dict], title: str) -> dict:
        saved = self.done(name, key)
        if saved is not None:
            self.seconds[name] = saved["seconds"]
            self.log(f"  {title or name}: done before (skipped)")
            return saved["result"]
        self.log(f"  {title or name} ...")
        directory = self.path(name)
        remove_path(directory)  # unfinished or stale: start this stage afresh
        directory.mkdir(parents=True)
        started = time.perf_counter()
        result = build(directory)
        seconds = time.perf_counter() - started
        self.seconds[name] = seconds
        record = {"key": key, "seconds": round(seconds, 3), "result": result}
        write_json_atomic(directory / RECORD, record, sort_keys=False)
        return result
