# fedge: the two commands (`make demo`, `make test`) set everything up on first use.
PYTHON ?= python3.11
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.fedge-installed
LOCKS  := requirements/cloud.lock requirements/dev.lock
# Ray and the Kubeflow Pipelines SDK: installed for the tests only, after the locks above
# (requirements/scale.lock says why two of its pins differ from cloud.lock).
SCALE_LOCK  := requirements/scale.lock
SCALE_STAMP := $(VENV)/.fedge-scale-installed
export TF_CPP_MIN_LOG_LEVEL := 2
export PIP_DISABLE_PIP_VERSION_CHECK := 1
# Python writes its bytecode caches (__pycache__/, ignored by git) even where the environment
# asks it not to: the tests start hundreds of fedge processes, each of which would otherwise
# compile every fedge module again.
unexport PYTHONDONTWRITEBYTECODE

.PHONY: demo test lint pytest venv clean proto docs docs-gen

venv: $(STAMP)

# Locks are installed with --no-deps: tensorflow-federated 0.87.0 does not resolve on
# Python 3.11 with pip's resolver, so every package is pinned in the locks instead.
$(STAMP): $(LOCKS) pyproject.toml
	@command -v $(PYTHON) >/dev/null || { echo "error: $(PYTHON) not found (fedge needs Python 3.11)" >&2; exit 2; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --no-deps $(addprefix -r ,$(LOCKS))
	$(BIN)/python -m pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

$(SCALE_STAMP): $(STAMP) $(SCALE_LOCK)
	$(BIN)/python -m pip install --quiet --no-deps -r $(SCALE_LOCK)
	touch $@

demo: $(STAMP)
	$(BIN)/python -m simulations.demo --out demo-output

# The gRPC messages (fedge/protocol/fleet_pb2.py[i]) from fleet.proto and the TFRecord
# example messages (example_pb2.py[i]) from example.proto; checked in, and a
# test regenerates them and compares.
proto: $(STAMP)
	$(BIN)/python -m grpc_tools.protoc -I . --python_out=. --pyi_out=. fedge/protocol/fleet.proto fedge/protocol/example.proto

# The manual (docs/, mkdocs.yml) into site/, warnings as errors; the reference pages under
# docs/reference/ are generated from the code by docs-gen (tests/docs/ checks they are current),
# the Python API pages (not checked in) by this target, and the site must load nothing from
# another host. (After the scale lock, as lint and pytest
# are, so that a fresh install leaves the same packages as make test.)
docs: $(SCALE_STAMP)
	$(BIN)/python -m tools.docgen --python
	$(BIN)/mkdocs build --strict --quiet
	@! grep -rlE '(src|href)="(https?:)?//[^"]*\.(js|css)' site/ || { echo "error: the site loads files from another host" >&2; exit 1; }

docs-gen: $(STAMP)
	$(BIN)/python -m tools.docgen

lint: $(SCALE_STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

pytest: $(SCALE_STAMP)
	$(BIN)/python -m pytest -rA --durations=40

# The linters and the tests run side by side (the tests leave a core mostly idle); make
# test fails if either does.
test: $(SCALE_STAMP)
	@$(MAKE) --no-print-directory -j2 lint pytest

clean:
	rm -rf $(VENV) demo-output site .pytest_cache .mypy_cache .ruff_cache build *.egg-info
