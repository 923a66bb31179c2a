"""GPU readiness: one prepared command that proves and times the CUDA paths (``make gpu-check``).

A benchmark script, not a test. Meant for the machine with the accelerator (Python 3.12, torch with
CUDA, no package registry; see docs/gpu.md), rehearsed on CPU with ``--quick`` (CI runs that):

1. Installs the carried wheels (``.whl/``, made by ``make gpu-wheels``; only those whose tags fit this
   interpreter) and a copy of this working tree's package into a temporary target, which goes first
   on ``PYTHONPATH`` for the next steps; checks that robustbench_lta, torchattacks, foolbox,
   pydantic, pypdf and pyautoattack (the authors' AutoAttack) import from it.
2. ``pytest -m cuda`` (tests/test_cuda.py: AMP, channels_last, torch.compile, CPU = CUDA sweeps;
   all skipped without CUDA).
3. Timings, in a child process: one CIFAR-10 epoch (two are run, the second is the figure) of
   ``vgg16_att3_concat_pc`` and ``vgg16`` at full width (bf16 autocast, channels_last on CUDA);
   the sweep engine (default settings) vs torchattacks called per budget, on the trained attention
   model: FGSM at 8 budgets and PGD-10 at 4 budgets on 2,000 test images; AutoAttack (standard) at
   8/255 on 500 images. ``--quick``: tiny widths, synthetic 32x32 data, a few dozen images.
4. Writes ``gpu_check.json`` (every figure, device name, torch/CUDA versions) and ``gpu_check.md``
   (a table) into ``--out`` (default ``$OUT``, else ``reports/gpu_check``).

    python benchmarks/gpu_check.py                 # the full check (CUDA machine, ~5 min)
    python benchmarks/gpu_check.py --quick         # the CPU rehearsal (~1-2 min on 2 cores)

Exit status: 0 when every step ran and the tests passed (targets met or not: the table says),
1 otherwise. Steps past ``--budget`` seconds are skipped and marked so.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
#: What the check imports that the GPU image lacks (carried as wheels; tests/test_gpu_carry.py
#: holds this list, the Makefile's GPU_WHEELS and the package's imports against each other).
NEEDED = ("robustbench_lta", "torchattacks", "foolbox", "pydantic", "pypdf", "pyautoattack")
ATT, BASE = "vgg16_att3_concat_pc", "vgg16"
FGSM_EPS = [k / 255 for k in range(1, 9)]
PGD_EPS = [2 / 255, 4 / 255, 6 / 255, 8 / 255]
PGD_STEPS = 10
AA_EPS = 8 / 255
TARGET_EPOCH_S, TARGET_FGSM = 5.0, 5.0  # issue 15, on an H200
FULL = {"width": 1.0, "epochs": 2, "n_sweep": 2000, "n_aa": 500, "batch": 128, "sweep_batch": 500}
QUICK = {"width": 0.0625, "epochs": 1, "n_sweep": 48, "n_aa": 8, "batch": 32, "sweep_batch": 48,
         "n_train": 256, "n_test": 64}


# ------------------------------------------------------------------------------------- 1. install
def select_wheels(folder: Path) -> tuple[list[Path], list[str]]:
    """The wheels in ``folder`` whose tags this interpreter accepts (one version per project)."""
    try:
        from packaging.tags import sys_tags
        from packaging.utils import parse_wheel_filename
    except ImportError:  # pip vendors packaging
        from pip._vendor.packaging.tags import sys_tags
        from pip._vendor.packaging.utils import parse_wheel_filename
    supported = set(sys_tags())
    chosen: dict[str, tuple[Path, str]] = {}
    skipped = []
    for whl in sorted(folder.glob("*.whl")):
        name, version, _, tags = parse_wheel_filename(whl.name)
        if not tags & supported:
            skipped.append(whl.name)
            continue
        if name in chosen and chosen[name][1] != str(version):
            sys.exit(f"error: {folder} holds two versions of {name} ({chosen[name][1]}, {version}): keep one")
        chosen.setdefault(name, (whl, str(version)))
    return [w for w, _ in chosen.values()], skipped


def install(wheels_dir: Path, target: Path) -> dict[str, Any]:
    """Carried wheels + this tree's package (as pyproject maps it) into ``target``; check imports."""
    t0 = time.perf_counter()
    wheels, skipped = select_wheels(wheels_dir) if wheels_dir.is_dir() else ([], [])
    if wheels:
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                        "--no-compile", "--no-cache-dir", "--upgrade", "--target", str(target),
                        *map(str, wheels)], check=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(REPO / "robustbench_lta", target / "robustbench_lta", ignore=ignore, dirs_exist_ok=True)
    shutil.copytree(REPO / "attacks", target / "robustbench_lta" / "builtin_attacks", ignore=ignore,
                    dirs_exist_ok=True)
    code = (f"import importlib, json; mods = {{m: importlib.import_module(m) for m in {NEEDED!r}}}; "
            "print(json.dumps({m: getattr(v, '__file__', '') for m, v in mods.items()}))")
    proc = subprocess.run([sys.executable, "-c", code], env=child_env(target), cwd=target.parent,
                          capture_output=True, text=True)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        sys.exit(f"error: after installing {wheels_dir}: {last}; run `make gpu-wheels` here and carry .whl")
    where = json.loads(proc.stdout)
    return {"wheels": [w.name for w in wheels], "skipped_other_python": skipped, "imported_from": where,
            "seconds": round(time.perf_counter() - t0, 1)}


