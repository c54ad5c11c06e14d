"""The one parser of every `rho` command: an HfArgumentParser over the command's options
dataclasses (their field docs are the `--help`), with what every command shares:

- ``--config FILE.yaml``: the file's keys are option names; its values sit between the
  dataclass defaults and the command line (flags win). Read by rho.io.config_file: a regular
  file, bounded, each option once, every value checked against its field and its choices.
- both spellings of every option (``--seq_len``, ``--seq-len``): HfArgumentParser adds the
  hyphen alias of each underscore field.
- field metadata besides argparse's own (rho.training.options.option): ``positional`` (an argument
  without a flag, as in `rho inspect STORE`), ``group`` (its section of `--help`), ``repeat``
  (one value per use, as in `--domain a --domain b`), ``exactly`` (a list of exactly that many
  values) and ``set_by`` (not an option: the command sets the field itself, as rho sweep does
  each run's output_dir). HfArgumentParser hands every field's metadata to ``add_argument``,
  which ``Arguments`` overrides to apply these keys: only public argparse and
  HfArgumentParser API is used.
- errors are one line (UserError: exit 2), like every error a user can fix.
"""

from __future__ import annotations

import argparse
import dataclasses
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from transformers import HfArgumentParser
from transformers.hf_argparser import string_to_bool

from rho.errors import UserError
from rho.io.config_file import options, read_config

# field metadata argparse never sees (rho.training.options.option)
RHO_KEYS = ("positional", "group", "repeat", "exactly", "set_by", "stages")
DEVICE = "cpu, cuda, cuda:1 ... (default: best)"  # the help of every --device


@dataclass(frozen=True)
class Command:
    """One `rho` (sub)command: the options dataclasses parsed together and the function that
    runs with their instances (``main(*options) -> int``)."""

    options: tuple[type, ...]
    main: Callable[..., int]
    help: str = ""  # its line in the list of a command with sub-commands (rho analyze)
    # Values under the config file and the flags that depend on other options' values, read
    # from a first parse (a namespace: no dataclass built, no check run). rho demo: its scale
    # and setting; rho sweep: the logging interval of its steps.
    defaults: Callable[[argparse.Namespace], dict] | None = None
    # Fields that have a default in their dataclass but must be given here (rho train's
    # output_dir: TrainingArguments defaults it to "trainer_output").
    required: tuple[str, ...] = ()


def run(command: Command | dict[str, Command], prog: str, argv: list[str]) -> int:
    """Parse ``argv`` for ``command`` (or pick one of its sub-commands first) and run it."""
    if isinstance(command, dict):
        if not argv or argv[0] in ("-h", "--help"):
            width = max(map(len, command))
            lines = [f"usage: {prog} <command> [options]   ({prog} <command> --help)", ""]
            lines += [f"  {name:<{width}}  {c.help}" for name, c in command.items()]
            print("\n".join(lines), file=sys.stdout if argv else sys.stderr)
            return 0 if argv else 2
        if argv[0] not in command:
            choices = ", ".join(command)
            raise UserError(f"unknown command {argv[0]!r}; choose one of {choices}")
        prog, command, argv = f"{prog} {argv[0]}", command[argv[0]], argv[1:]
    options = CommandParser(command, prog).parse(argv)
    return int(command.main(*options) or 0)


class CommandParser:
    """Parses a command's arguments: ``--config``'s values (checked), then the command's own
    defaults from a first, lenient parse, then the flags over both."""

    def __init__(self, command: Command, prog: str):
        self.command, self.prog = command, prog

    def parse(self, argv: list[str]) -> tuple:
        """The options dataclasses (their checks run as they are built)."""
        given = vars(self.parse_namespace(argv))
        return tuple(t(**{f.name: given[f.name] for f in options(t)}) for t in self.command.options)

    def parse_namespace(self, argv: list[str]) -> argparse.Namespace:
        """The values argparse reads, before any dataclass is built: their defaults, under the
        command's own defaults, under ``--config``'s values, under the flags."""
        values = self.config_values(argv)
        if self.command.defaults is not None:
            first = Arguments(self.command, self.prog, values, lenient=True)
            values = self.command.defaults(first.parse_known_args(argv)[0]) | values
        parser = Arguments(self.command, self.prog, values)
        namespace, rest = parser.parse_known_args(argv)
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return namespace

    def flags(self) -> set[str]:
        """Every flag of the command (both spellings)."""
        return Arguments(self.command, self.prog, {}).flags

    def config_values(self, argv: list[str]) -> dict:
        """``--config``'s values, each checked against its field (rho.io.config_file)."""
        found = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        found.add_argument("--config")
        path = found.parse_known_args(argv)[0].config
        if path is None:
            return {}
        return read_config(path, self.command.options, see=f"{self.prog} --help")


