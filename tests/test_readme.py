"""The README's code runs as written: every ```python block, in order, in one namespace, in a
temporary folder; and every option the command-line section shows exists."""
import os
import re

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = open(os.path.join(ROOT, "README.md"), encoding="utf-8").read()


def blocks(lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", README, flags=re.S | re.M)


def test_python_blocks_run_in_order(tmp_path, monkeypatch, one_thread):
    # one thread: on the shared 2-core CPU two torch threads waiting on each other made the tour
    # 13x slower (148 s vs 11 s at a load average of 13)
    code = blocks("python")
    assert len(code) >= 5
    monkeypatch.chdir(tmp_path)  # the tour writes runs/tiny here, not in the checkout
    ns = {"__name__": "__readme__"}
    for i, src in enumerate(code, 1):
        exec(compile(src, f"README.md python block {i}", "exec"), ns)
    assert os.path.exists(tmp_path / "runs" / "tiny" / "checkpoint.pt")


def command_line_section() -> str:
    section = README[README.index("## The command line"):]
    return re.search(r"^```\n(.*?)^```", section, flags=re.S | re.M).group(1)


def test_command_line_section_names_real_options():
    from scoresde.cli import cli

    usage = command_line_section()
    commands = re.split(r"^(?:torchrun .*?-m scoresde\.cli|scoresde) (?=\w)", usage, flags=re.M)[1:]
    names = {n for c in commands for n in c.split()[0].split("|")}
    assert names >= {"solvers", "compare", "sample", "likelihood", "train"}
    for text in commands:
        shown = set(re.findall(r"(?<![\w-])(--?[a-z][\w-]*)", "\n".join(ln.split("#")[0] for ln in text.splitlines())))
        for name in text.split()[0].split("|"):  # `sample|compare ...` shows options of both
            opts = {o for p in cli.commands[name].params for o in p.opts}
            missing = sorted(shown - opts - {"--help", "-h"})
            if missing:
                pytest.fail(f"README shows `scoresde {name}` options it does not have: {missing}")
