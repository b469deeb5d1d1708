"""``kvision`` is one module per command: each module of ``kvision/commands/`` (and the
export command, ``kvision/export/command.py``) adds its own parser, whose ``func`` is
its ``run``; ``kvision.cli`` adds every one of them, each with ``--verbose``."""

import argparse
import importlib.metadata
import pkgutil
import re
import subprocess
import sys

import pytest

import kvision.commands
from kvision import cli
from kvision.commands import COMMANDS

# The commands the README documents, in the order ``kvision --help`` lists them.
DOCUMENTED = ["list", "info", "train", "evaluate", "predict", "explain", "sort", "embed",
              "search", "export"]


def _cli_commands():
    """The sub-parsers of ``kvision.cli.build_parser()``, by command name."""
    return cli.build_parser()._subparsers._group_actions[0].choices


def _added_by(module):
    """The name and parser that ``module.add_parser`` adds to a fresh sub-parser set."""
    sub = argparse.ArgumentParser(prog="kvision").add_subparsers()
    module.add_parser(sub)
    assert len(sub.choices) == 1, f"{module.__name__} added {list(sub.choices)}"
    return next(iter(sub.choices.items()))


def test_every_command_module_is_listed():
    """A module written in kvision/commands/ but left out of COMMANDS is no command."""
    public = {m.name for m in pkgutil.iter_modules(kvision.commands.__path__)
              if not m.name.startswith("_")}
    listed = {m.__name__.rsplit(".", 1)[1] for m in COMMANDS
              if m.__name__.startswith("kvision.commands.")}
    assert public == listed
    assert [_added_by(m)[0] for m in COMMANDS] == DOCUMENTED


@pytest.mark.parametrize("module", COMMANDS, ids=lambda m: m.__name__)
def test_each_module_registers_its_command(module):
    name, parser = _added_by(module)
    assert parser.get_default("func") is module.run
    assert _cli_commands()[name].get_default("func") is module.run


@pytest.mark.parametrize("name", DOCUMENTED)
def test_help_exits_0_and_lists_every_flag(name, capsys):
    command = _cli_commands()[name]
    with pytest.raises(SystemExit) as done:
        cli.build_parser().parse_args([name, "--help"])
    assert done.value.code == 0
    shown = capsys.readouterr().out
    assert shown.startswith(f"usage: kvision {name} ")
    for action in command._actions:
        for word in action.option_strings or [action.metavar or action.dest]:
            # A whole word: --out must not pass for --output.
            assert re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", shown), word


@pytest.mark.parametrize("module", ["kvision", "kvision.cli"])
def test_python_m_runs_the_command(module):
    done = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: kvision ")
    assert "{" + ",".join(DOCUMENTED) + "}" in done.stdout


def test_console_script_is_cli_main():
    script = importlib.metadata.entry_points(group="console_scripts")["kvision"]
    assert script.value == "kvision.cli:main"
    assert script.load() is cli.main
