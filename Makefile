# Two commands on a fresh machine:  `make demo` (install + synthetic data + train/eval/predict)
# and `make test` (install + test suite). Both install into .venv first. `make app` serves the demo model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The exact versions the test suite passed with (tools/lock.py); requirements*.txt keep the compatible ranges.
LOCK ?= requirements-lock.txt
# torch's version comes from the lock: on this CPU-only setup pip takes the local CPU wheel, elsewhere PyPI's default
# (CUDA) build of the same release. GPU users with another CUDA: install their build first, then `make install`.
TORCH ?= torch
# `make test-latest`: the newest releases the ranges allow, in a venv of their own (torch stays the CPU build: the
# newest PyPI torch is a multi-GB CUDA download).
LATEST_VENV ?= .venv-latest
LATEST_TORCH ?= torch==2.13.0
DATA_DIR ?= data/retinavqa-synthetic
# The demo's synthetic set: 128 px is what the tiny model sees; 13 questions per image.
# Both eyes of each patient (patient-level screening numbers), and every kind of ungradable photograph.
DEMO_DATA_ARGS ?= --image_size 128 --num_train_images 1500 --num_validation_images 200 --num_test_images 300 --seed 0 \
	--eyes_per_patient 2 --quality_defects blurred,underexposed,overexposed,small_pupil,eyelashes

.PHONY: install data demo demo-blip2 app test test-fast test-latest latest-venv lock lint clean

install: $(VENV)/.installed

# This package with the extras the tests need: the web app (Gradio) and its browser tests (Playwright). The package
# itself has no dependencies beyond requirements*.txt.
# Installed with the lock as constraints, then checked against it: nothing more, nothing newer.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c $(LOCK) --upgrade pip setuptools
	$(PY) -m pip install --quiet -c $(LOCK) "$(TORCH)"
	$(PY) -m pip install --quiet -c $(LOCK) -r requirements-dev.txt -e ".[app,browser]"
	$(PY) tools/lock.py check $(LOCK)
	touch $@

$(DATA_DIR)/dataset_dict.json: | $(VENV)/.installed
	$(PY) -m retina_vqa.synthetic --output_dir $(DATA_DIR) $(DEMO_DATA_ARGS) --overwrite

data: $(DATA_DIR)/dataset_dict.json

demo: install data
	$(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml run_vqa.py configs/demo.yaml

# The BLIP-2 demo: a Q-Former and a small OPT reading the BLIP demo's frozen image encoder (after `make demo`).
demo-blip2: install data
	test -f outputs/demo/model.safetensors || $(MAKE) demo
	$(VENV)/bin/accelerate launch --config_file accelerate_configs/cpu.yaml run_vqa.py configs/demo-blip2.yaml

# The web app on the demo model (after `make demo`), on http://127.0.0.1:7860 only.
app: install
	$(PY) -m retina_vqa.app --model_name_or_path outputs/demo

test: install
	$(PY) -m pytest -q

# Everything but the end-to-end runs (several processes, real training runs, the browser): for a quick check.
test-fast: install
	$(PY) -m pytest -q -m "not e2e"

# The newest releases the ranges allow (a fresh venv, not the lock): which versions moved, then the fast tests and
# the canaries (tests/models/test_compat.py). `make lock` then moves the lock to them; `make test` checks it.
latest-venv:
	rm -rf $(LATEST_VENV)
	$(PYTHON) -m venv $(LATEST_VENV)
	$(LATEST_VENV)/bin/python -m pip install --quiet --upgrade pip setuptools
	echo "$(LATEST_TORCH)" > $(LATEST_VENV)/torch-constraint.txt
	$(LATEST_VENV)/bin/python -m pip install --quiet -c $(LATEST_VENV)/torch-constraint.txt --upgrade \
		--upgrade-strategy eager "$(LATEST_TORCH)" -r requirements-dev.txt -e ".[app,browser]"

test-latest: latest-venv
	$(LATEST_VENV)/bin/python tools/lock.py diff $(LOCK)
	$(LATEST_VENV)/bin/python -m pytest -q -m "not e2e"

# Freeze the venv of `make test-latest` into the lock (after it passed), then run `make test` on the new lock.
lock:
	test -x $(LATEST_VENV)/bin/python || $(MAKE) latest-venv
	$(LATEST_VENV)/bin/python tools/lock.py write $(LOCK)

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs $(DATA_DIR)
