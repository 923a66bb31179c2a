"""Model families: one training config run once per seed, grouped so sweeps and reports treat them as one.

Layout of a family folder (``<out>`` of the config)::

    <out>/family.json      {"family": NAME, "model": ..., "seeds": [0, 1, 2], "runs": {...}}
    <out>/seed0/           an ordinary run folder (best/last checkpoints, history.csv, ...)
    <out>/seed1/ ...

Each seed run's card says ``"family": {"name": NAME, "seed": S}`` (checkpoint.build_card reads it
from the training config's ``family`` field). A sweep given the family folder as a model source
expands it into one model per seed labelled ``NAME@seed0``, ``NAME@seed1``... (:func:`expand_model_specs`),
and reporting groups labels back by the part before ``@seed`` (:func:`split_label`).

Training-seed variance is usually larger than test-sample noise at this scale, so a claim about an
architecture needs several seeds; the seed loop lives here, not in the trainer, so the trainer stays a
single-run function.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import TrainConfig
from ..errors import UserError
from ..utils import atomic_write_json

FAMILY_FILE = "family.json"
SEED_DIR = re.compile(r"^seed(-?\d+)$")
LABEL = re.compile(r"^(?P<family>.+)@seed(?P<seed>-?\d+)$")


@dataclass
class FamilyResult:
    """What :func:`train_family` produced: one TrainResult per seed, in seed order."""

    name: str
    out_dir: Path
    seeds: list[int]
    results: list[Any] = field(default_factory=list)  # training.trainer.TrainResult

    @property
    def best_accs(self) -> list[float]:
        return [float(r.best_acc) for r in self.results]


def family_dir(config: TrainConfig) -> Path:
    """The family folder: ``config.out``, else ``runs/<model name>``."""
    return Path(config.out).expanduser() if config.out else Path("runs") / config.model.name


def seed_configs(config: TrainConfig) -> list[TrainConfig]:
    """One single-run config per seed of ``config.seeds`` (``[config.seed]`` when it has none).

    Each writes into ``<family dir>/seed<S>`` and carries the family name for its card.
    """
    seeds = list(config.seeds) if config.seeds else [config.seed]
    if len(set(seeds)) != len(seeds):
        raise UserError(f"seeds {seeds}: each seed may appear once")
    root = family_dir(config)
    name = config.family or root.name
    return [config.model_copy(update={"seed": int(s), "seeds": None, "family": name,
                                      "out": str(root / f"seed{int(s)}")}, deep=True) for s in seeds]


def _write_family_file(root: Path, name: str, config: TrainConfig, done: dict[int, Any]) -> None:
    seeds = [c.seed for c in seed_configs(config)]
    atomic_write_json(root / FAMILY_FILE, {
        "format": 1,
        "family": name,
        "model": config.model.model_dump(mode="json"),
        "dataset": config.data.name,
        "seeds": seeds,
        "runs": {str(s): f"seed{s}" for s in seeds},
        "best_test_accuracy": {str(s): round(float(r.best_acc), 6) for s, r in done.items()},
    })


def train_family(config: TrainConfig, progress: bool = True) -> FamilyResult:
    """Train ``config`` once per seed into ``<out>/seed<S>``; resumable (each seed run resumes itself)."""
    from . import distributed
    from .trainer import train  # here, not at import: trainer pulls in data and torch settings

    configs = seed_configs(config)
    root = family_dir(config)
    name = configs[0].family or root.name
    ddp = distributed.current()
    writes = ddp is None or ddp.is_main  # under DDP rank 0 alone writes, as in the trainer
    if writes:
        root.mkdir(parents=True, exist_ok=True)
    result = FamilyResult(name=name, out_dir=root, seeds=[c.seed for c in configs])
    done: dict[int, Any] = {}
    if writes:
        _write_family_file(root, name, config, done)
    for cfg in configs:
        done[cfg.seed] = train(cfg, progress=progress)
        result.results.append(done[cfg.seed])
        if writes:
            _write_family_file(root, name, config, done)
    return result


# ------------------------------------------------------------------------------ sweeps and reports
def family_runs(folder: str | Path) -> tuple[str, list[tuple[int, Path]]] | None:
    """``(family name, [(seed, run folder), ...])`` if ``folder`` is a family folder, else None.

    A family folder holds ``family.json`` or at least one ``seed<N>/`` run folder.
    """
    root = Path(folder).expanduser()
    if not root.is_dir():
        return None
    meta: dict[str, Any] = {}
    if (root / FAMILY_FILE).is_file():
        import json

        try:
            meta = json.loads((root / FAMILY_FILE).read_text())
        except ValueError:
            raise UserError(f"{root / FAMILY_FILE} is not valid JSON: re-run the family's training") from None
    runs = sorted((int(m.group(1)), p) for p in root.iterdir()
                  if p.is_dir() and (m := SEED_DIR.match(p.name)))
    if not meta and not runs:
        return None
    if meta.get("seeds"):
        have = {s for s, _ in runs}
        missing = [s for s in meta["seeds"] if s not in have]
        if missing:
            raise UserError(f"family {root}: seed run(s) {missing} are missing; train them with "
                            f"`robustbench-lta train CONFIG --seeds ...` (same out folder) first")
    return str(meta.get("family") or root.name), runs


def expand_model_specs(models: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Sweep model specs with every family folder replaced by one spec per seed run.

    ``{"source": "runs/att3"}`` (a family) becomes ``{"source": "runs/att3/seed0", "name":
    "att3@seed0"}``, ... ; the spec's ``name`` (if given) replaces the family name in the labels.
    Other specs pass through unchanged. A seed run without a checkpoint is a UserError.
    """
    out: list[dict[str, Any]] = []
    for spec in models:
        source = spec.get("source") if isinstance(spec, dict) else None
        fam = family_runs(source) if isinstance(source, str) else None
        if fam is None:
            out.append(spec)
            continue
        name, runs = fam
        base = spec.get("name") or name
        for seed, run in runs:
            if not any((run / f"{s}.json").is_file() for s in ("best", "last")):
                raise UserError(f"family {source}: {run} has no checkpoint yet (its training has not "
                                f"finished an epoch): train it first or remove the folder")
            out.append({**spec, "source": str(run), "name": f"{base}@seed{seed}"})
    return out


def split_label(label: str) -> tuple[str, int | None]:
    """``"att3@seed2"`` -> ``("att3", 2)``; a label outside a family -> ``(label, None)``."""
    m = LABEL.match(label.split(" [")[0])
    if m is None:
        return label, None
    return m.group("family"), int(m.group("seed"))
