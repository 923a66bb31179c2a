# Two commands on a fresh machine:  `make demo` (install + the main job)  and  `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
ZOO_STAMP := $(VENV)/.installed-zoo

.PHONY: install demo test lint bench clean browser gpu-wheels gpu-check gpu-study

# --no-compile: pip would byte-compile every module of the 5.5 GB CUDA build of torch that pip takes
# on x86_64 (a minute of a 3-minute install on 2 cores); Python compiles what it imports on first use
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet "pip>=23"  # editable installs from pyproject alone; no index call when met
	$(BIN)/pip install --quiet --no-compile -e ".[autoattack]"
	touch $(STAMP)

# the test tools (pytest, ray, hypothesis) and the zoo sources' libraries (robustbench, timm,
# huggingface-hub), for `make test` only (the demo needs neither); the zoo pinned: unpinned, pip's
# resolver gave up (constraints-zoo.txt says why)
$(ZOO_STAMP): $(STAMP) constraints-zoo.txt
	$(BIN)/pip install --quiet --no-compile -e ".[test,zoo]" -c constraints-zoo.txt
	touch $(ZOO_STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/robustbench-lta demo

test: $(ZOO_STAMP)
	$(BIN)/python -m pytest -q

# browser: headless Chromium for tests/test_html_report.py (Debian's `chromium`), installed only when
# missing and only where apt-get may run (root); otherwise a note, and that test skips with the reason.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
		echo "browser: $$(command -v chromium || command -v chromium-browser)"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		(apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
			|| echo "note: apt-get could not install chromium: the browser test will skip"; \
	else echo "note: chromium is missing and installing it needs root and apt-get: the browser test will skip"; fi

lint: $(ZOO_STAMP)
	$(BIN)/ruff check robustbench_lta attacks tests benchmarks

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf $(VENV) runs results .pytest_cache

# ---- GPU readiness (docs/gpu.md) -------------------------------------------------------------------
# gpu-wheels (here, online): the packages the GPU image lacks, as CPython $(GPU_PY) manylinux wheels, and
# the CIFAR-10 archives, into ignored folders that the device tool carries (`carry: [".whl", ".gpu_data"]`).
# The one compiled wheel (pydantic-core) is also fetched for this interpreter, for the CPU rehearsal;
# gpu_check.py installs only the wheels whose tags fit the running Python.
GPU_PY      ?= 3.12
GPU_PIP     ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,$(PYTHON)) -m pip
GPU_PYTHON  ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
SHARED_DATA ?= $(firstword $(wildcard $(ROBUSTBENCH_LTA_SHARED) ../shared/data/cifar10-jpeg))
GPU_WHEELS  := torchattacks==3.5.1 foolbox==3.3.4 eagerpy==0.30.0 GitPython==3.2.1 gitdb==4.0.12 \
               smmap==5.0.3 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 \
               typing-inspection==0.4.5 typing-extensions==4.16.0 pypdf==7.1.1 pyautoattack==0.2.0
GPU_PLATFORMS := --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64

# pyautoattack's wheel carries a 44 MB example checkpoint it never imports: slim_wheel.py leaves it out.
# Without ../shared only the wheels are made (enough for the CPU rehearsal; the full check needs the data).
gpu-wheels:
	rm -rf .whl && mkdir -p .whl
	$(GPU_PIP) download -q --no-deps --only-binary=:all: --python-version $(GPU_PY) --implementation cp \
		$(GPU_PLATFORMS) -d .whl $(GPU_WHEELS)
	$(GPU_PIP) download -q --no-deps --only-binary=:all: -d .whl $(filter pydantic-core==%,$(GPU_WHEELS))
	$(GPU_PYTHON) benchmarks/slim_wheel.py .whl/pyautoattack-*.whl pyautoattack/examples/
	@if [ -n "$(SHARED_DATA)" ]; then \
		mkdir -p .gpu_data/cifar10-jpeg && \
		cp $(SHARED_DATA)/train.tar.gz $(SHARED_DATA)/test.tar.gz $(SHARED_DATA)/SHA256SUMS .gpu_data/cifar10-jpeg/ && \
		cd .gpu_data/cifar10-jpeg && sha256sum --quiet --ignore-missing -c SHA256SUMS; \
	else echo "note: no ../shared/data/cifar10-jpeg (SHARED_DATA=DIR): wheels only, no .gpu_data"; fi
	@du -sch .whl $$(ls -d .gpu_data 2>/dev/null) | sed 's/total/carried in all (limit 64 MiB with the tree)/'

# gpu-check: on the GPU machine `python3 benchmarks/gpu_check.py --out $$OUT` (no venv, no make needed).
# Here `QUICK=1 make gpu-check` rehearses it on CPU (CI runs that) the way the GPU machine runs it: in a
# fresh venv that holds only the GPU image's packages plus the carried wheels (benchmarks/gpu_rehearse.py),
# so a package the check imports but nobody carries fails here, not on the one GPU run. GPU_OUT: the table.
VENV_SITE = $(shell $(BIN)/python -c "import sysconfig; print(sysconfig.get_paths()['purelib'])" 2>/dev/null)

ifdef QUICK
gpu-check: $(ZOO_STAMP) gpu-wheels
	$(BIN)/python benchmarks/gpu_rehearse.py --site $(VENV_SITE) $(if $(GPU_OUT),--out $(GPU_OUT))
else
gpu-check:
	$(GPU_PYTHON) benchmarks/gpu_check.py $(if $(GPU_OUT),--out $(GPU_OUT))
endif

# gpu-study (docs/study.md): Study v3's reduced GPU scale on the GPU machine, stopped cleanly at 540 s and
# resumed by running it again; `QUICK=1 make gpu-study` rehearses the same path on CPU (CI runs that).
ifdef QUICK
gpu-study: $(ZOO_STAMP)
	$(BIN)/python benchmarks/gpu_study.py --quick $(if $(GPU_OUT),--out $(GPU_OUT))
else
gpu-study:
	$(GPU_PYTHON) benchmarks/gpu_study.py $(if $(GPU_OUT),--out $(GPU_OUT))
endif
