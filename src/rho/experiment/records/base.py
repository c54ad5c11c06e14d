"""The base of every record of `rho experiment` (rho.experiment.records)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Record(BaseModel):
    """A typed record: unknown keys are refused, so a misspelt field fails at once."""

    model_config = ConfigDict(extra="forbid")
