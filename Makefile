# `make run`: set up both environments, make the default dataset, train the default model.
# `make test`: set up the main environment and run the tests.
PYTHON ?= python3
VENV := .venv
SERVING := .venv-serving
MODEL ?= tfidf_hsgd
DATASET ?= synthetic
export MLFLOW_TRACKING_URI ?= sqlite:///mlflow.db
export BENTOML_DO_NOT_TRACK := true
export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION := python
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR := false
PYTEST_ARGS ?=
export KTT_DATASETS ?= datasets
export KTT_WEIGHTS ?= weights

.PHONY: env run test test-fast clean
env: $(VENV)/.ok $(SERVING)/.ok

# One pip command for everything, torch included, so pip takes the CPU torch build.
$(VENV)/.ok: requirements/main.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q -r requirements/main.txt
	$(VENV)/bin/pip install -q --no-deps --no-build-isolation -e .
	touch $@

$(SERVING)/.ok: requirements/serving.txt scripts/patch_bentoml.py
	$(PYTHON) -m venv $(SERVING)
	$(SERVING)/bin/pip install -q -r requirements/serving.txt
	$(SERVING)/bin/python scripts/patch_bentoml.py
	touch $@

$(KTT_DATASETS)/$(DATASET)/hierarchy.json: | $(VENV)/.ok
	$(VENV)/bin/ktt generate --name $(DATASET)

run: env $(KTT_DATASETS)/$(DATASET)/hierarchy.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local \
	  -P model=$(MODEL) -P dataset=$(DATASET)
	@echo
	@echo "Open the MLflow UI:  $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)"

test: env
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(VENV)/.ok
	$(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) $(SERVING) mlruns mlflow.db datasets
