"""The documentation is executed: every fenced shell and Python block of README.md and docs/*.md.

Blocks of one file run in order in one temporary working folder (holding a copy of ``configs/`` and
a link to ``benchmarks/``), so a later block can use what an earlier one wrote, as a reader would.
A renamed flag, a wrong config key or an undefined name in a snippet fails here. A block may be
preceded by a marker comment that changes how it runs (the convention is in docs/contributing.md):

    <!-- doc-test: skip: REASON -->            not run; the reason is required
    <!-- doc-test: help -->                     each command runs with --help instead, and every
                                                --flag it uses must appear in that help
    <!-- doc-test: append: ARGS -->             ARGS appended to every robustbench-lta train/sweep
    <!-- doc-test: replace: OLD => NEW -->      text replaced in the block before it runs
    <!-- doc-test: file: PATH -->               the block is written to PATH, not run
    <!-- doc-test: validate: train|sweep -->    a YAML block is validated as that config
    <!-- doc-test: exit: N -->                  the block's last command must exit with N
    <!-- doc-test: message: TEXT -->            ... and print TEXT (required with exit: N > 0)
    <!-- doc-test: timeout: SECONDS -->         per block (default 900: a hang, not a budget)

Directives combine with ``;`` (so a reason cannot contain one). Blocks in other languages
(``yaml`` without a marker, ``text``, ``json``) are not run; indented command blocks are checked
as ``help`` blocks. Also here:
docs/config.md must match the generator, and every ``path.py:name`` a page cites must exist.
"""

from __future__ import annotations

import os
import re
import resource
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC_FILES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell"}
RUNNABLE = SHELL | {"python", "py"}
FENCE = re.compile(r"^```([\w+-]*)\s*$")
MARKER = re.compile(r"^<!--\s*doc-test:\s*(.*?)\s*-->\s*$", re.S)


@dataclass
class Block:
    path: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    directives: dict[str, list[str]] = field(default_factory=dict)

    @property
    def where(self) -> str:
        path = self.path.relative_to(ROOT) if self.path.is_relative_to(ROOT) else self.path
        return f"{path}:{self.line}"


DIRECTIVES = {"skip", "help", "append", "replace", "file", "validate", "exit", "message", "timeout"}


def parse_directives(text: str) -> dict[str, list[str]]:
    """``key: value; key: value`` -> {key: [values]}; an unknown key is an error, not ignored."""
    out: dict[str, list[str]] = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        key, _, value = part.partition(":")
        key = key.strip().lower()
        if key not in DIRECTIVES:
            raise ValueError(f"unknown doc-test directive {key!r} in {text!r} (known: {sorted(DIRECTIVES)}; "
                             "a skip reason cannot contain ';')")
        out.setdefault(key, []).append(value.strip())
    return out


