"""The ``robustbench-lta`` command line: models, data, train, attacks, sweep, report, demo.

Exit codes (docs/errors.md has the full table):

- 0: done, every cell ``ok``;
- 1: internal error (a bug): one line, the traceback under ``--debug``;
- 2: bad input (:class:`UserError`) or an environment problem the user can fix (disk full, a
  read-only or blocked ``--out``): one line naming the path and the fix, nothing written before lost;
- 3: the sweep finished but some cells are ``failed`` or ``invalid``: tables are written, the
  count is printed, and ``summary.csv``'s ``status``/``message`` columns say which and why;
- 130: interrupted (finished cells are kept).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .cli_checks import (
    WRITING,
    CellsNotOk,
    check_attention_files,
    check_out_folder,
    did_you_mean,
    environment_error_message,
    preflight,
    raise_if_cells_not_ok,
    sanity_warning,
)
from .errors import UserError
from .results import not_applicable_lines

_DEBUG = False

EXIT_OK, EXIT_INTERNAL, EXIT_USER, EXIT_CELLS_NOT_OK, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
_PLUGINS_OPTION = click.option(
    "--plugins", "plugin_paths", multiple=True, type=click.Path(),
    help="A .py file or a folder of them to load first (repeatable); it may register models, datasets "
         "and attacks.")
_THREADS_OPTION = click.option(
    "--threads", type=click.IntRange(min=1), default=None,
    help="CPU threads for torch (default: the cores this process may use, less those other jobs keep "
         "busy, measured at start). Two jobs on the same cores: give each its share.")


def _apply_threads(threads: int | None) -> int:
    from .config import apply_threads

    return apply_threads(threads)


def _load_plugins(paths: tuple[str, ...] | list[str]) -> None:
    """The one discovery step for every command: built-ins, entry points and --plugins files."""
    from .plugins.registry import discover

    discover([Path(p) for p in paths])


def _echo_table(title: str, columns: list[str], rows: list[list[Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title, show_lines=False)
    for col in columns:
        table.add_column(col, overflow="fold")
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console(width=max(120, 20)).print(table)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show full tracebacks for unexpected errors.")
@click.version_option(package_name="robustbench-lta")
def cli(debug: bool) -> None:
    """How robust are attention-augmented CNNs, really, compared with their baselines?"""
    global _DEBUG
    _DEBUG = debug


# ------------------------------------------------------------------------------------- models
@cli.command("models")
@click.argument("pattern", default="*")
@_PLUGINS_OPTION
@_THREADS_OPTION
def models_cmd(pattern: str, plugin_paths: tuple[str, ...], threads: int | None) -> None:
    """List registered models (optionally matching PATTERN, e.g. 'vgg16_att*')."""
    _apply_threads(threads)
    import torch

    from .models.compute import registry_gmacs
    from .models.registry import create_model, list_models, model_info

    _load_plugins(plugin_paths)
    names = list_models(pattern)
    if not names:
        raise UserError(f"no model matches {pattern!r}: {did_you_mean(pattern, list_models())}"
                        "run `robustbench-lta models` for the full list")
    rows = []
    for name in names:
        info = model_info(name)
        try:
            with torch.device("meta"):  # count parameters without allocating weights
                model = create_model(name, num_classes=10)
            params = f"{sum(p.numel() for p in model.parameters()) / 1e6:.2f}M"
        except Exception:  # a user's builder that cannot run on the meta device: still list it
            params = "?"
        try:  # measured on the meta device, cached (models/compute.py)
            gmacs = f"{registry_gmacs(name):.3g}"
        except Exception:  # a user model that cannot run on the meta device at 3x32x32
            gmacs = "?"
        rows.append([name, info.family, info.attention_levels or "-", info.compatibility or "-",
                     info.head or "-", params, gmacs, info.source])
    _echo_table(f"{len(names)} models (params for 10 classes; GMACs per 3x32x32 image)",
                ["name", "family", "attention levels", "compatibility", "head", "params", "GMACs", "source"],
                rows)


# --------------------------------------------------------------------------------------- data
@cli.command("data")
@click.option("--root", default=None,
              help="Where torchvision datasets live (default $ROBUSTBENCH_LTA_DATA, else ./data).")
@_PLUGINS_OPTION
@_THREADS_OPTION
def data_cmd(root: str | None, plugin_paths: tuple[str, ...], threads: int | None) -> None:
    """List datasets and whether each is available locally."""
    _apply_threads(threads)
    from .data.registry import dataset_available, list_datasets

    _load_plugins(plugin_paths)
    rows = []
    for info in list_datasets():
        ok = dataset_available(info.name, root=root)
        rows.append([info.name, info.num_classes, f"{info.image_size}", "yes" if ok else "no",
                     info.description, info.source])
    rows.append(["imagefolder:PATH", "-", "-", "-", "any folder of class subfolders (ImageFolder layout)",
                 "scheme"])
    rows.append(["npz:PATH", "-", "-", "-", "arrays x (uint8 NHWC) and y", "scheme"])
    _echo_table("datasets", ["name", "classes", "size", "available", "description", "source"], rows)


# -------------------------------------------------------------------------------------- train
@cli.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable), e.g. --set epochs=5 --set model.width=0.5")
@click.option("--out", default=None, help="Output folder (default from the config, else runs/<model>).")
@click.option("--ddp", is_flag=True, help="Insist on data-parallel training: launch with "
              "torchrun --nproc-per-node N -m robustbench_lta train CONFIG (used there even without it).")
@click.option("--seeds", default=None, metavar="0,1,2",
              help="Train one run per seed into OUT/seed<S> (a model family; overrides `seeds:`).")
@_PLUGINS_OPTION
@_THREADS_OPTION
def train_cmd(config: str, overrides: tuple[str, ...], out: str | None, ddp: bool, seeds: str | None,
              plugin_paths: tuple[str, ...], threads: int | None) -> None:
    """Train a model from a YAML CONFIG (see configs/train/ and docs/config.md)."""
    from .config import TrainConfig, apply_threads, check_device_available, load_config
    from .training import distributed
    from .training.trainer import train

    cfg = load_config(TrainConfig, config, overrides)
    if out:
        cfg.out = out
    if plugin_paths:
        cfg.plugins = [*cfg.plugins, *plugin_paths]
    _load_plugins(cfg.plugins)
    # the number in use is recorded in the config (and so in the card's training section)
    cfg.threads = apply_threads(threads or cfg.threads)
    check_device_available(cfg.device)
    if cfg.out:
        check_out_folder(cfg.out, "--out")
        WRITING.append(str(cfg.out))
    if seeds is not None:
        try:
            cfg.seeds = [int(s) for s in seeds.replace(" ", "").split(",") if s != ""] or None
        except ValueError:
            raise UserError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    # the process group first: under torchrun a family is trained seed after seed, each run data-parallel
    # over the ranks (not the whole family once per rank into the same folders)
    ctx = distributed.init_from_env(cfg.device, required=ddp)
    is_main = ctx is None or ctx.is_main
    ok = False
    try:
        if is_main:
            click.echo(_setup_line("train", ctx.device(cfg.device) if ctx else cfg.device, cfg.amp,
                                   cfg.channels_last, ddp=ctx))
        if cfg.seeds:
            from .training.family import train_family

            fam = train_family(cfg)
        else:
            result = train(cfg)
        ok = True
    finally:
        distributed.teardown(ctx, ok)
    if not is_main:
        return
    if cfg.seeds:
        accs = ", ".join(f"seed {s}: {a:.2%}" for s, a in zip(fam.seeds, fam.best_accs, strict=True))
        click.echo(f"family {fam.name} ({len(fam.seeds)} seeds) in {fam.out_dir}: chosen-epoch test accuracy "
                   f"{accs}")
        return
    click.echo(f"test accuracy {result.test_acc:.2%} (chosen epoch {result.best_epoch}, measured once); "
               f"checkpoint {result.best_path}")


def _setup_line(command: str, device: Any, amp: str, channels_last: bool, compile_: bool = False,
                ddp: Any = None) -> str:
    """``train``/``sweep``: which device, precision and memory format the run uses, in one line.

    The precision is the trainer's and the engine's own rule (``devices.amp_note``: bf16 where it is
    native and, on a CPU, measured faster; fp16 on older GPUs); NHWC on CUDA and CPU alike.
    """
    from .devices import amp_note
    from .utils import device_description, resolve_device

    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    precision = amp_note(amp, dev)
    if command == "train" and "fp16" in precision and cuda:
        precision += " + grad scaler"
    extras = [", torch.compile" if compile_ and cuda else "",
              f", DDP x{ddp.world_size} ({ddp.backend})" if ddp is not None else ""]
    return (f"{command}: device {device_description(dev)}, amp {precision}, "
            f"{'channels_last (NHWC)' if channels_last else 'NCHW'}{''.join(extras)}")


# ------------------------------------------------------------------------------------ attacks
@cli.command("attacks")
@_PLUGINS_OPTION
@_THREADS_OPTION
def attacks_cmd(plugin_paths: tuple[str, ...], threads: int | None) -> None:
    """List every discovered attack with its threat model and source."""
    _apply_threads(threads)
    from .plugins.registry import list_attacks

    _load_plugins(plugin_paths)
    rows = [[a.name, a.threat_model, a.kind, "yes" if a.bounded else "no (minimal norm)", a.source,
             a.summary] for a in list_attacks()]
    rows.append(["ta:<Class>", "from class", "-", "-", "adapter", "any torchattacks attack, params passed"])
    rows.append(["fb:<Class>", "from class", "-", "-", "adapter", "any foolbox attack, params passed"])
    _echo_table(f"{len(rows) - 2} attacks + 2 adapters", ["name", "threat model", "kind", "bounded",
                                                          "source", "summary"], rows)


# -------------------------------------------------------------------------------------- sweep
def _parse_eps(text: str) -> list[float]:
    try:
        return [float(v) for v in text.replace(" ", "").split(",") if v != ""]
    except ValueError:
        raise UserError(f"--eps {text!r}: expected comma-separated numbers, e.g. --eps 0,1,2,4,8") from None


def _parse_attack_flag(text: str) -> dict[str, Any]:
    """``pgd-linf`` or ``pgd-linf:steps=20,restarts=2`` -> an attack spec."""
    from .config import parse_attack_string

    return parse_attack_string(text, flag="--attack")


def _model_specs(models: tuple[str, ...], archs: tuple[str, ...], download: bool,
                 resize_inputs: bool = False) -> list[dict[str, Any]]:
    """``--model`` values as specs; each ``--arch`` goes, in order, to a bare weights file (a
    .safetensors/.pt/.pth without a .json card beside it)."""
    specs: list[dict[str, Any]] = [{"source": m} for m in models]
    bare = [s for s in specs if Path(s["source"]).suffix in (".safetensors", ".pt", ".pth")
            and not Path(s["source"]).with_suffix(".json").is_file()]
    if archs:
        if len(archs) != len(bare):
            raise UserError(f"{len(archs)} --arch for {len(bare)} bare weights file(s) among --model: give "
                            "one --arch per .safetensors/.pt file without a .json card, in the same order")
        for spec, arch in zip(bare, archs, strict=True):
            spec["arch"] = arch
    for spec in specs:
        if download:
            spec["download"] = True
        if resize_inputs:
            spec["resize_inputs"] = True
    return specs


def _run_sweep_taking_over_lock(cfg: Any, quiet: bool) -> Any:
    """``--break-lock``: the store's own switch for this run only (it still refuses a holder that is
    alive on this machine), so an in-process caller's environment is left as it was."""
    import os

    from .engine.executors import run_with_executor
    from .engine.store import BREAK_LOCK_ENV

    before = os.environ.get(BREAK_LOCK_ENV)
    os.environ[BREAK_LOCK_ENV] = "1"
    try:
        return run_with_executor(cfg, progress=not quiet)
    finally:
        if before is None:
            os.environ.pop(BREAK_LOCK_ENV, None)
        else:
            os.environ[BREAK_LOCK_ENV] = before


