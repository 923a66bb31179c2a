"""Scale a sweep out on Ray: one task per unit (model x attack x shard), results gathered by the driver.

Needs ``pip install 'robustbench-lta[ray]'``. ``--ray-address`` (or ``RAY_ADDRESS``) joins a cluster;
without one a local Ray instance is started. Each task asks for ``ray_cpus_per_task`` CPUs and, when
it runs on CUDA (``device: auto`` on a cluster with GPUs, or ``cuda``/``cuda:N``),
``ray_gpus_per_task`` GPUs (default 1), so Ray pins it to its own device; ``device: cpu`` reserves none.
A worker process keeps the model it last loaded (and the samples): consecutive units of one model
on one worker load it once. Workers write unit files into the results folder, which must be on
storage every worker can reach; only the driver writes tables and the manifest. The driver hashes
an in-memory dataset once; a worker takes that hash and checks only the shard of each unit it runs
(a model-pass task, one per model, checks all the samples: it may read any of them).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from typing import Any

from tqdm.auto import tqdm

from ...config import SweepConfig
from ...errors import UserError
from ..store import ResultStore

_CACHE: dict[str, Any] = {}


def _worker_state(cfg_json: dict[str, Any]) -> dict[str, Any]:
    """This process's view of the sweep: config, attack plans, samples, loaded models (cached)."""
    from ..plan import build_attack_plans

    ident = hashlib.sha256(repr(sorted(cfg_json.items())).encode()).hexdigest()
    if _CACHE.get("ident") != ident:
        from ...config import apply_threads

        cfg = SweepConfig.model_validate(cfg_json)
        # as many threads as this task has CPUs: never every core of a shared node
        apply_threads(max(1, int(cfg.ray_cpus_per_task)))
        _CACHE.clear()
        _CACHE.update(ident=ident, cfg=cfg, attacks={a.label: a for a in build_attack_plans(cfg)},
                      models={}, worker=None)
    return _CACHE


def _loaded(state: dict[str, Any], model_index: int, data_sha256: str | None) -> Any:
    from ...utils import resolve_device
    from ..inputs import resolve_source
    from ..models import load_sweep_model
    from ..store import ResultStore
    from .worker import Worker

    cfg: SweepConfig = state["cfg"]
    spec = cfg.models[model_index]
    lm = state["models"].get(model_index)
    if lm is None:
        state["models"].clear()  # one model per worker at a time: bounded memory
        lm = state["models"][model_index] = load_sweep_model(spec, spec.name, cfg.seed)
    if state["worker"] is None:
        source = resolve_source(cfg, None, [lm], None, content_sha256=data_sha256)
        state["worker"] = Worker(source, ResultStore(cfg.out), resolve_device(cfg.device), amp=cfg.amp,
                                 channels_last=cfg.channels_last, compile_model=cfg.compile)
    return lm


def _check_shard(worker: Any, label: str, start: int, stop: int, expected: str | None) -> None:
    """The samples ``start..stop-1`` this worker sees hash as the driver's did (in-memory data)."""
    if expected is not None and worker.source.shard_sha256(start, stop) != expected:
        raise UserError(f"worker sees other data for {label} (samples {start}..{stop - 1}) than the driver "
                        "(check that every node has the same dataset version and settings)")


def _run_unit(cfg_json: dict[str, Any], model_index: int, attack_label: str, key: str, start: int, stop: int,
              data_sha256: str | None, shard_sha256: str | None) -> tuple[str, int, int, dict[str, Any]]:
    from ..plan import Unit, plan_cells
    from ..runtime import amp_key
    from ..unit import UnitSettings

    state = _worker_state(cfg_json)
    cfg: SweepConfig = state["cfg"]
    lm = _loaded(state, model_index, data_sha256)
    worker = state["worker"]
    _check_shard(worker, lm.label, start, stop, shard_sha256)
    # the same planning as the driver's (cascade upstream cells included), from this worker's view
    cells = plan_cells([(lm.label, lm.fingerprint)], worker.source.fingerprint,
                       list(state["attacks"].values()), cfg.seed, cfg.accounting,
                       amp_key(worker.device, cfg.amp))
    cell = next(c for c in cells if c.attack.label == attack_label)
    if cell.key != key:
        raise UserError(f"worker sees other data, weights or precision for {lm.label}/{attack_label} than "
                        "the driver (check that every node has the same checkpoints and data, and with amp: "
                        "auto the same kind of processor, or set amp explicitly)")
    settings = UnitSettings(batch_size=cfg.batch_size, seed=cfg.seed, accounting=cfg.accounting,
                            explorer_samples=cfg.explorer_samples)
    s, e, meta = worker.run_unit(lm, Unit(cell, start, stop), settings)
    return cell.id, s, e, meta


def _run_model_pass(cfg_json: dict[str, Any], model_index: int, key: str, settings: Any,
                    figure_label: str | None, data_sha256: str | None) -> str:
    from ..model_pass import figure_plan

    state = _worker_state(cfg_json)
    # the figure attack travels by label and is rebuilt here: its plan holds a plugin instance, which
    # a fresh worker (a retry after a crash) cannot unpickle before it has loaded the plugins
    settings = dataclasses.replace(settings, figure_attack=figure_plan(state["attacks"][figure_label])
                                   if figure_label is not None else None)
    lm = _loaded(state, model_index, data_sha256)
    _check_shard(state["worker"], lm.label, 0, state["worker"].source.n, data_sha256)
    state["worker"].run_model_pass(lm, key, settings)
    return lm.label


