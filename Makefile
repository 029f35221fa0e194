# Two commands do all the set-up: `make serve` and `make test`.
# Virtual environments live in the checkout; a stamp file rebuilds one when its requirements change.
PYTHON ?= python3
HOST ?= 127.0.0.1
PORT ?= 8000
MODEL_REPOSITORY ?= models
export HOST PORT MODEL_REPOSITORY

SERVE_VENV := .venv-serve
DEV_VENV := .venv-dev
# pip shows what it collects and installs: the dev environment takes minutes (README, "Installing").
PIP_FLAGS := --disable-pip-version-check --no-input
PYTEST_ARGS ?=

# PyTorch in the dev environment (training, export, their tests): TORCH=cuda is PyPI's build
# (requirements-torch.txt), which on Linux brings 4.1 GB of NVIDIA libraries and Triton; TORCH=cpu is
# PyTorch's CPU build (requirements-torch-cpu.txt), for machines without a GPU, a fifth of the size. It
# comes from TORCH_WHEELS when that folder holds the wheel, else from PyTorch's CPU package index.
# The choice stays chosen: .venv-dev records it in its stamp's name (.stamp for cuda, .stamp-cpu for
# cpu), and every target reuses it until TORCH is given again (on the command line or in the
# environment; a different choice rebuilds .venv-dev). With no .venv-dev yet, the default is cuda
# where nvidia-smi finds an NVIDIA GPU, or where PyTorch publishes no CPU build to pin (other than
# Linux on x86-64 or ARM64), and cpu elsewhere.
TORCH_WHEELS ?= /opt/wheels
TORCH_CPU_SOURCE = $(if $(wildcard $(TORCH_WHEELS)/torch-*+cpu-*.whl),--find-links $(TORCH_WHEELS),--extra-index-url https://download.pytorch.org/whl/cpu)
DEV_FLAVOUR := $(if $(wildcard $(DEV_VENV)/.stamp-cpu),cpu,$(if $(wildcard $(DEV_VENV)/.stamp),cuda))
NVIDIA_GPU := $(shell command -v nvidia-smi 2>/dev/null)
CPU_BUILD_PLATFORM := $(filter Linux-x86_64 Linux-aarch64,$(shell uname -s)-$(shell uname -m))
TORCH ?= $(or $(DEV_FLAVOUR),$(if $(NVIDIA_GPU),cuda,$(if $(CPU_BUILD_PLATFORM),cpu,cuda)))
ifeq ($(TORCH),cuda)
TORCH_REQUIREMENTS := requirements-torch.txt
TORCH_SOURCE :=
DEV_STAMP := $(DEV_VENV)/.stamp
else ifeq ($(TORCH),cpu)
TORCH_REQUIREMENTS := requirements-torch-cpu.txt
TORCH_SOURCE = $(TORCH_CPU_SOURCE)
DEV_STAMP := $(DEV_VENV)/.stamp-cpu
else
$(error TORCH=$(TORCH): expected cuda or cpu)
endif

.PHONY: serve test train export bench bench-smoke bench-grpc bench-photos bench-http-layer clean help image image-test triton-test memory-test kserve-schemas fuzz

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

$(SERVE_VENV)/.stamp: requirements-serve.txt
	@echo "make: installing $(SERVE_VENV) from requirements-serve.txt (about 250 MB, under a minute)"
	rm -rf $(SERVE_VENV)
	$(PYTHON) -m venv $(SERVE_VENV)
	$(SERVE_VENV)/bin/pip install $(PIP_FLAGS) -r requirements-serve.txt
	touch $@

# One stamp per TORCH choice: switching it rebuilds the environment.
$(DEV_STAMP): requirements-serve.txt requirements-train.txt requirements-dev.txt $(TORCH_REQUIREMENTS)
	@echo "make: installing $(DEV_VENV) with TORCH=$(TORCH)$(if $(filter-out $(TORCH),$(DEV_FLAVOUR)), in place of its TORCH=$(DEV_FLAVOUR) build) (README, \"Installing\": sizes and times)"
	@if [ "$(TORCH)" = cuda ] && [ -z "$(NVIDIA_GPU)" ] && [ -n "$(CPU_BUILD_PLATFORM)" ]; then \
		echo "make: no NVIDIA GPU here (no nvidia-smi): TORCH=cpu installs PyTorch's CPU build, a fifth of the size" >&2; fi
	rm -rf $(DEV_VENV)
	$(PYTHON) -m venv $(DEV_VENV)
	$(DEV_VENV)/bin/pip install $(PIP_FLAGS) $(TORCH_SOURCE) -r requirements-dev.txt -r $(TORCH_REQUIREMENTS)
	touch $@

# The en_US.UTF-8 locale that text models need (onnxruntime's StringNormalizer) is compiled into
# the venv when the system lacks it, and found through LOCPATH (docs/models.md).
serve: $(SERVE_VENV)/.stamp ## serve models/ (Granian under Flask) on HOST:PORT (default 127.0.0.1:8000)
	@locales=$$(deploy/locales.sh $(SERVE_VENV)/locale); \
	echo "$(SERVE_VENV)/bin/python -m server"; \
	exec env $${locales:+LOCPATH=$$locales:/usr/lib/locale} $(SERVE_VENV)/bin/python -m server

# The real Triton beside this server (tests/triton/compare.py): tritonserver 2.51 from PyPI's
# nvidia-pytriton wheel, with a stand-in onnxruntime backend written in Python (the wheel has no C++
# one), in an environment of its own; nothing of it enters requirements-serve.txt or the image.
TRITON_VENV := .venv-triton

$(TRITON_VENV)/.stamp: tests/triton/requirements.txt
	rm -rf $(TRITON_VENV)
	$(PYTHON) -m venv $(TRITON_VENV)
	$(TRITON_VENV)/bin/pip install $(PIP_FLAGS) -r tests/triton/requirements.txt
	touch $@

triton-test: $(SERVE_VENV)/.stamp $(TRITON_VENV)/.stamp ## real Triton (stand-in onnxruntime backend) and this server on one models/ copy, one tritonclient script
	$(TRITON_VENV)/bin/python -m tests.triton.compare

# The production image (Containerfile), built by podman with chroot isolation so that no container
# engine has to run. IMAGE_BASE=debian makes the base from Debian's packages and caches it
# (deploy/image/debian-base.sh); any other value names a base image to pull, e.g. python:3.11-slim.
# The smoke test lives outside pytest so that `make test` needs no container tools.
IMAGE ?= localhost/mnist-serve:latest
IMAGE_BASE ?= debian

image: ## build the production image IMAGE on IMAGE_BASE (debian: made here from Debian's packages)
	$(call install-debian-packages,deploy/image/packages.txt,image)
	IMAGE=$(IMAGE) IMAGE_BASE=$(IMAGE_BASE) deploy/image/build.sh

# KServe's kinds as JSON schemas for tests/test_kubernetes.py, from the kserve wheel's SDK model classes
# (downloaded from PyPI, not installed); the output is committed (tests/schemas/kserve/README.md).
kserve-schemas: $(DEV_STAMP) ## rewrite tests/schemas/kserve/ from the kserve wheel (PyPI) the schemas name
	$(DEV_VENV)/bin/python -m tests.kserve_schema

# Its figures go to tests/artifacts/image/ (ignored by git); UPDATE_DOCS=1 writes them into
# docs/image-size.json and docs/deploy.md instead.
UPDATE_DOCS ?=

image-test: image $(DEV_STAMP) ## build the image, start it, smoke-test it; UPDATE_DOCS=1 writes its figures into docs/
	$(DEV_VENV)/bin/python -m tests.image.smoke $(IMAGE) $(if $(UPDATE_DOCS),--update-docs)

# $(call install-debian-packages,LIST,TARGET): the Debian packages named in file LIST, one a line,
# installed only when missing, and only as root; elsewhere a line says what to install by hand.
define install-debian-packages
	@missing=$$(grep -v '^#' $(1) | xargs -r -n1 sh -c 'dpkg -s "$$0" >/dev/null 2>&1 || echo "$$0"'); \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
		else echo "make $(2): please install these Debian packages: $$missing" >&2; exit 1; fi; \
	fi
endef

# Debian packages the tests drive (a browser, nginx...).
$(DEV_VENV)/.system-stamp: system-packages.txt $(DEV_STAMP)
	$(call install-debian-packages,system-packages.txt,test)
	touch $@

test: $(DEV_STAMP) $(SERVE_VENV)/.stamp $(DEV_VENV)/.system-stamp ## install what the tests need and run them
	$(DEV_VENV)/bin/python -m pytest $(PYTEST_ARGS)

# The request parsers under FUZZ_SCALE times the generated bodies `make test` gives them (tests/test_fuzz.py,
# ~4,000 examples there): 50 x is a few minutes on one core.
FUZZ_SCALE ?= 50
fuzz: $(DEV_STAMP) $(SERVE_VENV)/.stamp ## the request parsers under FUZZ_SCALE (50) x the generated bodies of make test
	FUZZ_SCALE=$(FUZZ_SCALE) $(DEV_VENV)/bin/python -m pytest tests/test_fuzz.py $(PYTEST_ARGS)

# About two minutes, and it needs root with writable cgroups (it skips saying why elsewhere): not in `make test`.
memory-test: $(DEV_STAMP) $(SERVE_VENV)/.stamp ## python -m server in a 1 GiB / 1 CPU cgroup under the largest requests (docs/memory.md)
	$(DEV_VENV)/bin/python -m pytest -m memory_limit tests/test_memory_limit.py -rs $(PYTEST_ARGS)

# The benchmarks' torch baseline gets its own environment with PyTorch's CPU build, the realistic
# serving install (the pinned training torch is the CUDA build): from TORCH_WHEELS when it holds
# the wheel, else from PyTorch's CPU package index.
BENCH_TORCH_VENV := .venv-bench-torch
BENCH_TOOLS_VENV := .venv-bench-tools
BENCH_ARGS ?=

$(BENCH_TORCH_VENV)/.stamp: bench/requirements-torch.txt
	rm -rf $(BENCH_TORCH_VENV)
	$(PYTHON) -m venv $(BENCH_TORCH_VENV)
	$(BENCH_TORCH_VENV)/bin/pip install $(PIP_FLAGS) $(TORCH_CPU_SOURCE) -r bench/requirements-torch.txt
	touch $@

# py-spy for bench/profile.py, kept out of every serving install.
$(BENCH_TOOLS_VENV)/.stamp: bench/requirements-tools.txt
	rm -rf $(BENCH_TOOLS_VENV)
	$(PYTHON) -m venv $(BENCH_TOOLS_VENV)
	$(BENCH_TOOLS_VENV)/bin/pip install $(PIP_FLAGS) -r bench/requirements-tools.txt
	touch $@

# The peers users would pick instead (bench/peers.py), each in its own environment, never the serving one.
BENCH_KSERVE_VENV := .venv-bench-kserve
BENCH_MLSERVER_VENV := .venv-bench-mlserver

$(BENCH_KSERVE_VENV)/.stamp: bench/peer_apps/requirements-kserve.txt
	rm -rf $(BENCH_KSERVE_VENV)
	$(PYTHON) -m venv $(BENCH_KSERVE_VENV)
	$(BENCH_KSERVE_VENV)/bin/pip install $(PIP_FLAGS) -r bench/peer_apps/requirements-kserve.txt
	touch $@

$(BENCH_MLSERVER_VENV)/.stamp: bench/peer_apps/requirements-mlserver.txt
	rm -rf $(BENCH_MLSERVER_VENV)
	$(PYTHON) -m venv $(BENCH_MLSERVER_VENV)
	$(BENCH_MLSERVER_VENV)/bin/pip install $(PIP_FLAGS) -r bench/peer_apps/requirements-mlserver.txt
	touch $@

# gunicorn, the layer before Granian, for the A/B of the HTTP layer only.
BENCH_GUNICORN_VENV := .venv-bench-gunicorn

$(BENCH_GUNICORN_VENV)/.stamp: bench/peer_apps/requirements-gunicorn.txt requirements-serve.txt
	rm -rf $(BENCH_GUNICORN_VENV)
	$(PYTHON) -m venv $(BENCH_GUNICORN_VENV)
	$(BENCH_GUNICORN_VENV)/bin/pip install $(PIP_FLAGS) -r bench/peer_apps/requirements-gunicorn.txt
	touch $@

# Under a minute, run by .ci/run: the server CPU per request of v2 binary and /predict PNG over the trivial
# endpoint's, against bench/smoke-baseline.json (fails above 2 x); UPDATE=1 records this run's ratios there.
UPDATE ?=
bench-smoke: $(DEV_STAMP) $(SERVE_VENV)/.stamp ## CI guard: fails when v2 binary or /predict PNG cost > 2 x their recorded CPU/request ratio to the trivial endpoint (UPDATE=1 records)
	$(DEV_VENV)/bin/python -m bench.smoke $(if $(UPDATE),--update)

bench-http-layer: $(DEV_STAMP) $(SERVE_VENV)/.stamp $(BENCH_GUNICORN_VENV)/.stamp ## gunicorn against Granian under the same Flask apps: CPU per request, memory, cold start
	$(DEV_VENV)/bin/python -m bench.http_layer $(BENCH_HTTP_ARGS)

bench: $(DEV_STAMP) $(SERVE_VENV)/.stamp $(BENCH_GUNICORN_VENV)/.stamp $(BENCH_TORCH_VENV)/.stamp $(BENCH_TOOLS_VENV)/.stamp $(BENCH_KSERVE_VENV)/.stamp $(BENCH_MLSERVER_VENV)/.stamp $(TRITON_VENV)/.stamp ## measure speed, footprint, soak against baselines and peers; writes its record under docs/results/ (docs/benchmarks.md quotes it)
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk; \
		else echo "make bench: please install wrk (Debian package wrk)" >&2; exit 1; fi; }
	$(DEV_VENV)/bin/python -m bench.run $(BENCH_ARGS)
	$(DEV_VENV)/bin/python -m bench.memory
	$(DEV_VENV)/bin/python -m bench.peers --out docs/results/benchmarks-peers.json
	@# benchmarks.md again, its figures unchanged, with issue 19's peer targets from the peers just measured.
	$(DEV_VENV)/bin/python -m bench.report docs/results/benchmarks.json
	@# Triton's HTTP frontend with the stand-in Python onnxruntime backend (labelled so; docs/models.md).
	$(DEV_VENV)/bin/python -m bench.triton_peer --out docs/results/benchmarks-triton-peer.json
	@# The photo evaluation is `make bench-photos`: at its default size it alone outlasts this target.
	@if [ -f bench/batching.py ]; then echo "$(DEV_VENV)/bin/python -m bench.batching"; $(DEV_VENV)/bin/python -m bench.batching; fi
	$(DEV_VENV)/bin/python -m bench.grpc_http
	$(DEV_VENV)/bin/python -m bench.http_layer --out docs/results/benchmarks-http-layer.json

