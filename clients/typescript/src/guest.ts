/**
 * The host side of the guest agent's second virtio-serial port (`org.majordomo.0`).
 *
 * QEMU exposes a guest's virtio-serial port on the host as a Unix socket
 * (`-chardev socket,path=/run/vm1-majordomo.sock,server=on,wait=off`, or libvirt's
 * `<channel type='unix'>`). Through it the guest's majordomo speaks the same NDJSON protocol as
 * its local socket: control commands, the bus, every subsystem's commands, and `$sys.metrics`
 * pushed every interval. The differences this helper handles:
 *
 * - the socket accepts a connection before the guest's agent listens (the VM is booting, or the
 *   agent restarts): `hello` is resent every `helloRetryMs` until it is answered, within `waitMs`;
 * - bytes left over on the port from an earlier session are skipped (lines that are not JSON,
 *   replies to ids this connection never sent);
 * - the VM stops and starts: the client reconnects with backoff and restores subscriptions.
 */
import { Client, type ConnectOptions, type Subscription } from "./client.js";
import type { JsonValue } from "./generated.js";

export interface GuestChannelOptions
  extends Omit<ConnectOptions, "instance" | "home" | "system" | "socket" | "config" | "env" | "platform"> {
  /** How long to wait for the guest's agent to answer (default 60 000: a booting VM). */
  waitMs?: number;
  /** How often to resend `hello` while the guest is silent (default 1 000). */
  helloRetryMs?: number;
}

/** Connects to a guest's majordomo through the host end of its virtio-serial port. */
export async function connectGuest(socketPath: string, opts: GuestChannelOptions = {}): Promise<Client> {
  return Client.connect({
    ...opts,
    socket: socketPath,
    env: {},
    waitMs: opts.waitMs ?? 60_000,
    helloRetryMs: opts.helloRetryMs ?? 1_000,
    maxBackoffMs: opts.maxBackoffMs ?? 2_000,
  });
}

/** The guest's metrics as the agent pushes them (`$sys.metrics`, every `[monitor] interval`). */
export function guestMetrics(client: Client): Promise<Subscription<JsonValue>> {
  return client.subscribe("$sys.metrics");
}
