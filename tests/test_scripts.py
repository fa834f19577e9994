"""The scripts a user runs directly answer as the CLI does: --help works, missing prerequisites are one line."""

import importlib.util
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True)


@pytest.mark.parametrize("name", ["case_study.py", "gpu_smoke.py", "bench_mesh.py", "bench_unproject.py"])
def test_script_help(name: str) -> None:
    result = run_script(name, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage" in result.stdout.lower()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without CUDA")
def test_gpu_smoke_without_cuda_is_one_line(tmp_path: Path) -> None:
    result = run_script("gpu_smoke.py", "--out", str(tmp_path / "smoke"))
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "CUDA" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "smoke").exists()


def load_script(name: str) -> ModuleType:
    """A script as a module (scripts/ is not a package; its modules import each other by name)."""
    sys.path.insert(0, str(SCRIPTS))
    try:
        spec = importlib.util.spec_from_file_location(name.removesuffix(".py"), SCRIPTS / name)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # its dataclasses look their module up while being defined
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(SCRIPTS))


def test_phase_timer_charges_nested_phases_exclusively() -> None:
    gpu_smoke = load_script("gpu_smoke.py")
    timer = gpu_smoke.PhaseTimer(torch.device("cpu"))
    inner = timer.wrap("inner", lambda: time.sleep(0.05))

    def outer_body() -> None:
        time.sleep(0.05)
        inner()

    timer.wrap("outer", outer_body)()
    assert 0.05 <= timer.seconds["inner"] < 0.09
    assert 0.05 <= timer.seconds["outer"] < 0.09  # not 0.1: the inner phase is not charged twice


@pytest.mark.slow
def test_gpu_smoke_flow_runs_on_the_cpu_with_tiny_models(tmp_path: Path, tiny_sd, capsys) -> None:
    """The whole smoke run (loading, the timed restyle, the outputs, the table) on tiny SD + ControlNet models."""
    gpu_smoke = load_script("gpu_smoke.py")
    restyle = gpu_smoke.RestyleConfig(prompt="a teapot", denoiser="sd", steps=2, views=2)
    restyle = replace(restyle, sd=replace(restyle.sd, model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet)))
    settings = gpu_smoke.GpuSmoke(out=tmp_path / "smoke", scenes=("demo",), restyle=restyle)
    gpu_smoke.smoke(settings, torch.device("cpu"))
    table = capsys.readouterr().out
    row = next(line for line in table.splitlines() if line.startswith("| demo |"))
    total, unet, vae, render, fit, other = (float(cell) for cell in row.split("|")[3:9])
    assert min(unet, vae, render, fit) > 0 and abs(unet + vae + render + fit + other - total) < 1e-6 + 0.05 * total
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["demo.ply", "demo_views.png"]
