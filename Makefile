# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HSBS := $(VENV)/bin/hsbs
STAMP := $(VENV)/.installed
RUNS ?= runs
DEMO_ARGS ?=
PYTEST_ARGS ?=

.PHONY: venv demo test test-fast lab figures reference bench exercises student shipped clean

# The virtual environment is (re)built when pyproject.toml changes.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev]"
	@touch $(STAMP)

venv: $(STAMP)

## Main job on the embedded SynthFER data: train the baseline and HSBS (finished runs are reused),
## print their comparison table, draw their figures (confusion matrices side by side among them).
demo: venv
	$(HSBS) demo --runs $(RUNS) $(DEMO_ARGS)

## The whole test suite (CPU only).
test: venv
	@command -v chromium >/dev/null || echo "chromium not found: the JupyterLab browser tests will be skipped (apt-get install chromium)"
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: venv
	$(PY) -m pytest -q -m "not slow and not notebook and not browser" $(PYTEST_ARGS)

lab: venv
	$(VENV)/bin/jupyter lab notebooks/

## Train the SynthFER demo runs when missing and regenerate figures/ completely.
figures: venv
	$(HSBS) figures --demo --out figures

## Rewrite notebooks/reference/ (the expected results the notebooks show) from the finished demo, ablation
## and method-comparison runs in $(RUNS) and the committed figures/; trains nothing.
reference: venv
	$(PY) -m hsbs_lib.engine.expected --runs $(RUNS) --figures figures --out notebooks/reference

bench: venv
	$(HSBS) bench

## Rewrite the shipped FER2013 model (hsbs_lib/shipped/fer2013.pt, under 5 MB) and its card from a finished
## course-recipe run: make shipped SHIPPED_RUN=runs/fer2013_baseline
SHIPPED_RUN ?= runs/fer2013_baseline
shipped: venv
	$(PY) -m hsbs_lib.engine.shipped $(SHIPPED_RUN)/best.pt --name fer2013

exercises: venv
	$(PY) -m hsbs_lib.exercises notebooks notebooks/exercises

## The student release (docs/GRADING.md): $(STUDENT)/ and $(STUDENT).zip with the exercise notebooks and the
## library, without solution cells, the answer key or the hidden grading cases.
STUDENT ?= dist/student
student: exercises
	$(PY) -m hsbs_lib._grading.bundle $(STUDENT)

clean:
	rm -rf runs .pytest_cache
