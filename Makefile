# saom_ros: `make demo` sets up and runs the embedded default; `make test` runs every test.
VENV := .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# The demo and tests talk DDS on this machine only (no multicast on the network).
export ROS_AUTOMATIC_DISCOVERY_RANGE ?= LOCALHOST

.PHONY: setup test test-fast demo bench clean

setup:
	@bash scripts/setup.sh

# pytest with these arguments; it exits 5 when it collected no test, which must not pass
# unnoticed (make reports every failing recipe as exit 2): say so, and fail.
pytest = $(PY) -m pytest $(1) $(PYTEST_ARGS) || { rc=$$?; [ $$rc -ne 5 ] || \
	echo "make $@: pytest collected no tests; failing" >&2; exit $$rc; }

# The whole suite, slow tests included (this is what CI runs).
test: setup
	$(call pytest,-m "slow or not slow")

# The default, fast subset for development.
test-fast: setup
	$(call pytest)

demo: setup
	$(PY) scripts/demo.py

clean:
	rm -rf build demo_output .pytest_cache
