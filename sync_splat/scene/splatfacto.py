"""Splatfacto checkpoints and runs: the Gaussians of a nerfstudio `ns-train splatfacto` run.

A run is `<run>/config.yml` and `<run>/<relative_model_dir>/step-XXXXXXXXX.ckpt`; `latest_checkpoint` finds the newest
checkpoint from the config or a folder, and `read_splatfacto_checkpoint` reads its Gaussians. Checkpoints load with
`torch.load(weights_only=True)` and configs with a safe YAML loader: nothing is unpickled or constructed.
"""

from __future__ import annotations

import os
import re
import zipfile
from pathlib import Path

import torch
from torch import Tensor

from sync_splat.errors import InputError
from sync_splat.functional.sh import SH_C0, SH_DEGREES
from sync_splat.scene.gaussians import GaussianScene

_SPLATFACTO_PARAMS = ("means", "scales", "quats", "opacities", "features_dc", "features_rest")


def latest_checkpoint(run: str | os.PathLike[str]) -> Path:
    """The newest `step-*.ckpt` of a nerfstudio run, given its `config.yml` or a folder of checkpoints.

    Nerfstudio lays a run out as `<run>/config.yml` and `<run>/<relative_model_dir>/step-XXXXXXXXX.ckpt`
    (`relative_model_dir` is `nerfstudio_models` unless the config says otherwise). The config is a YAML of Python
    objects; it is read with a safe loader that keeps their fields as plain data and constructs nothing.
    """
    run = Path(run)
    if run.is_dir():
        folder, where = run, run
    else:
        relative = _read_run_config(run).get("relative_model_dir", ["nerfstudio_models"])  # a pickled Path's args
        folder = run.parent.joinpath(*(relative if isinstance(relative, list) else [str(relative)]))
        where = f"{folder} (the checkpoint folder beside this config.yml)"
    steps = {}
    if folder.is_dir():
        for candidate in folder.iterdir():
            if m := re.fullmatch(r"step-(\d+)\.ckpt", candidate.name):
                steps[int(m.group(1))] = candidate
    if not steps:
        raise InputError(f"{run}: no step-*.ckpt checkpoint in {where}: train the run further or pass a .ckpt file")
    return steps[max(steps)]


def _read_run_config(path: Path) -> dict:
    import yaml

    class PlainLoader(yaml.SafeLoader):
        """SafeLoader that reads `!!python/...` tagged nodes as the plain mappings, lists and strings they hold."""

    def plain(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> object:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node, deep=True)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node, deep=True)
        return loader.construct_scalar(node)

    PlainLoader.add_multi_constructor("tag:yaml.org,2002:python/", plain)
    try:
        config = yaml.load(path.read_text("utf8"), Loader=PlainLoader)  # PlainLoader constructs plain data only
    except (yaml.YAMLError, UnicodeDecodeError, ValueError, OSError) as err:
        reason = str(err).splitlines()[0]
        raise InputError(f"{path}: not a readable nerfstudio config.yml ({reason}): pass the run's .ckpt") from None
    if not isinstance(config, dict):
        raise InputError(f"{path}: not a nerfstudio config.yml (no trainer settings): pass the run's .ckpt instead")
    return config


