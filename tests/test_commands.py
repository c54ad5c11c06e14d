"""rho.commands: every subcommand's `--help`, `--config` and both spellings of its options, the
README's and docs' command lines, and the one-line refusals of the shared parser."""

from __future__ import annotations

import dataclasses
import importlib
import re
import shlex
from pathlib import Path

import pytest
from helpers import parse_options

from rho.cli import SUBCOMMANDS, main
from rho.commands.parser import Command, CommandParser, options
from rho.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def commands() -> dict[str, Command]:
    """Every command and sub-command, by its words after `rho`."""
    found = {}
    for name in SUBCOMMANDS:
        command = importlib.import_module(f"rho.commands.{name}").COMMAND
        subs = command if isinstance(command, dict) else {"": command}
        found |= {f"{name} {sub}".strip(): c for sub, c in subs.items()}
    return found


COMMANDS = commands()


def parser(words: str) -> CommandParser:
    return CommandParser(COMMANDS[words], f"rho {words}")


def parse(words: str, argv: list) -> tuple:
    return parser(words).parse([str(a) for a in argv])


def test_every_subcommand_has_a_module():
    assert set(SUBCOMMANDS) == {words.split()[0] for words in COMMANDS}
    assert {"analyze dynamics", "analyze selection", "analyze html"} <= set(COMMANDS)
    assert "analyze sweep" not in COMMANDS  # the old spelling of `rho sweep` is gone


