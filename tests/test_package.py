"""The package stays light to import, and its command line answers --help."""

import subprocess
import sys

import pytest

HEAVY = ("diffusers", "transformers", "nerfstudio", "gsplat", "nvdiffrast")


def test_import_does_not_load_heavy_dependencies() -> None:
    # A fresh interpreter: this test process has already imported everything.
    code = (
        "import sys, sync_splat, sync_splat.sampler, sync_splat.cli, sync_splat.denoisers, sync_splat.bridges\n"
        f"heavy = [m for m in sys.modules if m.split('.')[0] in {HEAVY!r}]\n"
        "print(','.join(sorted(heavy)))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""


@pytest.mark.parametrize("args", [["--help"], ["case-study", "--help"]])
def test_cli_help(args: list[str]) -> None:
    result = subprocess.run([sys.executable, "-m", "sync_splat.cli", *args], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()
