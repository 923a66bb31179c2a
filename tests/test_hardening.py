"""Regression tests for issue 11 ("no result may be silently wrong"), CLI, config and plugin side.

Each test names the issue item it guards. Every one failed on 93a8e44 (a no-op attack reported
`ok`, a vanished attack, exit 0 with failed cells, or an "internal error" exit 1) and passes now.
The CLI runs in-process through ``robustbench_lta.cli.main`` (the real error wrapper) for speed.
"""

from __future__ import annotations

import errno
import os
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from robustbench_lta.errors import UserError

# an untrained registry model on the embedded digits: enough to run a sweep in a second
TINY = ["--model", "smallcnn", "--data", "cluttered-digits", "--n", "8", "--quiet",
        "--set", "sanity_samples=0", "--set", "attention_samples=0"]


def run_cli(*argv: str) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``robustbench-lta ARGV`` run in this process."""
    from robustbench_lta.cli import main

    runner = CliRunner()
    with runner.isolation() as (out, err, _):
        try:
            main(list(argv))
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return code, stdout, stderr


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip() and "warning" not in ln.lower()
             and not ln.startswith("  ")]  # warnings.warn() lines and the source line they quote
    assert len(lines) == 1, stderr
    assert "Traceback" not in stderr
    return lines[0]


# ------------------------------------------------------------------------------ item 6: parameters
@pytest.mark.parametrize("spec, needle", [
    ("pgd-linf:steps=-1", "steps=-1"),
    ("pgd-linf:steps=0", "steps=0"),
    ("pgd-linf:steps=abc", "steps='abc'"),
    ("pgd-linf:steps=2.5", "steps=2.5"),
    ("pgd-linf:steps=5,steps=7", "given twice"),
    ("pgd-linf:alpha=.nan", "alpha"),
    ("square:loss=foo", "loss"),
    ("gaussian-noise:sigma=-1", "sigma"),
    ("ta:PGD:steps=abc", "steps"),
    ("fb:LinfPGD:steps=-1", "steps"),
])
def test_item6_bad_attack_parameters_fail_before_any_work(spec, needle, tmp_path):
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--attack", spec, "--eps", "0,8", "--out", str(out), *TINY)
    line = one_error_line(err)
    assert code == 2 and line.startswith("error:") and needle in line, (code, err)
    assert not out.exists()  # nothing was created: the check ran at plan time


@pytest.mark.parametrize("params", [{"steps": -1}, {"steps": "abc"}, {"steps": 2.5}, {"restarts": 0}])
def test_item6_the_python_api_validates_too(params, digits_test_data):
    from robustbench_lta import run_sweep

    with pytest.raises(UserError, match="pgd-linf"):
        run_sweep({"m": "smallcnn"}, [{"name": "pgd-linf", "params": params}], [0.0, 8 / 255],
                  data=digits_test_data, n=8, sanity_samples=0, attention_samples=0, progress=False)


def test_item6_yaml_duplicate_keys_are_refused(tmp_path):
    cfg = tmp_path / "dup.yaml"
    cfg.write_text("models: [{source: smallcnn}]\ndata: {name: cluttered-digits}\nn: 8\n"
                   "attacks: [{name: pgd-linf, params: {steps: 5, steps: 7}}]\n")
    code, _, err = run_cli("sweep", str(cfg), "--out", str(tmp_path / "res"), "--quiet")
    line = one_error_line(err)
    assert code == 2 and "'steps' is given twice" in line and "line 4" in line


def test_item6_params_are_declared_typed_and_listed():
    from robustbench_lta.plugins import AttackParams, get_attack, list_attacks

    infos = {a.name: a for a in list_attacks()}
    assert infos["pgd-linf"].defaults == {"steps": 10, "alpha": None, "restarts": 1, "random_start": True,
                                          "keep": "best", "loss": "ce"}
    for name in ("fgsm", "pgd-linf", "pgd-l2", "mifgsm", "cw-l2", "deepfool", "square", "apgd-ce",
                 "gaussian-noise", "boundary", "autoattack", "fgm-l2"):
        cls = type(get_attack(name))
        assert isinstance(cls.Params, type) and issubclass(cls.Params, AttackParams), name
    assert get_attack("pgd-linf", steps=3, alpha=0.01).params["steps"] == 3  # good values still pass


def test_item6_a_plugin_can_declare_a_dataclass_params():
    from dataclasses import dataclass

    from robustbench_lta.plugins import Attack

    @dataclass
    class P:
        steps: int = 3

    class Mine(Attack):
        name = "mine-test-dc"
        Params = P

        def perturb(self, model, x, y, eps):
            return x

    assert Mine.defaults == {"steps": 3}
    assert Mine(steps=4).params == {"steps": 4}
    for bad in ({"steps": "x"}, {"steps": 1.5}, {"nope": 1}):
        with pytest.raises(UserError, match="mine-test-dc"):
            Mine(**bad)


# ------------------------------------------------------------------------------ item 7: per-attack eps
@pytest.mark.parametrize("eps", ["[]", "[-1]", "[.nan]", "[.inf]"])
def test_item7_per_attack_eps_is_validated_like_the_global_list(eps, tmp_path):
    cfg = tmp_path / "sweep.yaml"
    cfg.write_text(f"models: [{{source: smallcnn}}]\ndata: {{name: cluttered-digits}}\nn: 8\n"
                   f"attacks: [{{name: fgsm, eps: {eps}}}, {{name: pgd-linf}}]\neps: [0, 8]\n")
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", str(cfg), "--out", str(out), "--quiet")
    line = one_error_line(err)
    assert code == 2 and "attacks.0.eps" in line, err
    assert not out.exists()


# ------------------------------------------------------------------------------ item 9: exit code
BOOM = '''
from robustbench_lta.plugins import Attack, AttackKind, register_attack


@register_attack
class Boom(Attack):
    """Raises on every batch."""
    name = "boom-test"
    kind = AttackKind.RANDOM

    def perturb(self, model, x, y, eps):
        raise RuntimeError("boom")
'''


def test_item9_a_sweep_with_failed_cells_exits_3_and_counts_them(tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "boom.py").write_text(textwrap.dedent(BOOM))
    out = tmp_path / "res"
    # 40 samples: the untrained model gets 4 right, so the raising attack is really called
    code, stdout, err = run_cli("sweep", "--attack", "fgsm", "--attack", "boom-test", "--eps", "0,8",
                                "--plugins", str(plugins), "--out", str(out), *TINY, "--n", "40")
    line = one_error_line(err)
    summary = pd.read_csv(out / "summary.csv")  # the tables are still written
    not_ok = int((summary["status"] != "ok").sum())
    assert not_ok >= 1 and "boom" in " ".join(summary["message"].fillna(""))
    assert code == 3, (code, err)
    assert line.startswith("sweep incomplete:") and f"{not_ok} of {len(summary)}" in line and "failed" in line
    assert "results in" in stdout


def test_item9_a_clean_sweep_still_exits_0(tmp_path):
    code, _, err = run_cli("sweep", "--attack", "fgsm", "--eps", "0,8", "--out", str(tmp_path / "r"), *TINY)
    assert code == 0, err


# ------------------------------------------------------------------------------ internal errors -> exit 2
def test_non_utf8_config_is_a_user_error(tmp_path):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("models: [{source: caf\u00e9}]\n".encode("latin-1"))
    code, _, err = run_cli("sweep", str(cfg), "--out", str(tmp_path / "res"))
    line = one_error_line(err)
    assert code == 2 and "UTF-8" in line and str(cfg) in line


def test_out_below_a_file_is_a_user_error(tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    code, _, err = run_cli("sweep", "--attack", "fgsm", "--eps", "0,8", "--out", str(blocker / "res"), *TINY)
    line = one_error_line(err)
    assert code == 2 and str(blocker) in line and "not a folder" in line
    assert blocker.read_text() == "x"


def test_out_in_a_read_only_folder_is_a_user_error(tmp_path, monkeypatch):
    ro = tmp_path / "ro"
    ro.mkdir()
    real_access = os.access
    # root ignores permission bits; pretend the folder is on a read-only mount
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if Path(p) == ro else real_access(p, mode))
    code, _, err = run_cli("sweep", "--attack", "fgsm", "--eps", "0,8", "--out", str(ro / "res"), *TINY)
    line = one_error_line(err)
    assert code == 2 and str(ro) in line and "writable" in line
    assert not (ro / "res").exists()


def test_disk_full_is_a_user_error_naming_the_folder(tmp_path, monkeypatch):
    import robustbench_lta.engine.executors as executors

    def full(cfg, progress=True):
        Path(cfg.out).mkdir(parents=True)
        (Path(cfg.out) / "earlier.txt").write_text("kept")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(executors, "run_with_executor", full)
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--attack", "fgsm", "--eps", "0,8", "--out", str(out), *TINY)
    line = one_error_line(err)
    assert code == 2 and "no space left" in line and str(out) in line
    assert (out / "earlier.txt").read_text() == "kept"


def _attention_results(tmp_path: Path) -> tuple[Path, Path]:
    """A tiny sweep of an attention model: its results folder and its attention npz."""
    res = tmp_path / "res"
    code, _, err = run_cli("sweep", "--model", "smallcnn_att2_concat_pc", "--data", "cluttered-digits",
                           "--n", "8", "--attack", "fgsm", "--eps", "0,8", "--out", str(res), "--quiet",
                           "--set", "sanity_samples=0", "--set", "attention_samples=2")
    assert code == 0, err
    return res, next((res / "attention").glob("*.npz"))


def test_a_corrupt_attention_file_stops_the_report_with_its_path(tmp_path):
    res, npz = _attention_results(tmp_path)
    npz.write_bytes(os.urandom(100))
    pdf = tmp_path / "rep" / "r.pdf"
    code, _, err = run_cli("report", str(res), "--out", str(pdf))
    line = one_error_line(err)
    assert code == 2 and str(npz) in line and "corrupt" in line
    assert not pdf.exists()


def test_disk_full_during_a_write_names_the_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    from robustbench_lta import utils

    class Full:
        def __init__(self, fd: int) -> None:
            os.close(fd)

        def __enter__(self):
            return self

        def __exit__(self, *exc: object) -> None:
            return None

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")  # as write() raises it: no name

    monkeypatch.setattr(utils.os, "fdopen", lambda fd, mode: Full(fd))
    target = tmp_path / "summary.csv"
    with pytest.raises(OSError) as info:
        utils.atomic_write_bytes(target, b"x")
    assert info.value.filename == str(target) and info.value.errno == errno.ENOSPC
    assert list(tmp_path.iterdir()) == []


def test_the_report_api_turns_a_truncated_attention_file_into_a_warning(tmp_path):
    from robustbench_lta.reporting.pdf import build_report

    res, npz = _attention_results(tmp_path)
    npz.write_bytes(npz.read_bytes()[: npz.stat().st_size // 2])  # a truncated zip: BadZipFile
    result = build_report([res], tmp_path / "r.pdf")
    assert any("could not be drawn" in w for w in result.warnings), result.warnings
    assert (tmp_path / "r.pdf").is_file()


# ------------------------------------------------------------------------------ also
@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_creates_nothing(tmp_path):
    out = tmp_path / "res"
    code, _, err = run_cli("sweep", "--attack", "fgsm", "--eps", "0,8", "--device", "cuda", "--out", str(out),
                           *TINY)
    line = one_error_line(err)
    assert code == 2 and "CUDA is not available" in line
    assert not out.exists()


def test_unknown_model_names_get_did_you_mean(tmp_path):
    code, _, err = run_cli("sweep", "--model", "smallcnm", "--attack", "fgsm", "--out", str(tmp_path / "r"))
    line = one_error_line(err)
    assert code == 2 and "did you mean 'smallcnn'" in line
    code, _, err = run_cli("models", "vgg17")
    assert code == 2 and "did you mean 'vgg16'" in one_error_line(err)


def test_click_usage_errors_are_one_line_exit_2():
    code, _, err = run_cli("sweep", "--n", "abc")
    line = one_error_line(err)
    assert code == 2 and line.startswith("error:") and "--n" in line
