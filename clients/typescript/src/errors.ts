/** Errors of the majordomo client. Each says what went wrong and what to do. */

export class MajordomoError extends Error {
  constructor(message: string) {
    super(message);
    this.name = new.target.name;
  }
}

/** No daemon listens on the instance's socket. */
export class NotRunningError extends MajordomoError {
  constructor(
    readonly instance: string | null,
    readonly socket: string,
    readonly reason: string,
  ) {
    const who = instance ? `no instance '${instance}' is running` : "no majordomo instance is running";
    const flag = instance && instance !== "default" ? ` --instance ${instance}` : "";
    super(`${who}: socket ${socket} ${reason}; start it with \`majordomo run${flag}\``);
  }
}

export class PermissionDeniedError extends MajordomoError {
  constructor(readonly socket: string) {
    super(
      `permission denied on ${socket}: run as the daemon's user or root, or list your user in [control] allowed_users`,
    );
  }
}

/** The connection closed before the reply came. */
export class ConnectionLostError extends MajordomoError {
  constructor(message = "the daemon closed the connection before replying") {
    super(message);
  }
}

/** No reply within the call's timeout. */
export class CallTimeoutError extends MajordomoError {
  constructor(
    readonly cmd: string,
    readonly timeoutMs: number,
  ) {
    super(
      `no reply to '${cmd}' within ${timeoutMs} ms; the daemon may be overloaded or stuck (check \`majordomo status\`), or pass a longer timeoutMs`,
    );
  }
}

/** The daemon answered with an error; `code` is machine-readable (`not_found`, `timeout`, ...). */
export class RemoteError extends MajordomoError {
  constructor(
    readonly code: string,
    readonly remoteMessage: string,
    readonly details?: unknown,
    readonly cmd?: string,
  ) {
    let text = `${remoteMessage} (${code})`;
    if (code === "forbidden" && remoteMessage.includes("token")) text += "; pass token or set MAJORDOMO_TOKEN";
    super(text);
  }
}
