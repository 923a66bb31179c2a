"""The zoo table of docs/models.md: RobustBench entries that load from a planted file, per dataset and
threat model, and the ones that do not with the reason. No weights are read or downloaded: each
architecture is built on the meta device and its keys are laid out as the zoo's files lay them out
(plain, ``module.``, ``{'state_dict': ...}``, a ``model.`` wrapper, without normalisation buffers);
RobustBench's own ``load_model`` and this package's loader resolve each
(robustbench_lta/sources/zoo_audit.py).

    .venv/bin/python benchmarks/zoo_table.py            # the markdown table (a few minutes on 2 cores)
    .venv/bin/python benchmarks/zoo_table.py --layouts  # and every entry's result per layout
    .venv/bin/python benchmarks/zoo_table.py --preprocess DIR  # timm/torchvision logits on DIR's images:
        # the card's preprocessing vs the library's own transform, and --resize-inputs vs it
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter, defaultdict

from robustbench_lta.sources.zoo_audit import EntryCheck, audit


def table(checks: list[EntryCheck]) -> str:
    rows: dict[tuple[str, str], list[EntryCheck]] = defaultdict(list)
    for c in checks:
        rows[(c.dataset, c.threat)].append(c)
    lines = ["| dataset | threat model | loaded / entries | not loaded (reason) |", "|---|---|---|---|"]
    total = Counter[str]()
    for (dataset, threat), items in rows.items():
        ok = sum(c.loaded for c in items)
        total["ok"] += ok
        total["all"] += len(items)
        reasons = Counter(c.reason if c.reason.startswith(("corruptions", "torchvision")) else None
                          for c in items if not c.loaded)
        grouped = [f"{n} × {r}" for r, n in reasons.items() if r]
        named = [f"{c.name} ({c.reason})" for c in items
                 if not c.loaded and not c.reason.startswith(("corruptions", "torchvision"))]
        lines.append(f"| {dataset} | {threat} | {ok} / {len(items)} | {'; '.join(grouped + named) or '—'} |")
    lp = [c for c in checks if c.threat != "corruptions"]
    lines.append(f"| **all L-inf/L2** | | **{sum(c.loaded for c in lp)} / {len(lp)}** | |")
    lines.append(f"| **all** | | **{total['ok']} / {total['all']}** | |")
    return "\n".join(lines)


PREPROCESS_MODELS = ("timm:resnet50", "timm:resnet18", "timm:vit_tiny_patch16_224", "torchvision:resnet18",
                     "torchvision:mobilenet_v3_small")


def preprocess_table(folder: str) -> str:
    """Largest logit difference vs the library's own transform (untrained, seeded models: no download)."""
    import warnings
    from pathlib import Path

    from robustbench_lta.sources import resolve_model_source
    from robustbench_lta.sources.check import preprocess_flags
    from robustbench_lta.sources.pipeline_check import max_logit_difference, resized_inputs_difference

    lines = ["| model | card's preprocessing (flags) | images | max abs logit diff | with --resize-inputs |",
             "|---|---|---|---|---|"]
    for source in PREPROCESS_MODELS:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            r = resolve_model_source(source)
            worst, n, _ = max_logit_difference(r, Path(folder))
            alt = resized_inputs_difference(source, Path(folder))
        lines.append(f"| {source} | `{preprocess_flags(r.card)}` | {n} | {worst:.3g} | {alt:.3g} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--layouts", action="store_true", help="print each entry's result per layout too")
    parser.add_argument("--preprocess", metavar="DIR",
                        help="only the preprocessing comparison on DIR's images")
    args = parser.parse_args(argv)
    if args.preprocess:
        print(preprocess_table(args.preprocess))
        return 0
    start = time.time()
    checks = audit()
    print(table(checks))
    cpu = [c.name for c in checks if c.device == "cpu"]
    print(f"\n{len(checks)} entries in {time.time() - start:.0f} s; built on the CPU (meta fails): "
          f"{', '.join(cpu) or 'none'}")
    lay = Counter(v if v in ("ok", "both refuse", "only ours loads") else "refused/differs"
                  for c in checks for v in c.layouts.values())
    print("layouts checked:", ", ".join(f"{n} {k}" for k, n in lay.items()))
    if args.layouts:
        for c in checks:
            for layout, result in c.layouts.items():
                print(f"{c.dataset}/{c.threat}/{c.name}\t{layout}\t{result}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
