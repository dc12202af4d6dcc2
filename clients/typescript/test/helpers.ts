// Starts real daemons for the tests: MAJORDOMO_BIN (a path) or `majordomo` on PATH, each in a
// temporary --home. Without a binary the daemon tests are skipped, unless
// MAJORDOMO_REQUIRE_DAEMON=1 (CI), which makes them fail.
import { spawn, type ChildProcess } from "node:child_process";
import { accessSync, constants, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import * as path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
// build/test -> clients/typescript -> clients
export const CLIENTS = path.resolve(here, "..", "..", "..");
export const REPO = path.resolve(CLIENTS, "..");

export function daemonBin(): string | null {
  const b = process.env.MAJORDOMO_BIN;
  if (b) {
    accessSync(b, constants.X_OK);
    return b;
  }
  for (const dir of (process.env.PATH ?? "").split(path.delimiter)) {
    const p = path.join(dir, "majordomo");
    try {
      accessSync(p, constants.X_OK);
      return p;
    } catch {
      /* next */
    }
  }
  return null;
}

/** `skip` option for daemon tests: a reason when there is no binary (and CI does not require one). */
export function skipWithoutDaemon(): string | false {
  if (daemonBin()) return false;
  const msg = "no daemon binary: set MAJORDOMO_BIN=/path/to/majordomo or put majordomo on PATH";
  if (process.env.MAJORDOMO_REQUIRE_DAEMON === "1") throw new Error(msg);
  return msg;
}

export class Daemon {
  readonly dir: string;
  readonly socket: string;
  proc: ChildProcess | null = null;

  constructor(
    readonly home: string,
    readonly instance = "default",
    config?: string,
  ) {
    this.dir = path.join(home, instance);
    mkdirSync(this.dir, { recursive: true });
    writeFileSync(path.join(this.dir, "config.toml"), config ?? readFileSync(path.join(CLIENTS, "testdata", "config.toml"), "utf8"));
    this.socket = path.join(this.dir, "majordomo.sock");
  }

  async start(waitMs = 15_000): Promise<this> {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) if (!k.startsWith("MAJORDOMO_")) env[k] = v;
    rmSync(this.socket, { force: true });
    const p = spawn(daemonBin()!, ["--home", this.home, "--instance", this.instance, "run"], {
      stdio: ["ignore", "ignore", "pipe"],
      env,
    });
    let err = "";
    p.stderr!.on("data", (d: Buffer) => (err = (err + d.toString()).slice(-3000)));
    this.proc = p;
    const deadline = Date.now() + waitMs;
    while (!existsSync(this.socket)) {
      if (p.exitCode !== null) throw new Error(`the daemon exited with ${p.exitCode}: ${err}`);
      if (Date.now() > deadline) throw new Error(`the daemon did not create ${this.socket} within ${waitMs} ms: ${err}`);
      await new Promise((r) => setTimeout(r, 20));
    }
    return this;
  }

  async stop(signal: NodeJS.Signals = "SIGTERM"): Promise<number | null> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null) return p?.exitCode ?? null;
    const exited = new Promise<number | null>((r) => p.once("exit", (code) => r(code)));
    p.kill(signal);
    return exited;
  }

  /** Resolves with the exit code when the process ends by itself. */
  exited(): Promise<number | null> {
    const p = this.proc!;
    if (p.exitCode !== null) return Promise.resolve(p.exitCode);
    return new Promise((r) => p.once("exit", (code) => r(code)));
  }
}

export function tempHome(prefix = "md-ts-"): string {
  return mkdtempSync(path.join(tmpdir(), prefix));
}