@pytest.mark.parametrize("words", sorted(COMMANDS))
def test_help_names_every_option(words, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([*words.split(), "--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "--config" in text
    for cls in COMMANDS[words].options:
        for field in options(cls):
            name = field.name if field.metadata.get("positional") else f"--{field.name}"
            assert name in text, (words, name)


def test_a_command_with_sub_commands_lists_them(capsys):
    assert main(["analyze", "--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("dynamics", "selection", "html"))
    assert main(["analyze"]) == 2
    assert main(["analyze", "nope"]) == 2
    assert "unknown command 'nope'" in capsys.readouterr().err


# Per command: the arguments it needs, an underscore option and two values of it.
CASES = {
    "tokenize": (["in.jsonl", "--out", "o", "--tokenizer", "t"], "text_field", "body", "prose"),
    "score": (["--model", "m", "--tokens", "t", "--out", "o"], "seq_len", 8, 16),
    "inspect": (["--verify"], "paths", ["a", "b"], ["c"]),
    "train": (["--tokens", "t", "--preset", "tiny", "--output_dir", "o"], "seq_len", 64, 32),
    "prune": (["--tokens", "t", "--losses", "l", "--out", "o"], "base_losses", "b1", "b2"),
    "eval": (["--model", "m", "--tokens", "t"], "max_new_tokens", 64, 32),
    "analyze dynamics": (
        ["--checkpoints", "a", "b", "--tokens", "t", "--out", "o"],
        "seq_len",
        64,
        32,
    ),
    "analyze selection": (["--runs", "s", "c", "--out", "o"], "select_batch", 4, 8),
    "analyze html": (["--tokens", "t", "--losses", "l", "--out", "o.html"], "passage_tokens", 5, 6),
    "sweep": (
        ["--ratios", "0.5", "1", "--tokens", "t", "--ref_losses", "r", "--eval_tokens", "e"]
        + ["--out", "o"],
        "max_steps",
        40,
        60,
    ),
    "experiment": ([], "train_tokens", 1000, 2000),
    "demo": (["--quick"], "train_tokens", 1000, 2000),
}


def test_every_command_has_a_case():
    assert set(CASES) == set(COMMANDS)


def flag(name: str, value, spelling: str = "_") -> list:
    values = value if isinstance(value, list) else [value]
    if name == "paths":  # rho inspect's positional
        return values
    return [f"--{name.replace('_', spelling)}", *values]


def value_of(parsed: tuple, name: str):
    (found,) = [getattr(o, name) for o in parsed if name in {f.name for f in options(type(o))}]
    return found


@pytest.mark.parametrize("words", sorted(CASES))
def test_config_file_equals_flags_and_flags_win(words, tmp_path):
    needed, name, first, second = CASES[words]
    config = tmp_path / "c.yaml"
    config.write_text(f"{name}: {first!r}\n".replace("'", '"'))
    from_file = parse(words, [*needed, "--config", config])
    from_flag = parse(words, [*needed, *flag(name, first)])
    assert from_file == from_flag
    assert value_of(from_file, name) == first
    overridden = parse(words, [*needed, "--config", config, *flag(name, second)])
    assert value_of(overridden, name) == second


@pytest.mark.parametrize("words", sorted(CASES))
def test_both_spellings(words):
    needed, name, first, _ = CASES[words]
    if name == "paths":
        name, first = "verify", None  # rho inspect has no underscore option
        assert parse(words, ["a", "--verify"]) == parse(words, ["--verify", "a"])
        return
    assert parse(words, [*needed, *flag(name, first)]) == parse(
        words, [*needed, *flag(name, first, "-")]
    )


def test_config_refuses_unknown_keys_in_one_line(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seq_len: 8\nsequence: 3\nmodle: m\n")
    with pytest.raises(UserError, match="unknown options 'sequence', 'modle'"):
        parse("score", ["--tokens", "t", "--out", "o", "--model", "m", "--config", config])
    config.write_text("seq_len: eight\n")
    with pytest.raises(UserError, match="seq_len"):
        parse("score", ["--tokens", "t", "--out", "o", "--model", "m", "--config", config])


def test_config_keys_take_either_spelling(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("seq-len: 8\nbatch_size: 4\n")
    (options_,) = parse(
        "score", ["--tokens", "t", "--out", "o", "--model", "m", "--config", config]
    )
    assert (options_.seq_len, options_.batch_size) == (8, 4)


def test_demo_scale_and_setting_are_options_under_the_config(tmp_path):
    demo, cfg, _, _ = parse("demo", ["--quick"])
    assert demo.quick and cfg.out == "rho-demo"
    quick_tokens = cfg.train_tokens
    _, full, _, _ = parse("demo", [])
    assert full.train_tokens > quick_tokens  # quick.yaml over demo.yaml
    config = tmp_path / "c.yaml"
    config.write_text("quick: true\nseeds: [5]\n")
    demo, cfg, _, _ = parse("demo", ["--config", config])
    assert demo.quick and cfg.train_tokens == quick_tokens and cfg.seeds == [5]
    demo, cfg, _, _ = parse("demo", ["--setting", "scarce", "--seeds", "7"])
    assert demo.setting == "scarce" and cfg.curated_tokens == cfg.train_tokens // 20
    assert cfg.seeds == [7]


def test_experiment_refuses_quick_in_one_line(capsys):
    assert main(["experiment", "--quick"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unrecognized arguments: --quick" in err


def test_errors_of_arguments_are_one_line(capsys):
    assert main(["score", "--seq_len", "8"]) == 2  # both spellings; the others are missing
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--model" in err and "--seq" not in err
    assert main(["train", "--tokens", "t"]) == 2
    assert "--output_dir" in capsys.readouterr().err
    assert main(["score", "--dtype", "float8"]) == 2
    assert "invalid choice" in capsys.readouterr().err


def test_sweep_sets_each_runs_output_dir_steps_and_seed():
    needed = CASES["sweep"][0]
    with pytest.raises(UserError, match="--output_dir is set by the sweep"):
        parse("sweep", [*needed, "--max_steps", "2", "--output_dir", "x"])
    sweep, training = parse("sweep", [*needed, "--max_steps", "40", "--seed", "3", "--use_cpu"])
    assert (sweep.max_steps, sweep.seed) == (40, 3) and training.use_cpu
    assert training.logging_steps == 2 and training.report_to in ("none", [])  # its defaults
    _, training = parse("sweep", [*needed, "--max_steps", "40", "--logging_steps", "7"])
    assert training.logging_steps == 7


def test_train_parses_every_training_argument():
    needed = CASES["train"][0]
    data, run, args = parse("train", [*needed, "--use-cpu", "--max_steps", "3", "--ratio", "0.5"])
    assert args.use_cpu and args.max_steps == 3 and args.output_dir == "o"
    assert data.preset == "tiny" and args.selection == "token" and args.ratio == 0.5
    assert not run.overwrite and not args.remove_unused_columns  # rho's defaults
    assert parse_options("train", [*needed]) == parse("train", needed)


# --- The command lines of the README and docs ---------------------------------------------------

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RHO = re.compile(r"(?:^|\s)(?:rho|-m rho)\s+(\S.*)$")


def code_blocks(text: str) -> list[str]:
    """The shell blocks (```bash) of a Markdown text."""
    blocks, current, language = [], None, ""
    for line in text.splitlines(keepends=True):
        if line.startswith("```"):
            if current is None:
                current, language = [], line[3:].strip()
            else:
                blocks += ["".join(current)] if language in ("bash", "sh") else []
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def block_lines(block: str) -> tuple[list[str], dict[str, str], dict[str, str]]:
    """The block's command lines (continuations joined, comments cut), its shell variables and
    its heredoc files."""
    files = {m[0]: m[2] for m in re.findall(r"cat > (\S+) <<'(\w+)'\n(.*?)\n\2", block, re.S)}
    block = re.sub(r"cat > \S+ <<'(\w+)'\n.*?\n\1\n", "", block, flags=re.S)
    variables = dict(re.findall(r'^(\w+)="([^"]*)"$', block, flags=re.M))
    lines = block.replace("\\\n", " ").splitlines()
    return [re.sub(r"\s#.*$", "", line) for line in lines], variables, files


def command_lines() -> list[tuple[str, list[str], dict[str, str], bool]]:
    """(where, argv after rho, files the block writes, whole): whole lines are parsed, fragments
    (inline `rho ...` spans, lines with `...`) have their flags checked."""
    found = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        variables = {}  # a block may use those of the blocks above ("$C of the section above")
        for block in code_blocks(text):
            lines, assigned, files = block_lines(block)
            variables |= assigned
            for line in lines:
                for var, value in variables.items():
                    line = line.replace(f"${var}", value)
                if (match := RHO.search(line)) and "|" not in match[1].split()[0]:
                    argv = shlex.split(match[1].split("&&")[0])
                    found.append((f"{doc.name}: {line.strip()}", argv, files, "..." not in argv))
        for span in re.findall(r"`rho ([^`]+)`", text):
            found.append((f"{doc.name}: `rho {span}`", span.split(), {}, False))
    return found


LINES = command_lines()


def words_of(argv: list[str]) -> tuple[str, list[str]] | None:
    if argv[0] not in SUBCOMMANDS:
        return None
    if argv[0] == "analyze":
        if len(argv) < 2 or f"analyze {argv[1]}" not in COMMANDS:
            return None
        return f"analyze {argv[1]}", argv[2:]
    return argv[0], argv[1:]


def test_the_docs_hold_command_lines():
    whole = [where for where, *_, is_whole in LINES if is_whole]
    assert len(whole) >= 20, whole
    assert any("rho inspect stores/web stores/web_ref" in w for w in whole)


@pytest.mark.parametrize(("where", "argv", "files", "whole"), LINES, ids=[w for w, *_ in LINES])
def test_doc_command_line_parses(where, argv, files, whole, tmp_path, monkeypatch):
    found = words_of(argv)
    if found is None:  # `rho --help`, `rho SUBCOMMAND ...`, `rho analyze dynamics|selection`
        return
    words, rest = found
    p = parser(words)
    if whole:
        monkeypatch.chdir(tmp_path)
        for name, text in files.items():
            (tmp_path / name).write_text(text)
        p.parse_namespace(rest)  # every option known, of its type; the required ones given
        return
    known = p.flags()
    for token in rest:
        name = token.split("=")[0]
        if re.fullmatch(r"--[a-z][\w-]*", name):
            assert name in known, (where, name)


def test_no_field_of_a_command_is_named_like_another_commands_word():
    for words, command in COMMANDS.items():
        names = [f.name for cls in command.options for f in options(cls)]
        duplicated = {n for n in names if names.count(n) > 1}
        assert not duplicated, (words, duplicated)
        assert all(dataclasses.is_dataclass(cls) for cls in command.options)
