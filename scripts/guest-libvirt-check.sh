#!/usr/bin/env bash
# virsh against majordomo as the guest agent, under a real libvirt (qemu:///session): runs the
# VM harness's libvirt-check.sh (shared/tools/vm, or $MAJORDOMO_VM_HARNESS) with BIN (default
# target/debug/majordomo, stripped into a temporary copy), printing `qemu-agent-command
# guest-info`, domfsinfo, domifaddr --source agent, guestinfo, domtime, guestvcpus and
# domhostname. Exit status: the harness's (0 = the agent answered and guest-info worked).
# As root the state folder must be traversable by `nobody`: VM_ENV_STATE defaults to
# /var/tmp/vm-env here.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
bin="${1:-$root/target/debug/majordomo}"
h="${MAJORDOMO_VM_HARNESS:-}"
if [ -z "$h" ]; then
    d="$root"
    while [ "$d" != / ]; do
        [ -x "$d/shared/tools/vm/libvirt-check.sh" ] && { h="$d/shared/tools/vm"; break; }
        d="$(dirname "$d")"
    done
fi
[ -n "$h" ] || { echo "guest-libvirt-check: no VM harness (shared/tools/vm); set MAJORDOMO_VM_HARNESS" >&2; exit 2; }
export VM_ENV_STATE="${VM_ENV_STATE:-/var/tmp/vm-env}"
"$h/vm-env.sh" setup >/dev/null
tmp="$(mktemp -d /tmp/mjlv.XXXXXX)"
trap 'rm -rf "$tmp"' EXIT
chmod 755 "$tmp"
cp "$bin" "$tmp/majordomo" && strip "$tmp/majordomo" 2>/dev/null || true
printf '[monitor]\nenabled = false\n[http]\nenabled = false\n' >"$tmp/guest.toml"
chmod 644 "$tmp/guest.toml"
QGA_EXTRA_FILES="$tmp/guest.toml:/etc/majordomo.toml" \
    "$h/libvirt-check.sh" "$tmp/majordomo" -- --home /tmp/md --config /etc/majordomo.toml run
