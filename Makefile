# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
HSBS := $(VENV)/bin/hsbs
STAMP := $(VENV)/.installed
RUNS ?= runs
DEMO_ARGS ?=
PYTEST_ARGS ?=
# A CPU-only machine can take PyTorch's CPU build instead of the default CUDA one (several GB):
#   make demo TORCH_INDEX=https://download.pytorch.org/whl/cpu
TORCH_INDEX ?=

.PHONY: venv demo test test-fast lab figures reference bench exercises student shipped clean

# The virtual environment: the base install (what hsbs needs), rebuilt when pyproject.toml changes; each
# extra (lab, export, tb, dev) is added on top by the target that needs it.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' || \
		{ echo "hsbs_lib needs Python 3.11 or newer; $(PYTHON) is older (make PYTHON=python3.12 ...)"; exit 1; }
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install --quiet -e .
	@touch $(STAMP)

$(VENV)/.installed-%: $(STAMP)
	$(PY) -m pip install --quiet -e ".[$*]"
	@touch $@

venv: $(STAMP)

## Main job on the embedded SynthFER data: train the baseline and HSBS (finished runs are reused),
## print their comparison table, draw their figures (confusion matrices side by side among them).
demo: $(STAMP)
	$(HSBS) demo --runs $(RUNS) $(DEMO_ARGS)

## The whole test suite (CPU only).
test: $(VENV)/.installed-dev
	@command -v chromium >/dev/null || echo "chromium not found: the JupyterLab browser tests will be skipped (apt-get install chromium)"
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: $(VENV)/.installed-dev
	$(PY) -m pytest -q -m "not slow and not notebook and not browser" $(PYTEST_ARGS)

lab: $(VENV)/.installed-lab
	$(VENV)/bin/jupyter lab notebooks/

## Train the SynthFER demo runs when missing and regenerate figures/ completely.
figures: $(STAMP)
	$(HSBS) figures --demo --out figures

## Rewrite notebooks/reference/ (the expected results the notebooks show) from the finished demo, ablation
## and method-comparison runs in $(RUNS) and the committed figures/; trains nothing. Some parts only, the
## others kept as they are: make reference PARTS="demo methods". PARTS=control adds the perfect-teacher
## control (runs/control_hst, configs/control_hst.yaml over seeds 0-7), written only when asked for.
PARTS ?=
reference: $(STAMP)
	$(PY) -m hsbs_lib.engine.expected --runs $(RUNS) --figures figures --out notebooks/reference $(if $(PARTS),--parts $(PARTS))

bench: $(STAMP)
	$(HSBS) bench

## Rewrite the shipped FER2013 model (hsbs_lib/shipped/fer2013.pt, under 5 MB) and its card from a finished
## course-recipe run: make shipped SHIPPED_RUN=runs/fer2013_baseline
SHIPPED_RUN ?= runs/fer2013_baseline
shipped: $(STAMP)
	$(PY) -m hsbs_lib.engine.shipped $(SHIPPED_RUN)/best.pt --name fer2013

exercises: $(VENV)/.installed-lab
	$(PY) -m hsbs_lib.exercises notebooks notebooks/exercises

## The student release (docs/GRADING.md): $(STUDENT)/ and $(STUDENT).zip with the exercise notebooks and the
## library, without solution cells, the answer key or the hidden grading cases.
STUDENT ?= dist/student
student: exercises
	$(PY) -m hsbs_lib._grading.bundle $(STUDENT)

clean:
	rm -rf runs .pytest_cache
