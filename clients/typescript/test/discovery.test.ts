import assert from "node:assert/strict";
import { mkdirSync, writeFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { resolve, rustPathHash, windowsHomePipe } from "../src/index.js";
import { tempHome } from "./helpers.js";

test("explicit socket and MAJORDOMO_SOCKET win", () => {
  assert.equal(resolve({ instance: "x", socket: "/s", env: { MAJORDOMO_SOCKET: "/e" } }).socket, "/s");
  const p = resolve({ instance: "x", env: { MAJORDOMO_SOCKET: "/e", MAJORDOMO_HOME: "/h" } });
  assert.deepEqual([p.socket, p.mode], ["/e", "explicit"]);
});

test("home places", () => {
  const p = resolve({ instance: "web", home: "/srv/md", env: {}, platform: "linux" });
  assert.equal(p.socket, "/srv/md/web/majordomo.sock");
  assert.equal(p.configFile, "/srv/md/web/config.toml");
  assert.equal(resolve({ env: { MAJORDOMO_HOME: "/h", MAJORDOMO_INSTANCE: "a" }, platform: "linux" }).socket, "/h/a/majordomo.sock");
});

test("linux user and system places", () => {
  const env = { HOME: "/home/u", XDG_RUNTIME_DIR: "/run/user/1000" };
  assert.equal(resolve({ instance: "a", system: false, env, platform: "linux" }).socket, "/run/user/1000/majordomo/a.sock");
  assert.equal(resolve({ instance: "a", system: false, env: { HOME: "/home/u" }, platform: "linux" }).socket, "/home/u/.local/state/majordomo/a/a.sock");
  assert.equal(resolve({ instance: "a", system: true, env, platform: "linux" }).socket, "/run/majordomo/a.sock");
});

test("macOS places", () => {
  const env = { HOME: "/Users/u" };
  assert.equal(resolve({ instance: "a", system: false, env, platform: "darwin" }).socket, "/Users/u/Library/Application Support/majordomo/a/majordomo.sock");
  assert.equal(resolve({ instance: "a", system: true, env, platform: "darwin" }).socket, "/var/run/majordomo/a.sock");
});

test("windows pipes", () => {
  assert.equal(resolve({ instance: "a", system: true, env: {}, platform: "win32" }).socket, "\\\\.\\pipe\\majordomo-a");
  assert.equal(
    resolve({ instance: "a", system: false, env: { USERNAME: "Jo Doe", LOCALAPPDATA: "C:\\L" }, platform: "win32" }).socket,
    "\\\\.\\pipe\\majordomo-jo_doe-a",
  );
  assert.equal(resolve({ instance: "a", home: "C:\\md", env: {}, platform: "win32" }).socket, windowsHomePipe("C:\\md\\a", "a"));
});

test("the path hash matches Rust's", () => {
  // DefaultHasher over Path::hash, printed by rustc 1.95 on Linux.
  const vectors: Record<string, bigint> = {
    "/tmp/h/default": 0x157b836cd32b57dcn,
    "/a/./b//c/": 0xda512403de630c20n,
    "rel/x": 0xe810b6c342514487n,
    "/tmp/majordomo-test-ü/inst_1": 0xd27c8e172b47749cn,
    "/": 0xbd60acb658c79e45n,
  };
  for (const [p, want] of Object.entries(vectors)) assert.equal(rustPathHash(p, false), want, p);
  assert.equal(rustPathHash("C:\\a\\b", true), rustPathHash("C:/a/b", true));
});

test("the config file's [paths] socket moves the socket", () => {
  const home = tempHome();
  mkdirSync(path.join(home, "i"));
  writeFileSync(path.join(home, "i", "config.toml"), '[log]\nlevel = "info"\n[paths]\n# moved\nsocket = "/var/tmp/moved.sock"  # here\n[bus]\n');
  assert.equal(resolve({ instance: "i", home, env: {}, platform: "linux" }).socket, "/var/tmp/moved.sock");
  assert.equal(resolve({ instance: "i", home, env: { MAJORDOMO_PATHS__SOCKET: "/e.sock" }, platform: "linux" }).socket, "/e.sock");
});

test("bad instance names are refused", () => {
  assert.throws(() => resolve({ instance: "Bad Name", env: {} }), /invalid instance name/);
});
