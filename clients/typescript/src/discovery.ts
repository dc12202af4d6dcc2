/**
 * Finding an instance's socket, with the same rules as the `majordomo` CLI: an explicit socket,
 * else `MAJORDOMO_SOCKET`, else the instance's place (`home` / `MAJORDOMO_HOME`, or the system or
 * per-user places of this OS), moved by the config file's `[paths] socket`
 * (or `MAJORDOMO_PATHS__SOCKET`) when it sets one.
 */
import { readFileSync } from "node:fs";
import * as os from "node:os";
import * as path from "node:path";

export interface DiscoveryOptions {
  /** Instance name (default `MAJORDOMO_INSTANCE`, else `default`). */
  instance?: string;
  /** Everything under one folder, like `majordomo --home DIR` (default `MAJORDOMO_HOME`). */
  home?: string;
  /** System places (`true`), per-user places (`false`); default: system for root on Unix. */
  system?: boolean;
  /** A socket path or pipe name, overriding everything (default `MAJORDOMO_SOCKET`). */
  socket?: string;
  /** The config file to read `[paths] socket` from (default `MAJORDOMO_CONFIG`, else the instance's). */
  config?: string;
  /** Environment to read instead of `process.env` (tests). */
  env?: Record<string, string | undefined>;
  /** Platform instead of `process.platform` (tests). */
  platform?: string;
}

export interface Place {
  instance: string;
  socket: string;
  configFile: string | null;
  mode: "system" | "user" | "home" | "explicit";
}

export const DEFAULT_INSTANCE = "default";

export function validateInstance(name: string): void {
  if (!/^[a-z0-9_-]{1,32}$/.test(name)) {
    throw new Error(`invalid instance name ${JSON.stringify(name)}: use 1 to 32 characters from a-z, 0-9, '_' and '-'`);
  }
}

export function resolve(opts: DiscoveryOptions = {}): Place {
  const env = opts.env ?? process.env;
  const platform = opts.platform ?? process.platform;
  const name = opts.instance || env.MAJORDOMO_INSTANCE || DEFAULT_INSTANCE;
  validateInstance(name);
  const explicit = opts.socket || env.MAJORDOMO_SOCKET;
  if (explicit) return { instance: name, socket: explicit, configFile: null, mode: "explicit" };
  const home = opts.home || env.MAJORDOMO_HOME;
  const win = platform === "win32";
  let mode: Place["mode"];
  if (home) mode = "home";
  else if (opts.system === undefined) {
    const root = !win && typeof process.geteuid === "function" && process.geteuid() === 0;
    mode = root ? "system" : "user";
  } else mode = opts.system ? "system" : "user";
  const [sock, cfg0] = places(name, mode, home, env, platform);
  const cfg = opts.config || env.MAJORDOMO_CONFIG || cfg0;
  const moved = env.MAJORDOMO_PATHS__SOCKET || (cfg ? configSocket(cfg) : null);
  return { instance: name, socket: moved || sock, configFile: cfg, mode };
}

function places(
  name: string,
  mode: Place["mode"],
  home: string | undefined,
  env: Record<string, string | undefined>,
  platform: string,
): [string, string | null] {
  const win = platform === "win32";
  if (mode === "home") {
    if (win) {
      const root = home!.replace(/[\\/]+$/, "") + "\\" + name;
      return [windowsHomePipe(root, name), root + "\\config.toml"];
    }
    const root = path.posix.join(home!, name);
    return [path.posix.join(root, "majordomo.sock"), path.posix.join(root, "config.toml")];
  }
  if (win) {
    if (mode === "system") {
      const base = (env.ProgramData || "C:\\ProgramData") + "\\majordomo\\" + name;
      return [`\\\\.\\pipe\\majordomo-${name}`, base + "\\config.toml"];
    }
    const local = env.LOCALAPPDATA || path.win32.join(os.homedir(), "AppData", "Local");
    const user = Array.from(env.USERNAME || "user")
      .map((c) => (/^[A-Za-z0-9]$/.test(c) ? c.toLowerCase() : "_"))
      .join("");
    return [`\\\\.\\pipe\\majordomo-${user}-${name}`, `${local}\\majordomo\\${name}\\config.toml`];
  }
  const userHome = env.HOME || os.homedir();
  if (platform === "darwin") {
    if (mode === "system") {
      return [`/var/run/majordomo/${name}.sock`, `/Library/Application Support/majordomo/${name}.toml`];
    }
    const lib = path.posix.join(userHome, "Library/Application Support/majordomo");
    return [path.posix.join(lib, name, "majordomo.sock"), path.posix.join(lib, `${name}.toml`)];
  }
  if (mode === "system") return [`/run/majordomo/${name}.sock`, `/etc/majordomo/${name}.toml`];
  const config = env.XDG_CONFIG_HOME || path.posix.join(userHome, ".config");
  const state = env.XDG_STATE_HOME || path.posix.join(userHome, ".local", "state");
  const runDir = env.XDG_RUNTIME_DIR
    ? path.posix.join(env.XDG_RUNTIME_DIR, "majordomo")
    : path.posix.join(state, "majordomo", name);
  return [path.posix.join(runDir, `${name}.sock`), path.posix.join(config, "majordomo", `${name}.toml`)];
}