@cli.command("sweep")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True,
              help="Checkpoint, registry name, robustbench:D/T/NAME, timm:NAME, torchvision:NAME, "
                   "hf-hub:ORG/REPO or a bare .safetensors (repeatable; see docs/models.md).")
@click.option("--arch", "archs", multiple=True,
              help="Architecture of a bare weights --model (registry name, timm:NAME, torchvision:NAME); "
                   "one per bare file, in order.")
@click.option("--download", is_flag=True, help="Fetch missing pretrained weights (off: nothing downloads).")
@click.option("--resize-inputs", is_flag=True,
              help="Each model resizes images to its card's input size inside itself (e.g. timm at 224 on "
                   "CIFAR's 32x32, side by side with CIFAR models); budgets stay on the data's pixels.")
@click.option("--attack", "attacks", multiple=True,
              help="Attack name, optionally with params: pgd-linf:steps=20 (repeatable).")
@click.option("--eps", default=None, help="Comma-separated budgets, e.g. 0,1,2,4,8 (see --eps-scale).")
@click.option("--eps-scale", type=float, default=None, help="Divide eps by this (default 255: pixel units).")
@click.option("--data", default=None, help="Dataset (default: the one in the first checkpoint's card).")
@click.option("--n", type=int, default=None, help="Number of test samples (default 1000).")
@click.option("--batch-size", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N")
@click.option("--seed", type=int, default=None)
@click.option("--accounting", type=click.Choice(["worst-case", "per-attack", "cascade"]), default=None)
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None)
@click.option("--shard-size", type=int, default=None, help="Samples per unit of work (default 1024).")
@click.option("--retry-invalid", is_flag=True, default=None, help="Recompute stored invalid cells too.")
@click.option("--replace", is_flag=True, default=None,
              help="Let this sweep replace a finished folder's tables even if it drops models/attacks/eps.")
