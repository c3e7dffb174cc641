# hpbx — the two commands a newcomer needs:  make run   and   make test
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
CONFIG ?= config/hpbx.toml

.PHONY: all build run test bench system-deps bench-deps clean

all: build

# Virtual environment with the project's dependencies (from pyproject.toml).
$(STAMP): pyproject.toml setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel "cython>=3.0"
	$(PY) -m pip install -q --no-build-isolation -e '.[test,bench]'
	touch $@

# Compile the Cython hot paths in place (only what changed is rebuilt).
build: $(STAMP) build/prompts/.built
	$(PY) setup.py -q build_ext --inplace -j 2

# System prompts: en converted from Debian's asterisk sounds, de spoken by espeak-ng (the
# prompt list is hpbx/media/prompts.py; a missing package leaves its set out, with a note).
build/prompts/.built: hpbx/media/prompts.py hpbx/media/audio.py $(STAMP)
	$(PY) -m hpbx.media.prompts build build/prompts
	touch $@

# Debian packages the tests drive, one line per concern (append to your own line).
# Installed when running as root and any of them is missing.
DEB_PKGS := sip-tester iptables iproute2
DEB_PKGS += asterisk-core-sounds-en-wav asterisk-moh-opsound-wav libspandsp-dev # media engine (prompt corpus, G.722)
DEB_PKGS += espeak-ng lame asterisk-core-sounds-en-wav asterisk-moh-opsound-wav # media services (German prompts, MP3 test files, prompts, music on hold)
DEB_PKGS += baresip-core linphone-cli # real phones (interop)
DEB_PKGS += sipvicious fail2ban # security
DEB_PKGS += chromium chromium-driver curl # web face
DEB_PKGS += postgresql redis-server # scale (databases)
DEB_PKGS += libtiff-tools ghostscript mpg123 # fax (tiff2pdf; PDF pages checked by Ghostscript), voicemail (MP3 attachments decoded by the tests)

system-deps:
	@missing=$$(for p in $(DEB_PKGS); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q 'install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages: $$missing"; \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q $$missing; \
	  else echo "missing Debian packages and not root: $$missing (their tests will skip)"; fi; \
	fi

run: build
	mkdir -p var
	$(VENV)/bin/hpbx serve --config $(CONFIG)

test: build system-deps
	$(PY) -m pytest -q tests

# The anchors the benchmarks compare against (Kamailio 5.6, rtpengine), when run as root.
bench-deps:
	@if ! command -v kamailio >/dev/null 2>&1 || ! command -v rtpengine >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q kamailio rtpengine; \
	  else echo "kamailio/rtpengine missing and not root: their anchor figures are skipped"; fi; \
	fi

bench: build system-deps bench-deps
	$(PY) -m pytest -q -s bench --benchmark-columns=min,median,mean,ops,rounds

clean:
	rm -rf build var hpbx/_fast/*.c hpbx/_fast/*.so hpbx/_fast/*.html
