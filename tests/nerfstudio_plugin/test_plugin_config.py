"""`sync-splat` is found by nerfstudio, its config is sane, and its config module avoids the circular import."""

from __future__ import annotations

import copy
import importlib.metadata
import itertools
import subprocess
import sys

import pytest
from conftest import subprocess_env

FLAGS = [
    "--pipeline.source", "--pipeline.prompt", "--pipeline.denoiser", "--pipeline.steps", "--pipeline.case",
    "--pipeline.sync-until", "--pipeline.views", "--pipeline.cameras", "--pipeline.resolution", "--pipeline.seed",
    "--pipeline.sd.model", "--pipeline.sd.controlnet", "--pipeline.sd.negative-prompt", "--pipeline.sd.guidance-scale",
    "--pipeline.sd.controlnet-scale", "--pipeline.sd.device", "--pipeline.fit.canonical", "--pipeline.fit.tolerance",
    "--max-num-iterations", "--pipeline.datamanager.orbit-image-size",
]  # fmt: skip
"""Settings `ns-train sync-splat --help` must list: the restyle, SD and fit settings a user sets most."""


def ns_train_help(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str) -> str:
    """What `ns-train ARGS --help` prints, in tyro's one-column layout (80 columns)."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion

    monkeypatch.setenv("COLUMNS", "80")
    with pytest.raises(SystemExit) as exit_info:
        tyro.cli(AnnotatedBaseConfigUnion, args=[*args, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def flag_descriptions(help_text: str) -> dict[str, str]:
    """Each flag of a one-column tyro help text -> the line under it (its description, or '(default: ...)' alone
    when the field has no docstring)."""
    lines = [line.strip().strip("│").strip() for line in help_text.splitlines()]
    return {line.split()[0]: below for line, below in itertools.pairwise(lines) if line.startswith("--")}


def test_installed_entry_point_loads_the_method_specification() -> None:
    from nerfstudio.plugins.types import MethodSpecification

    (entry_point,) = [
        e for e in importlib.metadata.entry_points(group="nerfstudio.method_configs") if e.name == "sync-splat"
    ]
    spec = entry_point.load()
    assert entry_point.value == "nerfstudio_plugin.config:sync_splat"
    assert isinstance(spec, MethodSpecification)
    assert spec.config.method_name == "sync-splat"


def test_discover_methods_registers_sync_splat(monkeypatch: pytest.MonkeyPatch) -> None:
    """As nerfstudio's own registry test: fake the entry points so only ours is seen."""
    from nerfstudio.plugins import registry

    ours = importlib.metadata.EntryPoint(
        name="sync-splat", value="nerfstudio_plugin.config:sync_splat", group="nerfstudio.method_configs"
    )

    def fake_entry_points(group: str) -> importlib.metadata.EntryPoints:
        return importlib.metadata.EntryPoints([ours] if group == "nerfstudio.method_configs" else [])

    monkeypatch.setattr(registry, "entry_points", fake_entry_points)
    monkeypatch.delenv("NERFSTUDIO_METHOD_CONFIGS", raising=False)
    methods, descriptions = registry.discover_methods()
    assert list(methods) == ["sync-splat"]
    assert "SyncTweedies" in descriptions["sync-splat"]


def test_config_defaults() -> None:
    import torch

    from nerfstudio_plugin.config import sync_splat
    from nerfstudio_plugin.model import SyncSplatModelConfig

    config = sync_splat.config
    assert config.viewer.websocket_host == "127.0.0.1"  # never 0.0.0.0 unless asked
    assert config.machine.device_type == ("cuda" if torch.cuda.is_available() else "cpu")  # not CUDA regardless
    assert config.max_num_iterations is None  # = the number of denoising steps
    assert config.optimizers == {}  # nothing is optimised
    assert (config.steps_per_eval_batch, config.steps_per_eval_image, config.steps_per_eval_all_images) == (0, 0, 0)
    assert isinstance(config.pipeline.model, SyncSplatModelConfig)
    assert config.pipeline.restyle.case == 2  # SyncTweedies
    assert config.pipeline.restyle.denoiser == "sd"


