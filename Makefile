# The two commands a newcomer needs are `make demo` and `make test`.
# Every target creates .venv on first use and reuses it afterwards; the venv is the
# only environment the project trusts (a system Python may carry an old trio).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench venv clean typecheck-tree

demo: $(STAMP)
	$(VENV)/bin/qkdnet demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest $(PYTEST_ARGS)

lint: $(STAMP) typecheck-tree
	$(VENV)/bin/ruff check stack phy link hub apps tests bench tools examples
	$(VENV)/bin/mypy .typecheck/qkdnet

bench: $(STAMP)
	$(PY) bench/run_all.py

venv: $(STAMP)

# Reinstall whenever the project metadata changes.
$(STAMP): pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "qkdnet needs Python >= 3.11; found " + sys.version.split()[0])'
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# mypy cannot follow the package-dir mapping of an editable install, so it checks a
# tree of symlinks laid out the way the package is installed.
typecheck-tree:
	$(PY) tools/typecheck_tree.py .typecheck

clean:
	rm -rf $(VENV) .typecheck build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
