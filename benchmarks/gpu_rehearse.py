"""Rehearse the GPU machine's install here: a fresh venv that holds only the GPU image's packages.

The device image (docs/gpu.md) lacks torchattacks, foolbox, pydantic and pypdf. This script links,
from an existing site-packages folder (``--site``, e.g. main's venv), only the distributions whose
names are on the image's package list into a folder, makes a fresh venv (no system site packages)
whose one ``.pth`` line points there, shows that the four packages do NOT import in it, then runs
``benchmarks/gpu_check.py --quick`` with that venv's Python: it installs them from ``.whl/`` and the
rest of the check must pass::

    python benchmarks/gpu_rehearse.py --site /path/to/.venv/lib/python3.11/site-packages

The venv's Python is this machine's (3.11 here), so the check picks the cp311 build of the one
compiled wheel (pydantic-core; ``make gpu-wheels`` fetches both); the GPU machine picks cp312.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: The GPU image's Python packages, as KINDS.md of the device tool lists them (2026-11-17).
IMAGE_PACKAGES = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13
nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx
optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing
pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp""".split())
MISSING = ("torchattacks", "foolbox", "pydantic", "pypdf", "pyautoattack")
#: Not on the image, linked anyway: requests here is 2.25 (torchattacks pins ~=2.25), which needs
#: chardet; the image's newer requests uses charset-normalizer (on its list) instead.
LOCAL_STAND_INS = {"chardet"}


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def link_image_packages(site: Path, dest: Path) -> list[str]:
    """Symlink the top-level entries of every image distribution found in ``site`` into ``dest``."""
    linked = []
    for dist in md.distributions(path=[str(site)]):
        if norm(dist.metadata["Name"]) not in IMAGE_PACKAGES | LOCAL_STAND_INS:
            continue
        linked.append(dist.metadata["Name"])
        tops = {Path(f).parts[0] for f in dist.files or [] if not str(f).startswith("..")}
        for top in tops:
            src = site / top
            if src.exists() and not (dest / top).exists() and not top.endswith(".pth"):
                (dest / top).symlink_to(src)
    return sorted(linked)


def check_closure(wheels: Path, python: str = "3.12") -> list[str]:
    """Every requirement of every carried wheel (markers read for ``python`` on Linux, extras left
    out) is another carried wheel or an image package; returns the unmet ones."""
    import zipfile

    from packaging.requirements import Requirement
    from packaging.utils import parse_wheel_filename

    carried = {norm(parse_wheel_filename(w.name)[0]) for w in wheels.glob("*.whl")}
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "extra": ""}
    unmet = []
    for whl in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(whl) as zf:
            meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
            lines = zf.read(meta).decode().splitlines()
        for line in lines:
            if not line.startswith("Requires-Dist:"):
                continue
            req = Requirement(line.split(":", 1)[1].strip())
            if req.marker is not None and not req.marker.evaluate(env):
                continue
            if norm(req.name) not in carried | IMAGE_PACKAGES:
                unmet.append(f"{whl.name} needs {req}")
    return unmet


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--site", required=True, help="a site-packages folder holding torch etc.")
    ap.add_argument("--out", default=str(REPO / "reports" / "gpu_check_rehearsal"))
    args = ap.parse_args()
    unmet = check_closure(REPO / ".whl")
    print(f"carried wheels' requirements for Python 3.12: {'all met' if not unmet else unmet}")
    if unmet:
        return 1
    with tempfile.TemporaryDirectory(prefix="gpu-rehearse-") as tmp:
        pkgs, venv = Path(tmp) / "image-site", Path(tmp) / "venv"
        pkgs.mkdir()
        linked = link_image_packages(Path(args.site), pkgs)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        py = venv / "bin" / "python"
        purelib = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                 capture_output=True, text=True, check=True).stdout.strip()
        (Path(purelib) / "image_packages.pth").write_text(str(pkgs) + "\n")
        print(f"venv {venv}: {len(linked)} image packages linked from {args.site}")
        for mod in (*MISSING, "robustbench_lta", "torch"):
            r = subprocess.run([str(py), "-c", f"import {mod}"], capture_output=True, cwd=tmp)
            print(f"  import {mod}: {'ok' if r.returncode == 0 else 'missing'} (before the carried install)")
            if mod in MISSING and r.returncode == 0:
                sys.exit(f"error: {mod} imports before the install: the rehearsal would prove nothing")
        proc = subprocess.run([str(py), str(REPO / "benchmarks" / "gpu_check.py"), "--quick",
                               "--out", args.out], cwd=tmp)
        return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
