import subprocess
import sys

import facemtl
from facemtl.cli import main


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
