"""`sync-splat`: the command line front door (tyro); the subcommands live in `sync_splat.apps.commands`.

`demo`, `restyle`, `mesh` and `panorama` make results (each with its run record); `view` shows one in the browser
(until Ctrl-C); `eval` measures a restyle; `export` writes a splat scene as a standard PLY or a web viewer's `.splat`;
`case-study` reproduces the paper's case analysis.

Problems the user can fix surface as one line on stderr and exit status 2, never a traceback; so does a setting that
its dataclass refuses while tyro builds it. Ctrl-C ends a command in one line with exit status 130. The heavy imports
(torch, tyro, the pipelines) happen inside that guard, so even a Ctrl-C during start-up ends in one line.
"""

from __future__ import annotations

from sync_splat.errors import one_line_errors


def entrypoint(args: list[str] | None = None) -> None:
    """The `sync-splat` console script."""
    with one_line_errors("sync-splat"):
        import tyro

        from sync_splat.apps.commands import Commands

        command = tyro.cli(Commands, args=args, prog="sync-splat")
        command.main()


if __name__ == "__main__":
    entrypoint()
