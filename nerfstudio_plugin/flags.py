"""The restyle settings' flags as `ns-train sync-splat` spells them, for the hints of errors raised while it runs."""

from __future__ import annotations

import contextlib
import dataclasses
import re
from collections.abc import Iterator

from sync_splat.apps.restyle import RestyleConfig
from sync_splat.errors import InputError

_RESTYLE_FLAG = re.compile(
    r"(?<![\w.-])--(?=(?:"
    + "|".join(f.name.replace("_", "-") for f in dataclasses.fields(RestyleConfig))
    + r")(?![\w-]))"
)
"""A flag of the restyle settings as `sync-splat restyle` names it (`--denoiser`, `--sd.model`, ...)."""


@contextlib.contextmanager
def ns_train_flags() -> Iterator[None]:
    """Rename, in an `InputError` raised inside, the restyle settings' flags to what `ns-train sync-splat` calls them
    (`--denoiser prior` -> `--pipeline.denoiser prior`): the shared settings word their hints for `sync-splat`."""
    try:
        yield
    except InputError as error:
        raise InputError(_RESTYLE_FLAG.sub("--pipeline.", str(error))) from None
