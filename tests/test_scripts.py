"""The scripts a user runs directly: --help works, missing prerequisites are one line, and the benchmarks run at tiny
sizes and print RESULT lines whose values make sense."""

import importlib.util
import math
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from types import ModuleType

import pytest
import torch

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def run_script(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(SCRIPTS / name), *args], capture_output=True, text=True)


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


def result_values(output: str) -> dict[str, float]:
    """The `key=value` pairs of every `RESULT` line of a benchmark's output (a key may appear once)."""
    values: dict[str, float] = {}
    for line in output.splitlines():
        if line.startswith("RESULT "):
            for pair in line.split()[1:]:
                key, value = pair.split("=")
                assert key not in values, f"{key} is printed twice"
                values[key] = float(value)
    return values


@pytest.mark.parametrize(
    "name", ["case_study.py", "gpu_smoke.py", "bench_mesh.py", "bench_unproject.py", "bench_scale.py"]
)
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


class FakeClock:
    """A clock that moves only when told to."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_phase_timer_charges_nested_phases_exclusively() -> None:
    gpu_smoke = load_script("gpu_smoke.py")
    clock = FakeClock()
    timer = gpu_smoke.PhaseTimer(torch.device("cpu"), clock=clock)
    inner = timer.wrap("inner", lambda: clock.advance(3.0))

    def outer_body() -> str:
        clock.advance(2.0)
        inner()
        clock.advance(5.0)
        inner()
        return "done"

    assert timer.wrap("outer", outer_body)() == "done"
    clock.advance(11.0)  # outside every phase: charged to none
    assert timer.seconds == {"outer": 7.0, "inner": 6.0}
    assert timer.calls == {"outer": 1, "inner": 2}


def test_phase_timer_charges_a_phase_that_raises_and_resumes_its_caller() -> None:
    gpu_smoke = load_script("gpu_smoke.py")
    clock = FakeClock()
    timer = gpu_smoke.PhaseTimer(torch.device("cpu"), clock=clock)

    def failing() -> None:
        clock.advance(4.0)
        raise ValueError("boom")

    def outer_body() -> None:
        with pytest.raises(ValueError):
            timer.wrap("inner", failing)()
        clock.advance(1.0)

    timer.wrap("outer", outer_body)()
    assert timer.seconds == {"inner": 4.0, "outer": 1.0}


@pytest.mark.slow
def test_gpu_smoke_flow_runs_on_the_cpu_with_tiny_models(tmp_path: Path, tiny_sd, capsys) -> None:
    """The whole smoke run (loading, the timed restyle, the outputs, the table) on tiny SD + ControlNet models."""
    gpu_smoke = load_script("gpu_smoke.py")
    restyle = gpu_smoke.RestyleConfig(prompt="a teapot", denoiser="sd", steps=2, views=2)
    restyle = replace(restyle, sd=replace(restyle.sd, model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet)))
    settings = gpu_smoke.GpuSmoke(out=tmp_path / "smoke", scenes=("demo",), restyle=restyle)
    (row,) = gpu_smoke.smoke(settings, torch.device("cpu"))
    # Every phase was reached through its wrapper and charged time; the UNet at least once per step.
    assert all(row.calls[phase] >= 1 and row.seconds[phase] > 0 for phase in ("unet", "vae", "render", "fit"))
    assert row.calls["unet"] >= restyle.steps
    # Phases are exclusive (the VAE inside the fit is charged once), so together they fit in the wall time.
    assert sum(row.seconds.values()) <= row.total_s
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| scene |"))
    printed = next(line for line in lines if line.startswith("| demo |"))
    cells = dict(zip(header.strip("|").split("|"), printed.strip("|").split("|"), strict=True))
    cells = {name.strip(): value.strip() for name, value in cells.items()}
    assert int(cells["Gaussians"]) == row.gaussians
    for column, seconds in (("total s", row.total_s), ("UNet s", row.seconds["unet"]), ("VAE s", row.seconds["vae"]),
                            ("render s", row.seconds["render"]), ("fit s", row.seconds["fit"])):  # fmt: skip
        assert float(cells[column]) == pytest.approx(seconds, rel=0.01), column
    assert float(cells["other s"]) == pytest.approx(row.total_s - sum(row.seconds.values()), rel=0.01, abs=1e-3)
    assert sorted(p.name for p in (tmp_path / "smoke").iterdir()) == ["demo.ply", "demo_views.png"]


def test_bench_unproject_runs_at_a_tiny_size(capsys) -> None:
    bench = load_script("bench_unproject.py")
    settings = bench.BenchUnproject(scenes=("demo",), views=(2,), size=16, steps=2, baseline_iterations=5,
                                    e2e_iterations=1)  # fmt: skip
    (comparison,) = settings.main()
    values = result_values(capsys.readouterr().out)
    assert set(values) == {"min_speedup", "min_psnr_delta_db", "e2e_min_speedup", "e2e_iterations_timed"}
    assert all(math.isfinite(value) for value in values.values())
    assert values["min_speedup"] > 0 and values["e2e_min_speedup"] > 0
    assert values["e2e_iterations_timed"] == 1
    assert abs(values["min_psnr_delta_db"] - comparison.psnr_delta) < 1e-3
    # Both fits approach the targets (noise 0.05: about 26 dB for the noiseless colours; grey is below 10).
    assert 15 < comparison.baseline_psnr < 60 and 15 < comparison.ours_psnr < 60
    # Each method was charged its own setup, the weights were timed apart, and every fit ran.
    for seconds in (comparison.shared_s, comparison.baseline_setup_s, comparison.ours_setup_s,
                    comparison.baseline_fit_s, comparison.ours_fit_s, comparison.e2e_measured_s):  # fmt: skip
        assert 0 < seconds < 60
    assert comparison.e2e_scale == 5
    # The rasterising baseline is the same fit as the one on the weights.
    assert comparison.renderer_check < 1e-3


@pytest.mark.slow
def test_bench_scale_times_views_split_across_two_processes(capsys, monkeypatch: pytest.MonkeyPatch) -> None:
    bench = load_script("bench_scale.py")
    monkeypatch.syspath_prepend(str(SCRIPTS))  # its processes import the script by name
    bench.BenchScale(split=("demo", 4, 16), steps=2, parts=(4,)).main()
    out = capsys.readouterr().out
    values = result_values(out)
    assert values["two_proc_speedup"] > 0 and math.isfinite(values["two_proc_speedup"])
    assert all(math.isnan(values[key]) for key in values if key != "two_proc_speedup")  # parts 1 to 3 did not run
    rows = {
        cells[0]: cells[1:]
        for line in out.splitlines()
        if re.match(r"\| \d x \d+ \|", line)
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    assert list(rows) == ["1 x 1", "1 x 2", "2 x 1"]
    assert [rows["1 x 1"][i] for i in (2, 5, 6)] == ["1.00x", "1.00x", "0.0e+00"]  # speedups and |dz| against itself
    assert float(rows["2 x 1"][6]) < 1e-4  # two processes fit the colours of one


def test_bench_unproject_layouts_are_the_weights_per_view() -> None:
    bench = load_script("bench_unproject.py")
    generator = torch.Generator().manual_seed(0)
    dense = torch.rand(3 * 4, 5, generator=generator) * (torch.rand(3 * 4, 5, generator=generator) < 0.4)
    forward, backward = bench.per_view_matrices(dense.to_sparse_coo().coalesce(), num_views=3, pixels=4)
    for view in range(3):
        expected = dense[view * 4 : (view + 1) * 4]
        assert torch.equal(forward[view].to_dense(), expected)
        assert torch.equal(backward[view].to_dense(), expected.T)


def test_bench_unproject_refuses_a_missing_scene_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    bench = load_script("bench_unproject.py")
    monkeypatch.setattr(sys, "argv", ["bench_unproject.py", "--scenes", str(tmp_path / "missing.ply")])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench_unproject: error:") and "missing.ply" in error and "\n" not in error


def test_bench_mesh_runs_at_a_tiny_size(tmp_path: Path, capsys) -> None:
    import trimesh

    path = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1).export(path)
    bench = load_script("bench_mesh.py")
    medians = bench.BenchMesh(mesh=path, texture_size=32, view_size=32, repeats=1).main()
    values = result_values(capsys.readouterr().out)
    assert set(values) == {"seconds_per_step", "setup_s"}
    assert all(math.isfinite(value) and 0 < value < 60 for value in values.values())
    assert values["seconds_per_step"] == pytest.approx(medians["f: project"] + medians["g: unproject"], abs=2e-6)


def test_bench_mesh_refuses_a_missing_mesh_in_one_line(tmp_path: Path, capsys, monkeypatch) -> None:
    bench = load_script("bench_mesh.py")
    monkeypatch.setattr(sys, "argv", ["bench_mesh.py", "--mesh", str(tmp_path / "missing.obj")])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("bench_mesh: error:") and "missing.obj" in error and "\n" not in error
