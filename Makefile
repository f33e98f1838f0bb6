# make run   - create .venv, install the project, serve the embedded default target
#              (RUN_ARGS="--listen 127.0.0.1:3261" etc. adds serve flags)
# make test  - create .venv, install with test extras (+ Debian interop tools as root), run pytest
# make bench - benchmark our target against tgt (tools/bench; BENCH_ARGS="--quick" etc.);
#              installs the test extras: some tools/bench_* reuse the tests' harnesses
# The interpreter of .venv: Debian's own /usr/bin/python3 where it can make a venv
# (python3-venv), else the first python3 on PATH.  Debian's is a static executable;
# a python3 built from source earlier on PATH (pyenv's default: a shared libpython,
# configured without --enable-optimizations) ran this pure-Python target and its
# clients 15-25% slower here, and starts 1-2 ms later.  PYTHON=... overrides.
SYSTEM_PYTHON := /usr/bin/python3
PYTHON ?= $(shell $(SYSTEM_PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 \
                  && echo $(SYSTEM_PYTHON) || echo python3)
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# Real initiators and a reference target used by the interop tests and the benchmark.
# qemu-block-extra holds qemu's iscsi:// driver (only a Recommends of qemu-utils).
# tshark (with dumpcap) is the reference decoder the PDU codec is compared with
# (tests/test_iscsi_pdu_golden.py); its debconf question needs the
# noninteractive frontend set below.
# qemu-system-x86, a Debian cloud kernel, busybox-static and mt-st boot a Linux
# guest whose st driver is the tape client of tests/test_tape_kernel.py.
# The Ceph packages boot the single-node cluster of the ceph_cluster fixture
# (scsi_target/testing/ceph.py); python3-rbd/-rados are the RBD and RADOS
# bindings, tgt-rbd gives tgt an RBD backing store (the peer for RBD LUNs).
DEB_PACKAGES := libiscsi-bin qemu-utils qemu-block-extra tgt tshark \
                qemu-system-x86 linux-image-cloud-amd64 busybox-static mt-st \
                ceph-mon ceph-osd ceph-common radosgw python3-rbd python3-rados tgt-rbd
RUN_ARGS ?=
PYTEST_ARGS ?=
BENCH_ARGS ?=

.PHONY: run test bench deb-packages clean

run: $(VENV)/.stamp-install
	$(PY) -m scsi_target serve $(RUN_ARGS)

test: $(VENV)/.stamp-test deb-packages
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

bench: $(VENV)/.stamp-test deb-packages
	tools/bench $(BENCH_ARGS)

$(PY):
	$(PYTHON) -m venv $(VENV)

# Stamps make the second run fast; editing pyproject.toml reinstalls.
$(VENV)/.stamp-install: pyproject.toml | $(PY)
	$(PIP) install -q -e .
	touch $@

$(VENV)/.stamp-test: pyproject.toml | $(PY)
	$(PIP) install -q -e '.[test]'
	touch $@ $(VENV)/.stamp-install

# Installs only what is missing, and only as root; otherwise the interop
# tests that need a missing tool skip themselves.
deb-packages:
	@missing=""; \
	for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    apt-get update -qq && apt-get install -y -qq --no-install-recommends $$missing; \
	  else \
	    echo "warning: Debian packages missing:$$missing (not root: interop tests will skip)"; \
	  fi; \
	fi

clean:
	rm -rf $(VENV) build *.egg-info
