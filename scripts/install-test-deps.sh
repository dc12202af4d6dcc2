#!/usr/bin/env bash
# Installs the outside programs that tests and benchmarks drive or compare against (Debian
# packages). Each is optional: a test that needs a missing one skips with a clear message, and
# this script never fails the run because a package could not be installed. Safe to run
# repeatedly: installs only what is missing, in one apt-get call.
set -uo pipefail

need=()
add() { # add PACKAGE COMMAND: queue PACKAGE when COMMAND is not found
    command -v "$2" >/dev/null 2>&1 && return 0
    [ -x "/usr/sbin/$2" ] || [ -x "/usr/bin/$2" ] || need+=("$1")
}

# Service install: generated systemd units are checked with `systemd-analyze verify`, and the
# refusal of a system-wide install is checked as the unprivileged user `nobody` (setpriv).
add systemd systemd-analyze
add util-linux setpriv
# The bus benchmark's peers: nats-server, and the two D-Bus implementations (dbus-daemon is
# also queued below for the monitor's notifications).
add nats-server nats-server
add dbus-broker dbus-broker-launch
# The supervisor benchmark's peer.
add supervisor supervisord
# Health monitor: desktop notifications to a real notification server on a private D-Bus
# session bus (dbus-daemon + dunst on a virtual X display), and the node_exporter peer of
# `majordomo-bench monitor`.
add dbus-daemon dbus-daemon
add dbus-bin dbus-send
add dunst dunst
add xvfb Xvfb
add prometheus-node-exporter prometheus-node-exporter
# HTTP: `promtool check metrics` on /metrics, and the dashboard journey in headless Chromium
# driven over WebDriver.
add prometheus promtool
add chromium chromium
add chromium-driver chromedriver
# HTTPS test: a CA and a server certificate made with the openssl CLI.
add openssl openssl

# The guest agent's VM smoke test (tests/it/guest_vm.rs): the VM harness beside the
# repository (shared/tools/vm) installs QEMU, a static busybox and friends, and downloads a
# Debian kernel and qemu-ga into its state folder (idempotent, < 1 s once done).
vm_harness="${MAJORDOMO_VM_HARNESS:-}"
if [ -z "$vm_harness" ]; then
    d="$(cd "$(dirname "$0")/.." && pwd)"
    while [ "$d" != / ]; do
        [ -x "$d/shared/tools/vm/vm-env.sh" ] && { vm_harness="$d/shared/tools/vm"; break; }
        d="$(dirname "$d")"
    done
fi
if [ -n "$vm_harness" ]; then
    "$vm_harness/vm-env.sh" setup >/dev/null 2>&1 \
        || echo "install-test-deps: vm-env.sh setup failed (the guest VM smoke test will skip)" >&2
fi

[ ${#need[@]} -eq 0 ] && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; else
        echo "install-test-deps: not root and no sudo; missing: ${need[*]} (what needs them will skip)" >&2
        exit 0
    fi
fi
echo "install-test-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
if ! $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; then
    { $sudo apt-get update -qq >/dev/null 2>&1 \
        && $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1; } \
        || echo "install-test-deps: could not install ${need[*]} (what needs them will skip)" >&2
fi
exit 0
