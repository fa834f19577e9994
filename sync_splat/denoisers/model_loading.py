"""Loading diffusers components for `StableDiffusionDenoiser`: local folders or hub ids, safetensors only, offline
aware, and one line when a component cannot be had.

Each component is found (a local folder, or a hub id resolved in the local cache and, unless offline, downloaded),
checked for safetensors weights (pickled weights are refused before anything is read) and loaded with the warnings
and log records of diffusers and transformers held back: shown once on success, dropped on failure, where the
first error (not a retry's) becomes one `InputError` that names the component and what to pass instead.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from sync_splat.errors import InputError

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}
"""The dtypes a model may be loaded in, by their settings name."""
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
_T = TypeVar("_T")
_WARNINGS_SHOWN: dict[Any, Any] = {}  # the registry of warnings passed on from model loading, so each shows once


def resolve_device_and_dtype(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """The device and model dtype to run in.

    fp16 on a CPU is honoured by torch but its CPU kernels run about a hundred times slower than fp32, so an fp16
    request on the CPU gets fp32; bf16 is kept, being fast on CPUs with bf16 support.
    """
    resolved = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
    torch_dtype = DTYPES[dtype]
    if resolved.type == "cpu" and torch_dtype == torch.float16:
        torch_dtype = torch.float32
    return resolved, torch_dtype


def offline() -> bool:
    """HF_HUB_OFFLINE, read when loading (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in {"1", "ON", "YES", "TRUE"}


def locate(name: str, what: str, weight_folders: Sequence[str]) -> tuple[str, bool]:
    """Resolve a model id or folder; returns (where, is_local). Refuses local folders with only pickled weights."""
    path = Path(name).expanduser()
    if path.is_dir():
        for sub in weight_folders:
            folder = path / sub
            if not folder.is_dir():
                continue
            files = [f.name for f in folder.iterdir()]
            pickled = [f for f in files if f.endswith(_PICKLE_SUFFIXES)]
            if pickled and not any(f.endswith(".safetensors") for f in files):
                raise InputError(
                    f"{what} folder {folder} holds only pickled weights ({pickled[0]}); sync-splat loads safetensors "
                    "only and never unpickles model files: use a safetensors copy of the model, or convert this one "
                    "where you trust it (from_pretrained, then save_pretrained(..., safe_serialization=True))"
                )
        return str(path), True
    if path.exists():
        raise InputError(f"{what} {name} is a file: pass a diffusers model folder or a hub model id")
    if name.startswith(("/", ".", "~")) or name.count("/") > 1 or "\\" in name:
        raise InputError(
            f"{what} folder {name} does not exist: pass an existing diffusers folder or a hub model id, or run with "
            "--denoiser prior"
        )
    return name, False


def _not_found_errors() -> tuple[type[Exception], ...]:
    """What `from_pretrained` raises for a model it cannot find (a bad hub id is an HFValidationError)."""
    from huggingface_hub.errors import HFValidationError

    return (OSError, HFValidationError)


def _quietly(load: Callable[[], _T]) -> _T:
    """Run one `from_pretrained`, holding back what it says (warnings, diffusers' and transformers' log records).

    If it fails, all of it is dropped: the error line says what matters, and huggingface_hub's notices about
    arguments diffusers passes it, or diffusers' own report of the failure, would otherwise come first and bury it.
    If it succeeds, it is passed on, except huggingface_hub's warnings, which concern its callers' code and nothing
    a user can change.
    """
    held = _HeldRecords()
    loggers = [logging.getLogger(name) for name in ("diffusers", "transformers")]
    saved = [(logger.handlers, logger.propagate) for logger in loggers]
    for logger in loggers:
        logger.handlers, logger.propagate = [held], False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = load()
    finally:
        for logger, (handlers, propagate) in zip(loggers, saved, strict=True):
            logger.handlers, logger.propagate = handlers, propagate
    for warning in caught:
        if "huggingface_hub" not in Path(warning.filename).parts:
            warnings.warn_explicit(
                warning.message, warning.category, warning.filename, warning.lineno, registry=_WARNINGS_SHOWN
            )
    for record in held.records:
        logging.getLogger(record.name).handle(record)
    return result


class _HeldRecords(logging.Handler):
    """Keeps the log records it is given, for `_quietly` to pass on or drop."""

    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def _not_available(what: str, name: str, local: bool, error: Exception, retried: str | None = None) -> InputError:
    """The one line for a model that could not be loaded, from the error that says why (the first one)."""
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    if retried is not None:
        reason += f"; the {retried} variant failed too"
    if local:
        return InputError(
            f"{what} folder {name} could not be loaded ({reason}): pass a complete diffusers folder (safetensors "
            "weights), or run with --denoiser prior"
        )
    offline_note = ", HF_HUB_OFFLINE is set" if offline() else ""
    return InputError(
        f"{what} '{name}' is not available locally and could not be downloaded{offline_note} ({reason}); pass a local "
        "diffusers folder of the model instead, or run with --denoiser prior"
    )


def load_part(what: str, name: str, local: bool, load: Callable[[], _T]) -> _T:
    """Run one `from_pretrained` (`_quietly`), turning "not found" into one InputError line."""
    try:
        return _quietly(load)
    except _not_found_errors() as error:
        raise _not_available(what, name, local, error) from error


def load_weights(what: str, name: str, local: bool, load: Callable[[str | None], _T], variant: str | None) -> _T:
    """`load_part` for weight files, retrying with the fp16 safetensors when no variant was asked for.

    Some repositories ship safetensors only as the fp16 variant, next to pickled full-precision files (the
    official ControlNet depth, lllyasviel/control_v11f1p_sd15_depth, is one); the fp16 safetensors are then the
    weights to use (cast to the requested dtype on load), never the pickle. If the retry fails too, the first
    error is the one reported: it is about the files that were asked for (a missing model, no network), the
    retry's only about a variant that may never have existed.
    """
    if variant is not None:
        return load_part(what, name, local, lambda: load(variant))
    try:
        return _quietly(lambda: load(None))
    except _not_found_errors() as first:
        try:
            return _quietly(lambda: load("fp16"))
        except _not_found_errors():
            raise _not_available(what, name, local, first, retried="fp16") from first
