"""Every code block of the README runs as written (issue 11): the Python blocks in order in one namespace, and
the ``mestim`` command lines of the shell blocks through the command line in-process. Blocks fenced as
``console`` are shapes of commands with placeholders (DATA.csv), not runnable examples."""

import os
import re
import shlex

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _blocks(language):
    text = open(README, encoding="utf-8").read()
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.S)


def test_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # blocks that write files write them here
    namespace = {}
    blocks = _blocks("python")
    assert blocks
    for i, block in enumerate(blocks):
        try:
            exec(compile(block, f"README python block {i + 1}", "exec"), namespace)
        except Exception as e:  # name the block that failed
            pytest.fail(f"README python block {i + 1} failed: {type(e).__name__}: {e}\n{block}")


def test_command_lines_run(tmp_path, monkeypatch, capsys):
    from estimators.cli import main

    monkeypatch.chdir(tmp_path)
    lines = [ln.split("#")[0].strip() for block in _blocks("bash") for ln in block.splitlines()]
    commands = [ln for ln in lines if ln.startswith("mestim ")]
    assert commands
    for command in commands:
        assert main(shlex.split(command)[1:]) == 0, (command, capsys.readouterr().err[-2000:])
