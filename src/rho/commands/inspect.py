"""`rho inspect`: a one-screen summary of a TokenStore or LossStore (rho.io.inspect_store)."""

from __future__ import annotations

from dataclasses import dataclass

from rho.commands.parser import Command
from rho.io.inspect_store import describe
from rho.training.options import option


@dataclass
class InspectOptions:
    """Summarise a store."""

    paths: list[str] = option("TokenStore or LossStore directories", positional=True)
    verify: bool = option("recompute content hashes", False)


def main(options: InspectOptions) -> int:
    for path in options.paths:
        print(describe(path, verify=options.verify))
    return 0


COMMAND = Command((InspectOptions,), main)
