# kdumpd — fresh-machine entry points.  `make test` and `make demo` install what they
# need (Debian packages when missing, a .venv, the project) and then run.

SHELL := /bin/bash
PYTHON_SYS ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Debian packages: build deps of systemd-python/pylibfdt and of the purgatory (gcc,
# binutils, make; libc6-dev for the host-compiled purgatory tests), the real tools the tests
# check against (readelf, dtc, dbus-daemon, busctl, setpriv, polkitd) and the e2e harness.
APT_PACKAGES := python3-venv python3-dev gcc libc6-dev make pkg-config libsystemd-dev libudev1 \
	binutils device-tree-compiler dbus dbus-daemon systemd util-linux \
	qemu-system-x86 kexec-tools busybox-static cpio xz-utils zstd kmod \
	qemu-system-ppc polkitd ovmf gcc-powerpc64le-linux-gnu libc6-dev-ppc64el-cross dpkg-dev

.PHONY: all bootstrap apt venv purgatory test lint typecheck pytest fuzz demo bench e2e install clean

all: test

apt:
	@missing=$$(for p in $(APT_PACKAGES); do \
		dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; \
	done); \
	if [ -n "$$missing" ]; then \
		echo "make: installing Debian packages:" $$missing; \
		if [ "$$(id -u)" != 0 ]; then \
			echo "make: need root to apt-get install: $$missing" >&2; exit 1; fi; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	fi

$(STAMP): pyproject.toml setup.py | apt
	test -x $(PY) || $(PYTHON_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: apt $(STAMP) purgatory

# The x86_64 purgatory blob (docs/purgatory.md): build/purgatory/x86_64/purgatory.bin.
# `pip install .` builds it too (setup.py) and ships it inside the package.
purgatory: apt
	$(MAKE) -C purgatory/x86_64 O=$(CURDIR)/build/purgatory/x86_64

bootstrap: venv

lint: venv
	$(VENV)/bin/ruff check kdumpd tests bench
	$(VENV)/bin/ruff format --check kdumpd tests bench

typecheck: venv
	$(VENV)/bin/mypy

pytest: venv
	$(VENV)/bin/pytest -q

test: lint typecheck pytest

# Every reader of outside input, FUZZ_CASES mutated inputs each (>= 10^5), FUZZ_JOBS
# targets at a time, a case longer than FUZZ_TIME_LIMIT s is a hang; a target stops
# at FUZZ_BUDGET s (and then fails: too few cases).  About 10 minutes on 2 cores.
FUZZ_CASES ?= 100000
FUZZ_JOBS ?= 2
FUZZ_TIME_LIMIT ?= 2
FUZZ_BUDGET ?= 1800
fuzz: venv
	$(PY) -m tests.fuzz --cases $(FUZZ_CASES) --jobs $(FUZZ_JOBS) \
		--time-limit $(FUZZ_TIME_LIMIT) --budget $(FUZZ_BUDGET) $(FUZZ_TARGETS)

demo: venv
	$(PY) -m kdumpd.demo

bench: venv
	$(PY) bench/elfcorehdr.py
	$(PY) bench/topology.py
	$(PY) bench/fdt.py
	$(PY) bench/dbus_latency.py
	$(PY) bench/storm.py
	$(PY) bench/segment_burst.py

e2e: venv
	$(PY) -m tests.e2e.run $(if $(ARCH),--arch $(ARCH)) $(if $(KERNELS),--kernels "$(KERNELS)") $(if $(SCENARIOS),--scenarios "$(SCENARIOS)") $(if $(BACKENDS),--backends "$(BACKENDS)")

# System install: the package in its own venv under $(PREFIX)/lib/kdumpd, commands
# linked into $(PREFIX)/sbin, and the unit, udev overrides, bus policy, bus activation,
# polkit actions, example configuration and man pages where systemd, udev, dbus and
# polkit look for them.
PREFIX ?= /usr/local
DESTDIR ?=
install: apt
	$(PYTHON_SYS) -m venv $(DESTDIR)$(PREFIX)/lib/kdumpd
	$(DESTDIR)$(PREFIX)/lib/kdumpd/bin/pip install -q .
	# staging (DESTDIR set): the venv's scripts and pyvenv.cfg name their final place
	if [ -n "$(DESTDIR)" ]; then \
		grep -rlI -- "$(DESTDIR)" $(DESTDIR)$(PREFIX)/lib/kdumpd/bin $(DESTDIR)$(PREFIX)/lib/kdumpd/pyvenv.cfg \
			| xargs -r sed -i "s|$(DESTDIR)||g"; fi
	install -d $(DESTDIR)$(PREFIX)/sbin
	ln -sf $(PREFIX)/lib/kdumpd/bin/kdumpd $(DESTDIR)$(PREFIX)/sbin/kdumpd
	ln -sf $(PREFIX)/lib/kdumpd/bin/kdumpctl $(DESTDIR)$(PREFIX)/sbin/kdumpd-kdumpctl
	install -d $(DESTDIR)/etc/systemd/system
	sed -e 's|^ExecStart=/usr/bin/kdumpd|ExecStart=$(PREFIX)/sbin/kdumpd|' \
		-e 's|file:/usr/share/doc/kdumpd|file:$(PREFIX)/share/doc/kdumpd|' \
		systemd/kdumpd.service > $(DESTDIR)/etc/systemd/system/kdumpd.service
	install -D -m 0644 udev/98-kexec.rules $(DESTDIR)/etc/udev/rules.d/98-kexec.rules
	install -D -m 0644 udev/50-kdump-tools.rules $(DESTDIR)/etc/udev/rules.d/50-kdump-tools.rules
	install -D -m 0644 dbus/org.kdumpd1.conf $(DESTDIR)/usr/share/dbus-1/system.d/org.kdumpd1.conf
	install -D -m 0644 dbus/org.kdumpd1.service \
		$(DESTDIR)/usr/share/dbus-1/system-services/org.kdumpd1.service
	install -D -m 0644 polkit/org.kdumpd1.policy \
		$(DESTDIR)/usr/share/polkit-1/actions/org.kdumpd1.policy
	test -e $(DESTDIR)/etc/kdumpd/kdumpd.toml || \
		install -D -m 0644 docs/kdumpd.toml $(DESTDIR)/etc/kdumpd/kdumpd.toml
	install -D -m 0644 docs/man/kdumpd.8 $(DESTDIR)$(PREFIX)/share/man/man8/kdumpd.8
	install -D -m 0644 docs/man/kdumpctl.8 $(DESTDIR)$(PREFIX)/share/man/man8/kdumpctl.8
	install -d $(DESTDIR)$(PREFIX)/share/doc/kdumpd
	install -m 0644 README.md docs/design.md docs/purgatory.md docs/dbus-api.md docs/replay-format.md \
		docs/org.kdumpd1.Manager.xml $(DESTDIR)$(PREFIX)/share/doc/kdumpd/
	install -m 0644 udev/README.md $(DESTDIR)$(PREFIX)/share/doc/kdumpd/udev-rules.md
	@echo "installed; kdumpctl shim is $(PREFIX)/sbin/kdumpd-kdumpctl (link it to kdumpctl where kdump-utils is absent)"

clean:
	rm -rf $(VENV) build .mypy_cache .ruff_cache .pytest_cache .hypothesis .fuzz-findings
