"""The one parser of every `rho` command: an HfArgumentParser over the command's options
dataclasses (their field docs are the `--help`), with what every command shares:

- ``--config FILE.yaml``: the file's keys are option names; its values sit between the
  dataclass defaults and the command line (flags win). Unknown keys are one error naming them.
- both spellings of every option (``--seq_len``, ``--seq-len``): HfArgumentParser adds the
  hyphen alias of each underscore field.
- field metadata besides argparse's own: ``positional`` (an argument without a flag, as in
  `rho inspect STORE`), ``group`` (its section of `--help`), ``repeat`` (one value per use, as
  in `--domain a --domain b`), ``exactly`` (a list of exactly that many values) and ``set_by``
  (not an option: the command sets the field itself, as rho sweep does each run's output_dir).
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

RHO_KEYS = ("positional", "group", "repeat", "exactly")  # field metadata argparse never sees
DEVICE = "cpu, cuda, cuda:1 ... (default: best)"  # the help of every --device


def option(help: str, default: Any = dataclasses.MISSING, **metadata: Any) -> Any:
    """A field of an options dataclass: its `--help` text, its default (none: the option is
    required) and any other metadata key (argparse's, or RHO_KEYS)."""
    return dataclasses.field(default=default, metadata={"help": help, **metadata})


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


class CommandParser(HfArgumentParser):
    def __init__(self, command: Command, prog: str, add_help: bool = True):
        self.command = command
        self._groups: dict[str, argparse._ArgumentGroup] = {}
        # With a positional argument, a bool option is a plain switch: `rho inspect --verify
        # STORE` must not read STORE as the switch's value (HfArgumentParser's `--flag [BOOL]`).
        self._switches = any(
            f.metadata.get("positional") for t in command.options for f in dataclasses.fields(t)
        )
        super().__init__(
            command.options,
            prog=prog,
            description=description(command),
            formatter_class=_Help,
            add_help=add_help,
        )
        self.add_argument(
            "--config",
            metavar="FILE.yaml",
            help="YAML file of these options (option: value); flags given here win",
        )
        for name in command.required:
            for action in self._actions_of(name):
                action.required = True

    def _parse_dataclass_field(self, parser, field):
        set_by = field.metadata.get("set_by")
        if set_by is None:
            HfArgumentParser._parse_dataclass_field(_Options(self, parser), field)
            return
        # Not an option: the command sets it. Its flags, unless another option took them, are
        # refused in one line (rho sweep: each run's output_dir).
        names = dict.fromkeys((f"--{field.name}", f"--{field.name.replace('_', '-')}"))
        free = [n for n in names if n not in self._option_string_actions]
        if free:
            parser.add_argument(*free, action=_Refused, set_by=set_by, help=argparse.SUPPRESS)

    def group(self, title: str):
        if title not in self._groups:
            self._groups[title] = self.add_argument_group(title)
        return self._groups[title]

    def _actions_of(self, dest: str) -> list[argparse.Action]:
        return [a for a in self._actions if a.dest == dest]

    def error(self, message: str):
        raise UserError(f"{message} (see {self.prog} --help)")

    def parse(self, argv: list[str]) -> tuple:
        """The options dataclasses (their checks run as they are built)."""
        given = vars(self.parse_namespace(argv))
        return tuple(t(**{f.name: given[f.name] for f in options(t)}) for t in self.dataclass_types)

    def parse_namespace(self, argv: list[str]) -> argparse.Namespace:
        """The values argparse reads, before any dataclass is built: their defaults, under the
        command's own defaults, under ``--config``'s values, under the flags."""
        values = self._config_values(argv)
        if self.command.defaults is not None:
            values = self.command.defaults(self._first_pass(argv, values)) | values
        self._set_defaults(values)  # before parsing: `--help` shows them
        namespace, rest = self.parse_known_args(argv)
        if rest:
            self.error(f"unrecognized arguments: {' '.join(rest)}")
        return namespace

    def _first_pass(self, argv: list[str], values: dict) -> argparse.Namespace:
        """The options' values as given, read by the same options but without `--help` or any
        required one (the final parse reports those)."""
        first = CommandParser(self.command, self.prog, add_help=False)
        first._set_defaults(values)
        for action in first._actions:
            action.required = False
            if action.nargs == "+":
                action.nargs = "*"
        return first.parse_known_args(argv)[0]

    def _config_values(self, argv: list[str]) -> dict:
        """``--config``'s values, each checked against its field's type."""
        from rho.schema import check_fields, read_yaml_file

        found = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
        found.add_argument("--config")
        path = found.parse_known_args(argv)[0].config
        if path is None:
            return {}
        where = f"config {path}"
        data = read_yaml_file(path, what="config")
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise UserError(f"{where} must be a mapping of option: value")
        data = {str(k).replace("-", "_"): v for k, v in data.items()}
        types = {f.name: t for t in self.dataclass_types for f in options(t)}
        unknown = [repr(k) for k in data if k not in types]
        if unknown:
            s = "s" if len(unknown) > 1 else ""
            raise UserError(
                f"{where}: unknown option{s} {', '.join(unknown)} (see {self.prog} --help)"
            )
        values = {}
        for t in self.dataclass_types:
            mine = {k: v for k, v in data.items() if types[k] is t}
            values |= check_fields(t, mine, where) if mine else {}
        return values

    def _set_defaults(self, values: dict) -> None:
        """Values that flags override: a default given here makes its option optional."""
        self.set_defaults(**values)
        for name in values:
            for action in self._actions_of(name):
                action.required = False
                if not action.option_strings and action.nargs == "+":
                    action.nargs = "*"  # a positional given by the file may be left out


def options(cls) -> list[dataclasses.Field]:
    """The fields of an options dataclass that are options (not set by the command)."""
    return [f for f in dataclasses.fields(cls) if f.init and "set_by" not in f.metadata]


def description(command: Command) -> str | None:
    """The first options dataclass's docstring (not the signature dataclass() writes)."""
    doc = inspect.getdoc(command.options[0]) or ""
    return None if doc.startswith(command.options[0].__name__ + "(") else doc


class _Options:
    """Where HfArgumentParser puts one field's arguments: rho's metadata keys applied there."""

    def __init__(self, parser: CommandParser, container):
        self.parser, self.container = parser, container

    def add_argument(self, *names: str, **kwargs):
        rho = {key: kwargs.pop(key) for key in RHO_KEYS if key in kwargs}
        container = self.parser.group(rho["group"]) if "group" in rho else self.container
        if rho.get("positional"):
            kwargs.pop("required", None)  # a positional is required by its nargs
            names = (names[0].removeprefix("--"),)
        if rho.get("repeat"):
            kwargs.pop("nargs", None)
            kwargs["action"] = _Repeated
        if "exactly" in rho:
            kwargs["nargs"] = rho["exactly"]
        if self.parser._switches and kwargs.get("type") is string_to_bool:
            if kwargs.get("default") is False:
                for key in ("type", "nargs", "const"):
                    kwargs.pop(key, None)
                kwargs["action"] = "store_true"
        return container.add_argument(*names, **kwargs)


class _Help(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in `--help`, but not "(default: None)" nor that of a required option."""

    def _get_help_string(self, action):
        if action.default is None or action.required:
            return action.help
        return super()._get_help_string(action)


class _Refused(argparse.Action):
    def __init__(self, option_strings, dest, set_by: str, **kwargs):
        hidden = {"default": argparse.SUPPRESS, "help": argparse.SUPPRESS}
        super().__init__(option_strings, argparse.SUPPRESS, nargs="?", **hidden)
        self.set_by = set_by

    def __call__(self, parser, namespace, value, option_string=None):
        raise UserError(f"{option_string} is set by {self.set_by}")


class _Repeated(argparse.Action):
    """`--domain a --domain b`: a list, one value per use. The first use replaces a list the
    config file gave (flags win), where argparse's "append" would add to it."""

    def __call__(self, parser, namespace, value, option_string=None):
        items = getattr(namespace, self.dest, None)
        items = [] if items is None or items is self.default else items
        setattr(namespace, self.dest, [*items, value])
