# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
SETUP_LOG := $(VENV)/setup.log
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
# free disk that a new virtual environment needs (it takes about 3.7 GiB)
SETUP_NEEDS_GIB := 4
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export BENTOML_DO_NOT_TRACK := true
export OMP_NUM_THREADS := 1
export PYTHONUNBUFFERED := 1

.PHONY: demo test lint system-deps loadgen clean

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): torch (CPU build), the project and its pinned dependencies (pip's output: $(SETUP_LOG))"
	@test -x $(BIN)/python || { free_kib=$$(df -Pk . | awk 'NR==2 {print $$4}'); \
	  if [ "$$free_kib" -lt $$(( $(SETUP_NEEDS_GIB) * 1024 * 1024 )) ]; then \
	    echo "set-up needs about $(SETUP_NEEDS_GIB) GiB free for $(VENV) in $(CURDIR); that disk has $$(( free_kib / 1024 )) MiB free"; \
	    exit 1; fi; $(PYTHON) -m venv $(VENV); }
	@( export PIP_NO_CACHE_DIR=1; $(BIN)/pip install --upgrade pip \
	  && { $(BIN)/pip install --index-url $(TORCH_CPU_INDEX) --timeout 20 --retries 1 torch==2.13.0 \
	       || $(BIN)/pip install torch==2.13.0; } \
	  && $(BIN)/pip install -e ".[dev]" \
	  && $(BIN)/pip install --no-deps nvidia-pytriton==0.7.0 ) > $(SETUP_LOG) 2>&1 \
	  || { tail -n 30 $(SETUP_LOG); echo "set-up failed: the whole output is in $(SETUP_LOG)"; exit 1; }
	@touch $(STAMP)

system-deps:
	@bash scripts/system_deps.sh

# locust for benchmarks/bench_serving.py, in an environment of its own (its `requests` pin clashes with kfp's)
loadgen: .venv-loadgen/bin/locust

.venv-loadgen/bin/locust:
	@test -x .venv-loadgen/bin/python || $(PYTHON) -m venv .venv-loadgen
	.venv-loadgen/bin/pip install --quiet locust==2.47.0

demo: $(STAMP)
	$(BIN)/recsys demo

test: $(STAMP) system-deps
	$(BIN)/ruff check .
	$(BIN)/pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf artifacts build