bench-grpc: $(DEV_STAMP) $(SERVE_VENV)/.stamp ## v2 inference over gRPC beside HTTP binary at 1, 8, 32 streams; writes docs/results/benchmarks-grpc.md
	$(DEV_VENV)/bin/python -m bench.grpc_http $(BENCH_GRPC_ARGS)

bench-photos: $(DEV_STAMP) ## accuracy of the image preprocessing on generated photos, scans, canvases; writes docs/preprocessing.md
	$(DEV_VENV)/bin/python -m bench.photo_eval $(PHOTO_EVAL_ARGS)

# Training and export. TRAIN_ARGS passes options (TRAIN_ARGS=--fast, --epochs 20, --device cuda...).
TRAIN_ARGS ?=
NAME ?= mnist
VERSION ?=
CHECKPOINT ?= $(shell ls -t runs/*/model.pt 2>/dev/null | head -n1)

train: $(DEV_STAMP) ## train the default recipe (MNIST fetched into data/ if missing) into runs/<UTC time>/
	$(DEV_VENV)/bin/python -m training.train $(TRAIN_ARGS)

EXPORT_ARGS ?=

export: $(DEV_STAMP) ## export VERSION=n [CHECKPOINT=runs/<run>/model.pt, default newest] [NAME=mnist] [EXPORT_ARGS=--int8 ...] to models/
	@[ -n "$(VERSION)" ] || { echo "make export: say which version to write, e.g. make export VERSION=2" >&2; exit 2; }
	@[ -n "$(CHECKPOINT)" ] || { echo "make export: no runs/*/model.pt; run make train or pass CHECKPOINT=" >&2; exit 2; }
	$(DEV_VENV)/bin/python -m export --checkpoint $(CHECKPOINT) --name $(NAME) --version $(VERSION) --repo $(MODEL_REPOSITORY) $(EXPORT_ARGS)

clean: ## remove virtual environments and caches (keeps data/ and runs/)
	rm -rf $(SERVE_VENV) $(DEV_VENV) $(TRITON_VENV) $(BENCH_KSERVE_VENV) $(BENCH_MLSERVER_VENV) $(BENCH_GUNICORN_VENV) .pytest_cache .hypothesis
