"""python -m autocompress.profiling --profile P --out T.table.jsonl [--quick]: build a lookup table on this device
with nothing but numpy, onnx and onnxruntime (pyyaml to read the profile); rerun the same command to continue."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..shipped import named_file, names
from .table import build
from .target import Target, TargetError


def read_profile(name_or_path: str) -> dict:
    """A profile YAML (a path, or a built-in name) as a plain dict."""
    p = Path(name_or_path)
    if not p.is_file():
        p = named_file(name_or_path, "hardware_profiles") or p
    if not p.is_file():
        known = ", ".join(names("hardware_profiles")) or "none"
        raise TargetError(f"--profile {name_or_path}: no such profile file (built-in: {known})")
    try:
        import yaml
    except ImportError:
        raise TargetError("reading a profile YAML needs pyyaml: pip install pyyaml") from None
    data = yaml.safe_load(p.read_text()) or {}
    if not isinstance(data, dict):
        raise TargetError(f"{p}: not a hardware profile (a YAML mapping)")
    return data


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m autocompress.profiling", description=__doc__)
    ap.add_argument("--profile", default="cpu", help="hardware profile YAML or built-in name")
    ap.add_argument("--out", required=True, help="table file to write (JSON Lines; an unfinished one is continued)")
    ap.add_argument("--quick", action="store_true", help="small grid (a minute)")
    args = ap.parse_args(argv)
    try:
        target = Target.from_profile(read_profile(args.profile))
        build(target, args.out, quick=args.quick)
    except TargetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"interrupted: rerun the same command to continue {args.out}", file=sys.stderr)
        return 130
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
