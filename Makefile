# `make demo` and `make test` are the whole set-up on a fresh machine: each creates .venv if missing,
# installs everything into it (torch pinned first), then runs.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip -q --disable-pip-version-check
# Debian packages: sshd for the SSH-device tests, the aarch64 cross compiler for TVM, qemu + mmdebstrap
# for the emulated arm64 board, chromium to render the HTML report in tests, postgresql for the store's
# PostgreSQL tests (a throwaway server on 127.0.0.1; the Debian cluster it installs is not used).
DEBIAN_PKGS := openssh-server openssh-client gcc-aarch64-linux-gnu g++-aarch64-linux-gnu qemu-user-static mmdebstrap chromium postgresql
STAMP := $(VENV)/.edgeopt-installed
PYTEST_ARGS ?=

.PHONY: setup system demo test test-slow test-emulator lint clean docs

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -c constraints.txt torch==2.14.1 torchvision==0.29.1
	$(PIP) install -c constraints.txt -e '.[tflite,coreml,devices,report,vlm,data,test,lab,executorch,genai]'
	$(PIP) install -c constraints.txt -e '.[tvm]'
	@touch $(STAMP)

setup: $(STAMP) system

system:
	@scripts/system-deps.sh $(DEBIAN_PKGS)

demo: setup
	$(PY) examples/demo.py

# pytest's exit 5 (nothing collected, e.g. every test deselected by markers) is said and not failed here:
# make turns any recipe error into its own exit 2, so .ci/run could not tell it from a failure.
test: setup
	$(PY) -m pytest tests $(PYTEST_ARGS) || { rc=$$?; if [ $$rc -eq 5 ]; then echo "pytest collected no tests (exit 5)" >&2; exit 0; fi; exit $$rc; }

# The emulated arm64 board (built from Debian's mirror on a fresh machine, then cached), its tests, and the
# device suite on it: every family on onnxruntime + efficientformer on every backend (tflite, tvm cross-compiled).
test-emulator: setup
	$(PY) -m pytest tests -m emulator $(PYTEST_ARGS)
	$(PY) -m pytest device_tests --device qemu-arm64 --matrix ci --report out/device_tests-qemu-arm64.md $(PYTEST_ARGS)

test-slow: setup
	$(PY) -m pytest tests -m slow $(PYTEST_ARGS)

# Every measured table in README.md and docs/, regenerated in one sequential run on a quiet machine (hours:
# `$(PY) bench/all.py --list`). A run that other processes contaminated writes nothing. DOCS_ARGS: e.g.
# `--only latency,tvm`, `--allow-contaminated`, `--max-foreign-share 0.2`; `--status` rewrites docs/conditions.md's
# step table from the stamps on the pages without measuring.
DOCS_ARGS ?=
docs: setup
	$(PY) bench/all.py $(DOCS_ARGS)

lint: setup
	$(VENV)/bin/ruff check edgeopt tests bench examples device_tests

clean:
	rm -rf $(VENV) .pytest_cache edgeopt.egg-info
