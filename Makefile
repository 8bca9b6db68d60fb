# `make demo`: set up .venv and train + evaluate the embedded default (2-D toy, CPU, ~2 minutes).
# `make test`: set up .venv and run the whole test suite (two pytest-xdist workers).
PYTHON ?= python3
VENV ?= .venv
DEMO_WORKDIR ?= runs/demo

.PHONY: install demo test clean

$(VENV)/installed: setup.py
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/installed

demo: install
	$(VENV)/bin/score-sde --workdir $(DEMO_WORKDIR) --mode train
	$(VENV)/bin/score-sde --workdir $(DEMO_WORKDIR) --mode eval

test: install
	$(VENV)/bin/python -m pytest -q -n 2 --dist loadfile tests

clean:
	rm -rf $(VENV) *.egg-info