def _gpus_per_task(cfg_device: str, requested: int | float | None, cluster_gpus: float,
                   cuda_available: bool) -> int | float:
    """GPUs each Ray task reserves: only a task that runs on CUDA holds one.

    ``cfg_device`` is the sweep's ``device``; ``auto`` means CUDA when the cluster has GPUs (a worker
    sees a GPU only once it has reserved one) or this machine has CUDA. ``requested`` is
    ``ray_gpus_per_task`` (None: 1 when the cluster has GPUs). ``cpu`` (or any other device) never
    reserves a GPU: a CPU task holding one would keep GPU tasks waiting for nothing.
    """
    kind = str(cfg_device).strip().lower().split(":", 1)[0]
    if kind == "cuda":
        on_cuda = True
    elif kind == "auto":
        on_cuda = cluster_gpus > 0 or cuda_available
    else:
        on_cuda = False
    if not on_cuda:
        return 0
    if requested is not None:
        return requested
    return 1 if cluster_gpus > 0 else 0


def _gather(ray: Any, refs: dict[Any, str], done: dict[str, list[tuple[int, int, dict[str, Any]]]], bar: Any,
            t0: float) -> None:
    left = list(refs)
    while left:
        ready, left = ray.wait(left, num_returns=1)
        for ref in ready:
            out = ray.get(ref)
            if refs[ref] == "unit":
                cell_id, s, e, meta = out
                done.setdefault(cell_id, []).append((s, e, meta))
            bar.update(1)
        bar.set_postfix_str(f"{bar.n}/{bar.total} units, {time.perf_counter() - t0:.0f} s")


def run_units_on_ray(sweep: Any, store: ResultStore, pending: Any, progress: bool = True
                     ) -> dict[str, list[tuple[int, int, dict[str, Any]]]]:
    try:
        import ray
    except ImportError:
        raise UserError("executor 'ray' needs Ray: pip install 'robustbench-lta[ray]' "
                        "(or use --executor local)") from None
    cfg = sweep.cfg
    if cfg.out is None:
        raise UserError("executor 'ray' needs an explicit results folder on shared storage: pass --out DIR")
    if any(lm.spec is None for lm in sweep.models):
        raise UserError("executor 'ray' needs models given as checkpoints or registry names, not Python "
                        "objects: use run_sweep (in-process) for nn.Module instances")
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(address=cfg.ray_address, ignore_reinit_error=True, log_to_driver=False,
                 include_dashboard=False)
    try:
        import torch

        gpus = _gpus_per_task(cfg.device, cfg.ray_gpus_per_task, float(ray.cluster_resources().get("GPU", 0)),
                              torch.cuda.is_available())
        opts = {"num_cpus": cfg.ray_cpus_per_task, "num_gpus": gpus, "max_retries": 3}
        unit_task = ray.remote(_run_unit).options(**opts)
        pass_task = ray.remote(_run_model_pass).options(**opts)
        cfg_json = cfg.model_dump(mode="json")
        index = {lm.label: i for i, lm in enumerate(sweep.models)}
        source = sweep.source
        data_sha = source.fingerprint.get("sha256") if source.in_memory else None
        # cascade accounting: a unit reads its upstream cells' units, so it waits for their wave
        waves: dict[int, list[Any]] = {}
        for u in pending.units:
            waves.setdefault(len(u.cell.upstream), []).append(u)
        done: dict[str, list[tuple[int, int, dict[str, Any]]]] = {}
        settings = dataclasses.replace(sweep.model_pass_settings, figure_attack=None)
        figure = sweep.model_pass_settings.figure_attack
        figure_label = figure.label if figure is not None else None
        bar = tqdm(total=len(pending.units) + len(pending.model_passes),
                   desc=f"sweep on ray ({gpus:g} GPU/task)", unit="unit", disable=not progress)
        t0 = time.perf_counter()
        try:
            for depth in sorted(waves):
                refs = {unit_task.remote(cfg_json, index[u.cell.model], u.cell.attack.label, u.cell.key,
                                         u.start, u.stop, data_sha, source.shard_sha256(u.start, u.stop)
                                         ): "unit" for u in waves[depth]}
                if depth == max(waves):
                    refs.update({pass_task.remote(cfg_json, index[label], key, settings, figure_label,
                                                  data_sha): "pass"
                                 for label, key in pending.model_passes.items()})
                _gather(ray, refs, done, bar, t0)
            if not waves:
                _gather(ray, {pass_task.remote(cfg_json, index[label], key, settings, figure_label,
                                               data_sha): "pass"
                              for label, key in pending.model_passes.items()}, done, bar, t0)
        finally:
            bar.close()
        # every task has returned: a temporary left now belongs to a worker killed mid-write (its
        # retry wrote the unit again), so it goes before the driver reads the units
        store.remove_stale_temporaries()
        return done
    finally:
        if started_here:
            ray.shutdown()
