#!/usr/bin/env bash
# Installs the outside programs that tests and benchmarks compare against or drive. Each is
# optional: a test that needs a missing one skips with a message. Safe to run repeatedly.
set -uo pipefail

need() { # need PROGRAM DEBIAN-PACKAGE
    command -v "$1" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$1" ] && return 0
    command -v apt-get >/dev/null 2>&1 || { echo "install-test-deps: no apt-get; $1 stays missing"; return 0; }
    apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1 \
        || { apt-get update >/dev/null 2>&1 && apt-get install -y --no-install-recommends "$2" >/dev/null 2>&1; } \
        || echo "install-test-deps: could not install $2; what needs $1 will skip"
}

# The bus benchmark's peer.
need nats-server nats-server