@click.option("--ray-address", default=None, help="Ray cluster address (default RAY_ADDRESS or a local Ray).")
@click.option("--ray-gpus-per-task", type=float, default=None,
              help="GPUs per Ray task (default 1 when the cluster has GPUs).")
@click.option("--ray-cpus-per-task", type=float, default=None, help="CPUs per Ray task (default 1).")
@_PLUGINS_OPTION
@_THREADS_OPTION
@click.option("--out", default=None, help="Results folder (default results/<config name> or results/sweep).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.option("--break-lock", is_flag=True,
              help="Take over the results folder's lock left by a sweep that is gone (its machine died).")
def sweep_cmd(config: str | None, models: tuple[str, ...], archs: tuple[str, ...], download: bool,
              resize_inputs: bool,
              attacks: tuple[str, ...], eps: str | None,
              eps_scale: float | None, data: str | None, n: int | None, batch_size: int | None,
              device: str | None, seed: int | None, accounting: str | None, executor: str | None,
              shard_size: int | None, retry_invalid: bool | None, replace: bool | None,
              ray_address: str | None, ray_gpus_per_task: float | None, ray_cpus_per_task: float | None,
              plugin_paths: tuple[str, ...], threads: int | None, out: str | None,
              overrides: tuple[str, ...], quiet: bool, break_lock: bool) -> None:
    """Run models x attacks x eps (from a YAML CONFIG and/or flags) into a results folder."""
    from .config import SweepConfig, apply_overrides, apply_threads, read_yaml, validate
    from .engine.executors import run_with_executor

    raw: dict[str, Any] = read_yaml(config) if config else {}
    if models:
        raw["models"] = _model_specs(models, archs, download, resize_inputs)
    elif archs:
        raise UserError("--arch goes with a bare weights --model FILE.safetensors")
    if attacks:
        raw["attacks"] = [_parse_attack_flag(a) for a in attacks]
    if eps is not None:
        raw["eps"] = _parse_eps(eps)
    if data is not None:
        raw["data"] = {"name": data}
    for key, value in (("eps_scale", eps_scale), ("n", n), ("batch_size", batch_size), ("device", device),
                       ("seed", seed), ("accounting", accounting), ("executor", executor),
                       ("shard_size", shard_size), ("retry_invalid", retry_invalid), ("replace", replace),
                       ("ray_address", ray_address), ("ray_gpus_per_task", ray_gpus_per_task),
                       ("ray_cpus_per_task", ray_cpus_per_task)):
        if value is not None:
            raw[key] = value
    if plugin_paths:
        raw["plugins"] = list(raw.get("plugins") or []) + list(plugin_paths)
    if threads is not None:
        raw["threads"] = threads
    if out is not None:
        raw["out"] = out
    elif not raw.get("out"):
        raw["out"] = str(Path("results") / (Path(config).stem if config else "sweep"))
    if models:
        # --set is applied after the flags: `--set models=[...]` would silently replace every --model
        clash = next((o for o in overrides if o.split("=", 1)[0].strip() == "models"), None)
        if clash is not None:
            raise UserError(f"--model and --set {clash.split('=', 1)[0].strip()}=... both give the models: "
                            "pass them one way (--model repeated, or `--set models=[...]` alone)")
    apply_overrides(raw, overrides)
    if not raw.get("models"):
        raise UserError("no models given: pass --model CHECKPOINT_OR_NAME or a config with `models:`")
    if isinstance(raw["models"], list):  # a family folder -> one model per seed run, NAME@seed<S>
        from .training.family import expand_model_specs

        raw["models"] = expand_model_specs(raw["models"])
    if not raw.get("attacks"):
        raise UserError("no attacks given: pass --attack NAME (see `robustbench-lta attacks`)")
    cfg = validate(SweepConfig, raw, config or "sweep options")
    _load_plugins(cfg.plugins)  # before the engine, so models named by plugins resolve
    # the number in use goes into the config, so the manifest records it
    cfg.threads = apply_threads(cfg.threads)
    preflight(cfg)
    click.echo(_setup_line("sweep", cfg.device, cfg.amp, cfg.channels_last, cfg.compile))
    if break_lock:
        summary = _run_sweep_taking_over_lock(cfg, quiet)
    else:
        summary = run_with_executor(cfg, progress=not quiet)
    _print_summary(summary)
    out_dir = Path(summary.attrs.get("out_dir", cfg.out or "."))
    if (out_dir / "published.csv").is_file():  # zoo models: the publisher's numbers beside ours
        _print_published(out_dir / "published.csv")
    click.echo(f"results in {out_dir}")
    _selection_notes(out_dir)
    _warn_sanity(summary)
    _note_not_applicable(summary)
    raise_if_cells_not_ok(summary)


