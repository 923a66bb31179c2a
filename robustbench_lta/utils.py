"""Small shared helpers: devices, seeding, provenance (versions, git commit, hashes), atomic writes.

Everything here sits below every other layer, so any layer may import it.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import os
import platform
import random
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import UserError

_VERSIONED_PACKAGES = (
    "robustbench-lta", "torch", "torchvision", "numpy", "pandas", "torchattacks", "foolbox",
    "safetensors", "scikit-learn", "pydantic",
)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``None``/``"auto"`` picks CUDA when present, else CPU; anything else is checked to exist."""
    if isinstance(device, torch.device):
        return device
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise UserError(f"unknown device {device!r}: use 'auto', 'cpu', 'cuda' or 'cuda:N'") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} asked for but CUDA is not available: use --device cpu")
    return dev


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) global generators."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def derive_seed(base: int, *parts: Any) -> int:
    """A stable 31-bit seed from a base seed and any labels (same inputs, same seed, any process)."""
    text = json.dumps([base, *[str(p) for p in parts]])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little") & 0x7FFFFFFF


def package_versions(names: Iterable[str] = _VERSIONED_PACKAGES) -> dict[str, str]:
    """Installed versions of ``names`` (absent ones left out), plus Python's."""
    return dict(_package_versions(tuple(names)))


@functools.lru_cache(maxsize=8)
def _package_versions(names: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    # metadata scans site-packages (~10 ms); versions do not change within a process
    out: dict[str, str] = {"python": platform.python_version()}
    for name in names:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return tuple(out.items())


def git_commit(path: str | Path | None = None) -> str | None:
    """The commit of the git checkout holding this package (or ``path``), or None outside git."""
    where = Path(path) if path else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=where, capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def device_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def current_umask() -> int:
    """The process umask, read without changing it where Linux shows it (``/proc/self/status``).

    ``os.umask`` can only be read by setting it, which races with other threads creating files;
    the fallback sets it back at once.
    """
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def apply_umask(path: str | Path, mode: int = 0o666) -> None:
    """Give a file made by ``tempfile.mkstemp`` (always 0600) the mode ``open()`` would have given it.

    Results, checkpoints and reports are shared files: they get ``mode & ~umask`` (0644 under the
    usual umask 022), like every other file the user creates.
    """
    os.chmod(path, mode & ~current_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write via a temporary file in the same folder, fsync, then rename: readers never see half.

    The file gets the mode ``open()`` would give it under the process umask (mkstemp's is 0600).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        apply_umask(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # ENOSPC from write() carries no name: the user needs one
            exc.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def swap_in_folder(staged: Path, target: Path, then: Callable[[], None] | None = None) -> None:
    """Replace the folder ``target`` by ``staged`` as a whole (no stale file of the old one survives),
    then run ``then`` (e.g. move a file beside it into place); if a step fails, the old folder and
    ``staged`` are put back where they were."""
    old: Path | None = None
    if target.is_dir():
        # rename onto the empty folder mkdtemp made, so the hidden name is unique too
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
        target.rename(old)
    try:
        staged.rename(target)
        if then is not None:
            try:
                then()
            except BaseException:
                target.rename(staged)
                raise
    except BaseException:
        if old is not None:
            old.rename(target)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_dataframe(path: str | Path, df: Any) -> None:
    """Write a pandas DataFrame as parquet or CSV (by suffix) atomically."""
    import io

    path = Path(path)
    buf = io.BytesIO()
    if path.suffix == ".parquet":
        df.to_parquet(buf, index=False)
    elif path.suffix == ".csv":
        buf.write(df.to_csv(index=False).encode("utf-8"))
    else:
        raise ValueError(f"unsupported table format: {path}")
    atomic_write_bytes(path, buf.getvalue())