/** The `[paths] socket` of a TOML config file, if it sets one (a small scan, not a TOML parser). */
export function configSocket(file: string): string | null {
  let text: string;
  try {
    text = readFileSync(file, "utf8");
  } catch {
    return null;
  }
  let section = "";
  for (const line of text.split(/\r?\n/)) {
    const s = /^\s*\[\s*([A-Za-z0-9_.\-"]+)\s*\]\s*(#.*)?$/.exec(line);
    if (s) {
      section = s[1].replace(/"/g, "");
      continue;
    }
    if (section !== "paths") continue;
    const m = /^\s*socket\s*=\s*(?:"((?:[^"\\]|\\.)*)"|'([^']*)')\s*(#.*)?$/.exec(line);
    if (m) return m[1] !== undefined ? (JSON.parse(`"${m[1]}"`) as string) : m[2];
  }
  return null;
}

// --- Windows `--home` pipe names -------------------------------------------------------------
// The daemon names the pipe after Rust's DefaultHasher (SipHash-1-3, zero keys) over
// `Path::hash` of `HOME\NAME`: `\\.\pipe\majordomo-<16 hex>-NAME`. MAJORDOMO_SOCKET avoids it.

const MASK = (1n << 64n) - 1n;
const rotl = (x: bigint, b: bigint): bigint => ((x << b) | (x >> (64n - b))) & MASK;

export function siphash13(data: Uint8Array): bigint {
  let v0 = 0x736f6d6570736575n;
  let v1 = 0x646f72616e646f6dn;
  let v2 = 0x6c7967656e657261n;
  let v3 = 0x7465646279746573n;
  const round = () => {
    v0 = (v0 + v1) & MASK;
    v1 = rotl(v1, 13n) ^ v0;
    v0 = rotl(v0, 32n);
    v2 = (v2 + v3) & MASK;
    v3 = rotl(v3, 16n) ^ v2;
    v0 = (v0 + v3) & MASK;
    v3 = rotl(v3, 21n) ^ v0;
    v2 = (v2 + v1) & MASK;
    v1 = rotl(v1, 17n) ^ v2;
    v2 = rotl(v2, 32n);
  };
  const le = (bytes: Uint8Array): bigint => {
    let x = 0n;
    for (let i = bytes.length - 1; i >= 0; i--) x = (x << 8n) | BigInt(bytes[i]);
    return x;
  };
  const n = data.length;
  const end = n - (n % 8);
  for (let i = 0; i < end; i += 8) {
    const m = le(data.subarray(i, i + 8));
    v3 ^= m;
    round();
    v0 ^= m;
  }
  const b = (BigInt(n & 0xff) << 56n) | le(data.subarray(end));
  v3 ^= b;
  round();
  v0 ^= b;
  v2 ^= 0xffn;
  round();
  round();
  round();
  return v0 ^ v1 ^ v2 ^ v3;
}

/** The bytes Rust's `Path::hash` feeds its hasher (a plain or drive-letter path). */
export function rustPathHashBytes(p: string, windows: boolean): Uint8Array {
  let raw = Buffer.from(p, "utf8");
  const out: number[] = [];
  const u64 = (x: bigint) => {
    for (let i = 0n; i < 8n; i++) out.push(Number((x >> (8n * i)) & 0xffn));
  };
  const isSep = (c: number) => c === 0x2f || (windows && c === 0x5c);
  if (windows && raw.length >= 2 && raw[1] === 0x3a && /[A-Za-z]/.test(String.fromCharCode(raw[0]))) {
    u64(5n); // Prefix::Disk, as an isize discriminant
    out.push(String.fromCharCode(raw[0]).toUpperCase().charCodeAt(0));
    raw = raw.subarray(2);
  }
  let start = 0;
  let hashed = 0n;
  const take = (a: number, b: number) => {
    for (let i = a; i < b; i++) out.push(raw[i]);
    const x = (hashed + BigInt(b - a)) & MASK;
    hashed = ((x >> 2n) | (x << 62n)) & MASK;
  };
  for (let i = 0; i < raw.length; i++) {
    if (isSep(raw[i])) {
      if (i > start) take(start, i);
      start = i + 1;
      const rest = raw.length - start;
      if ((rest === 1 && raw[start] === 0x2e) || (rest >= 2 && raw[start] === 0x2e && isSep(raw[start + 1]))) start += 1;
    }
  }
  if (start < raw.length) take(start, raw.length);
  u64(hashed);
  return Uint8Array.from(out);
}

export function rustPathHash(p: string, windows: boolean): bigint {
  return siphash13(rustPathHashBytes(p, windows));
}

/** The pipe of an instance under `home` on Windows; `root` is `HOME\NAME`. */
export function windowsHomePipe(root: string, name: string): string {
  return `\\\\.\\pipe\\majordomo-${rustPathHash(root, true).toString(16).padStart(16, "0")}-${name}`;
}
