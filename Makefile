# vla_hydra developer commands. `make help` lists them.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
# torch, pinned. This project's machines serve the CPU wheel from their pip index; where pip reaches
# PyPI directly its Linux wheel is the multi-GB CUDA build, so pick the build there, e.g.
#   make install TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"
# (install warns when it finds a CUDA build on a machine without nvidia-smi).
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed
# tests run in one pytest-xdist worker per CPU (most use one torch thread); SLURM tests share a worker
# (xdist_group). XDIST= runs them in one process.
XDIST ?= -n auto --dist loadgroup

.PHONY: help install train test test-full gpu-check bench format lint clean clean-runs

help: ## list targets
	@grep -E '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[dev]"
	@$(PY) -c "import shutil, torch; cuda = torch.version.cuda and not shutil.which('nvidia-smi'); \
		cuda and print(f'warning: torch {torch.__version__} is a CUDA build on a machine without a GPU; see TORCH_SPEC in the Makefile')"
	touch $(STAMP)

install: $(STAMP) ## create .venv and install the package with dev tools (idempotent)

train: install ## train BC on the embedded Pendulum dataset (collected on first use), < 1 min on 2 CPU cores
	$(PY) -m vla_hydra.train $(ARGS)

test: install ## fast test suite (excludes tests marked slow), one pytest-xdist worker per CPU
	$(PY) -m pytest -m "not slow" $(XDIST) $(ARGS)

test-full: install ## every test, including slow ones
	$(PY) -m pytest $(XDIST) $(ARGS)

gpu-check: install ## CUDA-only tests (trainer=gpu/fsdp/deepspeed) on a GPU machine; ARGS=--bench adds the GPU benchmark
	PATH=$(VENV)/bin:$$PATH bash scripts/gpu_checks.sh $(ARGS)

bench: install ## benchmarks, JSON lines to stdout and benchmarks/results/ (~45 min on 2 CPU cores)
	$(PY) benchmarks/bench_bc.py
	$(PY) benchmarks/bench_load.py
	$(PY) benchmarks/bench_offline.py --compile --corl $(ARGS)
	$(PY) benchmarks/bench_ppo.py
	$(PY) benchmarks/bench_online.py --rounds 3 --sac-steps 2000
	$(PY) benchmarks/bench_cluster.py

format: install ## auto-format and fix imports
	$(PY) -m ruff format vla_hydra hydra_plugins tests benchmarks
	$(PY) -m ruff check --fix vla_hydra hydra_plugins tests benchmarks notebooks

lint: install ## static checks
	$(PY) -m ruff check vla_hydra hydra_plugins tests benchmarks notebooks

# clean leaves results alone: logs/ holds every run's checkpoints and results.json, benchmarks/results/
# the benchmark history; clean-runs deletes them, and says which it deletes.
clean: ## remove caches (__pycache__, .pytest_cache, .ruff_cache); keeps runs, results, data/ and .venv
	rm -rf .pytest_cache .ruff_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

clean-runs: ## DELETE this checkout's run outputs: logs/ (runs, checkpoints, results.json), outputs/, multirun/, benchmarks/results/
	@for d in logs outputs multirun benchmarks/results; do \
		test -e $$d && echo "deleting $$d/ ($$(find $$d -type f | wc -l) files)" && rm -rf $$d; true; done
