// The typed layer matches schema/: regenerating changes nothing, and every command is a method.
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { readFileSync } from "node:fs";
import * as path from "node:path";
import { test } from "node:test";

import { Client, COMMANDS, PROTOCOL } from "../src/index.js";
import { REPO } from "./helpers.js";

test("generated code matches schema/ (python3 clients/gen_types.py --check)", () => {
  execFileSync("python3", [path.join(REPO, "clients", "gen_types.py"), "--check"], { stdio: "pipe" });
});

test("every command of schema/index.json is a typed method", () => {
  const index = JSON.parse(readFileSync(path.join(REPO, "schema", "index.json"), "utf8"));
  assert.equal(index.protocol, PROTOCOL);
  const names: string[] = index.commands.map((c: { name: string }) => c.name).sort();
  assert.deepEqual(COMMANDS.map((c) => c.name).sort(), names);
  for (const c of COMMANDS) {
    const fn = (Client.prototype as unknown as Record<string, unknown>)[c.method];
    assert.equal(typeof fn, "function", `Client lacks ${c.method} for ${c.name}`);
    const schema = JSON.parse(readFileSync(path.join(REPO, "schema", "commands", `${c.name}.json`), "utf8"));
    assert.equal(schema["x-kind"], c.kind, c.name);
  }
});
