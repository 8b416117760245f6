"""Where named YAML files are found (``search_spaces/``, ``hardware_profiles/``): a folder of that name in the
working directory (a user's own), then the checkout's top-level folders (a clone, an editable install), then the
copies a wheel carries inside the package (``pyproject.toml`` maps the two folders into ``autocompress/``). The
standard library only: the target side (no pydantic, no torch) reads its profiles through here, as config does."""

from __future__ import annotations

from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_ROOT.parent
FOLDERS = ("search_spaces", "hardware_profiles")


def builtin_dirs(sub: str) -> list[Path]:
    """The folders that hold the built-in ``sub`` files, the checkout's first."""
    if sub not in FOLDERS:
        raise ValueError(f"no built-in folder {sub!r}; one of {', '.join(FOLDERS)}")
    return [d for d in (REPO_ROOT / sub, PACKAGE_ROOT / sub) if d.is_dir()]


def search_dirs(sub: str) -> list[Path]:
    """Where a name is looked up, in order: ``./sub`` of the working directory, then :func:`builtin_dirs`."""
    return [Path.cwd() / sub, *builtin_dirs(sub)]


def named_file(name: str, sub: str) -> Path | None:
    """``name.yaml`` in the first of :func:`search_dirs` that has it, else None."""
    return next((d / f"{name}.yaml" for d in search_dirs(sub) if (d / f"{name}.yaml").is_file()), None)


def names(sub: str) -> list[str]:
    """Every name :func:`named_file` can find."""
    return sorted({f.stem for d in search_dirs(sub) if d.is_dir() for f in d.glob("*.yaml")})