def _note_not_applicable(summary: Any) -> None:
    """One stderr line per attack that did not apply to some models: a note, the exit status stays 0."""
    for line in not_applicable_lines(summary):
        click.echo(f"note: {line}", err=True)


def _selection_notes(out_dir: Path) -> None:
    """One line per model whose checkpoint may have been chosen on the data just evaluated."""
    import json

    from .training.selection import selection_note

    try:
        models = json.loads((out_dir / "manifest.json").read_text()).get("models") or {}
    except (OSError, ValueError):
        return
    for label, info in sorted(models.items()):
        card = (info or {}).get("card")
        if str((card or {}).get("source", "")).startswith(("registry:", "module:")):
            continue  # untrained or in-process: nothing was selected
        note = selection_note(card, label, "test")
        if note:
            click.echo(f"note: {note}", err=True)


def _warn_sanity(summary: Any) -> None:
    message = sanity_warning(summary)
    if message:
        click.echo(f"warning: {message}", err=True)


def _print_published(path: Path) -> None:
    import math

    import pandas as pd

    def pct(v: float) -> str:
        return "-" if math.isnan(v) else f"{v:.1%}"

    rows = [[r.model, r.metric if r.metric == "clean" else f"robust {r.norm} {r.eps * 255:.3g}/255",
             pct(r.published), pct(r.measured),
             "-" if math.isnan(r.difference) else f"{100 * r.difference:+.1f}",
             int(r.n), r.measured_by] for r in pd.read_csv(path).itertuples(index=False)]
    _echo_table("published vs measured", ["model", "metric", "published", "measured", "diff (pp)", "n",
                                           "measured by"], rows)