class Arguments(HfArgumentParser):
    """The argparse parser of a command: HfArgumentParser's arguments for every field (both
    spellings, `--flag [BOOL]`, `--no_flag`, choices), each passed through ``add_argument``
    where rho's metadata keys apply. ``values`` (the config's and the command's defaults) are
    the defaults, and make the options they give optional; ``lenient``: nothing required, no
    `--help` (the first parse, that reads what the command's defaults depend on)."""

    def __init__(self, command: Command, prog: str, values: dict, lenient: bool = False):
        self.command, self.values, self.lenient = command, values, lenient
        self.groups: dict[str, Any] = {}
        self.flags: set[str] = set()  # every flag this parser reads
        # With a positional argument, a bool option is a plain switch: `rho inspect --verify
        # STORE` must not read STORE as the switch's value (HfArgumentParser's `--flag [BOOL]`).
        self.switches = any(
            f.metadata.get("positional") for t in command.options for f in dataclasses.fields(t)
        )
        super().__init__(
            command.options,
            prog=prog,
            description=description(command),
            formatter_class=argparse.HelpFormatter,  # defaults: with_default
            add_help=not lenient,
        )
        self.added(
            ("--config",),
            {
                "metavar": "FILE.yaml",
                "help": "YAML file of these options (option: value); flags given here win",
            },
        )

    def add_argument(self, *names: str, **kwargs):
        rho = {key: kwargs.pop(key) for key in RHO_KEYS if key in kwargs}
        dest = kwargs.get("dest") or names[0].lstrip("-").replace("-", "_")
        if "set_by" in rho:
            return self.refuse(names, rho["set_by"])
        if rho.get("positional"):
            kwargs.pop("required", None)  # a positional is required by its nargs
            names = (names[0].removeprefix("--"),)
        if rho.get("repeat"):
            kwargs.pop("nargs", None)
            kwargs["action"] = Repeated
        if "exactly" in rho:
            kwargs["nargs"] = rho["exactly"]
        switch = kwargs.get("type") is string_to_bool and kwargs.get("default") is False
        if self.switches and switch:
            for key in ("type", "nargs", "const"):
                kwargs.pop(key, None)
            kwargs["action"] = "store_true"
        if dest in self.command.required:
            kwargs["required"] = True
        if dest in self.values or self.lenient:
            kwargs["default"] = self.values.get(dest, kwargs.get("default"))
            kwargs.pop("required", None)
            if kwargs.get("nargs") == "+" and (self.lenient or rho.get("positional")):
                kwargs["nargs"] = "*"  # a positional the file gave may be left out
        kwargs["help"] = with_default(kwargs)
        container = self.group(rho["group"]) if "group" in rho else None
        return self.added(names, kwargs, container)

    def added(self, names: tuple[str, ...], kwargs: dict, container=None) -> argparse.Action:
        """Add an argument (to ``container``, a section of `--help`) and record its flags."""
        if container is None:
            action = super().add_argument(*names, **kwargs)
        else:
            action = container.add_argument(*names, **kwargs)
        self.flags.update(action.option_strings)
        return action

    def refuse(self, names: tuple[str, ...], set_by: str) -> None:
        """A field the command sets itself: its flags, unless another option took them, are
        refused in one line (rho sweep: each run's output_dir)."""
        for name in names:
            try:
                self.added(
                    (name,), {"action": Refused, "set_by": set_by, "help": argparse.SUPPRESS}
                )
            except argparse.ArgumentError:  # the flag is another option's
                pass

    def group(self, title: str):
        if title not in self.groups:
            self.groups[title] = self.add_argument_group(title)
        return self.groups[title]

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")


def with_default(kwargs: dict) -> str | None:
    """An option's help with its default, but not "(default: None)" nor that of a required
    option."""
    text, default = kwargs.get("help"), kwargs.get("default")
    if text in (None, argparse.SUPPRESS) or default in (None, argparse.SUPPRESS):
        return text
    if kwargs.get("required"):
        return text
    return f"{text} (default: %(default)s)"


def description(command: Command) -> str | None:
    """The first options dataclass's docstring (not the signature dataclass() writes)."""
    doc = inspect.getdoc(command.options[0]) or ""
    return None if doc.startswith(command.options[0].__name__ + "(") else doc


class Refused(argparse.Action):
    def __init__(self, option_strings, dest, set_by: str, **kwargs):
        hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", **hidden)
        self.set_by = set_by

    def __call__(self, parser, namespace, value, option_string=None):
        raise UserError(f"{option_string} is set by {self.set_by}")


class Repeated(argparse.Action):
    """`--domain a --domain b`: a list, one value per use. The first use replaces a list the
    config file gave (flags win), where argparse's "append" would add to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else items
        setattr(namespace, self.dest, [*items, value])
