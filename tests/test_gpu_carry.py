"""The GPU machine has no package registry: whatever the package imports and its image lacks must travel.

Three lists must agree, checked here without a network: the Makefile's ``GPU_WHEELS`` (what
``make gpu-wheels`` downloads), ``NEEDED`` in benchmarks/gpu_check.py (what the check imports from the
carried copy) and what the package itself imports (its own modules and attacks/, read with ``ast``),
mapped to installed distributions. Issue 27: pyautoattack was imported by the built-in ``autoattack``
attack but carried by nobody, so the GPU check would have stopped at its AutoAttack step.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import re
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402
import gpu_rehearse  # noqa: E402

#: extras the GPU check uses besides the plain dependencies (the built-in `autoattack` attack)
GPU_EXTRAS = ("autoattack",)


def _norm(name: str) -> str:
    return gpu_rehearse.norm(name)


def _carried() -> set[str]:
    text = (REPO / "Makefile").read_text()
    block = re.search(r"^GPU_WHEELS\s*:=(.*?)(?:\n\S|\n\n)", text, re.S | re.M)
    assert block, "GPU_WHEELS not found in the Makefile"
    pins = block.group(1).replace("\\", " ").split()
    return {_norm(p.split("==")[0]) for p in pins}


def _declared() -> list[Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in GPU_EXTRAS:
        reqs += [Requirement(r) for r in project["optional-dependencies"][extra]]
    return reqs


def _closure(reqs: list[Requirement]) -> set[str]:
    """The distributions ``reqs`` pull in (installed metadata), not expanded past an image package:
    the image brings those with their own requirements."""
    env = {"extra": ""}
    seen: set[str] = set()
    todo = [r for r in reqs if r.marker is None or r.marker.evaluate(env)]
    while todo:
        req = todo.pop()
        name = _norm(req.name)
        if name in seen:
            continue
        seen.add(name)
        if name in gpu_rehearse.IMAGE_PACKAGES:
            continue
        for line in md.requires(req.name) or []:
            sub = Requirement(line)
            if sub.marker is None or sub.marker.evaluate(env):
                todo.append(sub)
    return seen


def test_carried_wheels_cover_declared_requirements() -> None:
    missing = sorted(_closure(_declared()) - gpu_rehearse.IMAGE_PACKAGES - _carried()
                     - {"robustbench-lta"})
    assert not missing, f"not on the GPU image and not in the Makefile's GPU_WHEELS: {missing}"


def _imported_top_modules() -> set[str]:
    mods: set[str] = set()
    for path in [*(REPO / "robustbench_lta").rglob("*.py"), *(REPO / "attacks").glob("*.py")]:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                mods.update(a.name.split(".")[0] for a in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                mods.add(node.module.split(".")[0])
    return mods


def test_every_import_of_the_default_extras_travels() -> None:
    """Each module the package imports that belongs to a dependency or the GPU extras is on the image
    or carried (optional sources such as robustbench, timm or ray are the zoo/ray extras: not carried)."""
    declared = {_norm(r.name) for r in _declared()}
    owners = md.packages_distributions()
    unmet = []
    for mod in sorted(_imported_top_modules()):
        for dist in {_norm(d) for d in owners.get(mod, [])}:
            if dist in declared and dist not in gpu_rehearse.IMAGE_PACKAGES | _carried():
                unmet.append(f"{mod} ({dist})")
    assert not unmet, f"imported by the package, neither on the GPU image nor carried: {unmet}"
    assert "pyautoattack" in _imported_top_modules()


def test_the_check_imports_what_is_carried() -> None:
    """gpu_check's install step imports every carried package the GPU image lacks (and the rehearsal
    shows each missing before the install)."""
    owners = md.packages_distributions()
    for mod in gpu_check.NEEDED:
        if mod == "robustbench_lta":
            continue
        dists = {_norm(d) for d in owners.get(mod, [mod])}
        assert dists & _carried(), f"gpu_check imports {mod}, which no GPU_WHEELS entry provides"
    assert set(gpu_rehearse.MISSING) <= set(gpu_check.NEEDED)
    # every carried package the project asks for by name is imported by the check's install step
    direct = {_norm(r.name) for r in _declared()} & _carried()
    needed_dists = {_norm(d) for m in gpu_check.NEEDED for d in owners.get(m, [])}
    assert direct <= needed_dists, f"carried but not checked by gpu_check's install: {direct - needed_dists}"
