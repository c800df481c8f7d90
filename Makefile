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

.PHONY: env run test test-fast clean prometheus chromium java postgresql mutation
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

SHARED_DATA ?= ../shared/data
# DATASET=synthetic (default) is generated; DATASET=bigbasket / clinc150 are ingested from SHARED_DATA.
$(KTT_DATASETS)/synthetic/hierarchy.json: | $(VENV)/.ok
	$(VENV)/bin/ktt generate --name synthetic

$(KTT_DATASETS)/bigbasket/hierarchy.json: | $(VENV)/.ok
	$(VENV)/bin/ktt ingest $(SHARED_DATA)/bigbasket_products.parquet --name bigbasket

$(KTT_DATASETS)/clinc150/hierarchy.json: | $(VENV)/.ok
	$(VENV)/bin/ktt ingest $(SHARED_DATA)/clinc150.parquet --name clinc150

run: env $(KTT_DATASETS)/$(DATASET)/hierarchy.json
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/mlflow run . --env-manager local \
	  --experiment-name $(notdir $(DATASET)) -P model=$(MODEL) -P dataset=$(DATASET)
	@echo
	@echo "Open the MLflow UI:  $(VENV)/bin/mlflow ui --backend-store-uri $(MLFLOW_TRACKING_URI)"

# The monitoring tests scrape with a real Prometheus (Debian's package); without root they are skipped.
prometheus:
	@command -v prometheus >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get install -y -q prometheus >/dev/null; } || \
	  echo "prometheus not installed: the native-stack test will be skipped"

# The UI test looks at the MLflow run page in a real headless browser (Debian's chromium).
chromium:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; } || \
	  echo "chromium not installed: the MLflow UI test will be skipped"

# Spark batch scoring (mlflow.pyfunc.spark_udf) runs on Java (Debian's openjdk-17-jre-headless).
java:
	@command -v java >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get install -y -q openjdk-17-jre-headless >/dev/null; } || \
	  echo "java not installed: the Spark test will be skipped"

# The team-server and tuning-fleet tests start their own PostgreSQL (Debian's postgresql) in a temp folder.
postgresql:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || command -v initdb >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get update -q >/dev/null && apt-get install -y -q postgresql >/dev/null; } || \
	  echo "postgresql not installed: the team-server and tuning-fleet tests will be skipped"

test: env prometheus chromium java postgresql
	$(VENV)/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

test-fast: $(VENV)/.ok
	$(VENV)/bin/python -m pytest -q -m "not slow" $(PYTEST_ARGS)

# Mutation testing of the core formulas (pyproject.toml [tool.mutmut]); slow, not part of `make test`.
mutation: $(VENV)/.ok
	$(VENV)/bin/pip install -q mutmut==3.8.1
	rm -rf mutants
	KTT_SHARED_DATA=$(abspath $(SHARED_DATA)) KTT_HYPOTHESIS_PROFILE=mutation OMP_NUM_THREADS=1 $(VENV)/bin/python scripts/mutation.py

clean:
	rm -rf $(VENV) $(SERVING) mlruns mlflow.db datasets
