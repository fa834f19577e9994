"""`sync-splat`: the command line front door (tyro); the subcommands live in `sync_splat.apps.commands`.

`demo`, `restyle`, `mesh` and `panorama` make results (each with its run record); `view` shows one in the browser
(until Ctrl-C); `eval` measures a restyle; `export` writes a splat scene as a standard PLY or a web viewer's `.splat`;
`case-study` reproduces the paper's case analysis.

Problems the user can fix surface as one line on stderr and exit status 2, never a traceback; so does a setting that
its dataclass refuses while tyro builds it. Ctrl-C ends a command in one line with exit status 130. The heavy imports
(torch, tyro, the pipelines) happen inside that guard, so even a Ctrl-C during start-up ends in one line.

`python -m sync_splat.cli` is the same command, which is how torchrun starts it in several processes
(`torchrun --nproc-per-node 2 -m sync_splat.cli restyle ...`; `sync_splat.distributed`).
"""

from __future__ import annotations

import os
from typing import Any

from sync_splat.errors import InputError, one_line_errors


def entrypoint(args: list[str] | None = None) -> None:
    """The `sync-splat` console script."""
    with one_line_errors("sync-splat"):
        import tyro

        from sync_splat.apps.commands import Commands

        command = tyro.cli(Commands, args=args, prog="sync-splat")
    run(command)


def run(command: Any) -> None:
    """Run a parsed command (`command.main()`) with its errors in one line: what the console script and each process
    of `sync-splat restyle --nproc N` do."""
    with one_line_errors("sync-splat"):
        processes = int(os.environ.get("WORLD_SIZE", "1"))
        if processes > 1 and not getattr(command, "splits_views", False):
            if int(os.environ.get("RANK", "0")) != 0:
                raise SystemExit(2)  # process 0 says why
            raise InputError(f"only `sync-splat restyle` splits its views across processes: run this command once, "
                             f"not in {processes} processes")  # fmt: skip
        command.main()


if __name__ == "__main__":
    entrypoint()
