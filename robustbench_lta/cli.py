"""The ``robustbench-lta`` command line: models, data, train, attacks, sweep, report, demo.

Errors meant for users (:class:`UserError`) print as one line and exit with code 2; anything else
is a bug and prints its traceback only under ``--debug`` (exit code 1).
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Any

import click

from .errors import UserError

_DEBUG = False


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
def models_cmd(pattern: str) -> None:
    """List registered models (optionally matching PATTERN, e.g. 'vgg16_att*')."""
    import torch

    from .models.compute import registry_gmacs
    from .models.registry import create_model, list_models, model_info

    names = list_models(pattern)
    if not names:
        raise UserError(f"no model matches {pattern!r}: run `robustbench-lta models` for the full list")
    rows = []
    for name in names:
        info = model_info(name)
        with torch.device("meta"):  # count parameters without allocating weights
            model = create_model(name, num_classes=10)
        params = sum(p.numel() for p in model.parameters())
        try:  # measured on the meta device, cached (models/compute.py)
            gmacs = f"{registry_gmacs(name):.3g}"
        except Exception:  # a user model that cannot run on the meta device at 3x32x32
            gmacs = "?"
        rows.append([name, info.family, info.attention_levels or "-", info.compatibility or "-",
                     info.head or "-", f"{params / 1e6:.2f}M", gmacs])
    _echo_table(f"{len(names)} models (params for 10 classes; GMACs per 3x32x32 image)",
                ["name", "family", "attention levels", "compatibility", "head", "params", "GMACs"], rows)


# --------------------------------------------------------------------------------------- data
@cli.command("data")
@click.option("--root", default=None, help="Where torchvision datasets live (default ./data).")
def data_cmd(root: str | None) -> None:
    """List datasets and whether each is available locally."""
    from .data.registry import dataset_available, list_datasets

    rows = []
    for info in list_datasets():
        ok = dataset_available(info.name, root=root)
        rows.append([info.name, info.num_classes, f"{info.image_size}", "yes" if ok else "no",
                     info.description])
    rows.append(["imagefolder:PATH", "-", "-", "-", "any folder of class subfolders (ImageFolder layout)"])
    rows.append(["npz:PATH", "-", "-", "-", "arrays x (uint8 NHWC) and y"])
    _echo_table("datasets", ["name", "classes", "size", "available", "description"], rows)


# -------------------------------------------------------------------------------------- train
@cli.command("train")
@click.argument("config", type=click.Path(dir_okay=False))
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a config key (repeatable), e.g. --set epochs=5 --set model.width=0.5")
@click.option("--out", default=None, help="Output folder (default from the config, else runs/<model>).")
@click.option("--seeds", default=None, metavar="0,1,2",
              help="Train one run per seed into OUT/seed<S> (a model family; overrides `seeds:`).")
def train_cmd(config: str, overrides: tuple[str, ...], out: str | None, seeds: str | None) -> None:
    """Train a model from a YAML CONFIG (see configs/train/)."""
    from .config import TrainConfig, load_config
    from .training.trainer import train

    cfg = load_config(TrainConfig, config, overrides)
    if out:
        cfg.out = out
    if seeds is not None:
        try:
            cfg.seeds = [int(s) for s in seeds.replace(" ", "").split(",") if s != ""] or None
        except ValueError:
            raise UserError(f"--seeds {seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if cfg.seeds:
        from .training.family import train_family

        fam = train_family(cfg)
        accs = ", ".join(f"seed {s}: {a:.2%}" for s, a in zip(fam.seeds, fam.best_accs, strict=True))
        click.echo(f"family {fam.name} ({len(fam.seeds)} seeds) in {fam.out_dir}: best test accuracy {accs}")
        return
    result = train(cfg)
    click.echo(f"best test accuracy {result.best_acc:.2%}; checkpoint {result.best_path}")


# ------------------------------------------------------------------------------------ attacks
@cli.command("attacks")
@click.option("--plugins", "plugin_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra plugin folder (repeatable).")
def attacks_cmd(plugin_dirs: tuple[str, ...]) -> None:
    """List every discovered attack with its threat model and source."""
    from .plugins.registry import discover, list_attacks

    discover([Path(p) for p in plugin_dirs])
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
    import yaml

    name, _, rest = text.partition(":")
    if name in ("ta", "fb"):  # adapters keep their colon: ta:PGD or ta:PGD:steps=10
        cls, _, rest = rest.partition(":")
        name = f"{name}:{cls}"
    params: dict[str, Any] = {}
    for item in filter(None, rest.split(",")):
        if "=" not in item:
            raise UserError(f"--attack {text!r}: parameters go as name:key=value,key=value")
        k, v = item.split("=", 1)
        params[k] = yaml.safe_load(v)
    return {"name": name, "params": params}


@cli.command("sweep")
@click.argument("config", required=False, type=click.Path(dir_okay=False))
@click.option("--model", "models", multiple=True, help="Checkpoint or registry name (repeatable).")
@click.option("--attack", "attacks", multiple=True,
              help="Attack name, optionally with params: pgd-linf:steps=20 (repeatable).")
@click.option("--eps", default=None, help="Comma-separated budgets, e.g. 0,1,2,4,8 (see --eps-scale).")
@click.option("--eps-scale", type=float, default=None, help="Divide eps by this (default 255: pixel units).")
@click.option("--data", default=None, help="Dataset (default: the one in the first checkpoint's card).")
@click.option("--n", type=int, default=None, help="Number of test samples (default 1000).")
@click.option("--batch-size", type=int, default=None)
@click.option("--device", default=None, help="auto, cpu, cuda, cuda:N")
@click.option("--seed", type=int, default=None)
@click.option("--accounting", type=click.Choice(["worst-case", "per-attack"]), default=None)
@click.option("--executor", type=click.Choice(["local", "ray"]), default=None)
@click.option("--plugins", "plugin_dirs", multiple=True, type=click.Path(file_okay=False),
              help="Extra plugin folder (repeatable).")
@click.option("--out", default=None, help="Results folder (default results/<config name> or results/sweep).")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a config key.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def sweep_cmd(config: str | None, models: tuple[str, ...], attacks: tuple[str, ...], eps: str | None,
              eps_scale: float | None, data: str | None, n: int | None, batch_size: int | None,
              device: str | None, seed: int | None, accounting: str | None, executor: str | None,
              plugin_dirs: tuple[str, ...], out: str | None, overrides: tuple[str, ...], quiet: bool) -> None:
    """Run models x attacks x eps (from a YAML CONFIG and/or flags) into a results folder."""
    from .config import SweepConfig, apply_overrides, read_yaml, validate
    from .engine.executors import run_with_executor

    raw: dict[str, Any] = read_yaml(config) if config else {}
    if models:
        raw["models"] = [{"source": m} for m in models]
    if attacks:
        raw["attacks"] = [_parse_attack_flag(a) for a in attacks]
    if eps is not None:
        raw["eps"] = _parse_eps(eps)
    if data is not None:
        raw["data"] = {"name": data}
    for key, value in (("eps_scale", eps_scale), ("n", n), ("batch_size", batch_size), ("device", device),
                       ("seed", seed), ("accounting", accounting), ("executor", executor)):
        if value is not None:
            raw[key] = value
    if plugin_dirs:
        raw["plugins"] = list(raw.get("plugins") or []) + list(plugin_dirs)
    if out is not None:
        raw["out"] = out
    elif not raw.get("out"):
        raw["out"] = str(Path("results") / (Path(config).stem if config else "sweep"))
    apply_overrides(raw, overrides)
    if not raw.get("models"):
        raise UserError("no models given: pass --model CHECKPOINT_OR_NAME or a config with `models:`")
    if isinstance(raw["models"], list):  # a family folder -> one model per seed run, NAME@seed<S>
        from .training.family import expand_model_specs

        raw["models"] = expand_model_specs(raw["models"])
    if not raw.get("attacks"):
        raise UserError("no attacks given: pass --attack NAME (see `robustbench-lta attacks`)")
    cfg = validate(SweepConfig, raw, config or "sweep options")
    summary = run_with_executor(cfg, progress=not quiet)
    _print_summary(summary)
    click.echo(f"results in {summary.attrs.get('out_dir', cfg.out)}")


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
@cli.command("report")
@click.argument("results", nargs=-1, required=True, type=click.Path())
@click.option("--out", default="reports/report.pdf", show_default=True, help="PDF to write.")
@click.option("--title", default=None)
def report_cmd(results: tuple[str, ...], out: str, title: str | None) -> None:
    """Make a comparison report (PDF + PNG figures + CSV/Markdown tables) from RESULTS folders."""
    from .reporting.pdf import build_report

    res = build_report([Path(r) for r in results], Path(out), title=title)
    click.echo(f"report: {res.pdf}")


# --------------------------------------------------------------------------------------- demo
@cli.command("demo")
@click.option("--skip-train", is_flag=True, help="Reuse the demo checkpoints in runs/.")
@click.option("--quick", is_flag=True, help="A smaller sweep (fewer samples and attacks).")
def demo_cmd(skip_train: bool, quick: bool) -> None:
    """Train a baseline and an attention model on cluttered-digits, sweep them, write reports/demo.pdf."""
    from .config import SweepConfig, TrainConfig, load_config
    from .engine.executors import run_with_executor
    from .reporting.pdf import build_report
    from .training.trainer import train

    root = Path.cwd()
    train_cfgs = [root / "configs/train/demo_vgg16.yaml",
                  root / "configs/train/demo_vgg16_att3_concat_pc.yaml"]
    sweep_path = root / "configs/sweeps/demo.yaml"
    for p in [*train_cfgs, sweep_path]:
        if not p.is_file():
            raise UserError(f"{p} not found: run the demo from the repository root")
    if not skip_train:
        for path in train_cfgs:
            result = train(load_config(TrainConfig, path))
            click.echo(f"{path.name}: best test accuracy {result.best_acc:.2%}")
    overrides = ["n=200", "attacks=[{name: fgsm}, {name: pgd-linf}]"] if quick else []
    cfg = load_config(SweepConfig, sweep_path, overrides)
    summary = run_with_executor(cfg, progress=True)
    _print_summary(summary)
    res = build_report([Path(cfg.out or "results/demo")], root / "reports/demo.pdf",
                       title="robustbench-lta demo: VGG-16 vs VGG-16 + attention on cluttered digits")
    click.echo(f"report: {res.pdf}")


# ------------------------------------------------------------------------------------- entry
def main(argv: list[str] | None = None) -> None:
    warnings.filterwarnings("default", category=UserWarning, module="robustbench_lta")
    try:
        cli.main(args=argv, prog_name="robustbench-lta", standalone_mode=False)
    except UserError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("interrupted", err=True)
        sys.exit(130)
    except KeyboardInterrupt:
        click.echo("interrupted: finished cells are kept; re-run the same command to resume", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug: one line unless --debug
        if _DEBUG or "--debug" in (argv if argv is not None else sys.argv):
            raise
        click.echo(f"internal error: {type(exc).__name__}: {exc} (re-run with --debug for the traceback)",
                   err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
