# The two commands of the README: `make demo` (the main job) and `make test` (the tests).
# Both set everything up on a fresh machine: a virtual environment with the project and its
# dependencies, and the real FashionMNIST files (Debian package dataset-fashion-mnist).

VENV ?= .venv
PY := $(VENV)/bin/python
INSTALLED := $(VENV)/.installed
FMNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test test-newest-flower setup data bench-codecs

setup: $(INSTALLED)

$(INSTALLED): pyproject.toml
	@free=$$(df -Pm . | awk 'NR==2 {print $$4}'); if [ "$$free" -lt 7000 ]; then \
	  echo "warning: $$free MB free here; the venv takes about 6.5 GB (PyTorch's CUDA wheels)" >&2; fi
	python3 -m venv $(VENV)
	$(PY) -m pip install -q -U pip          # the system pip 23 cannot resolve Flower's deps
	$(PY) -m pip install -q -e '.[test,deploy]'
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
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadscope
	$(MAKE) test-newest-flower

# The library (channels, Compressed, compression_mod, methods, codecs) and the example on the
# newest Flower the registry serves: a second environment holding only that Flower and what
# it needs, layered over .venv (everything else comes from there; `site.addsitedir` after its
# own site-packages, so its Flower wins). The gRPC deployment layer stays on 1.39 (.venv).
NEWEST := .venv-newest-flower
NEWEST_TESTS := tests/strategies/test_any_flower_strategy.py tests/examples \
  tests/core/test_user_app.py tests/strategies/test_user_training_loop.py \
  tests/strategies/channels tests/codecs
test-newest-flower: setup data
	@[ -x $(NEWEST)/bin/python ] || python3 -m venv $(NEWEST)
	@echo "import site; site.addsitedir('$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')')" \
	  > "$$($(NEWEST)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/zz_project_env.pth"
	$(NEWEST)/bin/python -m pip install -q -U 'flwr[simulation]'
	$(NEWEST)/bin/python -c "import flwr, fedsqueeze; print('newest Flower:', flwr.__version__)"
	$(NEWEST)/bin/python -m pytest -q -p no:cacheprovider -m "not simulation and not deployment" $(NEWEST_TESTS)
	$(NEWEST)/bin/python -m pytest -q -p no:cacheprovider -m "not deployment" tests/examples \
	  tests/core/test_flwr_run.py  # plain flwr run

bench-codecs: setup
	$(PY) bench/codecs.py --quick
