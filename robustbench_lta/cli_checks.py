"""The CLI's checks before work, and how its failures become exit codes (see docs/errors.md).

Kept apart from :mod:`robustbench_lta.cli` (the commands) so each stays short. Everything here runs
in the top layer: it may import config, models, plugins and reporting.
"""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Any

from .errors import UserError

#: the folder or file the running command writes, named when an OS error carries no file name
WRITING: list[str] = []


class CellsNotOk(Exception):
    """A sweep finished with cells that are not ``ok``: exit code 3 (results are written)."""


def did_you_mean(name: str, choices: list[str]) -> str:
    import difflib

    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.5)
    return f"did you mean {', '.join(repr(c) for c in close)}? " if close else ""


def check_out_folder(out: str, flag: str) -> None:
    """Refuse an output folder that cannot be created or written, before anything is created."""
    path = Path(out).expanduser()
    probe = path
    while not probe.exists():  # the first existing ancestor decides whether mkdir can work
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"lies below the file {probe}"
        raise UserError(f"{flag} {out}: {what}, not a folder: choose a folder path, e.g. {flag} results/run1")
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"{flag} {out}: {probe} is not writable (read-only or no permission): choose a "
                        f"writable folder with {flag}")


def preflight(cfg: Any) -> None:
    """Every check that needs no model or data, before anything is created or loaded.

    Attack parameters (typed ``Params``), the device, the results folder and plain model names;
    the engine repeats the attack check for API callers, so this only moves errors earlier.
    """
    from .config import check_device_available
    from .models.registry import list_models
    from .plugins.registry import discover, get_attack

    discover([Path(p) for p in cfg.plugins])
    for spec in cfg.attacks:
        get_attack(spec.name, **spec.params)
    check_device_available(cfg.device)
    if cfg.out:
        check_out_folder(cfg.out, "--out")
        WRITING.append(str(cfg.out))
    names = list_models()
    for spec in cfg.models:
        src = spec.source
        # only plain names: paths, files and scheme sources (robustbench:, timm:) are the engine's
        if re.fullmatch(r"[A-Za-z0-9_\-]+", src) and src not in names and not Path(src).exists():
            raise UserError(f"model {src!r} is neither a checkpoint file nor a registered model name: "
                            f"{did_you_mean(src, names)}see `robustbench-lta models` or pass a "
                            ".safetensors/.json checkpoint or run folder")


def raise_if_cells_not_ok(summary: Any) -> None:
    if "status" not in summary.columns or summary.empty:
        return
    from .results import STATUSES_NOT_OK

    status = summary["status"].astype(str)
    bad = status[status.isin(STATUSES_NOT_OK)]
    if bad.empty:
        return
    counts = ", ".join(f"{k} {v}" for k, v in sorted(bad.value_counts().items()))
    raise CellsNotOk(f"{len(bad)} of {len(status)} summary rows are not ok ({counts}): see the status and "
                     "message columns of summary.csv; failed cells are retried when the command is re-run")


def check_attention_files(folder: Path) -> None:
    """A corrupt attention/*.npz is an error naming the file (decided: refuse rather than skip a section)."""
    import numpy as np

    for path in sorted((folder / "attention").glob("*.npz")):
        try:
            with np.load(path, allow_pickle=False) as z:
                for key in z.files:
                    z[key]
        except Exception as exc:  # zipfile.BadZipFile, EOFError, ValueError, OSError...
            raise UserError(
                f"{path} is corrupt ({type(exc).__name__}): delete it to build the report without that "
                "model's attention maps, or re-run the sweep into a new folder to store them again"
            ) from None


_ENV_ERRNOS = {
    errno.ENOSPC: "no space left on the device: free some space or choose a folder on another disk",
    errno.EDQUOT: "disk quota exceeded: free some space or choose a folder on another disk",
    errno.EROFS: "the file system is read-only: choose a writable folder",
    errno.EACCES: "permission denied: choose a folder you can write to",
    errno.EPERM: "operation not permitted: choose a folder you can write to",
    errno.ENOTDIR: "a file is in the way where a folder is needed: choose another path",
    errno.EEXIST: "a file is in the way where a folder is needed: choose another path",
    errno.EISDIR: "a folder is in the way where a file is needed: choose another path",
    errno.ENAMETOOLONG: "the path is too long: choose a shorter one",
}


def environment_error_message(exc: OSError) -> str | None:
    """One line for an OS error the user can fix (disk full, read-only, blocked path), else None."""
    code = exc.errno
    if code is None and "no space left on device" in str(exc).lower():  # pyarrow drops the errno
        code = errno.ENOSPC
    if code not in _ENV_ERRNOS:
        return None
    where = exc.filename or (f"into {WRITING[-1]}" if WRITING else "the results")
    kept = " (files written before are kept; re-run the same command to resume)" if code in (
        errno.ENOSPC, errno.EDQUOT) else ""
    return f"cannot write {where}: {_ENV_ERRNOS[code]}{kept}"


def sanity_warning(summary: Any) -> str | None:
    """One line naming the failed sanity checks of a finished sweep (None when none failed).

    A gradient-masked or random model yields `ok` cells with plausible numbers; the sanity table
    knows better, so the CLI says so instead of a silent exit 0.
    """
    import pandas as pd

    out_dir = getattr(summary, "attrs", {}).get("out_dir")
    path = Path(out_dir) / "sanity.csv" if out_dir else None
    if path is None or not path.is_file():
        return None
    try:
        sanity = pd.read_csv(path)
    except Exception:  # an unreadable table is reported by `report`; do not fail the sweep here
        return None
    failed = sanity[sanity.get("status", pd.Series(dtype=str)) == "fail"]
    if failed.empty:
        return None
    per_model = failed.groupby("model")["check"].apply(lambda c: ", ".join(sorted(set(map(str, c)))))
    named = "; ".join(f"{m}: {c}" for m, c in per_model.items())
    return (f"{len(failed)} sanity check(s) failed ({named}): these results may overstate robustness; "
            f"see {path}")
