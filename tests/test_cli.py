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
