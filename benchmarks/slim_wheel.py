"""Rewrite a wheel without some of its folders (``make gpu-wheels`` calls this).

Why: pyautoattack 0.2.0's wheel is 44 MB, almost all of it ``pyautoattack/examples/model_test.pt``, a
checkpoint for its example scripts that the package never imports. The device tool carries at most
64 MiB with the working tree, so the carried copy leaves the examples out. The rewritten wheel keeps
its name and metadata; RECORD loses the dropped files' lines, so pip installs it as any other wheel.

    python benchmarks/slim_wheel.py .whl/pyautoattack-0.2.0-py3-none-any.whl pyautoattack/examples/
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import zipfile
from pathlib import Path


def slim(wheel: Path, drop_prefixes: list[str]) -> tuple[int, int]:
    """Rewrite ``wheel`` in place without members under ``drop_prefixes``; (bytes before, after)."""
    before = wheel.stat().st_size
    fd, tmp = tempfile.mkstemp(dir=wheel.parent, suffix=".whl.tmp")
    os.close(fd)
    try:
        with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                name = info.filename
                if any(name.startswith(p) for p in drop_prefixes):
                    continue
                data = src.read(info)
                if name.endswith(".dist-info/RECORD"):
                    lines = data.decode().splitlines(keepends=True)
                    data = "".join(ln for ln in lines
                                   if not any(ln.startswith(p) for p in drop_prefixes)).encode()
                dst.writestr(info, data)
        os.replace(tmp, wheel)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return before, wheel.stat().st_size


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", type=Path)
    ap.add_argument("drop", nargs="+", help="member path prefixes to leave out")
    args = ap.parse_args(argv)
    if not args.wheel.is_file():
        print(f"error: no wheel {args.wheel}: run `make gpu-wheels`", file=sys.stderr)
        return 2
    before, after = slim(args.wheel, args.drop)
    dropped = ", ".join(args.drop)
    print(f"{args.wheel.name}: {before / 1e6:.1f} MB -> {after / 1e6:.2f} MB (left out {dropped})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
