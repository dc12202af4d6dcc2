#!/usr/bin/env bash
# Installs the outside programs the tests and benchmarks use (Debian packages). Each test that
# needs one skips with a clear message if it is still missing; this script never fails the run
# because a package could not be installed.
set -uo pipefail

need=()
add() { # add PACKAGE COMMAND: queue PACKAGE when COMMAND is not on PATH
    command -v "$2" >/dev/null 2>&1 || need+=("$1")
}

# Health monitor: desktop notifications to a real notification server on a private D-Bus
# session bus (dbus-daemon + dunst on a virtual X display), and the node_exporter peer of
# `majordomo-bench monitor`.
add dbus-daemon dbus-daemon
add dbus-bin dbus-send
add dunst dunst
add xvfb Xvfb
add prometheus-node-exporter prometheus-node-exporter

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
        echo "install-test-deps: not root and no sudo; missing: ${need[*]} (the tests that need them will skip)"
        exit 0
    fi
fi
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y --no-install-recommends "${need[@]}"; then
    $sudo apt-get update && $sudo apt-get install -y --no-install-recommends "${need[@]}" ||
        echo "install-test-deps: could not install ${need[*]} (the tests that need them will skip)"
fi
exit 0
