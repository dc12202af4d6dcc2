/**
 * majordomo-client: talk to a majordomo instance from Node.js: every control command as a typed
 * method, the local message bus (events, publish/subscribe with wildcards and queue groups,
 * request/reply), and the guest agent's host channel.
 *
 * ```ts
 * import { connect } from "majordomo-client";
 * const md = await connect("default");
 * console.log((await md.status()).uptime_s);
 * ```
 */
export * from "./client.js";
export * from "./discovery.js";
export * from "./errors.js";
export * from "./guest.js";
export * from "./generated.js";
