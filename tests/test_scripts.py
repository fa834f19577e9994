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
from tiny_sd import save_tiny_configs

from sync_splat.apps.phases import PHASES, PhaseReport
from sync_splat.functional.diffusion import NoiseSchedule

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
    "name", ["case_study.py", "gpu_smoke.py", "bench_mesh.py", "bench_unproject.py", "bench_sd.py", "bench_scale.py"]
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


@pytest.mark.slow
def test_gpu_smoke_flow_runs_on_the_cpu_with_tiny_models(tmp_path: Path, tiny_sd, capsys) -> None:
    """The whole smoke run (loading, the timed restyle, the outputs, the table) on tiny SD + ControlNet models."""
    gpu_smoke = load_script("gpu_smoke.py")
    restyle = gpu_smoke.RestyleConfig(prompt="a teapot", denoiser="sd", steps=2, views=2)
    restyle = replace(restyle, sd=replace(restyle.sd, model=str(tiny_sd.model), controlnet=str(tiny_sd.controlnet)))
    settings = gpu_smoke.GpuSmoke(out=tmp_path / "smoke", scenes=("demo",), restyle=restyle)
    (row,) = gpu_smoke.smoke(settings, torch.device("cpu"))
    phases = row.phases
    # Every phase was reached through its wrapper and charged time; the UNet at least once per step.
    assert all(phases.calls[phase] >= 1 and phases.seconds[phase] > 0 for phase in PHASES)
    assert phases.calls["denoise"] >= restyle.steps
    # Phases are exclusive (the VAE inside the fit is charged once), so together they fit in the wall time.
    assert sum(phases.seconds.values()) <= phases.total_s
    lines = capsys.readouterr().out.splitlines()
    header = next(line for line in lines if line.startswith("| scene |"))
    printed = next(line for line in lines if line.startswith("| demo |"))
    cells = dict(zip(header.strip("|").split("|"), printed.strip("|").split("|"), strict=True))
    cells = {name.strip(): value.strip() for name, value in cells.items()}
    assert int(cells["Gaussians"]) == row.gaussians
    columns = {
        "total s": phases.total_s, "UNet s": phases.seconds["denoise"], "VAE s": phases.seconds["codec"],
        "render s": phases.seconds["render"], "fit s": phases.seconds["fit"], "other s": phases.other_s,
    }  # fmt: skip
    for column, seconds in columns.items():
        assert float(cells[column]) == pytest.approx(seconds, rel=0.01, abs=1e-3), column
    assert float(cells["peak RSS GiB"]) == pytest.approx(phases.total_peak_gib, abs=0.01)
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


@pytest.mark.parametrize(
    ("script", "flag", "missing"),
    [("bench_unproject", "--scenes", "missing.ply"), ("bench_mesh", "--mesh", "missing.obj")],
)
def test_benches_refuse_a_missing_input_in_one_line(
    script: str, flag: str, missing: str, tmp_path: Path, capsys, monkeypatch
) -> None:
    bench = load_script(f"{script}.py")
    monkeypatch.setattr(sys, "argv", [f"{script}.py", flag, str(tmp_path / missing)])
    with pytest.raises(SystemExit) as exit_info:
        bench.main()
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith(f"{script}: error:") and missing in error and "\n" not in error


