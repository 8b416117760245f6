"""Where the built-in YAML files are (``search_spaces/``, ``hardware_profiles/``): the checkout's top-level folders
(a clone, an editable install), or the copies a wheel carries inside the package (``pyproject.toml`` maps the two
folders into ``autocompress/``). No imports beyond the standard library: the target side reads its profiles here."""

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
