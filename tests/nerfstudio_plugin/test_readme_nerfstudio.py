"""The README's nerfstudio section: its offline command runs as written, and the others say they need weights."""

from __future__ import annotations

import re
import shlex
import socket
from pathlib import Path

import pytest

from sync_splat.scene.demo import make_demo_scene

README = Path(__file__).resolve().parents[2] / "README.md"
NEEDS_WEIGHTS = re.compile(r"needs? the Stable Diffusion weights")


def nerfstudio_section() -> str:
    text = README.read_text("utf8")
    return text.split("## Restyling a captured scene with nerfstudio")[1].split("\n## ")[0]


def commands(block: str) -> list[str]:
    """The shell commands of a code block, continuation lines joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def ns_train_commands() -> list[tuple[str, str]]:
    """Each `ns-train sync-splat` command of the section, with the text before its code block."""
    section = nerfstudio_section()
    found = []
    for match in re.finditer(r"```bash\n(.*?)```", section, flags=re.DOTALL):
        before = " ".join(section[: match.start()].rsplit("```", 1)[-1].split())
        found += [(command, before) for command in commands(match.group(1)) if "ns-train sync-splat" in command]
    return found


def test_every_command_runs_offline_or_says_it_needs_weights() -> None:
    found = ns_train_commands()
    assert found
    for command, before in found:
        assert "--pipeline.denoiser prior" in command or NEEDS_WEIGHTS.search(before), command


def test_the_offline_command_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`make demo` (its scene stands in for what it writes), then the README's prior command; the viewer is told to
    quit at the end and to take a free port, which is all that is added."""
    import tyro
    from nerfstudio.configs.method_configs import AnnotatedBaseConfigUnion
    from nerfstudio.scripts.train import main

    (command,) = [command for command, _ in ns_train_commands() if "--pipeline.denoiser prior" in command]
    monkeypatch.chdir(tmp_path)
    source = shlex.split(command)[shlex.split(command).index("--pipeline.source") + 1]
    make_demo_scene().save(tmp_path / source)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    argv = shlex.split(command)[1:]  # after the ns-train executable
    argv += ["--viewer.quit-on-train-completion", "True", "--viewer.websocket-port", str(port)]
    main(tyro.cli(AnnotatedBaseConfigUnion, args=argv))
    (restyled,) = (tmp_path / "outputs").glob("*/sync-splat/*/restyled.ply")
    assert restyled.parts[-4] == Path(source).stem  # the experiment is named after the source