def _print_summary(summary: Any) -> None:
    import math

    rows = []
    for r in summary.itertuples(index=False):
        eps = "-" if math.isinf(r.eps) else f"{r.eps * 255:.3g}"
        acc = "-" if math.isnan(r.robust_acc) else f"{r.robust_acc:.1%}"
        rows.append([r.model, r.attack, r.norm, eps, f"{r.clean_acc:.1%}", acc, r.status,
                     (r.message or "")[:60]])
    _echo_table("summary", ["model", "attack", "norm", "eps (/255)", "clean", "robust", "status", "message"],
                rows)


# ------------------------------------------------------------------------------------- report
def _check_attention_keys(folder: Path) -> None:
    """An attention/*.npz that is readable but not a sweep's is refused like a corrupt one (the report
    API would drop its page with a warning the command line does not show)."""
    import numpy as np

    from .reporting.attention_figures import attention_keys_problem

    for path in sorted((folder / "attention").glob("*.npz")):
        with np.load(path, allow_pickle=False) as z:
            problem = attention_keys_problem(path, z.files)
        if problem:
            raise UserError(problem)


@cli.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="reports/report.pdf", show_default=True, help="PDF to write.")
@click.option("--title", default=None)
@click.option("--force", is_flag=True,
              help="Compare folders that evaluated different data or samples (page 1 then says so).")
@click.option("--curves", type=click.Choice(["robust", "conditional", "both"]), default="both",
              show_default=True,
              help="Curves of robust accuracy, of robust accuracy among clean-correct images, or both.")
@click.option("--html", "html_dir", default=None, type=click.Path(),
              help="Also write the HTML report (table, curves, per-sample explorer) into this folder; "
              "open DIR/index.html from disk.")
