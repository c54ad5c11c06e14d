"""`rho inspect`: a one-screen summary of a TokenStore or LossStore (rho.inspect_store)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rho.commands.parser import Command
from rho.inspect_store import describe


@dataclass
class InspectOptions:
    """Summarise a store."""

    paths: list[str] = field(
        metadata={"positional": True, "help": "TokenStore or LossStore directories"}
    )
    verify: bool = field(default=False, metadata={"help": "recompute content hashes"})


def main(options: InspectOptions) -> int:
    for path in options.paths:
        print(describe(path, verify=options.verify))
    return 0


COMMAND = Command((InspectOptions,), main)