def parse_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Every fenced block of a Markdown file, with the marker comment right above it (if any)."""
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        start, lang = i, m.group(1).lower()
        j = i + 1
        while j < len(lines) and lines[j].strip() != "```":
            j += 1
        directives: dict[str, list[str]] = {}
        k = start - 1
        while k >= 0 and not lines[k].strip():
            k -= 1
        if k >= 0 and lines[k].strip().endswith("-->"):
            first = k
            while first > 0 and "<!--" not in lines[first]:
                first -= 1
            marker = MARKER.match(" ".join(ln.strip() for ln in lines[first : k + 1]))
            if marker:
                directives = parse_directives(marker.group(1))
        blocks.append(Block(path, start + 1, lang, "\n".join(lines[start + 1 : j]) + "\n", directives))
        i = j + 1
    return blocks


#: an indented (4+ spaces) line outside fences that starts a command a reader would copy
INDENTED_COMMAND = re.compile(r"^ {4,}(?:[A-Z_][A-Z0-9_]*=\S+\s+)*(robustbench-lta|python3?|make)\b")


def indented_blocks(path: Path, text: str | None = None) -> list[Block]:
    """Indented command blocks (Markdown's other code block): checked like ``help`` blocks.

    A run of lines indented by 4+ spaces, outside fences, whose first line is a ``robustbench-lta``,
    ``python SCRIPT.py`` or ``make`` command (after ``VAR=value`` settings); backslash continuations
    and further commands of the run belong to it.
    """
    lines = (path.read_text() if text is None else text).splitlines()
    blocks: list[Block] = []
    fence, i = False, 0
    while i < len(lines):
        if lines[i].strip().startswith("```"):
            fence = not fence
            i += 1
            continue
        if fence or not INDENTED_COMMAND.match(lines[i]):
            i += 1
            continue
        j = i
        while j < len(lines) and lines[j].startswith("    ") and lines[j].strip():
            j += 1
        blocks.append(Block(path, i + 1, "indented", "\n".join(ln.strip() for ln in lines[i:j]) + "\n",
                            {"help": [""]}))
        i = j
    return blocks


def _listed_options(help_text: str) -> set[str]:
    """The flags a --help output lists as options (click and argparse layouts), not its prose."""
    found: set[str] = set()
    for line in help_text.splitlines():
        m = re.match(r"^\s{1,8}((?:-\w,?\s+)?--[\w-]+(?:\s*/\s*--[\w-]+)?(?:,\s*--[\w-]+)*)", line)
        if m:
            found |= set(re.findall(r"--[\w-]+", m.group(1)))
    return found


def _commands(code: str) -> list[list[str]]:
    """Shell commands of a block as token lists (continuations joined, comments dropped)."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [tokens for line in joined.splitlines() if (tokens := shlex.split(line, comments=True))]


def _env(work: Path) -> dict[str, str]:
    bindir = str(Path(sys.executable).parent)
    return {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
            "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "MPLBACKEND": "Agg",
            "ROBUSTBENCH_LTA_DATA": str(work / "data")}


def _run(args: list[str] | str, work: Path, timeout: int, shell: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run(args, cwd=work, env=_env(work), capture_output=True, text=True, timeout=timeout,
                          shell=shell, executable="/bin/bash" if shell else None)


def _fail(block: Block, what: str, res: subprocess.CompletedProcess) -> None:
    tail = "\n".join((res.stdout + "\n" + res.stderr).strip().splitlines()[-25:])
    pytest.fail(f"{block.where}: {what} (exit {res.returncode})\n--- block ---\n{block.code}"
                f"--- output ---\n{tail}")


def _help_check(block: Block, work: Path, timeout: int) -> None:
    """Each command with --help: the command must exist and every --flag it uses must be listed."""
    for tokens in _commands(block.code):
        while tokens and re.match(r"^[A-Z_][A-Z0-9_]*=", tokens[0]):  # VAR=value settings
            tokens = tokens[1:]
        prog = tokens[0]
        if prog == "make":
            targets = re.findall(r"^([\w-]+)\s*:", (ROOT / "Makefile").read_text(), re.M)
            missing = [t for t in tokens[1:] if "=" not in t and not t.startswith("-") and t not in targets]
            if missing:
                pytest.fail(f"{block.where}: `{shlex.join(tokens)}`: no Makefile target {missing[0]!r}")
            continue
        if prog == "robustbench-lta":
            sub = [t for t in tokens[1:2] if not t.startswith("-")]
            base = [prog, *sub]
        elif prog in ("python", "python3") and len(tokens) > 1 and tokens[1].endswith(".py"):
            base = [sys.executable, tokens[1]]
        else:
            pytest.fail(f"{block.where}: `help` needs robustbench-lta or python SCRIPT.py, got {prog}")
        res = _run([*base, "--help"], work, timeout)
        if res.returncode != 0:
            _fail(block, f"`{shlex.join([*base, '--help'])}` failed", res)
        listed = _listed_options(res.stdout)
        used = {t.split("=", 1)[0] for t in tokens if t.startswith("--")}
        unknown = sorted(used - listed - {"--help"})
        if unknown:
            pytest.fail(f"{block.where}: `{shlex.join(tokens)}` uses {', '.join(unknown)}, which "
                        f"`{shlex.join(base)} --help` does not list")


def _apply_append(code: str, extra: list[str]) -> str:
    if not extra:
        return code
    out = []
    for tokens in _commands(code):
        assert not set(tokens) & {"|", "&&", "||", ";", ">", "<"}, "append: one plain command per line"
        if tokens[0] == "robustbench-lta" and tokens[1:2] in (["train"], ["sweep"]):
            tokens = tokens + [t for e in extra for t in shlex.split(e)]
        out.append(shlex.join(tokens))
    return "\n".join(out) + "\n"


def run_block(block: Block, work: Path) -> str:
    """Run one block as its marker says; returns what was done (for the log)."""
    d = block.directives
    if "skip" in d:
        reason = " ".join(d["skip"]).strip()
        assert reason, f"{block.where}: `doc-test: skip` needs a reason (skip: WHY)"
        return f"skipped: {reason}"
    code = block.code
    for rule in d.get("replace", []):
        old, sep, new = rule.partition("=>")
        assert sep and old.strip() in code, f"{block.where}: replace {rule!r} does not match the block"
        code = code.replace(old.strip(), new.strip())
    timeout = int(d.get("timeout", ["900"])[0])
    if "file" in d and "validate" not in d:
        target = work / d["file"][0]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)
        return f"wrote {d['file'][0]}"
    if "validate" in d:
        kind = d["validate"][0]
        script = ("import sys, yaml\nfrom robustbench_lta.config import SweepConfig, TrainConfig, validate\n"
                  f"validate({'SweepConfig' if kind == 'sweep' else 'TrainConfig'}, "
                  "yaml.safe_load(sys.stdin.read()) or {}, 'block')\n")
        res = subprocess.run([sys.executable, "-c", script], input=code, cwd=work, env=_env(work),
                             capture_output=True, text=True, timeout=timeout)
        if res.returncode != 0:
            _fail(block, f"YAML is not a valid {kind} config", res)
        if "file" in d:
            (work / d["file"][0]).parent.mkdir(parents=True, exist_ok=True)
            (work / d["file"][0]).write_text(code)
        return f"validated as {kind} config"
    if block.lang == "indented":
        _help_check(block, work, timeout)
        return "indented: checked with --help"
    if block.lang not in RUNNABLE:
        return "not runnable"
    if "help" in d:
        _help_check(block, work, timeout)
        return "checked with --help"
    expect = int(d.get("exit", ["0"])[0])
    if block.lang in SHELL:
        code = _apply_append(code, d.get("append", []))
        prefix = "set -o pipefail\n" if "exit" in d else "set -euo pipefail\n"
        res = _run(prefix + code, work, timeout, shell=True)
    else:
        res = _run([sys.executable, "-c", code], work, timeout)
    if res.returncode != expect:
        _fail(block, f"expected exit {expect}", res)
    if expect:
        messages = d.get("message", [])
        assert messages, f"{block.where}: `exit: {expect}` needs `message: TEXT`, the error it shows"
        for text in messages:
            if text not in res.stdout + res.stderr:
                _fail(block, f"exit {expect} as expected, but without the message {text!r}", res)
    return f"ran, exit {res.returncode}"


@pytest.mark.parametrize("doc", DOC_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_doc_blocks_run(doc: Path, tmp_path: Path) -> None:
    blocks = parse_blocks(doc) + indented_blocks(doc)
    if not any(b.lang in RUNNABLE or "validate" in b.directives or "file" in b.directives
               or b.lang == "indented" for b in blocks):
        pytest.skip(f"{doc.name} has no runnable block")
    work = tmp_path / "work"
    work.mkdir()
    shutil.copytree(ROOT / "configs", work / "configs")
    (work / "benchmarks").symlink_to(ROOT / "benchmarks")
    for block in blocks:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        what = run_block(block, work)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        print(f"{block.where} [{block.lang}] {what} ({cpu:.1f} CPU s)")  # -s shows what each block costs


# -------------------------------------------------------------------------- the mechanism itself
MISSPELT = """
Train:

<!-- doc-test: help -->
```bash
robustbench-lta train configs/train/demo_vgg16.yaml --ovt runs/x
```
"""


def test_a_misspelt_flag_fails(tmp_path: Path) -> None:
    (block,) = parse_blocks(tmp_path / "x.md", MISSPELT)
    with pytest.raises(pytest.fail.Exception, match="uses --ovt, which .*train --help. does not list"):
        run_block(block, tmp_path)
    (block,) = parse_blocks(tmp_path / "x.md", MISSPELT.replace("--ovt", "--out"))
    assert run_block(block, tmp_path) == "checked with --help"


INDENTED = """
Run it:

    robustbench-lta sweep --model runs/x --attack fgsm --epz 0,8

and then:

    QUICK=1 make gpu-study
"""


def test_an_indented_command_block_is_checked_too(tmp_path: Path) -> None:
    blocks = indented_blocks(tmp_path / "x.md", INDENTED)
    assert [b.line for b in blocks] == [4, 8]
    with pytest.raises(pytest.fail.Exception, match="uses --epz, which .*sweep --help. does not list"):
        run_block(blocks[0], tmp_path)
    assert run_block(blocks[1], tmp_path) == "indented: checked with --help"
    wrong = indented_blocks(tmp_path / "x.md", "text\n\n    make gpu-stduy\n")[0]
    with pytest.raises(pytest.fail.Exception, match="no Makefile target 'gpu-stduy'"):
        run_block(wrong, tmp_path)


def test_help_flags_come_from_the_option_list_not_the_prose() -> None:
    text = ("Usage: x [OPTIONS]\n\n  Mentions --not-an-option in prose.\n\nOptions:\n"
            "  --out TEXT        where\n  -q, --quiet       hush\n  --amp / --no-amp  both\n"
            "  --threads THREADS\n")
    assert _listed_options(text) == {"--out", "--quiet", "--amp", "--no-amp", "--threads"}


def test_an_error_example_must_show_its_message(tmp_path: Path) -> None:
    text = "<!-- doc-test: exit: 3 -->\n```bash\necho 'error: boom' >&2; exit 3\n```\n"
    (block,) = parse_blocks(tmp_path / "x.md", text)
    with pytest.raises(AssertionError, match="needs `message: TEXT`"):
        run_block(block, tmp_path)
    (block,) = parse_blocks(tmp_path / "x.md", text.replace("exit: 3", "exit: 3; message: error: boom"))
    assert run_block(block, tmp_path) == "ran, exit 3"
    (block,) = parse_blocks(tmp_path / "x.md", text.replace("exit: 3", "exit: 3; message: other"))
    with pytest.raises(pytest.fail.Exception, match="without the message 'other'"):
        run_block(block, tmp_path)


def test_markers_are_parsed(tmp_path: Path) -> None:
    text = ("<!-- doc-test: skip: needs a GPU -->\n```bash\nnvidia-smi\n```\n\n"
            "<!-- doc-test: append: --set n=8; replace: a => b;\n timeout: 5 -->\n\n"
            "```python\nprint('a')\n```\n"
            "```yaml\nx: 1\n```\n")
    skip, py, yml = parse_blocks(tmp_path / "x.md", text)
    assert skip.directives == {"skip": ["needs a GPU"]} and skip.lang == "bash" and skip.line == 2
    assert py.directives == {"append": ["--set n=8"], "replace": ["a => b"], "timeout": ["5"]}
    assert yml.directives == {} and yml.lang == "yaml"
    assert run_block(skip, tmp_path) == "skipped: needs a GPU"
    assert run_block(yml, tmp_path) == "not runnable"
    with pytest.raises(ValueError, match="unknown doc-test directive 'sikp'"):
        parse_blocks(tmp_path / "x.md", "<!-- doc-test: sikp: typo -->\n```bash\nls\n```\n")
    bad = parse_blocks(tmp_path / "x.md", "<!-- doc-test: validate: sweep -->\n```yaml\nmodelz: []\n```\n")[0]
    with pytest.raises(pytest.fail.Exception, match="not a valid sweep config"):
        run_block(bad, tmp_path)


def test_every_shipped_config_validates() -> None:
    """Every shipped config: sweeps/ and sweep*.yaml as sweeps, the rest as training configs."""
    from robustbench_lta.config import SweepConfig, TrainConfig, read_yaml, validate

    files = sorted((ROOT / "configs").glob("*/*.yaml"))
    assert files
    for path in files:
        sweep = path.parent.name == "sweeps" or path.stem.startswith("sweep")
        validate(SweepConfig if sweep else TrainConfig, read_yaml(path), str(path))


# ----------------------------------------------------------------------------- generated pages
def test_config_reference_is_up_to_date() -> None:
    from robustbench_lta.config_doc import DOC_PATH, render, undocumented

    assert undocumented() == [], "config keys without a description (Field(description=...))"
    assert DOC_PATH.read_text() == render(), (
        "docs/config.md is out of date: run `python -m robustbench_lta.config_doc` and commit it"
    )


CITED = re.compile(r"`((?:robustbench_lta/|attacks/|benchmarks/|tests/)?[\w/]+\.py):(\w+)`")


def test_cited_code_exists() -> None:
    """`engine/sweep.py:_CHECK_SAMPLES`-style references in the docs name real definitions."""
    missing = []
    for doc in DOC_FILES:
        for rel, name in CITED.findall(doc.read_text()):
            candidates = [ROOT / rel, ROOT / "robustbench_lta" / rel]
            file = next((c for c in candidates if c.is_file()), None)
            pattern = rf"^\s*(def|class)\s+{name}\b|^\s*{name}\s*[:=]"
            if file is None or not re.search(pattern, file.read_text(), re.M):
                missing.append(f"{doc.name}: {rel}:{name}")
    assert not missing, "docs cite code that does not exist: " + ", ".join(missing)


def test_shared_data_dir_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """README/docs: ../shared/data/cifar10-jpeg is found from the working folder, not only the package."""
    from robustbench_lta.data.registry import shared_data_dir

    shared = tmp_path / "shared" / "data" / "cifar10-jpeg"
    shared.mkdir(parents=True)
    (tmp_path / "clone").mkdir()
    monkeypatch.delenv("ROBUSTBENCH_LTA_SHARED", raising=False)
    monkeypatch.chdir(tmp_path / "clone")
    assert shared_data_dir() == shared
    monkeypatch.setenv("ROBUSTBENCH_LTA_SHARED", str(tmp_path / "nowhere"))
    assert shared_data_dir() is None  # a set variable is not replaced by a guess
