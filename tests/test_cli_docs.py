"""docs/cli.md against the Typer app: every command and option is documented, and the
docs name no command or option that does not exist (like docs/errors.md and the
catalog)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import typer.main

from frostpoint.cli.main import app

DOC = Path(__file__).resolve().parent.parent / "docs" / "cli.md"
OPTION = re.compile(r"--[a-z][a-z0-9-]*")


def _commands() -> dict[str, Any]:
    """'vm extension set' -> its click command, for every leaf command of the app."""
    out: dict[str, Any] = {}

    def walk(cmd: Any, path: list[str]) -> None:
        if hasattr(cmd, "commands"):
            for name, sub in cmd.commands.items():
                walk(sub, [*path, name])
        else:
            out[" ".join(path)] = cmd
    walk(typer.main.get_command(app), [])
    return out


def _options(cmd: Any) -> set[str]:
    return {o for p in cmd.params if p.param_type_name == "option"
            for o in [*p.opts, *p.secondary_opts] if o.startswith("--")} - {"--help"}


def _command_lines(after: str = "") -> list[str]:
    """Each `frostpoint ...` command in the doc's code blocks (from the heading `after`
    on), continuation lines joined, comments cut: what a reader would type."""
    lines: list[str] = []
    in_block = cont = False
    text = DOC.read_text()
    for line in text[text.index(after):].splitlines():
        if line.strip().startswith("```"):
            in_block, cont = not in_block, False
            continue
        if not in_block:
            continue
        at = line.find("frostpoint ")
        if at >= 0 and (at == 0 or line[at - 1] == " "):
            lines.append(line[at + len("frostpoint "):].split("#")[0].strip())
            cont = True
        elif cont and line.startswith(" ") and line.strip().startswith("["):
            lines[-1] += " " + line.split("#")[0].strip()  # a synopsis on two lines
        else:
            cont = False
    return lines


def _resolve(line: str, commands: dict[str, Any]) -> str | None:
    """The longest command path the line starts with."""
    words = line.split()
    for n in range(min(len(words), 3), 0, -1):
        if " ".join(words[:n]) in commands:
            return " ".join(words[:n])
    return None


def test_every_command_and_option_is_in_docs_cli_md() -> None:
    commands = _commands()
    assert {"server", "vm extension set", "vault key export", "restore files"} <= set(commands)
    lines = _command_lines("\n## Commands\n")
    missing = []
    for path, cmd in sorted(commands.items()):
        # The synopsis: the first line of the command reference that types it.
        synopsis = next((x for x in lines if _resolve(x, commands) == path), None)
        if synopsis is None:
            missing.append(f"frostpoint {path}: no synopsis")
            continue
        for opt in sorted(_options(cmd) - set(OPTION.findall(synopsis))):
            missing.append(f"frostpoint {path}: {opt} not in its synopsis {synopsis!r}")
    assert missing == []


def test_docs_cli_md_names_no_command_or_option_that_does_not_exist() -> None:
    commands = _commands()
    groups = {p.rsplit(" ", 1)[0] for p in commands if " " in p}
    wrong = []
    for line in _command_lines():
        path = _resolve(line, commands)
        first = line.split()[0] if line.split() else ""
        if path is None:
            # Prose in a code block ("frostpoint doctor" in an error's fix is a command;
            # a placeholder like `frostpoint ...` is not).
            if first.isidentifier() or first in groups:
                wrong.append(f"no command: frostpoint {line}")
            continue
        for opt in sorted(set(OPTION.findall(line)) - _options(commands[path])):
            wrong.append(f"frostpoint {path} has no {opt}: {line!r}")
    assert wrong == []


def test_the_checks_see_the_doc() -> None:
    """The parsing finds what it should, so the two tests above can fail."""
    lines = _command_lines()
    assert any(x.startswith("vm create NAME") and "--agent-version" in x for x in lines)
    assert "job list --machine web" in lines  # inside the error example's fix lines
    assert _resolve("vm extension set web X", _commands()) == "vm extension set"
    assert _resolve("vm frobnicate", _commands()) is None


def test_help_says_what_each_option_is_for() -> None:
    """`--help` of every command: each option has a description, and no value shows a
    Python type (`<bool>`, `<list[str]>`) instead of what to type."""
    from typer.testing import CliRunner
    runner = CliRunner()
    bare = []
    for path, cmd in sorted(_commands().items()):
        for p in cmd.params:
            if p.param_type_name == "option" and p.name not in ("help",) and not p.help:
                bare.append(f"frostpoint {path} {p.opts[0]}: no help")
        if not cmd.help:
            bare.append(f"frostpoint {path}: no description")
        out = runner.invoke(app, [*path.split(), "--help"], env={"COLUMNS": "100"}).output
        assert "Usage: " in out, out
        for line in out.splitlines():
            if line.lstrip().startswith("-") and re.search(r"<(bool|list|int|float|str|path)",
                                                           line):
                bare.append(f"frostpoint {path}: {line.strip()}")
    assert bare == []
