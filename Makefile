# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set everything up on a fresh machine: a virtual environment with the project and its
# dependencies, and the real FashionMNIST files (Debian package dataset-fashion-mnist).

VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test setup data bench-codecs

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@free=$$(df -Pm . | awk 'NR==2 {print $$4}'); if [ "$$free" -lt 7000 ]; then \
	  echo "warning: $$free MB free here; the venv takes about 6.5 GB (PyTorch's CUDA wheels)" >&2; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip          # the system pip 23 cannot resolve Flower's deps
	$(PY) -m pip install -q -e '.[test]'
	touch $(INSTALLED)

data:
	@if [ -f $(FMNIST) ] || [ -n "$$FEDSQUEEZE_DATA_DIR" ]; then :; else \
	  echo "installing the FashionMNIST files (apt-get install dataset-fashion-mnist)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; fi

# Main job: a real deployment (SuperLink + 4 SuperNodes over gRPC on 127.0.0.1) of FedAvg on
# FashionMNIST, Dirichlet(0.5) split, 5 rounds; prints the results table with wire bytes and
# writes results/fedavg-demo/.
demo: setup data
	$(VENV)/bin/fedsqueeze deploy --clients 4 --quiet --run-name fedavg-demo --overwrite \
	  --run-config "num-server-rounds=5 partitioner='dirichlet' dirichlet-alpha=0.5"

test: setup data
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -q

bench-codecs: setup
	$(PY) bench/codecs.py --quick
