"""The study's archive: what its sittings finished, kept in the repository.

Study v3's CPU recipe takes more hours than one sitting, and each sitting may run on a new machine
that starts from a clone: the ignored ``runs/`` and ``results/`` of the last one are gone. So what a
sitting finished travels with the code, in a committed folder (``benchmarks/study3/`` for the CPU
recipe)::

    <archive>/networks/<family>/seed<S>/   a finished run: best.safetensors (about 1 MB at width
                                           0.125), best.json (its card, with the weights' sha256 and
                                           the test accuracy), history.csv, trainer_state.json
    <archive>/results/                     the sweep's results folder (resumes unit by unit)

A run trains in the scratch ``runs/`` folder (its ``last`` checkpoint and optimizer state change every
epoch and are never committed) and is copied here once finished; the sweep reads the networks from
here. An unfinished run is lost with its sitting's machine: a sitting that cannot finish a run
should give its cores to the sweep instead.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from robustbench_lta.errors import UserError
from robustbench_lta.utils import sha256_file

#: the files of a finished run that the sweep, the report and ``finished`` read
ARCHIVED_FILES = ("best.safetensors", "best.json", "history.csv", "trainer_state.json")


def network_dir(archive: Path, family: str, seed: int) -> Path:
    return archive / "networks" / family / f"seed{seed}"


def archive_run(run: Path, dest: Path) -> Path:
    """Copy a finished run's :data:`ARCHIVED_FILES` to ``dest`` (weights verified against the card).

    Each file goes to a temporary name first and the card last, so an interrupted copy leaves no
    ``best.json`` that would make the run look finished.
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
    return dest