def test_ns_train_help_lists_sync_splat(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    help_text = ns_train_help(monkeypatch, capsys)
    assert "sync-splat" in help_text.split("usage:")[1].split("\n\n")[0]  # among the methods of the usage line
    assert "Restyle a Gaussian-splat scene" in help_text  # and described in the method list


def test_help_documents_every_pipeline_setting(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The restyle settings are flags of `ns-train sync-splat`, each described by its docstring."""
    descriptions = flag_descriptions(ns_train_help(monkeypatch, capsys, "sync-splat"))
    assert set(FLAGS) <= set(descriptions), set(FLAGS) - set(descriptions)
    assert descriptions["--pipeline.source"].startswith("The scene to restyle")
    inherited = ("--pipeline.model.", "--pipeline.datamanager.")  # nerfstudio's, some without docstrings
    ours = [flag for flag in descriptions if flag.startswith("--pipeline.") and not flag.startswith(inherited)]
    assert len(ours) > 30  # the pipeline's, the restyle, SD and fit settings
    undocumented = [flag for flag in sorted({*ours, *FLAGS}) if descriptions[flag].startswith("(default:")]
    assert not undocumented, undocumented


@pytest.mark.slow
def test_config_module_imports_without_method_configs() -> None:
    """Importing the plugin first (as pytest or a script does) must not pull in nerfstudio's method registry."""
    code = (
        "import sys, nerfstudio_plugin.config as c; "
        "assert 'nerfstudio.configs.method_configs' not in sys.modules; print(c.sync_splat.config.method_name)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=subprocess_env(), capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "sync-splat"


@pytest.mark.parametrize(
    ("source", "name"),
    [
        ("outputs/garden/splatfacto/2026-01-01_000000/config.yml", "garden"),
        ("outputs/garden/splatfacto/2026-01-01_000000/nerfstudio_models/step-000029999.ckpt", "garden"),
        ("bicycle/point_cloud/iteration_30000/point_cloud.ply", "bicycle"),  # the 3DGS layout
        ("scans/teapot.ply", "teapot"),
    ],
)
def test_runs_without_a_dataset_are_named_after_the_source(tmp_path, source: str, name: str) -> None:
    from nerfstudio_plugin.config import experiment_name_of, sync_splat

    assert experiment_name_of(tmp_path / source) == name
    config = copy.deepcopy(sync_splat.config)
    config.pipeline.source = tmp_path / source
    config.set_experiment_name()
    assert config.experiment_name == name
    config = copy.deepcopy(sync_splat.config)
    config.pipeline.source, config.pipeline.datamanager.data = tmp_path / source, tmp_path / "data" / "kitchen"
    config.set_experiment_name()
    assert config.experiment_name == "kitchen"  # with a dataset: named after it, as nerfstudio does


def test_ns_viewer_keeps_the_runs_localhost(tmp_path) -> None:
    """`ns-viewer --load-config` swaps in its own viewer settings (host 0.0.0.0 by default) after loading config.yml;
    a sync-splat run keeps listening on 127.0.0.1 unless the user names another host."""
    import dataclasses

    import yaml
    from nerfstudio.scripts.viewer.run_viewer import ViewerConfigWithoutNumRays

    from nerfstudio_plugin.config import sync_splat

    saved = tmp_path / "config.yml"
    saved.write_text(yaml.dump(dataclasses.replace(sync_splat.config)), "utf8")
    config = yaml.load(saved.read_text("utf8"), Loader=yaml.Loader)  # as nerfstudio's eval_setup reads it
    config.viewer = ViewerConfigWithoutNumRays().as_viewer_config()  # what RunViewer.main does next
    assert config.viewer.websocket_host == "127.0.0.1"
    config.viewer = ViewerConfigWithoutNumRays(websocket_host="192.168.1.5").as_viewer_config()
    assert config.viewer.websocket_host == "192.168.1.5"  # an address the user asks for wins
