# saom_ros: `make demo` sets up and runs the embedded default; `make test` runs every test.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The demo and tests talk DDS on this machine only (no multicast on the network).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test test-fast demo bench clean

setup:
	@bash scripts/setup.sh

# The whole suite, slow tests included (this is what CI runs).
test: setup
	$(PY) -m pytest -m "slow or not slow" $(PYTEST_ARGS)

# The default, fast subset for development.
test-fast: setup
	$(PY) -m pytest $(PYTEST_ARGS)

demo: setup
	$(PY) scripts/demo.py

clean:
	rm -rf build demo_output .pytest_cache