def child_env(target: Path) -> dict[str, str]:
    old = os.environ.get("PYTHONPATH")
    return {**os.environ, "PYTHONPATH": str(target) + (os.pathsep + old if old else ""),
            "PYTHONUNBUFFERED": "1"}


# --------------------------------------------------------------------------------------- 2. tests
def run_tests(target: Path, work: Path) -> dict[str, Any]:
    """``pytest -m cuda`` from outside the repository (so the installed copy is what is imported)."""
    junit = work / "cuda-tests.xml"
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider",
                               "-c", str(REPO / "pyproject.toml"), "--rootdir", str(REPO),
                               f"--junitxml={junit}", "-s", str(REPO / "tests")],
                              env=child_env(target), cwd=work, capture_output=True, text=True, timeout=300)
    except subprocess.TimeoutExpired as exc:
        log = exc.stdout.decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout or ""
        return {"returncode": 124, "seconds": 300, "summary": "pytest -m cuda stopped after 300 s",
                "passed": False, "log_tail": log[-4000:]}
    out = {"returncode": proc.returncode, "seconds": round(time.perf_counter() - t0, 1),
           "summary": (proc.stdout.strip().splitlines() or [""])[-1],
           "flag_differences": [ln for ln in proc.stdout.splitlines() if "robust flags differ" in ln]}
    if junit.is_file():
        suite = ET.parse(junit).getroot()
        suite = suite if suite.tag == "testsuite" else suite[0]
        out.update({k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")})
    out["passed"] = proc.returncode in (0, 5) and out.get("failures", 1) == 0 and out.get("errors", 1) == 0
    if not out["passed"]:
        out["log_tail"] = (proc.stdout + proc.stderr)[-4000:]
    return out


# ------------------------------------------------------------------------------------- 3. timings
def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Runs in the child process, with the installed copy first on the path."""
    import torch

    from robustbench_lta.training.checkpoint import load_model

    sizes = QUICK if args.quick else FULL
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    work = Path(args.work)
    res: dict[str, Any] = {"device": _device_info(torch), "sizes": sizes, "train": [], "sweep": {}}

    def over() -> bool:  # also saves what is measured so far: a killed run still reports it
        Path(args.measure).write_text(json.dumps(res, default=str))
        return time.time() > args.deadline

    data = _data(args, work, sizes)
    res["data"] = data["what"]

    for name in (ATT, BASE):
        if over():
            res["train"].append({"model": name, "skipped": "time budget"})
            continue
        res["train"].append(_train_epochs(name, data, sizes, cuda, work))
    ckpt = work / f"train_{ATT}" / "last.safetensors"
    if not ckpt.is_file():
        return res
    model = load_model(ckpt).to(dev).eval()
    model = model.to(memory_format=torch.channels_last)  # as the engine runs it (fair to torchattacks)
    for p in model.parameters():
        p.requires_grad_(False)
    test = data["test"]
    x, y = test.tensors(torch.arange(min(sizes["n_sweep"], len(test))))
    for attack, eps, n in (("fgsm", FGSM_EPS, sizes["n_sweep"]), ("pgd-linf", PGD_EPS, sizes["n_sweep"]),
                           ("autoattack", [AA_EPS], sizes["n_aa"])):
        if over():
            res["sweep"][attack] = {"skipped": "time budget"}
            continue
        res["sweep"][attack] = _compare_sweep(model, ckpt, attack, eps, x[:n], y[:n], sizes, dev, work)
    over()
    return res


def _device_info(torch: Any) -> dict[str, Any]:
    info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    multiprocessors=props.multi_processor_count, bf16=torch.cuda.is_bf16_supported())
    else:
        info.update(name=f"cpu ({platform.machine()}, {torch.get_num_threads()} threads)")
    import torchattacks

    info["torchattacks"] = torchattacks.__version__
    return info


def synthetic_npz(path: Path, n_train: int, n_test: int) -> Path:
    """Random 32x32 images with a class-dependent tint (learnable a little), as an ``npz:`` dataset."""
    import numpy as np

    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("test", n_test)):
        arrays[f"y_{split}"] = rng.integers(0, 10, n)
        base = rng.integers(0, 256, (n, 32, 32, 3))
        tint = arrays[f"y_{split}"][:, None, None, None] * 20
        arrays[f"x_{split}"] = ((base + tint) % 256).astype(np.uint8)
    np.savez(path, **arrays)
    return path


def unpack_cifar10(src: Path, dest: Path) -> Path:
    """The carried CIFAR-10 archives (``make gpu-wheels``) unpacked into ``dest``: an imagefolder root."""
    import tarfile

    for archive in ("train.tar.gz", "test.tar.gz"):
        if not (src / archive).is_file():
            sys.exit(f"error: {src / archive} missing: run `make gpu-wheels` here and carry .gpu_data")
    for archive in ("train.tar.gz", "test.tar.gz"):
        with tarfile.open(src / archive) as tar:
            tar.extractall(dest, filter="data")
    return dest


def _data(args: argparse.Namespace, work: Path, sizes: dict[str, Any]) -> dict[str, Any]:
    """CIFAR-10 from the carried archives (full run), or synthetic 32x32 images (``--quick``)."""
    from robustbench_lta.data.registry import load_dataset

    if args.quick:
        path = synthetic_npz(work / "synthetic.npz", sizes["n_train"], sizes["n_test"])
        name, what = f"npz:{path}", f"synthetic 32x32, {sizes['n_train']} train / {sizes['n_test']} test"
    else:
        root = unpack_cifar10(Path(args.data), work / "cifar10")
        name, what = f"imagefolder:{root}", "CIFAR-10 (JPEG copy), 50,000 train / 10,000 test"
    t0 = time.perf_counter()
    train_ds, test_ds = (load_dataset(name, split=s) for s in ("train", "test"))
    return {"name": name, "what": what, "test": test_ds, "decode_s": time.perf_counter() - t0,
            "n_train": len(train_ds)}


def _train_epochs(name: str, data: dict[str, Any], sizes: dict[str, Any], cuda: bool, work: Path) -> dict:
    from robustbench_lta.config import TrainConfig, validate
    from robustbench_lta.training.trainer import train

    cfg = validate(TrainConfig, {
        "model": {"name": name, "width": sizes["width"]}, "data": {"name": data["name"]},
        "epochs": sizes["epochs"], "batch_size": sizes["batch"], "lr": 0.05, "warmup_epochs": 1,
        "device": "auto", "amp": "bf16" if cuda else "off", "channels_last": True,
        "out": str(work / f"train_{name}"),
    }, "gpu_check training")
    t0 = time.perf_counter()
    result = train(cfg, progress=False)
    last = result.history[-1]
    return {"model": name, "width": sizes["width"], "precision": cfg.amp if cuda else "float32",
            "epochs": [{"epoch": r["epoch"], "train_s": round(data["n_train"] / r["images_per_s"], 2),
                        "images_per_s": r["images_per_s"], "with_eval_s": r["seconds"],
                        "val_acc": r["val_acc"]} for r in result.history],
            "epoch_s": round(data["n_train"] / last["images_per_s"], 2),
            "images_per_s": last["images_per_s"], "val_acc": result.best_acc,
            "test_acc": round(result.test_acc, 4),
            "wall_s": round(time.perf_counter() - t0, 1)}


def _compare_sweep(model: Any, ckpt: Path, attack: str, eps: list[float], x: Any, y: Any,
                   sizes: dict[str, Any], dev: Any, work: Path) -> dict[str, Any]:
    """The engine (run_sweep, default settings) vs torchattacks once per budget; worst-case accuracy."""
    import numpy as np
    import torch
    import torchattacks

    from robustbench_lta import run_sweep

    bs = sizes["sweep_batch"]

    def engine(n: int, tag: str) -> Any:
        return run_sweep({"att": str(ckpt)}, [attack], eps, data=(x[:n], y[:n]), n=n, batch_size=bs,
                         seed=0, out=work / f"sweep_{attack}_{tag}", progress=False)

    def sync() -> None:
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def ta(n: int) -> np.ndarray:
        torch.manual_seed(0)
        xs, ys = x[:n].to(dev), y[:n].to(dev)
        with torch.no_grad():
            robust = model(xs).argmax(1) == ys
        for e in eps:
            if attack == "fgsm":
                atk = torchattacks.FGSM(model, eps=e)
            elif attack == "pgd-linf":
                atk = torchattacks.PGD(model, eps=e, alpha=2.5 * e / PGD_STEPS, steps=PGD_STEPS,
                                       random_start=True)  # the engine's pgd-linf defaults
            else:
                atk = torchattacks.AutoAttack(model, norm="Linf", eps=e, version="standard", n_classes=10,
                                              seed=0)
            for s in range(0, n, bs):
                adv = atk(xs[s:s + bs], ys[s:s + bs])
                with torch.no_grad():
                    robust[s:s + bs] &= model(adv).argmax(1) == ys[s:s + bs]
            yield float(robust.float().mean())

    n = len(x)
    warm = min(n, 32)
    engine(warm, "warmup"), list(ta(warm))  # cuDNN autotuning, lazy inits
    sync()
    t0 = time.perf_counter()
    summary = engine(n, "timed")
    sync()
    t_engine = time.perf_counter() - t0
    t0 = time.perf_counter()
    ta_acc = list(ta(n))
    sync()
    t_ta = time.perf_counter() - t0
    eng_acc = [float(summary.loc[np.isclose(summary["eps"], e), "robust_acc"].iloc[0]) for e in eps]
    return {"n": n, "eps_255": [round(e * 255, 3) for e in eps], "engine_s": round(t_engine, 3),
            "torchattacks_s": round(t_ta, 3), "speedup": round(t_ta / t_engine, 2),
            "engine_robust_acc": eng_acc, "torchattacks_robust_acc": ta_acc,
            "max_acc_diff": round(max(abs(a - b) for a, b in zip(eng_acc, ta_acc, strict=True)), 4),
            "engine_status": sorted(set(summary["status"]))}


# -------------------------------------------------------------------------------------- 4. report
def markdown(res: dict[str, Any]) -> str:
    d = res.get("device", {})
    lines = [f"Device: {d.get('name', '?')}; torch {d.get('torch')}, CUDA {d.get('cuda')}, cuDNN "
             f"{d.get('cudnn')}, Python {d.get('python')}, torchattacks {d.get('torchattacks')}"
             f"{' (QUICK: tiny sizes, synthetic data)' if res.get('quick') else ''}.",
             f"Data: {res.get('data', '-')}. Total {res.get('seconds_total', '?')} s.", "",
             "| figure | value | target |", "|---|---|---|"]
    t = res.get("tests", {})
    lines.append(f"| `pytest -m cuda` | {t.get('tests', '?')} tests, {t.get('failures', '?')} failed, "
                 f"{t.get('skipped', '?')} skipped ({t.get('seconds', '?')} s) | all pass |")
    for row in res.get("train", []):
        if "skipped" in row:
            lines.append(f"| train epoch {row['model']} | skipped ({row['skipped']}) | |")
            continue
        target = f"<= {TARGET_EPOCH_S:g} s" if row["model"] == ATT and not res.get("quick") else ""
        lines.append(f"| train epoch {row['model']} (width {row['width']:g}, {row['precision']}) | "
                     f"{row['epoch_s']} s, {row['images_per_s']:.0f} img/s, test acc {row['test_acc']} | "
                     f"{target} |")
    for attack, r in res.get("sweep", {}).items():
        if "skipped" in r:
            lines.append(f"| {attack} | skipped ({r['skipped']}) | |")
            continue
        target = f">= {TARGET_FGSM:g}x" if attack == "fgsm" and not res.get("quick") else ""
        lines.append(f"| {attack}, {len(r['eps_255'])} eps, n={r['n']}: engine vs torchattacks | "
                     f"{r['engine_s']} s vs {r['torchattacks_s']} s = **{r['speedup']}x**; robust acc "
                     f"{_accs(r['engine_robust_acc'])} vs {_accs(r['torchattacks_robust_acc'])} | {target} |")
    return "\n".join(lines) + "\n"


def _accs(values: list[float]) -> str:
    return "/".join(f"{v:.3f}" for v in values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", default=bool(os.environ.get("QUICK")),
                    help="tiny sizes and synthetic data (the CPU rehearsal; also QUICK=1)")
    ap.add_argument("--out", default=os.environ.get("OUT") or str(REPO / "reports" / "gpu_check"))
    ap.add_argument("--wheels", default=str(REPO / ".whl"), help="carried wheels (make gpu-wheels)")
    ap.add_argument("--data", default=str(REPO / ".gpu_data" / "cifar10-jpeg"),
                    help="folder with CIFAR-10 train.tar.gz and test.tar.gz (make gpu-wheels copies them)")
    ap.add_argument("--budget", type=float, default=420,
                    help="seconds: steps that would start later are skipped; one running 120 s past it "
                    "is stopped (the device tool's limit per command is 600 s)")
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # child mode: write timings to this JSON
    ap.add_argument("--work", help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.measure:
        measure(args)
        return 0

    start = time.time()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res: dict[str, Any] = {"quick": args.quick, "started_unix": round(start)}
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work, target = Path(tmp), Path(tmp) / "site"
        res["install"] = install(Path(args.wheels), target)
        print(f"installed {len(res['install']['wheels'])} wheels + robustbench_lta into {target} "
              f"({res['install']['seconds']} s)", flush=True)
        if not args.skip_tests:
            res["tests"] = run_tests(target, work)
            print(f"pytest -m cuda: {res['tests']['summary']}", flush=True)
        child = work / "measure.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--measure", str(child), "--work", str(work),
               "--deadline", str(start + args.budget), "--data", args.data]
        cmd += ["--quick"] if args.quick else []
        try:
            rc = subprocess.run(cmd, env=child_env(target), cwd=work,
                                timeout=max(60.0, start + args.budget + 120 - time.time())).returncode
        except subprocess.TimeoutExpired:
            rc, res["measure_stopped"] = 124, "timings stopped 120 s past --budget; figures so far kept"
        if child.is_file():
            res.update(json.loads(child.read_text()))
        res["measure_returncode"] = rc
    res["seconds_total"] = round(time.time() - start, 1)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2, default=str) + "\n")
    (out / "gpu_check.md").write_text(markdown(res))
    print(markdown(res))
    print(f"wrote {out / 'gpu_check.json'} and {out / 'gpu_check.md'}")
    ok = rc == 0 and res.get("tests", {"passed": True})["passed"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