def read_splatfacto_checkpoint(path: str | os.PathLike[str]) -> GaussianScene:
    """Read the Gaussians of a splatfacto checkpoint (`{"step", "pipeline", "optimizers", ...}`).

    The parameters are `pipeline["_model.gauss_params.<name>"]` (older checkpoints: `_model.<name>`): means, log
    scales, wxyz quats, opacity logits [G, 1], `features_dc` [G, 3] and `features_rest` [G, K-1, 3]. A degree-0
    splatfacto model (`features_rest` [G, 0, 3]) stores logit colours in `features_dc` (it renders
    `sigmoid(features_dc)`), so its DC coefficient is `(sigmoid(features_dc) - 0.5) / SH_C0`, as nerfstudio's
    `shs_0` computes it; otherwise `features_dc` is the DC coefficient itself.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such checkpoint: pass an existing splatfacto .ckpt")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
    except Exception as err:  # torch raises many types for a bad file; the file itself says which case it is
        reason = _unreadable_checkpoint_reason(path, err)
        raise InputError(f"{path}: cannot read the checkpoint ({reason}): pass a splatfacto checkpoint") from None
    state = checkpoint.get("pipeline", checkpoint) if isinstance(checkpoint, dict) else None
    state = state if isinstance(state, dict) else {}
    prefix = next(
        (p for p in ("_model.gauss_params.", "_model.", "gauss_params.", "") if f"{p}means" in state),
        "_model.gauss_params.",
    )
    missing = [f"{prefix}{n}" for n in _SPLATFACTO_PARAMS if not isinstance(state.get(f"{prefix}{n}"), Tensor)]
    if missing:
        raise InputError(
            f"{path}: no Gaussians in this checkpoint (missing {', '.join(missing)}): pass a splatfacto checkpoint"
        )
    params = {name: state[f"{prefix}{name}"].detach().to(torch.float32).clone() for name in _SPLATFACTO_PARAMS}
    params["opacities"] = params["opacities"].reshape(-1)
    g = params["means"].shape[0]
    expected = {"means": (g, 3), "scales": (g, 3), "quats": (g, 4), "opacities": (g,), "features_dc": (g, 3)}
    for name, shape in expected.items():
        if tuple(params[name].shape) != shape:
            raise InputError(
                f"{path}: {prefix}{name} has shape {tuple(params[name].shape)}, expected {shape}: pass a splatfacto "
                "checkpoint"
            )
    rest = params["features_rest"]
    if rest.ndim != 3 or rest.shape[0] != g or rest.shape[2] != 3 or rest.shape[1] + 1 not in SH_DEGREES:
        raise InputError(
            f"{path}: {prefix}features_rest has shape {tuple(rest.shape)}, expected ({g}, K-1, 3) with K = 1, 4, 9 or "
            "16: pass a splatfacto checkpoint"
        )
    if g == 0:
        raise InputError(f"{path}: the checkpoint holds zero Gaussians: pass a trained splatfacto checkpoint")
    bad = {name: int((~torch.isfinite(t)).sum()) for name, t in params.items()}
    bad = {name: n for name, n in bad.items() if n}
    if bad:
        listing = ", ".join(f"{prefix}{name}: {n}" for name, n in bad.items())
        raise InputError(f"{path}: NaN or infinite values ({listing}): the run diverged; pass an earlier checkpoint")
    sh_dc = params["features_dc"]
    if rest.shape[1] == 0:
        sh_dc = (torch.sigmoid(sh_dc) - 0.5) / SH_C0
    return GaussianScene(
        means=params["means"],
        quats_wxyz=params["quats"],
        log_scales=params["scales"],
        opacity_logits=params["opacities"],
        sh=torch.cat([sh_dc[:, None], rest], dim=1),
        source=path,
    )


# A torch.save file is a zip archive (torch >= 1.6: local file headers first, the table of contents at the end)
# or, in the legacy format, pickles of protocol 2 or later (opcode PROTO, 0x80, then the protocol number).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOLS = {bytes([0x80, protocol]) for protocol in range(2, 6)}
# What torch's weights-only unpickler says when a well-formed pickle names a class or function it does not allow.
_DISALLOWED_GLOBAL = re.compile(r"Unsupported global: GLOBAL (\S+) was not an allowed global")


def _unreadable_checkpoint_reason(path: Path, err: Exception) -> str:
    """Why `torch.load(weights_only=True)` failed, told from the file's structure first: torch reports random bytes
    with the same "Weights only load failed" preamble as a checkpoint holding a pickled object."""
    try:
        with path.open("rb") as file:
            head = file.read(4)
    except OSError as os_err:
        return f"it cannot be opened: {os_err.strerror or os_err}"
    if not head:
        return "the file is empty"
    is_zip = zipfile.is_zipfile(path)
    if not is_zip and head != _ZIP_MAGIC and head[:2] not in _PICKLE_PROTOCOLS:
        return f"it is not a PyTorch checkpoint: neither a zip archive nor a pickle, it starts with {head!r}"
    if not is_zip and head == _ZIP_MAGIC:
        return "it is truncated: a zip archive cut short, its table of contents (at the end) is missing"
    if disallowed := _DISALLOWED_GLOBAL.search(str(err)):
        return f"it holds Python objects besides tensors ({disallowed.group(1)}), which sync-splat never unpickles"
    if is_zip:
        with zipfile.ZipFile(path) as archive:
            if not any(name.endswith("/data.pkl") for name in archive.namelist()):
                return "it is a zip archive without data.pkl, not a PyTorch checkpoint"
    detail = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return f"it is damaged or truncated: {detail}"
