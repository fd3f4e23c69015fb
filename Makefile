# Two entry points: `make demo` (the main job) and `make test`. Both build .venv on first use.
PY := .venv/bin/python
STAMP := .venv/.installed

.PHONY: demo test lint venv

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: this spelling takes the local CPU wheel instead of a multi-GB CUDA build.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	.venv/bin/r1lab run

test: $(STAMP)
	.venv/bin/ruff check r1lab tests benchmarks
	$(PY) -m pytest -q r1lab tests

lint: $(STAMP)
	.venv/bin/ruff check r1lab tests benchmarks
