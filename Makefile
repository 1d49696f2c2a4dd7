# msixlab: the two set-up commands are `make run` and `make test`; everything they need
# (host packages, the venv, the image) is installed on first use.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
MSIXLAB := $(VENV)/bin/msixlab
PYTEST := $(VENV)/bin/pytest
STAMP := $(VENV)/.installed

.PHONY: setup image run test unit guest-test guest-test-random matrix fuzz bench mutate doctor boot kmod clean clean-cache

setup: $(STAMP)

$(STAMP): pyproject.toml images/host_packages.py
	$(PYTHON) images/host_packages.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

image: setup
	$(MSIXLAB) image build

# The main job on the default guest (KERNEL_FLAVOR=lts for the other kernel).
run: image
	$(MSIXLAB) run

# Guest tests run on this many pytest-xdist workers, each with its own guests
# (docs/writing-tests.md: memory per guest); --dist loadscope keeps a module's tests,
# which share a module-scoped lab, on one worker.
GUEST_JOBS ?= 2
GUEST_PYTEST = $(PYTEST) -ra -n $(GUEST_JOBS) --dist loadscope -m guest guest_tests

# All tests: host-only unit tests, then the ones that boot the real guest.
test: image
	$(PYTEST) -ra tests
	$(GUEST_PYTEST)

unit: setup
	$(PYTEST) -ra tests

guest-test: image
	$(GUEST_PYTEST)

# The guest tests in a random order (modules shuffled, and the tests inside each module),
# to show no test depends on another's leftovers.  The seed is printed; SEED=N replays an
# order (every xdist worker must shuffle alike, so the seed is chosen here, once).
ifeq ($(origin SEED),undefined)
SEED := $(shell od -An -N2 -tu2 /dev/urandom | tr -d ' ')
endif
guest-test-random: image
	@echo "guest tests in random order: SEED=$(SEED)"
	$(GUEST_PYTEST) -p random_order --random-order-bucket=module --random-order-seed=$(SEED)

# default, cpu-hotplug, remove-rescan, suspend x (no IOMMU, --iommu) x (MSI-X default,
# maskable, noresize) x (2, 4 CPUs), then vfio-pci on 2 and 4 CPUs and vfio-selftests once:
# 51 runs, 9-14 s each on the idle 2-core development host, several times that under load
# (docs/scenarios.md).
matrix: image
	$(PY) -m agent.host.jobs.matrix

# The project's fuzzer, long: the same properties and state machine that `make test` runs
# briefly (tests/test_fuzz_*.py), with 50x the examples (MSIXLAB_FUZZ_EXAMPLES=N to choose).
fuzz: setup
	MSIXLAB_FUZZ=long $(PYTEST) -q --timeout=0 tests/test_fuzz_codecs.py tests/test_fuzz_server.py

bench: image
	$(PY) -m bench
	$(PY) -m bench.verdict
	$(PY) -m bench.kernel
	$(PY) -m bench.irq_rate
	$(PY) -m bench.selftests_build

# The mutation suite (docs/mutate.md): every planted bug must make the main job exit 1
# naming an expected check.  About 6 minutes on an idle 2-core host, 25 loaded, so not in
# `make test` (which runs the catalogue's own unit test).  MUTANTS='kmod-*' selects by name or glob.
mutate: image
	$(PY) -m mutants.run $(foreach m,$(MUTANTS),'$(m)')

doctor: setup
	$(MSIXLAB) doctor

boot: image
	$(MSIXLAB) boot --count 5

clean:    # never through a mount point or a symlink (msixlab_common/removal.py)
	$(PYTHON) -c 'import sys; from msixlab_common.removal import remove_tree; [remove_tree(p) for p in sys.argv[1:]]' results build

clean-cache: setup
	$(MSIXLAB) image clean