@_THREADS_OPTION
def report_cmd(results: tuple[str, ...], out: str, title: str | None, force: bool, curves: str,
               html_dir: str | None, threads: int | None) -> None:
    """Make a comparison report (PDF + PNG figures + CSV/Markdown tables) from RESULTS folders.

    Folders that evaluated different data or samples are refused unless --force. When no strong
    attack ran, page 1 says the numbers are upper bounds and names the command that adds AutoAttack
    to the same results folder. With --html DIR, also a self-contained HTML folder.
    """
    from .reporting.pdf import build_report

    _apply_threads(threads)
    for folder in results:
        check_attention_files(Path(folder))
        _check_attention_keys(Path(folder))
    check_out_folder(str(Path(out).parent), "--out")
    if html_dir is not None:  # refused before the PDF is written, not after
        from .reporting.html import check_html_out

        check_out_folder(str(Path(html_dir).parent), "--html")
        check_html_out(Path(html_dir))
    WRITING.append(str(out))
    res = build_report([Path(r) for r in results], Path(out), title=title, force=force, curves=curves)
    for caveat in res.verdict.get("caveats", []):
        click.echo(f"note: {caveat}", err=True)
    click.echo(f"report: {res.pdf}")
    if html_dir is not None:
        from .reporting.html import build_html_report

        WRITING.append(str(html_dir))
        page = build_html_report([Path(r) for r in results], Path(html_dir), title=title, force=force)
        click.echo(f"html report: {page.index} ({page.records} explorer samples, {page.images} images)")


# --------------------------------------------------------------------------------------- demo
@cli.command("demo")
@click.option("--skip-train", is_flag=True, help="Reuse the demo checkpoints in runs/.")
@click.option("--quick", is_flag=True, help="A smaller sweep (fewer samples and attacks).")
@_THREADS_OPTION
def demo_cmd(skip_train: bool, quick: bool, threads: int | None) -> None:
    """Train a baseline and an attention model on cluttered-digits, sweep them, write reports/demo.pdf."""
    from .config import apply_threads
    from .demo import run_demo

    threads = apply_threads(threads)
    click.echo(f"demo: {threads} CPU thread(s) (--threads to change)", err=True)
    res = run_demo(Path.cwd(), threads, skip_train=skip_train, quick=quick)
    for t in res.trained:
        click.echo(f"{t.config.name}: test accuracy {t.test_acc:.2%} (chosen epoch {t.best_epoch})")
    _print_summary(res.summary)
    click.echo(f"report: {res.pdf}")
    _warn_sanity(res.summary)
    _note_not_applicable(res.summary)
    raise_if_cells_not_ok(res.summary)


# ------------------------------------------------------------------------------------- entry
def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("default", category=UserWarning, module="robustbench_lta")
    debug = "--debug" in (argv if argv is not None else sys.argv)
    try:
        cli.main(args=argv, prog_name="robustbench-lta", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {_one_line(exc)}", err=True)
        sys.exit(EXIT_USER)
    except CellsNotOk as exc:
        click.echo(f"sweep incomplete: {exc}", err=True)
        sys.exit(EXIT_CELLS_NOT_OK)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except KeyboardInterrupt:
        click.echo("interrupted: finished cells are kept; re-run the same command to resume", err=True)
        sys.exit(EXIT_INTERRUPTED)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare command asks for its help
        click.echo(exc.format_message())
        sys.exit(EXIT_OK)
    except click.ClickException as exc:  # bad flags or arguments: one line, like every other user error
        ctx = getattr(exc, "ctx", None)
        command = ctx.command_path if ctx is not None else "robustbench-lta"
        click.echo(f"error: {_one_line(exc.format_message())} (see `{command} --help`)", err=True)
        sys.exit(EXIT_USER if exc.exit_code in (1, 2) else exc.exit_code)
    except OSError as exc:
        message = environment_error_message(exc)
        if _DEBUG or debug:
            raise
        if message is None:
            click.echo(f"internal error: {type(exc).__name__}: {_one_line(exc)} (re-run with --debug for "
                       "the traceback)", err=True)
            sys.exit(EXIT_INTERNAL)
        click.echo(f"error: {message}", err=True)
        sys.exit(EXIT_USER)
    except Exception as exc:  # a bug: one line unless --debug
        if _DEBUG or debug:
            raise
        click.echo(f"internal error: {type(exc).__name__}: {_one_line(exc)} (re-run with --debug for the "
                   "traceback)", err=True)
        sys.exit(EXIT_INTERNAL)


if __name__ == "__main__":
    main()