def table_row(output: str, label: str, scene: str) -> list[str]:
    """The cells of the row starting with `label` in `scene`'s table of bench_sd's output."""
    lines = output.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{scene} ("))
    row = next(line for line in lines[start:] if line.startswith(f"| {label}"))
    return [cell.strip() for cell in row.strip("|").split("|")]


def test_bench_sd_reduces_and_extrapolates_with_tiny_models(tmp_path: Path, capsys) -> None:
    """The whole flow on tiny models built from configs: a reduction of 2 views x 2 steps, extrapolated to 4 x 4."""
    bench = load_script("bench_sd.py")
    full = replace(bench.BenchSD().restyle, views=3, steps=4)
    settings = bench.BenchSD(
        random_weights=True, configs=save_tiny_configs(tmp_path / "configs"), restyle=full, reduce=True,
        scenes=("demo", str(tmp_path / "missing.ply")),
    )  # fmt: skip
    (row,) = settings.main()
    output = capsys.readouterr().out
    assert f"skipping {tmp_path / 'missing.ply'}" in output
    assert (row.views, row.full_views) == (2, 4)
    # Of 4 steps (t = 999, 786, 427, 59) 3 are synchronised (t > 200); of the reduction's 2 (t = 999, 427) both.
    assert row.phases.calls["denoise"] == 2 and row.full_calls["denoise"] == 4
    assert row.phases.calls["fit"] == 3 and row.full_calls["fit"] == 4  # one g per synchronised step, one at the end
    full_seconds = row.full_seconds()
    values = result_values(output)
    assert set(values) == {"seconds", "peak_gib", "unet_share"}
    assert values["seconds"] == pytest.approx(full_seconds["total"], rel=1e-3)
    assert values["unet_share"] == pytest.approx(full_seconds["denoise"] / full_seconds["total"], abs=1e-4)
    assert 0 < values["unet_share"] < 1 and values["seconds"] > row.phases.total_s
    assert values["peak_gib"] == pytest.approx(row.phases.total_peak_gib, abs=1e-4)
    # The denoise row: calls, view passes and seconds measured, then the full view passes and seconds.
    cells = table_row(output, "denoise", "demo")
    assert cells[1:3] == ["2", "4"] and cells[5] == "16"
    assert float(cells[3]) == pytest.approx(row.phases.seconds["denoise"], abs=0.006)
    assert float(cells[6]) == pytest.approx(full_seconds["denoise"], abs=0.06)
    assert "UNet + ControlNet rows: 8 measured, 32 at the full setting" in output  # guided: 2 rows per view


def test_bench_sd_without_reduction_reports_what_it_measured(tmp_path: Path, capsys) -> None:
    """The CUDA path (the full setting runs), here on the CPU: every number is the measured one."""
    bench = load_script("bench_sd.py")
    full = replace(bench.BenchSD().restyle, views=1, steps=2)
    settings = bench.BenchSD(random_weights=True, configs=save_tiny_configs(tmp_path / "configs"), restyle=full,
                             reduce=False, scenes=("demo",))  # fmt: skip
    (row,) = settings.main()
    output = capsys.readouterr().out
    values = result_values(output)
    assert values["seconds"] == pytest.approx(row.phases.total_s, rel=1e-3)
    assert values["unet_share"] == pytest.approx(row.phases.seconds["denoise"] / row.phases.total_s, abs=1e-4)
    assert "measured (the full setting ran)" in output


def test_bench_sd_extrapolates_per_view_pass() -> None:
    bench = load_script("bench_sd.py")
    measured = PhaseReport(
        total_s=30.0, seconds={"render": 2.0, "denoise": 8.0, "codec": 6.0, "fit": 4.0},
        calls={"render": 2, "denoise": 2, "codec": 6, "fit": 2}, peak_gib=dict.fromkeys(PHASES, 1.0),
        total_peak_gib=1.0, memory="process resident",
    )  # fmt: skip
    full_calls = {"render": 24, "denoise": 30, "codec": 70, "fit": 24}
    seconds = bench.extrapolate(measured, views=2, full_calls=full_calls, full_views=50)
    # Seconds per view pass (seconds / (calls x 2 views)) times the full view passes (calls x 50 views); the rest
    # (10 s) per view.
    expected = {"render": 600.0, "denoise": 3000.0, "codec": 1750.0, "fit": 1200.0, "other": 250.0, "total": 6800.0}
    assert seconds == pytest.approx(expected)
    never_fitted = replace(measured, calls={**measured.calls, "fit": 0}, seconds={**measured.seconds, "fit": 0.0})
    with pytest.raises(ValueError, match="never called fit"):
        bench.extrapolate(never_fitted, views=2, full_calls=full_calls, full_views=50)


def test_bench_sd_counts_the_paper_settings_calls() -> None:
    """30 Karras steps from t = 999 with the window ending at 0.8: 19 synchronised steps (t > 200), each with one g
    (a decode) and one f (an encode: the background it composites over is the x0_hat g decoded, which is not decoded
    again), and the run's final g and f; the delivered views are the ones the final g decoded. SD 1.5's own
    ("leading") timesteps start at t = 958 and synchronise 23."""
    bench = load_script("bench_sd.py")
    calls = bench.count_calls(bench.BenchSD().restyle, NoiseSchedule.scaled_linear())
    assert calls == {"render": 20, "denoise": 30, "codec": 2 * 20, "fit": 20}
    leading = replace(bench.BenchSD().restyle, timestep_spacing="model")
    assert bench.count_calls(leading, NoiseSchedule.scaled_linear()) == {
        "render": 24, "denoise": 30, "codec": 2 * 24, "fit": 24
    }  # fmt: skip
