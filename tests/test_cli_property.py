"""Property: whatever a user types, the CLI ends in exit 0 or one ``error:`` line with exit 2.

Hypothesis generates command lines (sweep/models/attacks/report/train with valid, near-valid and
random flags, attack specs and parameter values) and YAML configs (structured and raw text/bytes).
Never a traceback, never "internal error" (exit 1). The executor and the trainer are replaced by
stubs: the property is about everything *before* work starts (parsing, config validation, plugin
parameters, the pre-flight checks); a valid input reaching the stub counts as exit 0. Cases are
counted and printed (``pytest -s``); the run is deterministic (``derandomize``) and takes well under
a minute.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import yaml
from click.testing import CliRunner

pytest.importorskip("hypothesis", reason="pip install -e '.[test]' (hypothesis is in the test extra)")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

SETTINGS = settings(max_examples=200, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
CASES = {"cli": 0, "yaml": 0}
_TMP = Path(tempfile.mkdtemp(prefix="rbl-prop-"))


def _stub_summary(cfg, progress=True) -> pd.DataFrame:
    df = pd.DataFrame([{"model": "m", "attack": a.label or a.name, "norm": "linf", "eps": 0.0,
                        "clean_acc": 1.0, "robust_acc": 1.0, "status": "ok", "message": ""}
                       for a in cfg.attacks])
    df.attrs["out_dir"] = str(cfg.out)
    return df


@pytest.fixture(autouse=True)
def _stubs(monkeypatch):
    import robustbench_lta.engine.executors as executors
    import robustbench_lta.training.trainer as trainer

    monkeypatch.setattr(executors, "run_with_executor", _stub_summary)
    monkeypatch.setattr(trainer, "train", lambda cfg, **kw: SimpleNamespace(best_acc=0.5, best_path="x"))


def run_cli(argv: list[str]) -> tuple[int, str]:
    from robustbench_lta.cli import main

    runner = CliRunner()
    with runner.isolation() as (_, err, _):
        try:
            main(argv)
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        return code, err.getvalue().decode(errors="replace")


def check(code: int, stderr: str, argv: list[str]) -> None:
    assert "Traceback" not in stderr and "internal error" not in stderr, (argv, stderr)
    assert code in (0, 2), (argv, code, stderr)
    if code == 2:
        lines = [ln for ln in stderr.splitlines() if ln.strip() and "Warning" not in ln
                 and not ln.startswith("  ")]  # warnings.warn prints the source line indented
        assert len(lines) == 1 and lines[0].startswith("error:"), (argv, stderr)


# ------------------------------------------------------------------------------ strategies
words = st.text(alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
                max_size=12)
numbers = st.one_of(st.integers(-3, 10**6).map(str), st.floats(allow_nan=True, allow_infinity=True).map(str),
                    st.sampled_from(["-1", "0", "2.5", "1e-3", ".nan", ".inf", "-.inf", "1e309"]))
values = st.one_of(numbers, words, st.sampled_from(["true", "no", "null", "[1, 2]", "{a: 1}", "[", "", "'x"]))
attack_names = st.one_of(st.sampled_from(["fgsm", "pgd-linf", "pgd-l2", "square", "gaussian-noise", "cw-l2",
                                          "mifgsm", "boundary", "autoattack", "ta:PGD", "fb:LinfPGD", "ta:",
                                          "ta:Nope", "fb:", "PGD-LINF", "pgd_linf", ""]), words)
param_keys = st.one_of(st.sampled_from(["steps", "alpha", "restarts", "random_start", "loss", "sigma",
                                        "n_queries", "version", "threat_model", "norm", ""]), words)


@st.composite
def attack_specs(draw) -> str:
    name = draw(attack_names)
    params = draw(st.lists(st.tuples(param_keys, values), max_size=3))
    if not params and draw(st.booleans()):
        return name
    return name + ":" + ",".join(f"{k}={v}" for k, v in params)


models = st.one_of(st.sampled_from(["smallcnn", "smallcnm", "vgg16", "", "/nonexistent/x.safetensors",
                                    "robustbench:Nope", "a/b"]), words)
eps_texts = st.one_of(words, st.lists(numbers, max_size=4).map(",".join))
datasets = st.one_of(st.sampled_from(["cluttered-digits", "cifar10", "npz:/nope.npz", "imagefolder:/nope"]),
                     words)
devices = st.one_of(st.sampled_from(["cpu", "auto", "cuda", "cuda:7", "tpu", "CPU", ""]), words)
flag_values = {
    "--model": models, "--attack": attack_specs(), "--eps": eps_texts, "--eps-scale": numbers,
    "--data": datasets, "--n": numbers, "--batch-size": numbers, "--device": devices, "--seed": numbers,
    "--accounting": st.one_of(st.just("per-attack"), words), "--executor": st.sampled_from(["local", "x"]),
    "--plugins": st.one_of(st.just("/nonexistent"), words), "--set": st.tuples(words, values).map("=".join),
    "--out": st.one_of(st.just("/proc/no/such"), words),
}


@st.composite
def sweep_argv(draw) -> list[str]:
    argv = ["sweep"]
    for flag in draw(st.lists(st.sampled_from(sorted(flag_values)), max_size=6)):
        argv += [flag, draw(flag_values[flag])]
    if draw(st.booleans()):
        argv += ["--model", "smallcnn", "--attack", draw(attack_specs())]
    if "--out" not in argv:
        argv += ["--out", str(_TMP / "out")]
    return argv


other_argv = st.one_of(
    st.tuples(st.just("models"), words).map(list),
    st.just(["attacks"]),
    st.tuples(st.just("attacks"), st.just("--plugins"), words).map(list),
    st.tuples(st.just("report"), words, st.just("--out"), st.just(str(_TMP / "r.pdf"))).map(list),
    st.tuples(st.just("train"), words).map(list),
    st.lists(words, max_size=3),
)


@SETTINGS
@given(st.one_of(sweep_argv(), other_argv))
def test_any_command_line_ends_in_exit_0_or_one_error_line(argv):
    CASES["cli"] += 1
    code, err = run_cli(argv)
    check(code, err, argv)


json_like = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-10, 10**6), st.floats(), words),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(words, inner, max_size=3)),
    max_leaves=8,
)
attack_entries = st.fixed_dictionaries(
    {"name": attack_names},
    optional={"params": st.dictionaries(param_keys, st.one_of(json_like, st.integers(-2, 50)), max_size=3),
              "eps": st.one_of(st.lists(st.floats(), max_size=3), json_like), "label": json_like},
)
sweep_docs = st.fixed_dictionaries(
    {},
    optional={"models": st.one_of(st.lists(st.fixed_dictionaries({"source": models}), max_size=2), json_like),
              "attacks": st.one_of(st.lists(attack_entries, max_size=3), json_like),
              "eps": st.one_of(st.lists(st.floats(), max_size=4), json_like),
              "eps_scale": json_like, "n": json_like, "device": json_like, "data": json_like,
              "out": st.just(str(_TMP / "yout")), "accounting": json_like, "batch_size": json_like},
).flatmap(lambda d: st.dictionaries(words, json_like, max_size=2).map(lambda extra: {**extra, **d}))


@SETTINGS
@given(st.one_of(
    sweep_docs.map(lambda d: ("sweep", yaml.safe_dump(d, allow_unicode=True).encode())),
    st.text(max_size=80).map(lambda t: ("sweep", t.encode("utf-8", errors="replace"))),
    st.binary(max_size=40).map(lambda b: ("sweep", b)),
    st.dictionaries(words, json_like, max_size=4).map(lambda d: ("train", yaml.safe_dump(d).encode())),
))
def test_any_yaml_config_ends_in_exit_0_or_one_error_line(doc):
    CASES["yaml"] += 1
    command, body = doc
    path = _TMP / "cfg.yaml"
    path.write_bytes(body)
    argv = [command, str(path)] + (["--out", str(_TMP / "yout")] if command == "sweep" else [])
    code, err = run_cli(argv)
    check(code, err, argv)


def test_report_the_number_of_cases():
    print(f"\nhypothesis cases: {CASES['cli']} command lines, {CASES['yaml']} YAML configs, 0 tracebacks")
    assert CASES["cli"] + CASES["yaml"] >= 100 or CASES == {"cli": 0, "yaml": 0}
