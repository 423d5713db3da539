# Two commands do all set-up on a fresh clone:
#   make demo   creates .venv if missing, then runs the HPN demo on built-in phantoms (CPU, < 10 min)
#   make test   creates .venv if missing, then runs the test suite
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nnunet-hpn-installed

.PHONY: demo test env clean

env: $(STAMP)

$(STAMP): pyproject.toml setup.py nnunet_hpn_startup.pth
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade "pip>=23.1"
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1 nnunetv2==2.8.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

demo: $(STAMP)
	PYTHONUTF8=1 $(VENV)/bin/nnunet-hpn demo --workdir demo_output

# UTF-8 whatever the machine's locale (progress bars, ± and ∪ in reports)
test: $(STAMP)
	PYTHONUTF8=1 $(PY) -m pytest -q -ra --durations=15

clean:
	rm -rf demo_output .pytest_cache
