#!/usr/bin/env bash
# Installs the outside programs the tests use (Debian packages). Tests that need one skip with a
# clear message when it is still missing. Safe to run again: installs only what is missing.
set -uo pipefail
need=()
# systemd-analyze: the generated systemd units are checked with `systemd-analyze verify`.
command -v systemd-analyze >/dev/null || need+=(systemd)
# setpriv: the refusal of a system-wide install is checked as the unprivileged user `nobody`.
command -v setpriv >/dev/null || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "install-test-deps: not root; please install: ${need[*]}" >&2
    exit 0
  fi
  echo "install-test-deps: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1 \
    || { apt-get update -qq >/dev/null 2>&1 && apt-get install -y --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
    || echo "install-test-deps: could not install ${need[*]}; the tests that need them will skip" >&2
fi
