"""The study's archive: what its sittings finished, kept in the repository.

Study v3's CPU recipe takes more hours than one sitting, and each sitting may run on a new machine
that starts from a clone: the ignored ``runs/`` and ``results/`` of the last one are gone. So what a
sitting finished travels with the code, in a committed folder (``benchmarks/study3/`` for the CPU
recipe)::

    <archive>/networks/<family>/seed<S>/   a finished run: best.safetensors (about 1 MB at width
                                           0.125), best.json (its card, with the weights' sha256 and
                                           the test accuracy), history.csv, trainer_state.json
    <archive>/unfinished/<family>/seed<S>/ a run the sitting was stopped in: its whole run folder
                                           (last finished epoch's weights, optimizer and RNG state,
                                           best so far, history), about 4 MB at width 0.125
    <archive>/results/                     the sweep's results folder (resumes unit by unit)

A run trains in the scratch ``runs/`` folder (its ``last`` checkpoint and optimizer state change every
epoch) and is copied to ``networks/`` once finished; the sweep reads the networks from there. A run
stopped mid-way (Ctrl-C or SIGTERM to the study) is copied to ``unfinished/`` as of its last finished
epoch, and the next sitting, on whatever machine, copies it back into its empty ``runs/`` and resumes
it there (the trainer checks the state against the weights' sha256), so an 80-minute run cut off
after 60 costs 20 minutes again, not 80. Finishing the run removes its ``unfinished/`` copy.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path

from robustbench_lta.errors import UserError
from robustbench_lta.training.state import STATE_NAME, load_state
from robustbench_lta.utils import sha256_file

#: the files of a finished run that the sweep, the report and ``finished`` read
ARCHIVED_FILES = ("best.safetensors", "best.json", "history.csv", "trainer_state.json")


def network_dir(archive: Path, family: str, seed: int) -> Path:
    return archive / "networks" / family / f"seed{seed}"


def unfinished_dir(archive: Path, family: str, seed: int) -> Path:
    return archive / "unfinished" / family / f"seed{seed}"


def epochs_done(run: Path) -> int:
    """The last finished epoch a run folder can resume after (0: none)."""
    state = run / f"{STATE_NAME}.json"
    if not state.is_file():
        return 0
    try:
        return int(json.loads(state.read_text()).get("epoch", 0))
    except (OSError, ValueError):
        return 0


def _copy_files(src: Path, dest: Path) -> None:
    """The files of a run folder (it has no subfolders) into ``dest``."""
    for f in src.iterdir():
        if f.is_file():
            shutil.copyfile(f, dest / f.name)


def keep_unfinished(run: Path, dest: Path) -> int:
    """Copy a stopped run's folder to ``dest`` if it holds a later epoch than ``dest`` does.

    Returns the epoch ``dest`` now resumes after (0: the run had not finished an epoch). The state is
    checked against its weights first (a save cut off is not kept), and the folder is replaced in
    one rename, so ``dest`` is always either the old copy or the new one.
    """
    epoch = epochs_done(run)
    if epoch == 0 or epoch <= epochs_done(dest):
        return epochs_done(dest)
    load_state(run)  # raises UserError if the weights do not belong to the state
    tmp, old = dest.with_name(f".{dest.name}.tmp"), dest.with_name(f".{dest.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _copy_files(run, tmp)
    shutil.rmtree(old, ignore_errors=True)
    if dest.exists():
        os.replace(dest, old)
    os.replace(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)
    return epoch


def restore_unfinished(src: Path, run: Path) -> int:
    """Copy a kept unfinished run back into ``run`` if it is further along than ``run`` is.

    Returns the epoch restored (0: nothing restored, ``run`` as it was).
    """
    epoch = epochs_done(src)
    if epoch == 0 or epoch <= epochs_done(run):
        return 0
    run.mkdir(parents=True, exist_ok=True)
    for f in run.iterdir():  # a local run behind the kept one: none of its files may mix in
        if f.is_file():
            f.unlink()
    _copy_files(src, run)
    load_state(run)
    return epoch


def archive_run(run: Path, dest: Path, unfinished: Path | None = None) -> Path:
    """Copy a finished run's :data:`ARCHIVED_FILES` to ``dest`` (weights verified against the card).

    Each file goes to a temporary name first and the card last, so an interrupted copy leaves no
    ``best.json`` that would make the run look finished. ``unfinished``: the run's kept unfinished
    copy, removed once the finished one is in place.
    """
    card = json.loads((run / "best.json").read_text())
    expected = card.get("sha256")
    if expected and sha256_file(run / "best.safetensors") != expected:
        raise UserError(f"{run}/best.safetensors does not match its card's sha256: not archiving it")
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "best.json").unlink(missing_ok=True)
    for name in (*[f for f in ARCHIVED_FILES if f != "best.json"], "best.json"):
        tmp = dest / f".{name}.tmp"
        shutil.copyfile(run / name, tmp)
        os.replace(tmp, dest / name)
    if unfinished is not None:
        shutil.rmtree(unfinished, ignore_errors=True)
        for parent in (unfinished.parent, unfinished.parent.parent):  # <family>/, then unfinished/
            with contextlib.suppress(OSError):  # not empty: another run of the family is kept there
                parent.rmdir()
    return dest
