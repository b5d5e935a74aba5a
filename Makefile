# Two commands on a fresh machine:  `make demo` (install + synthetic data + train/eval/predict)
# and `make test` (install + test suite). Both install into .venv first. `make app` serves the demo model.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The CPU build of torch. GPU users: `make install TORCH=torch` (or install their CUDA build first).
TORCH ?= torch==2.13.0
DATA_DIR ?= data/retinavqa-synthetic
# The demo's synthetic set: 128 px is what the tiny model sees; 13 questions per image.
DEMO_DATA_ARGS ?= --image_size 128 --num_train_images 1500 --num_validation_images 200 --num_test_images 300 --seed 0

.PHONY: install data demo demo-blip2 app test lint clean

install: $(VENV)/.installed

# This package with the extras the tests need: the web app (Gradio) and its browser tests (Playwright). The package
# itself has no dependencies beyond requirements*.txt.
$(VENV)/.installed: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -r requirements-dev.txt
	$(PY) -m pip install --quiet -e ".[app,browser]"
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

lint: install
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check .

clean:
	rm -rf outputs $(DATA_DIR)
