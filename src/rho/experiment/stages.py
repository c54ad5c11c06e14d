"""Resumable stages: each stage of `rho experiment` writes into its own directory and records,
when it finishes, a key (a hash of its settings and of the keys of the stages it reads) and
its result (a typed record, rho.experiment.records). A rerun skips a stage whose record holds
the same key, and redoes, from scratch, a stage that is missing, unfinished (killed mid-way)
or whose inputs or settings changed; a changed stage changes the keys of every stage after
it, so they are redone too.

Under torchrun (``--nproc_per_stage``) every rank runs the stage's builder; rank 0 alone takes
a shared stage's lock, clears its directory and writes its record, and the ranks decide
together whether it is done.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError
from tqdm.auto import tqdm

from rho import distributed as dist
from rho.experiment.records import Record
from rho.io.files import output_lock, read_json, remove_path, write_json_atomic
from rho.testhook import hold

RECORD = "stage.json"
R = TypeVar("R", bound=Record)


class StageRecord(BaseModel):
    """A finished stage's stage.json: its key, its seconds and its result."""

    key: str
    seconds: float
    result: dict[str, Any]


class Stages:
    """Runs and records the stages of one run directory (``root/stages/NAME``)."""

    def __init__(self, root: Path, log: Callable[[str], None] = tqdm.write):
        self.root, self.log = Path(root), log
        self.seconds: dict[str, float] = {}

    def path(self, name: str) -> Path:
        return self.root / "stages" / name

    def done(self, name: str, key: str, kind: type[R]) -> tuple[R, float] | None:
        """The stage's recorded result and seconds, if it finished with this key (a record that
        does not read back as ``kind`` is redone, like an unfinished one)."""
        file = self.path(name) / RECORD
        if not file.is_file():
            return None
        try:
            saved = StageRecord.model_validate(read_json(file))
            if saved.key == key:
                return kind.model_validate(saved.result), saved.seconds
        except ValidationError:
            pass
        return None

    def run(
        self,
        name: str,
        key: str,
        build: Callable[[Path], R],
        kind: type[R],
        title: str = "",
        shared: bool = False,
    ) -> R:
        """The stage's result (a ``kind``): recorded, or built now by ``build(directory)``. A
        ``shared`` stage (a cache entry other run directories use too) is built under a lock
        that a second process waits on; it then finds the record and skips. The record is
        written last, so a half-built stage is never trusted."""
        if not shared or dist.rank() != 0:
            return self._run(name, key, build, kind, title)
        with output_lock(self.path(name), wait=True):
            return self._run(name, key, build, kind, title)

    def _run(self, name: str, key: str, build: Callable[[Path], R], kind: type[R], title: str) -> R:
        saved = dist.checked(lambda: self._start(name, key, kind, title))
        if dist.rank() != 0:  # rank 0 has decided (and holds a shared stage's lock)
            saved = self.done(name, key, kind)
        if saved is not None:
            result, self.seconds[name] = saved
            return result
        directory = self.path(name)
        started = time.perf_counter()
        result = build(directory)
        seconds = round(time.perf_counter() - started, 3)  # as recorded: a rerun reads the same
        self.seconds[name] = seconds
        hold(f"stage.{name}.built")  # tests only: stopped with the stage built, unrecorded
        if dist.rank() == 0:
            record = StageRecord(key=key, seconds=seconds, result=result.model_dump())
            write_json_atomic(directory / RECORD, record.model_dump(), sort_keys=False)
        return result

    def _start(self, name: str, key: str, kind: type[R], title: str) -> tuple[R, float] | None:
        """The stage's record if it is done; else its directory, made afresh."""
        saved = self.done(name, key, kind)
        if saved is not None:
            self.log(f"  {title or name}: done before (skipped)")
            return saved
        self.log(f"  {title or name} ...")
        directory = self.path(name)
        remove_path(directory)  # unfinished or stale: start this stage afresh
        directory.mkdir(parents=True)
        return None
