# Everything a fresh machine needs comes from here: `make demo` and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
MODEL ?= models/words
OUT ?= out

.PHONY: setup system-deps demo smoke test test-no-torch lint clean

# torch is pinned: this version installs a CPU build; an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[train,cpu,eval,dev,ray,serve]"
	touch $@

setup: $(VENV)/.installed

# tesseract (OCR evaluation) and the DejaVu fonts (word rendering) are system packages, and so is
# qemu-user, which runs the quantized folders' tests on an emulated AVX2 CPU whatever CPU this is;
# chromium and its driver run the page of `dnd serve` in its selenium test.
system-deps:
	@if ! command -v tesseract >/dev/null || [ ! -d /usr/share/fonts/truetype/dejavu ] || ! command -v qemu-x86_64 >/dev/null \
	    || ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tesseract-ocr tesseract-ocr-eng fonts-dejavu-core qemu-user \
	      chromium chromium-driver >/dev/null; \
	  else echo "install tesseract-ocr, fonts-dejavu-core, qemu-user, chromium and chromium-driver with your package manager"; fi; \
	fi

# the demo writes only its own folders: out/model is where the README puts the user's exports
demo: setup
	rm -rf $(OUT)/demo-model $(OUT)/demo-samples
	$(VENV)/bin/dnd-export $(MODEL)/checkpoint.pt -o $(OUT)/demo-model
	$(VENV)/bin/dnd generate $(OUT)/demo-model --per-class 2 --out $(OUT)/demo-samples --grid
	@echo "Wrote $(OUT)/demo-samples/grid.png"

# train a small model from nothing and export it: under 2 minutes on 2 CPU cores (configs/smoke-*.yaml).
# --force: this target owns runs/smoke-* and out/smoke-model, so a second `make smoke` starts them over
smoke: setup
	$(VENV)/bin/dnd train tokenizer --config configs/smoke-tokenizer.yaml --force
	$(VENV)/bin/dnd train extract-codes --config configs/smoke-transformer.yaml
	$(VENV)/bin/dnd train transformer --config configs/smoke-transformer.yaml --force
	$(VENV)/bin/dnd-export runs/smoke-transformer/checkpoint.pt -o $(OUT)/smoke-model --force
	@echo "Wrote $(OUT)/smoke-model; try: $(VENV)/bin/dnd generate $(OUT)/smoke-model --per-class 2 --out $(OUT)/smoke-samples --grid"

test: setup system-deps
	$(PY) -m pytest tests -q

# the runtime's tests where torch is not installed: a second environment with the runtime's extras alone (the dev
# extra pulls no torch); under build/, which git ignores. tests/dnd_sdk runs on the committed tests/data/tiny-model
NO_TORCH_VENV ?= build/venv-no-torch
test-no-torch:
	python3 -m venv $(NO_TORCH_VENV)
	$(NO_TORCH_VENV)/bin/python -m pip install -q -e ".[cpu,dev,serve]"
	@if $(NO_TORCH_VENV)/bin/python -c "import torch" 2>/dev/null; then echo "torch is installed in $(NO_TORCH_VENV)"; exit 1; fi
	$(NO_TORCH_VENV)/bin/python -m pytest tests/dnd_sdk -q

# ruff, then mypy on every package (settings and their reasons: pyproject.toml)
lint: setup
	$(VENV)/bin/ruff check .
	$(PY) scripts/mypy_path.py
	$(VENV)/bin/mypy

clean:
	rm -rf $(OUT) .pytest_cache .ruff_cache .mypy_cache build/mypy-path
