#!/usr/bin/env bash
# Installs the outside programs that tests and benchmarks drive or compare against (Debian
# packages). Each is optional: a test that needs a missing one skips with a clear message.
# Safe to run repeatedly: installs only what is missing.
set -uo pipefail

need() { # need PROGRAM DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$1" ] && return 0
    [ -x "/usr/bin/$1" ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "install-test-deps: not root; please install $2 (for $1)" >&2
        return 0
    fi
    command -v apt-get >/dev/null 2>&1 || { echo "install-test-deps: no apt-get; $1 stays missing" >&2; return 0; }
    echo "install-test-deps: installing $2" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
        || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1; } \
        || echo "install-test-deps: could not install $2; what needs $1 will skip" >&2
}

# Generated systemd units are checked with `systemd-analyze verify`.
need systemd-analyze systemd
# The refusal of a system-wide install is checked as the unprivileged user `nobody`.
need setpriv util-linux
# The bus benchmark's peer.
need nats-server nats-server
