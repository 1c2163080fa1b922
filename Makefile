# Two entry points (see README): `make pipeline` and `make test`.
# Both create .venv with the pinned requirements first (once per change of requirements.txt);
# `make test` adds the optional fast CPU runtime (requirements-fast.txt), the optional engine
# (requirements-engine.txt) and the test-only tools (requirements-test.txt) so their tests run too.
PYTHON ?= python3
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: pipeline test setup setup-fast setup-engine setup-test setup-hub setup-labelstudio bench scale quality clean-venv

setup: $(VENV)/.installed

## The optional OpenVINO runtime (features.runtime: openvino or auto).
setup-fast: $(VENV)/.installed-fast

$(VENV)/.installed: requirements.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --upgrade pip
	$(VENV)/bin/pip install -r requirements.txt
	# the fewlabel package, editable: `import fewlabel` and the `fewlabel` command use this checkout
	$(VENV)/bin/pip install --no-deps -e .
	touch $@

$(VENV)/.installed-fast: requirements-fast.txt $(VENV)/.installed
	$(VENV)/bin/pip install -r requirements-fast.txt
	touch $@

## The optional distributed engine (Ray Data), on top of setup.
setup-engine: $(VENV)/.installed-engine

$(VENV)/.installed-engine: $(VENV)/.installed requirements-engine.txt
	$(VENV)/bin/pip install -r requirements.txt -r requirements-engine.txt
	touch $@

## The optional keras-hub backbones (features.backbones: [keras_hub:<preset>]); not part of
## `make test` (compiled dependencies): their tests skip without it.
setup-hub: $(VENV)/.installed-hub

$(VENV)/.installed-hub: $(VENV)/.installed requirements-hub.txt
	$(VENV)/bin/pip install --quiet -r requirements.txt -r requirements-hub.txt
	touch $@

## Test-only tools (requirements-test.txt), on top of the engine.
setup-test: $(VENV)/.installed-test

$(VENV)/.installed-test: $(VENV)/.installed-engine requirements-test.txt
	$(VENV)/bin/pip install -r requirements.txt -r requirements-engine.txt -r requirements-test.txt
	touch $@

## Download PASCAL VOC, extract features, train, calibrate, evaluate (dvc repro), with the
## fast CPU runtime installed (features.runtime: auto uses it where the CPU has bfloat16).
pipeline: setup-fast
	dvc repro

## Label Studio in its own virtualenv (.venv-labelstudio/: it pins Django and packages that would
## clash with dvc and tensorflow), for the labelling loop (README) and its end-to-end test.
LS_VENV := .venv-labelstudio
setup-labelstudio: $(LS_VENV)/.installed

$(LS_VENV)/.installed: requirements-labelstudio.txt
	$(PYTHON) -m venv $(LS_VENV)
	$(LS_VENV)/bin/pip install --upgrade pip
	$(LS_VENV)/bin/pip install -r requirements-labelstudio.txt
	# the test server's database, migrated once (a first start spends about 40 s on it)
	$(PYTHON) -m tests.label_studio_server
	touch $@

## Check the import layers (pyproject.toml, [tool.importlinter]), then run the test suite in
## TEST_WORKERS processes (pytest-xdist; the Ray tests stay together in one, --dist loadgroup);
## pytest exits 5 when it collects no test: that is a failure too.
TEST_WORKERS ?= 2
test: setup-fast setup-engine setup-test setup-labelstudio
	lint-imports
	python -m pytest -n $(TEST_WORKERS) --dist loadgroup; status=$$?; \
	if [ $$status -eq 5 ]; then echo "pytest collected no tests: failing" >&2; exit 1; fi; exit $$status

## Feature-extraction throughput (see bench/featurize.py --help for options).
bench: setup-fast
	python bench/featurize.py

## Train and predict at scale (bench/scale.py; see README, "Beyond one machine").
scale: setup-engine
	mkdir -p bench/results && python bench/scale.py --json > bench/results/scale.json

## Quality on real photos: bench/quality.yaml's configs on devdata (../shared/devdata), 5 draws.
quality: setup
	python bench/quality.py --draws 5 --json bench/results/quality.json

clean-venv:
	rm -rf $(VENV)
