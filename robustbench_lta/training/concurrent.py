"""Several training runs at once, each in its own process with its share of the CPU threads.

Small models use two threads poorly: the demo's two width-1/16 models trained one after the other
with 2 threads each take 93 s, side by side with 1 thread each 66 s (Intel Xeon, 2 idle cores).
Each run is an ordinary :func:`~.trainer.train` call in a spawned process (a fresh interpreter: no
forked torch thread pools), so it writes, resumes and fails exactly as it would alone. Plugins a
run needs must be named in its config (``plugins:``): a spawned process has not loaded the caller's.
A script that calls :func:`train_concurrently` needs the ``if __name__ == "__main__":`` guard, as
any script starting processes with ``spawn`` does (each child imports the script's main module).
"""

from __future__ import annotations

import contextlib
import csv
import multiprocessing
import os
import signal
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_EXCEPTION, Future, ProcessPoolExecutor, wait
from typing import Any

from ..config import TrainConfig
from .trainer import TrainResult, out_dir_for


def thread_shares(threads: int, jobs: int) -> list[int]:
    """``threads`` split over ``jobs`` runs as evenly as possible, at least one each."""
    base, extra = divmod(max(threads, jobs), jobs)
    return [base + (1 if i < extra else 0) for i in range(jobs)]


_stop: Any = None      # the parent's "stop" event, in each child process
_training = False     # whether this child is inside a run (a stop signal interrupts only then)


def _stop_signal(signum: int, frame: Any) -> None:
    if _training:
        raise KeyboardInterrupt


def _init_child(stop: Any) -> None:
    global _stop
    _stop = stop
    # SIGTERM and SIGINT stop a run as Ctrl-C stops `train` (resumable); set here because a process
    # started from a non-interactive shell in the background inherits SIGINT ignored
    signal.signal(signal.SIGTERM, _stop_signal)
    signal.signal(signal.SIGINT, _stop_signal)


def _train_in_child(config_json: dict[str, Any], then: Callable[[], None] | None) -> TrainResult:
    global _training
    from .trainer import train

    if _stop is not None and _stop.is_set():  # queued before the stop: never starts
        raise KeyboardInterrupt
    _training = True
    try:
        result = train(TrainConfig.model_validate(config_json), progress=False)
        if then is not None:
            then()
    finally:
        _training = False
    return result


def _epochs_done(config: TrainConfig) -> int:
    history = out_dir_for(config) / "history.csv"
    if not history.is_file():
        return 0
    try:
        with history.open() as fh:
            return sum(1 for _ in csv.DictReader(fh))
    except OSError:  # being replaced this instant: count it next time
        return 0


def train_concurrently(configs: Sequence[TrainConfig], threads: int, progress: bool = True,
                       then: Sequence[Callable[[], None] | None] | None = None,
                       poll_s: float = 1.0, jobs: int | None = None) -> list[TrainResult]:
    """Train the configs side by side, ``threads`` split among them; results in config order.

    ``jobs``: at most this many runs at once (default: all of them), the others queued in config
    order, each starting as soon as a running one ends, with ``threads // jobs`` threads. Each
    config's own ``threads`` is replaced by its share. ``then[i]``: a picklable callable (a
    module-level function or a ``functools.partial`` of one) that run ``i``'s process calls after
    its training, with the same threads: work that needs only that run (its sweep) fills the cores
    a shorter run leaves idle. The first run to fail raises its error
    here once the others have stopped (runs that finished keep their checkpoints; an unfinished one
    resumes when trained again). Progress: one bar over all runs' epochs.
    """
    from tqdm.auto import tqdm

    if not configs:
        return []
    outs = [out_dir_for(c).resolve() for c in configs]
    if len(set(outs)) < len(outs):
        raise ValueError("train_concurrently: two configs write into the same out folder")
    at_once = len(configs) if jobs is None else max(1, min(jobs, len(configs)))
    # queued runs take whichever worker frees up first, so they all get the smallest share
    shares = (thread_shares(threads, at_once) if at_once == len(configs)
              else [max(1, threads // at_once)] * len(configs))
    runs = [c.model_copy(update={"threads": t}) for c, t in zip(configs, shares, strict=True)]
    total = sum(c.epochs for c in runs)
    bar = tqdm(total=total, desc=f"training {len(runs)} runs, {at_once} at once", unit="epoch",
               disable=not progress)
    bar.update(sum(min(_epochs_done(c), c.epochs) for c in runs))
    after = list(then) if then is not None else [None] * len(runs)
    if len(after) != len(runs):
        raise ValueError(f"train_concurrently: {len(after)} `then` steps for {len(runs)} configs")
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    pool = ProcessPoolExecutor(max_workers=at_once, mp_context=ctx, initializer=_init_child, initargs=(stop,))
    futures: list[Future[TrainResult]] = [pool.submit(_train_in_child, c.model_dump(mode="json"), a)
                                          for c, a in zip(runs, after, strict=True)]
    try:
        while True:
            done, pending = wait(futures, timeout=poll_s, return_when=FIRST_EXCEPTION)
            now = sum(min(_epochs_done(c), c.epochs) for c in runs)
            bar.update(max(0, now - bar.n))
            failed = [f for f in done if f.exception() is not None]
            if failed or not pending:
                break
        if failed:
            for f in pending:
                f.cancel()
            wait(futures)  # the others stop at their end; a run never half-writes a checkpoint
            raise failed[0].exception()  # type: ignore[misc]
        return [f.result() for f in futures]
    except KeyboardInterrupt:
        # Ctrl-C or SIGTERM in the caller: each running child stops as `train` does when
        # interrupted (its last finished epoch kept, resumable); queued runs never start
        stop.set()
        for f in futures:
            f.cancel()
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(ProcessLookupError, OSError):
                os.kill(proc.pid, signal.SIGTERM)
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()

