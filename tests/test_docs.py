"""What the code and the docs point a reader at exists in the repository: every document, file and module they name.

A user who clones the project has the repository and nothing else, so a docstring, comment or page that names a
document outside it (or a module that was since renamed) sends them nowhere. Section marks (the sign used for
numbered sections of other documents) are refused outright: our documents are named by path.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = sorted(
    path
    for folder in ("sync_splat", "nerfstudio_plugin", "scripts", "tests", "docs")
    for path in (ROOT / folder).rglob("*")
    if path.suffix in (".py", ".md") and "__pycache__" not in path.parts and path != Path(__file__).resolve()
) + [ROOT / "README.md"]
FILE_NAMES = {path.name for path in ROOT.rglob("*") if ".git" not in path.parts and ".venv" not in path.parts}

# A path-like token ending in a document or source suffix, e.g. docs/conventions.md or bridges/splat_fit.py.
PATH = re.compile(r"(?<![\w./-])((?:[\w-]+/)*[\w-]+\.(?:md|py))\b")
# A dotted module path of this project, e.g. sync_splat.bridges.splat_fit.
MODULE = re.compile(r"\b((?:sync_splat|nerfstudio_plugin)(?:\.\w+)+)")
SECTION_SIGN = "\N{SECTION SIGN}"


def names(pattern: re.Pattern[str], text: str) -> set[str]:
    return {match.group(1) for match in pattern.finditer(text)}


def path_exists(name: str, source: Path) -> bool:
    """A bare file name anywhere in the repository (a script, a report the code writes); a path from the
    repository's root, the package or the naming file's folder, or inside an installed package (a third-party file a
    comment names, e.g. gsplat/rendering.py)."""
    if "/" not in name:
        return name in FILE_NAMES
    candidates = [ROOT / name, ROOT / "sync_splat" / name, source.parent / name]
    if any(candidate.exists() for candidate in candidates):
        return True
    top = name.split("/")[0]
    spec = importlib.util.find_spec(top) if "/" in name and top.isidentifier() else None
    return (
        spec is not None
        and spec.submodule_search_locations is not None
        and any((Path(location).parent / name).exists() for location in spec.submodule_search_locations)
    )


def module_exists(name: str) -> bool:
    """A module, or a name defined in one (`sync_splat.bridges.splat.SplatBridgeConfig.setup`), without importing."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        stem = ROOT.joinpath(*parts[:end])
        source = stem.with_suffix(".py") if stem.with_suffix(".py").exists() else stem / "__init__.py"
        if source.exists():
            text = source.read_text("utf8")
            return all(
                re.search(
                    rf"^\s*(?:class|def)\s+{attribute}\b|^\s*{attribute}\s*[:=]|\bimport\b.*\b{attribute}\b", text, re.M
                )
                for attribute in parts[end:]
            )
    return False


def refers_to_a_module(name: str) -> bool:
    """Whether a dotted name starts with one of our packages' modules (`sync_splat.config.method_name` is an
    attribute path of an object named `sync_splat`, not a module path)."""
    package, first = name.split(".")[:2]
    return (ROOT / package / f"{first}.py").exists() or (ROOT / package / first).is_dir()


@pytest.mark.parametrize("source", SOURCES, ids=lambda path: str(path.relative_to(ROOT)))
def test_named_documents_files_and_modules_exist(source: Path) -> None:
    text = source.read_text("utf8")
    missing = sorted(name for name in names(PATH, text) if not path_exists(name, source))
    missing += sorted(name for name in names(MODULE, text) if refers_to_a_module(name) and not module_exists(name))
    assert not missing, f"{source.relative_to(ROOT)} names what the repository does not hold: {missing}"
    assert SECTION_SIGN not in text, f"{source.relative_to(ROOT)} points at a numbered section of another document"


def test_the_checks_catch_what_they_are_for() -> None:
    """The patterns find the kinds of pointer they exist to check (a guard against a regex that matches nothing)."""
    text = "see DESIGN.md and bridges/splat_system.py; sync_splat.bridges.image_io.write_png; docs/conventions.md"
    assert names(PATH, text) == {"DESIGN.md", "bridges/splat_system.py", "docs/conventions.md"}
    assert not path_exists("DESIGN.md", ROOT / "README.md")
    assert not path_exists("bridges/splat_system.py", ROOT / "README.md")
    assert path_exists("docs/conventions.md", ROOT / "README.md")
    assert names(MODULE, text) == {"sync_splat.bridges.image_io.write_png"}
    assert not module_exists("sync_splat.bridges.image_io.write_png")
    assert module_exists("sync_splat.bridges.plumbing.divide_sums")
