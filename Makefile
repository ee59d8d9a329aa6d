# Everything runs inside a local virtualenv (.venv) created on first use; only Python 3.10+ is needed.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test test-fast lint ui clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,distributed,bundle,pacs,openvino]"
	$(BIN)/pip install --quiet -c constraints.txt -e ".[crf]" || echo "dense CRF unavailable: pydensecrf2 did not build\
	 (it needs a C++ compiler); postprocessing.dense_crf is refused and its tests skip"
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install medseg (CPU torch pinned by constraints.txt)

demo: $(STAMP)  ## train/evaluate/predict the skin-lesion pipeline (synthetic data unless MEDSEG_DATA_ROOT is set)
	$(BIN)/medseg run pipelines/skin_lesion.yaml

test: $(STAMP)  ## the full test suite, as CI runs it
	$(BIN)/pytest -q

test-fast: $(STAMP)  ## the suite without the slow end-to-end tests
	$(BIN)/pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check medseg tests benchmarks scripts
	$(BIN)/ruff format --check medseg tests benchmarks scripts

clean:
	rm -rf $(VENV) data/cache .pytest_cache
