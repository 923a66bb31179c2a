"""Checkpoints: weights as safetensors plus a JSON model card. Pickle files are never loaded.

A checkpoint is two files side by side::

    NAME.safetensors   the model's state_dict (contiguous CPU tensors, no code, no pickle)
    NAME.json          the model card: how to rebuild the model and where the weights came from

Card layout (``format_version`` 1)::

    {
      "format_version": 1,
      "created": "2025-01-01T12:00:00+00:00",
      "model": {"name": "vgg16_att3_concat_pc", "kwargs": {...create_model kwargs...},
                "num_classes": 10, "width": 0.25, "has_attention": true,
                "origin": {"source": "builtin" | "entry-point:<dist>" | "folder:<dir>" | "file:<path>"
                           | "python", "module": "robustbench_lta.models.vgg", "file": "/.../vgg.py"}},
      "dataset": {"name": "cluttered-digits", "classes": [...], "input_size": [32, 32], ...},
      "normalization": {"mean": [...], "std": [...]},
      "training": {...TrainConfig as a dict...}, "seed": 0, "epochs": 30,
      "clean_test_accuracy": 0.93,
      "threads": 2, "versions": {"torch": "...", ...}, "git_commit": "abc123" | null,
      "weights": {"file": "NAME.safetensors", "bytes": 123}, "sha256": "<sha256 of NAME.safetensors>"
    }

``load_model`` rebuilds the model with ``create_model(card["model"]["name"], **kwargs)``, checks the
weights' sha256 against the card (a changed or corrupted file is refused), and loads them strictly.
When the architecture is not registered (a user's model whose plugin was not loaded), the error
names what to pass, from ``model.origin``: ``--plugins FILE``, or the package to install.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import re
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..discovery import plugin_hint
from ..errors import UserError
from ..models.registry import create_model, list_models
from ..utils import apply_umask, git_commit, package_versions, resolve_device, sha256_file

FORMAT_VERSION = 1
WEIGHTS_SUFFIX = ".safetensors"
CARD_SUFFIX = ".json"
#: Suffixes of files that are (or usually are) Python pickles: refused, never opened.
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".joblib")
#: Names tried, in order, when load_model/read_card is given a run folder.
RUN_FOLDER_NAMES = ("best", "last")


# ------------------------------------------------------------------------------------------ helpers
@contextlib.contextmanager
def defer_keyboard_interrupt() -> Iterator[None]:
    """Hold back Ctrl-C while a checkpoint is being written, then raise it once the files are whole.

    Only possible in the main thread (elsewhere this is a no-op, and the atomic renames still keep
    every file either old or new).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[Any] = []
    previous = signal.getsignal(signal.SIGINT)

    def _hold(signum: int, frame: Any) -> None:
        caught.append((signum, frame))

    try:
        signal.signal(signal.SIGINT, _hold)
    except (ValueError, OSError):  # pragma: no cover - e.g. embedded interpreters
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _jsonable(value: Any, where: str) -> Any:
    """Tuples -> lists, tensors/NumPy scalars -> Python numbers; anything else non-JSON -> UserError."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v, where) for v in value]
    if isinstance(value, torch.Tensor):
        return _jsonable(value.detach().cpu().tolist(), where)
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, str | bytes):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    raise UserError(
        f"cannot record {where}={value!r} in the model card (not JSON): pass plain numbers, strings or lists"
    )


def state_dict_for_saving(module_or_state: nn.Module | dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU tensors, each with its own storage (safetensors refuses shared ones)."""
    state = module_or_state.state_dict() if isinstance(module_or_state, nn.Module) else module_or_state
    out: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for key, tensor in state.items():
        if not isinstance(tensor, torch.Tensor):
            raise TypeError(f"state entry {key!r} is not a tensor ({type(tensor).__name__})")
        t = tensor.detach().to("cpu").contiguous()
        if t.numel():
            storage = t.untyped_storage()
            if storage.data_ptr() in seen or storage.nbytes() != t.numel() * t.element_size():
                t = t.clone()  # shared with another entry, or a view into a bigger storage
            seen.add(t.untyped_storage().data_ptr())
        out[key] = t
    return out


