# msixlab: the two set-up commands are `make run` and `make test`; everything they need
# (host packages, the venv, the image) is installed on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MSIXLAB := $(VENV)/bin/msixlab
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed

.PHONY: setup image run test unit guest-test bench doctor boot kmod clean clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml images/host-setup.sh
	sh images/host-setup.sh
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

image: setup
	$(MSIXLAB) image build

# The main job on the default guest (KERNEL_FLAVOR=lts for the other kernel).
run: image
	$(MSIXLAB) run

# All tests: host-only unit tests, then the ones that boot the real guest.
test: image
	$(PYTEST) -ra

unit: setup
	$(PYTEST) -ra tests

guest-test: image
	$(PYTEST) -ra -m guest guest_tests

bench: setup
	$(PY) -m bench
	$(PY) -m bench.kernel

doctor: setup
	$(MSIXLAB) doctor

boot: image
	$(MSIXLAB) boot --count 5

clean:
	rm -rf results build

clean-cache: setup
	$(MSIXLAB) image clean
