import os
import subprocess
import sys

import cv2
import pytest

import facemtl
from facemtl.cli import main
from facemtl.data.synth import render_face


def test_version_flag(capsys):
    try:
        main(["--version"])
    except SystemExit as exc:
        assert exc.code == 0
    assert capsys.readouterr().out.strip() == f"facemtl {facemtl.__version__}"


def test_console_entry_point_runs():
    out = subprocess.run([sys.executable, "-m", "facemtl", "--help"], capture_output=True, text=True)
    assert out.returncode == 0
    assert "usage: facemtl" in out.stdout


def test_the_readme_documents_every_option_of_every_command():
    import argparse
    from pathlib import Path

    from facemtl.cli import build_parser

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    missing = []

    def walk(parser, prefix):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{prefix} {name}")
            elif action.option_strings and action.dest not in ("help", "version"):
                if not action.help:
                    missing.append(f"{prefix} {action.option_strings[0]} (no --help text)")
                section = readme.split(f"- `{prefix}`", 1)
                if len(section) < 2 or f"`{', '.join(action.option_strings)}`" not in section[1].split("\n- `")[0]:
                    if not prefix.startswith("facemtl experiment dcnet") or "compare" in prefix:
                        missing.append(f"{prefix} {action.option_strings[0]}")

    walk(build_parser(), "facemtl")
    assert not missing, missing


def _walk(parser, prefix="facemtl"):
    """(command path, parser) for the top-level parser and every subcommand below it."""
    import argparse

    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, f"{prefix} {name}")


def test_building_the_parser_and_printing_help_imports_nothing_heavy():
    # `facemtl --help` took 1.3 s when the command modules imported torch and cv2 at the top.
    code = """
import argparse, contextlib, io, sys
from facemtl.cli import build_parser, main
parsers = [build_parser()]
for parser in parsers:  # grows as subcommands are found
    parser.format_help()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parsers.extend(action.choices.values())
for argv in (["--help"], ["--version"], ["train", "--help"], ["synth", "preview", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            main(argv)
        except SystemExit:
            pass
print(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "cv2", "matplotlib", "numpy")))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_option_of_every_command_has_help_text():
    import argparse

    from facemtl.cli import build_parser

    missing = []
    for prefix, parser in _walk(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            if isinstance(action, argparse._SubParsersAction):  # each subcommand's one-line help
                helps = {choice.dest: choice.help for choice in action._choices_actions}
                for name in action.choices:
                    if not (helps.get(name) or "").strip() or helps[name] == argparse.SUPPRESS:
                        missing.append(f"{prefix} {name}")
                continue
            if not (action.help or "").strip() or action.help == argparse.SUPPRESS:
                missing.append(f"{prefix} {'/'.join(action.option_strings) or action.dest}")
    assert not missing, missing


def _run_into_a_closed_pipe(*args: str) -> subprocess.CompletedProcess:
    """Run ``python -m facemtl ARGS`` with stdout a pipe whose reader is already gone (``| head``)."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "facemtl", *args], stdout=write_end, stderr=subprocess.PIPE,
                              text=True, timeout=300)
    finally:
        os.close(write_end)


def test_a_closed_pipe_ends_quietly_with_the_sigpipe_status(tmp_path):
    image = tmp_path / "face.png"
    cv2.imwrite(str(image), cv2.cvtColor(render_face(0, 0, "studio", 128)["image"], cv2.COLOR_RGB2BGR))
    out = _run_into_a_closed_pipe("predict", str(image), "--detector", "none")
    assert out.returncode == 141, out.stderr
    assert "Traceback" not in out.stderr and "BrokenPipeError" not in out.stderr


@pytest.mark.parametrize("argv, command, unknown", [
    (["predict", "photo.png", "--out", "pred"], "facemtl predict", "--out pred"),
    (["synth", "preview", "--out", "x.png", "--bogus"], "facemtl synth preview", "--bogus"),
    (["--bogus"], "facemtl", "--bogus"),
])
def test_an_unknown_argument_is_reported_by_its_own_command(argv, command, unknown, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: {command} ")  # that command's usage, not the top level's
    assert err.rstrip().endswith(f"{command}: error: unrecognized arguments: {unknown}")


def test_the_evidence_pages_contents_link_to_its_sections():
    import re
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "docs" / "evidence.md").read_text()
    # the anchors a Markdown renderer gives headings: lower case, punctuation dropped, spaces -> "-"
    anchors = {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-")
               for h in re.findall(r"^#{2,3} (.+)$", text, re.M)}
    contents = text.split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert links and not set(links) - anchors, sorted(set(links) - anchors)
    # every top-level section is listed
    sections = re.findall(r"^## (.+)$", text, re.M)
    assert all(f"[{title}](#" in contents for title in sections), sections