def _as_os_error(exc: Exception, path: Path) -> OSError | None:
    """The OSError inside a ``SafetensorError`` ("... (os error 28)"), named after ``path``, or None.

    safetensors (Rust) reports a full disk as its own exception type with the errno only in the
    text; as an OSError the CLI turns it into one ``error:`` line (exit 2) naming the file.
    """
    found = re.search(r"os error (\d+)|code: (\d+)", str(exc))
    if found is None:
        return None
    code = int(found.group(1) or found.group(2))
    return OSError(code, os.strerror(code), str(path))


def _write_tensors_tmp(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> Path:
    """``safetensors.torch.save_file`` to a temporary file beside ``path``, fsynced; returns its path."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            save_file(tensors, tmp, metadata=metadata)
        except SafetensorError as exc:
            error = _as_os_error(exc, path)
            if error is None:
                raise
            raise error from None
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        apply_umask(tmp)  # mkstemp makes 0600: checkpoints are shared like any file the user writes
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


def save_tensors_atomic(
    tensors: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> None:
    """``safetensors.torch.save_file`` to a temporary file in the same folder, fsync, rename.

    A full disk raises ``OSError(ENOSPC)`` naming ``path``; the file there before is kept.
    """
    tmp = _write_tensors_tmp(tensors, path, metadata)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_tensors(path: Path, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Read a safetensors file (UserError if it is not one)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(
            f"{path} is not a readable safetensors file ({exc}): re-create the checkpoint"
        ) from None


def _stem(path: str | os.PathLike[str]) -> Path:
    """``runs/x/best``, ``runs/x/best.safetensors`` or ``runs/x/best.json`` -> ``runs/x/best``."""
    p = Path(path)
    return p.with_suffix("") if p.suffix in (WEIGHTS_SUFFIX, CARD_SUFFIX) else p


def _refuse_pickle(path: Path) -> None:
    raise UserError(
        f"refusing to load {path}: pickle checkpoints (.pt/.pth/.pkl/.ckpt) can run arbitrary code when "
        "opened, so only .safetensors + .json cards are accepted; to convert a file you trust run "
        f"`m = create_model(NAME, ...); m.load_state_dict(torch.load('{path}', weights_only=True)); "
        "save_checkpoint(m, 'NAME.safetensors', {})` (save_checkpoint uses safetensors' save_file)"
    )


def resolve_checkpoint(path: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Map a user path (``.safetensors``, ``.json``, or a run folder) to ``(weights, card)`` paths.

    Raises UserError for missing files and for anything that is not safetensors + JSON (pickles).
    """
    p = Path(path).expanduser()
    if p.is_dir():
        for name in RUN_FOLDER_NAMES:
            if (p / f"{name}{CARD_SUFFIX}").is_file() or (p / f"{name}{WEIGHTS_SUFFIX}").is_file():
                p = p / f"{name}{WEIGHTS_SUFFIX}"
                break
        else:
            raise UserError(
                f"no checkpoint in folder {p}: expected best.safetensors + best.json (or last.*); "
                "train one with `robustbench-lta train`"
            )
    elif p.suffix.lower() in PICKLE_SUFFIXES:
        if not p.exists():
            raise UserError(f"checkpoint file not found: {p}")
        _refuse_pickle(p)
    elif p.suffix not in (WEIGHTS_SUFFIX, CARD_SUFFIX):
        if p.exists():
            _refuse_pickle(p)
        raise UserError(f"checkpoint not found: {p} (give NAME.safetensors, NAME.json or a run folder)")
    stem = _stem(p)
    weights, card = stem.with_suffix(WEIGHTS_SUFFIX), stem.with_suffix(CARD_SUFFIX)
    if not card.is_file():
        if weights.is_file():
            raise UserError(
                f"model card not found: {card} (the weights {weights.name} need it to rebuild the model)"
            )
        raise UserError(f"checkpoint not found: {p}")
    if not weights.is_file():
        raise UserError(f"weights file not found: {weights} (named by the card {card.name})")
    return weights, card


# --------------------------------------------------------------------------------------------- card
def read_card(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The model card of a checkpoint (``.safetensors``, ``.json`` or run folder), as a dict."""
    _, card_path = resolve_checkpoint(path)
    try:
        card = json.loads(card_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(
            f"model card {card_path} is not valid JSON ({exc}): re-create the checkpoint"
        ) from None
    if not isinstance(card, dict) or not isinstance(card.get("model"), dict) or "name" not in card["model"]:
        raise UserError(f"model card {card_path} has no model.name: it was not written by save_checkpoint")
    version = card.get("format_version", 0)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise UserError(
            f"model card {card_path} has format_version {version!r}, newer than this version reads "
            f"({FORMAT_VERSION}): upgrade robustbench-lta"
        )
    return card


def _card_gmacs(name: str, kwargs: dict[str, Any], card: dict[str, Any]) -> tuple[float | None, list[int]]:
    """GMACs per image at the card's input size (registry model rebuilt on the meta device, cached);
    None when it cannot be measured: the card is still written."""
    from ..models.compute import DEFAULT_INPUT_SIZE, registry_gmacs

    size = [int(v) for v in (card.get("input_size") or DEFAULT_INPUT_SIZE)]
    extra = {k: v for k, v in kwargs.items() if k not in ("num_classes", "width")}
    try:
        gmacs = registry_gmacs(name, float(kwargs.get("width", 1.0)), size,
                               int(kwargs.get("num_classes", 10)), extra)
    except Exception:  # a user builder that cannot run on the meta device
        return None, size
    return round(gmacs, 6), size


def build_card(model: nn.Module, card: dict[str, Any] | None = None) -> dict[str, Any]:
    """The card for ``model``: what the model itself knows, merged under the caller's ``card``.

    The caller supplies training facts (dataset, training config, seed, epochs, clean accuracy);
    this adds the registry name/kwargs, num_classes, normalisation, versions and git commit.
    """
    name = getattr(model, "registry_name", None)
    if not name:
        raise UserError(
            "save_checkpoint needs a model built by create_model (it records model.registry_name and "
            "model.registry_kwargs to rebuild it): register your architecture with @register_model"
        )
    kwargs = _jsonable(dict(getattr(model, "registry_kwargs", None) or {}), "model.kwargs")
    out: dict[str, Any] = _jsonable(dict(card or {}), "card")
    model_section = dict(out.get("model") or {})
    model_section.setdefault("name", str(name))
    model_section.setdefault("kwargs", kwargs)
    num_classes = kwargs.get("num_classes", getattr(model, "num_classes", None))
    if num_classes is not None:
        model_section.setdefault("num_classes", int(num_classes))
    if "width" in kwargs:
        model_section.setdefault("width", kwargs["width"])
    if hasattr(model, "has_attention"):
        model_section.setdefault("has_attention", bool(model.has_attention))
    origin = getattr(model, "registry_origin", None)
    if origin:
        model_section.setdefault("origin", _jsonable(dict(origin), "model.origin"))
    if "gmacs" not in model_section:
        model_section["gmacs"], model_section["gmacs_input_size"] = _card_gmacs(str(name), kwargs, out)
    out["model"] = model_section
    family = (out.get("training") or {}).get("family") if isinstance(out.get("training"), dict) else None
    if family:  # a seed run of a model family (training/family.py)
        out.setdefault("family", {"name": str(family), "seed": out.get("seed")})
    norm = dict(out.get("normalization") or {})
    for key in ("mean", "std"):
        buf = getattr(model, key, None)
        if isinstance(buf, torch.Tensor):
            norm.setdefault(key, [float(v) for v in buf.detach().flatten().cpu()])
    if norm:
        out["normalization"] = norm
    # threads change float reduction order, so the last digits of accuracy can depend on them
    out.setdefault("threads", torch.get_num_threads())
    out.setdefault("versions", package_versions())
    out.setdefault("git_commit", git_commit())
    out["format_version"] = FORMAT_VERSION
    out["created"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    return out


def save_checkpoint(
    model: nn.Module, path: str | os.PathLike[str], card: dict[str, Any] | None = None
) -> Path:
    """Write ``NAME.safetensors`` (weights) then ``NAME.json`` (card with the weights' sha256).

    ``path`` may be ``NAME``, ``NAME.safetensors`` or ``NAME.json``. Both files are written
    atomically (temporary file + rename) with Ctrl-C held back until both are complete. Returns the
    path of the weights file.
    """
    stem = _stem(path)
    if Path(path).suffix.lower() in PICKLE_SUFFIXES:
        raise UserError(
            f"save_checkpoint writes safetensors, not pickle: give NAME or NAME.safetensors, not {path}"
        )
    weights, card_path = stem.with_suffix(WEIGHTS_SUFFIX), stem.with_suffix(CARD_SUFFIX)
    full = build_card(model, card)
    tensors = state_dict_for_saving(model)
    with defer_keyboard_interrupt():
        # both files are complete on disk before either replaces the old pair: a full disk while
        # writing either leaves the previous weights and card, which still match each other
        tmp = _write_tensors_tmp(tensors, weights, metadata={"format": "pt", "model": full["model"]["name"]})
        try:
            full["weights"] = {"file": weights.name, "bytes": tmp.stat().st_size}
            full["sha256"] = sha256_file(tmp)
            text = json.dumps(full, indent=2, sort_keys=True, default=str) + "\n"
            card_tmp = _write_text_tmp(card_path, text)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, weights)
        os.replace(card_tmp, card_path)
    return weights


def _write_text_tmp(path: Path, text: str) -> Path:
    """``text`` in a fsynced temporary file beside ``path`` (mode from the umask); returns its path."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(text.encode("utf-8"))
            fh.flush()
            os.fsync(fh.fileno())
        apply_umask(tmp)
    except OSError as exc:
        Path(tmp).unlink(missing_ok=True)
        if exc.filename is None:  # write() reports ENOSPC without a name: the user needs one
            exc.filename = str(path)
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return Path(tmp)


# ------------------------------------------------------------------------------------------ loading
def rebuild_model(card: dict[str, Any]) -> nn.Module:
    """An untrained model with the architecture the card describes (``create_model``)."""
    section = card["model"]
    kwargs = dict(section.get("kwargs") or {})
    if "num_classes" in section:
        kwargs.setdefault("num_classes", section["num_classes"])
    if "width" in section:
        kwargs.setdefault("width", section["width"])
    name = section["name"]
    if name not in list_models():
        origin = section.get("origin") if isinstance(section.get("origin"), dict) else None
        source = f" (registered by {origin.get('source')})" if origin and origin.get("source") else ""
        raise UserError(
            f"this checkpoint needs the architecture {name!r}{source}, which is not registered: "
            f"{plugin_hint(origin)}"
        )
    return create_model(name, **kwargs)


def load_model(path: str | os.PathLike[str], device: str | torch.device = "cpu") -> nn.Module:
    """Rebuild and load a checkpoint: ``NAME.safetensors``, ``NAME.json`` or a run folder (best).

    The weights' sha256 must match the card; weights load with ``strict=True``; the model comes back
    in eval mode on ``device`` with ``model.card`` set. Pickle files are refused, never opened.
    """
    weights, card_path = resolve_checkpoint(path)
    card = read_card(card_path)
    expected = card.get("sha256")
    if not expected:
        raise UserError(
            f"model card {card_path} has no sha256 of its weights: re-create it with save_checkpoint"
        )
    if sha256_file(weights) != expected:
        raise UserError(f"{weights}: weights do not match their card: file changed or corrupted")
    dev = resolve_device(device)
    model = rebuild_model(card)
    state = load_tensors(weights)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise UserError(
            f"{weights} does not fit model {card['model']['name']!r} as this version builds it ({detail})"
        ) from None
    model.to(dev)
    model.eval()
    model.card = card
    return model
