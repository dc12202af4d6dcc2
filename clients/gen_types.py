#!/usr/bin/env python3
"""Generates the typed command layer of the Python, TypeScript and C# clients from schema/.

    python3 clients/gen_types.py          # rewrite the generated files
    python3 clients/gen_types.py --check  # exit 1 if any generated file is out of date

schema/ is exported from the Rust contract (crates/proto). Every command in schema/index.json
becomes a typed method in each client, its arguments and reply become types; the clients' test
suites run `--check`, so a protocol change that was not regenerated fails them.

Only the standard library is used (Python >= 3.9).
"""
from __future__ import annotations

import json
import keyword
import re
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "schema"
OUT_PY = ROOT / "clients/python/src/majordomo/_generated.py"
OUT_TS = ROOT / "clients/typescript/src/generated.ts"
OUT_CS = ROOT / "clients/dotnet/src/Generated.cs"

# ---------------------------------------------------------------------------------------------
# Intermediate form
#   ("any",) ("str",) ("int",) ("float",) ("bool",) ("null",)
#   ("lit", (values...))  ("list", T)  ("map", T)  ("ref", name)  ("opt", T)  ("union", (T...))
# Named types: name -> {"kind": "obj", "fields": [(key, T, required, doc)], "doc": str}
#                   or {"kind": "alias", "type": T, "doc": str, "lits": [(value, doc)]}
# ---------------------------------------------------------------------------------------------


class Model:
    def __init__(self) -> None:
        self.types: Dict[str, Dict[str, Any]] = {}
        self.sources: Dict[str, str] = {}
        self.order: List[str] = []

    def define(self, name: str, schema: Dict[str, Any], defs: Dict[str, Any]) -> None:
        key = canon(schema)
        if name in self.types:
            if self.sources[name] != key:
                raise SystemExit(
                    f"gen_types: two different schemas are both named {name!r}; "
                    "rename one in the Rust contract (crates/proto)"
                )
            return
        self.sources[name] = key
        self.types[name] = {"kind": "pending"}
        doc = schema.get("description", "")
        if schema.get("type") == "object" and "properties" in schema:
            fields = self.fields(name, schema, defs)
            self.types[name] = {"kind": "obj", "fields": fields, "doc": doc}
        else:
            t = self.conv(schema, defs, name)
            lits = []
            for alt in schema.get("oneOf", []) + schema.get("anyOf", []):
                if "const" in alt:
                    lits.append((alt["const"], alt.get("description", "")))
                for v in alt.get("enum", []):
                    lits.append((v, ""))
            for v in schema.get("enum", []):
                lits.append((v, ""))
            self.types[name] = {"kind": "alias", "type": t, "doc": doc, "lits": lits}
        self.order.append(name)

    def fields(self, owner: str, schema: Dict[str, Any], defs: Dict[str, Any]) -> List[Tuple[str, Any, bool, str]]:
        req = schema.get("required", [])
        out = []
        props = schema["properties"]
        # Required first (in the schema's order), then the optional ones alphabetically.
        keys = [k for k in req if k in props] + sorted(k for k in props if k not in req)
        for k in keys:
            p = props[k]
            t = self.conv(p, defs, owner + pascal(k))
            doc = p.get("description", "") if isinstance(p, dict) else ""
            out.append((k, t, k in req, doc))
        return out

    def conv(self, s: Any, defs: Dict[str, Any], hint: str) -> Any:
        if s is True or s == {} or not isinstance(s, dict):
            return ("any",)
        if "$ref" in s:
            name = s["$ref"].split("/")[-1]
            if name not in defs:
                raise SystemExit(f"gen_types: unresolved $ref {s['$ref']}")
            self.define(name, defs[name], defs)
            return ("ref", name)
        if "const" in s:
            return ("lit", (s["const"],))
        if "enum" in s:
            return ("lit", tuple(s["enum"]))
        alts = s.get("oneOf") or s.get("anyOf")
        if alts:
            ts = [self.conv(a, defs, hint) for a in alts]
            return simplify_union(ts)
        t = s.get("type")
        if isinstance(t, list):
            non_null = [x for x in t if x != "null"]
            inner = dict(s)
            inner["type"] = non_null[0] if len(non_null) == 1 else non_null
            base = self.conv(inner, defs, hint) if non_null else ("null",)
            return ("opt", base) if "null" in t else base
        if t == "string":
            return ("str",)
        if t == "integer":
            return ("int",)
        if t == "number":
            return ("float",)
        if t == "boolean":
            return ("bool",)
        if t == "null":
            return ("null",)
        if t == "array":
            return ("list", self.conv(s.get("items", True), defs, hint + "Item"))
        if t == "object":
            if "properties" in s:
                self.define(hint, s, defs)
                return ("ref", hint)
            ap = s.get("additionalProperties", True)
            return ("map", self.conv(ap, defs, hint + "Value"))
        return ("any",)


def simplify_union(ts: List[Any]) -> Any:
    if all(t[0] == "lit" for t in ts):
        vals: List[Any] = []
        for t in ts:
            vals.extend(t[1])
        return ("lit", tuple(vals))
    nullable = any(t[0] == "null" for t in ts)
    rest = [t for t in ts if t[0] != "null"]
    base = rest[0] if len(rest) == 1 else ("union", tuple(rest))
    return ("opt", base) if nullable else base


def canon(schema: Any) -> str:
    def strip(x: Any) -> Any:
        if isinstance(x, dict):
            return {k: strip(v) for k, v in x.items() if k not in ("description", "title", "$schema", "$defs")}
        if isinstance(x, list):
            return [strip(v) for v in x]
        return x

    return json.dumps(strip(schema), sort_keys=True)


def pascal(s: str) -> str:
    return "".join(p[:1].upper() + p[1:] for p in re.split(r"[^A-Za-z0-9]+", s) if p)


def camel(s: str) -> str:
    p = pascal(s)
    return p[:1].lower() + p[1:]


def snake(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "_", s).strip("_").lower()


class Command:
    def __init__(self, name: str, kind: str, doc: str, args: str, reply: Any, reply_name: Optional[str]):
        self.name = name
        self.kind = kind
        self.doc = doc
        self.args = args  # a named obj type
        self.reply = reply
        self.reply_name = reply_name


def load() -> Tuple[Model, List[Command], int]:
    index = json.loads((SCHEMA / "index.json").read_text())
    m = Model()
    cmds = []
    for c in index["commands"]:
        d = json.loads((SCHEMA / c["file"]).read_text())
        args = d["args"]
        a_name = args.get("title") or pascal(c["name"]) + "Args"
        a_defs = args.get("$defs", {})
        if "properties" not in args:
            args = dict(args, properties={})
        args = dict(args, type="object")
        m.define(a_name, args, a_defs)
        r = d["reply"]
        r_defs = r.get("$defs", {})
        title = r.get("title")
        if r.get("type") == "object" and "properties" in r:
            m.define(title, r, r_defs)
            reply = ("ref", title)
        elif "anyOf" in r or "oneOf" in r:
            m.define(title, r, r_defs)
            reply = ("ref", title)
        else:
            reply = m.conv(r, r_defs, pascal(c["name"]) + "Reply")
        cmds.append(Command(c["name"], c.get("kind", "read"), d.get("description", ""), a_name, reply, title))
    return m, cmds, index.get("protocol", 1)


def deps(t: Any) -> List[str]:
    if t[0] == "ref":
        return [t[1]]
    if t[0] in ("list", "map", "opt"):
        return deps(t[1])
    if t[0] == "union":
        out: List[str] = []
        for x in t[1]:
            out += deps(x)
        return out
    return []


def topo(m: Model) -> List[str]:
    seen: Dict[str, bool] = {}
    out: List[str] = []

    def visit(n: str) -> None:
        if n in seen:
            return
        seen[n] = True
        td = m.types[n]
        ds = [d for f in td["fields"] for d in deps(f[1])] if td["kind"] == "obj" else deps(td["type"])
        for d in ds:
            visit(d)
        out.append(n)

    for n in sorted(m.types):
        visit(n)
    return out


HEADER = "Generated by clients/gen_types.py from schema/ (protocol {p}). Do not edit: run `python3 clients/gen_types.py`."


def one_line(s: str) -> str:
    return " ".join(s.split())


# ---------------------------------------------------------------------------------------------
# Python
# ---------------------------------------------------------------------------------------------


def py_type(t: Any, m: Model) -> str:
    k = t[0]
    if k == "any":
        return "Any"
    if k == "str":
        return "str"
    if k == "int":
        return "int"
    if k == "float":
        return "float"
    if k == "bool":
        return "bool"
    if k == "null":
        return "None"
    if k == "lit":
        return "Literal[" + ", ".join(json.dumps(v) for v in t[1]) + "]"
    if k == "list":
        return f"List[{py_type(t[1], m)}]"
    if k == "map":
        return f"Dict[str, {py_type(t[1], m)}]"
    if k == "ref":
        return t[1]
    if k == "opt":
        return f"Optional[{py_type(t[1], m)}]"
    if k == "union":
        return "Union[" + ", ".join(py_type(x, m) for x in t[1]) + "]"
    raise ValueError(t)


def py_param(name: str) -> str:
    if keyword.iskeyword(name) or name in ("timeout", "self"):
        return name + "_"
    return name


def gen_python(m: Model, cmds: List[Command], proto: int) -> str:
    o: List[str] = []
    w = o.append
    w(f'"""{HEADER.format(p=proto)}"""')
    w("from typing import Any, Dict, List, Literal, Optional, TypedDict, Union, cast")
    w("")
    w(f"PROTOCOL = {proto}")
    w("")
    for n in topo(m):
        td = m.types[n]
        if td["kind"] == "alias":
            w(f"{n} = {py_type(td['type'], m)}")
            if td["doc"]:
                w(f'"""{one_line(td["doc"])}"""')
            w("")
            continue
        req = [f for f in td["fields"] if f[2]]
        opt = [f for f in td["fields"] if not f[2]]

        def dict_lit(fs: List[Tuple[str, Any, bool, str]]) -> str:
            return "{" + ", ".join(f"{json.dumps(f[0])}: {py_type(f[1], m)}" for f in fs) + "}"

        if not opt:
            w(f'{n} = TypedDict("{n}", {dict_lit(req)})')
        elif not req:
            w(f'{n} = TypedDict("{n}", {dict_lit(opt)}, total=False)')
        else:
            w(f'_{n}Required = TypedDict("_{n}Required", {dict_lit(req)})')
            w(f'_{n}Optional = TypedDict("_{n}Optional", {dict_lit(opt)}, total=False)')
            w("")
            w("")
            w(f"class {n}(_{n}Required, _{n}Optional):")
            w(f'    """{one_line(td["doc"]) or n}"""')
            w("")
        if td["doc"] and (not opt or not req):
            w(f'"""{one_line(td["doc"])}"""')
        w("")
    w("")
    w("COMMANDS: Dict[str, Dict[str, str]] = {")
    for c in cmds:
        meth = snake(c.name)
        w(f'    {json.dumps(c.name)}: {{"kind": {json.dumps(c.kind)}, "method": {json.dumps(meth)}, "args": {json.dumps(c.args)}}},')
    w("}")
    w('"""Every command of the contract: its kind (`read` or `action`), the method that calls it, its argument type."""')
    w("")
    for sync in (False, True):
        cls = "SyncCommands" if sync else "AsyncCommands"
        d = "def" if sync else "async def"
        aw = "" if sync else "await "
        w("")
        w(f"class {cls}:")
        w(f'    """One typed method per command of the contract ({"blocking" if sync else "coroutines"})."""')
        w("")
        w(f"    {d} call(self, cmd: str, args: Optional[Dict[str, Any]] = None, *, timeout: Optional[float] = None) -> Any:")
        w("        raise NotImplementedError")
        for c in cmds:
            meth = snake(c.name)
            fields = m.types[c.args]["fields"]
            params = ["self"]
            req = [f for f in fields if f[2]]
            opt = [f for f in fields if not f[2]]
            for f in req:
                params.append(f"{py_param(f[0])}: {py_type(f[1], m)}")
            params.append("*")
            for f in opt:
                t = f[1]
                pt = py_type(t, m) if t[0] in ("opt", "any") else f"Optional[{py_type(t, m)}]"
                params.append(f"{py_param(f[0])}: {pt} = None")
            params.append("timeout: Optional[float] = None")
            rt = py_type(c.reply, m)
            w("")
            w(f"    {d} {meth}({', '.join(params)}) -> {rt}:")
            w(f'        """`{c.name}` ({c.kind}): {one_line(c.doc)}"""')
            w("        args: Dict[str, Any] = {" + ", ".join(f"{json.dumps(f[0])}: {py_param(f[0])}" for f in req) + "}")
            for f in opt:
                p = py_param(f[0])
                w(f"        if {p} is not None:")
                w(f"            args[{json.dumps(f[0])}] = {p}")
            call = f'{aw}self.call({json.dumps(c.name)}, args, timeout=timeout)'
            if rt == "Any":
                w(f"        return {call}")
            else:
                w(f"        return cast({json.dumps(rt) if '[' in rt else rt}, {call})")
    w("")
    return "\n".join(o)


# ---------------------------------------------------------------------------------------------
# TypeScript
# ---------------------------------------------------------------------------------------------


def ts_type(t: Any, reply: bool = True) -> str:
    k = t[0]
    if k == "any":
        return "JsonValue" if reply else "unknown"
    if k == "str":
        return "string"
    if k in ("int", "float"):
        return "number"
    if k == "bool":
        return "boolean"
    if k == "null":
        return "null"
    if k == "lit":
        return " | ".join(json.dumps(v) for v in t[1])
    if k == "list":
        inner = ts_type(t[1], reply)
        return f"({inner})[]" if "|" in inner else f"{inner}[]"
    if k == "map":
        return f"{{ [key: string]: {ts_type(t[1], reply)} }}"
    if k == "ref":
        return t[1]
    if k == "opt":
        return f"{ts_type(t[1], reply)} | null"
    if k == "union":
        return " | ".join(ts_type(x, reply) for x in t[1])
    raise ValueError(t)


def ts_key(k: str) -> str:
    return k if re.fullmatch(r"[A-Za-z_$][A-Za-z0-9_$]*", k) else json.dumps(k)


def gen_ts(m: Model, cmds: List[Command], proto: int) -> str:
    o: List[str] = []
    w = o.append
    w(f"// {HEADER.format(p=proto)}")
    w("/* eslint-disable */")
    w("")
    w(f"export const PROTOCOL = {proto};")
    w("")
    w("/** Any JSON value. */")
    w("export type JsonValue = null | boolean | number | string | JsonValue[] | { [key: string]: JsonValue };")
    w("")
    arg_types = {c.args for c in cmds}
    for n in sorted(m.types):
        td = m.types[n]
        is_arg = n in arg_types
        if td["doc"]:
            w(f"/** {one_line(td['doc'])} */")
        if td["kind"] == "alias":
            w(f"export type {n} = {ts_type(td['type'])};")
            w("")
            continue
        if not td["fields"]:
            w(f"export type {n} = Record<string, never>;")
            w("")
            continue
        w(f"export interface {n} {{")
        for k, t, req, doc in td["fields"]:
            if doc:
                w(f"  /** {one_line(doc)} */")
            w(f"  {ts_key(k)}{'' if req else '?'}: {ts_type(t, not is_arg)};")
        w("}")
        w("")
    w("/** Every command of the contract: its arguments and its reply. */")
    w("export interface Commands {")
    for c in cmds:
        w(f"  {json.dumps(c.name)}: {{ args: {c.args}; reply: {ts_type(c.reply)} }};")
    w("}")
    w("")
    w("export type CommandName = keyof Commands;")
    w("")
    w("/** Every command: its kind (`read` or `action`) and the method that calls it. */")
    w("export const COMMANDS: ReadonlyArray<{ name: CommandName; kind: \"read\" | \"action\"; method: string }> = [")
    for c in cmds:
        w(f"  {{ name: {json.dumps(c.name)}, kind: {json.dumps(c.kind)}, method: {json.dumps(camel(c.name))} }},")
    w("];")
    w("")
    w("/** Options of one call. */")
    w("export interface CallOptions {")
    w("  /** Milliseconds to wait for the reply (default: the client's `callTimeoutMs`). */")
    w("  timeoutMs?: number;")
    w("}")
    w("")
    w("/** One typed method per command of the contract. */")
    w("export abstract class CommandMethods {")
    w("  /** Sends any command with its arguments and resolves with the reply's `ok` value. */")
    w("  abstract call<K extends CommandName>(cmd: K, args: Commands[K][\"args\"], opts?: CallOptions): Promise<Commands[K][\"reply\"]>;")
    for c in cmds:
        fields = m.types[c.args]["fields"]
        any_req = any(f[2] for f in fields)
        w("")
        w(f"  /** `{c.name}` ({c.kind}): {one_line(c.doc)} */")
        if not fields:
            w(f"  {camel(c.name)}(opts?: CallOptions): Promise<{ts_type(c.reply)}> {{")
            w(f"    return this.call({json.dumps(c.name)}, {{}}, opts);")
        else:
            default = "" if any_req else " = {}"
            w(f"  {camel(c.name)}(args: {c.args}{default}, opts?: CallOptions): Promise<{ts_type(c.reply)}> {{")
            w(f"    return this.call({json.dumps(c.name)}, args, opts);")
        w("  }")
    w("}")
    w("")
    return "\n".join(o)


# ---------------------------------------------------------------------------------------------
# C#
# ---------------------------------------------------------------------------------------------

CS_KEYWORDS = {"object", "string", "params", "event", "base", "class", "default", "lock", "namespace", "operator", "out", "ref", "this", "checked", "fixed", "internal", "is", "as"}


_CS_MODEL: List[Model] = []


def cs_class(name: str) -> str:
    """C# forbids a member named like its class: such a class gets the suffix `Result`."""
    td = _CS_MODEL[0].types.get(name) if _CS_MODEL else None
    if td and td["kind"] == "obj" and any(pascal(f[0]) == name for f in td["fields"]):
        return name + "Result"
    return name


def cs_prop(owner: str, key: str) -> str:
    p = pascal(key)
    if p == owner:
        p += "Value"
    if p in ("Raw", "ToJson", "FromJson"):
        p += "Field"
    return p


def cs_merged(m: Model, name: str) -> Optional[List[Tuple[str, Any, bool, str]]]:
    """An alias that is a union of object types becomes one class with every member (optional)."""
    td = m.types[name]
    t = td.get("type")
    if td["kind"] != "alias" or not t or t[0] != "union":
        return None
    if not all(x[0] == "ref" and m.types[x[1]]["kind"] == "obj" for x in t[1]):
        return None
    out: List[Tuple[str, Any, bool, str]] = []
    seen = set()
    for x in t[1]:
        for f in m.types[x[1]]["fields"]:
            if f[0] not in seen:
                seen.add(f[0])
                out.append((f[0], f[1], False, f[3]))
    return out


def cs_type(t: Any, m: Model) -> str:
    k = t[0]
    if k == "any":
        return "JsonNode"
    if k == "str":
        return "string"
    if k == "int":
        return "long"
    if k == "float":
        return "double"
    if k == "bool":
        return "bool"
    if k == "null":
        return "JsonNode"
    if k == "lit":
        return "string"
    if k == "list":
        return f"List<{cs_type(t[1], m)}>"
    if k == "map":
        return f"Dictionary<string, {cs_type(t[1], m)}>"
    if k == "ref":
        td = m.types[t[1]]
        if td["kind"] == "alias" and cs_merged(m, t[1]) is None:
            return cs_type(td["type"], m)
        return cs_class(t[1])
    if k == "opt":
        inner = cs_type(t[1], m)
        return inner + "?" if inner in ("long", "double", "bool") else inner
    if k == "union":
        return "JsonNode"
    raise ValueError(t)


def cs_from(t: Any, m: Model, expr: str) -> str:
    """C# expression reading `expr` (a JsonNode, maybe null) as the type t."""
    k = t[0]
    if k == "ref":
        td = m.types[t[1]]
        if td["kind"] == "alias" and cs_merged(m, t[1]) is None:
            return cs_from(td["type"], m, expr)
        return f"global::Majordomo.Protocol.{cs_class(t[1])}.FromJson({expr})"
    if k == "opt":
        inner = cs_type(t[1], m)
        if inner == "long":
            return f"JsonConv.ToNullableLong({expr})"
        if inner == "double":
            return f"JsonConv.ToNullableDouble({expr})"
        if inner == "bool":
            return f"JsonConv.ToNullableBool({expr})"
        return cs_from(t[1], m, expr)
    if k in ("any", "null", "union"):
        return f"JsonConv.Node({expr})"
    if k in ("str", "lit"):
        return f"JsonConv.ToStr({expr})"
    if k == "int":
        return f"JsonConv.ToLong({expr})"
    if k == "float":
        return f"JsonConv.ToDouble({expr})"
    if k == "bool":
        return f"JsonConv.ToBool({expr})"
    if k == "list":
        return f"JsonConv.ToList({expr}, x => {cs_from(t[1], m, 'x')})"
    if k == "map":
        return f"JsonConv.ToMap({expr}, x => {cs_from(t[1], m, 'x')})"
    raise ValueError(t)


def cs_to(t: Any, m: Model, expr: str) -> str:
    """C# expression turning `expr` of type t into a JsonNode."""
    k = t[0]
    if k == "ref":
        td = m.types[t[1]]
        if td["kind"] == "alias" and cs_merged(m, t[1]) is None:
            return cs_to(td["type"], m, expr)
        return f"({expr} == null ? JsonNode.Null : {expr}.ToJson())"
    if k == "opt":
        return cs_to(t[1], m, expr) if cs_type(t[1], m) not in ("long", "double", "bool") else f"JsonNode.From({expr})"
    if k in ("any", "null", "union"):
        return f"({expr} ?? JsonNode.Null)"
    if k in ("str", "lit", "int", "float", "bool"):
        return f"JsonNode.From({expr})"
    if k == "list":
        return f"JsonConv.FromList({expr}, x => {cs_to(t[1], m, 'x')})"
    if k == "map":
        return f"JsonConv.FromMap({expr}, x => {cs_to(t[1], m, 'x')})"
    raise ValueError(t)


def xml(s: str) -> str:
    return one_line(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def gen_cs(m: Model, cmds: List[Command], proto: int) -> str:
    _CS_MODEL[:] = [m]
    o: List[str] = []
    w = o.append
    w(f"// {HEADER.format(p=proto)}")
    w("using System.Collections.Generic;")
    w("using System.Threading;")
    w("using System.Threading.Tasks;")
    w("using Majordomo.Json;")
    w("")
    w("namespace Majordomo.Protocol")
    w("{")
    w("    /// <summary>The contract's constants.</summary>")
    w("    public static class Contract")
    w("    {")
    w(f"        public const int Protocol = {proto};")
    w("        /// <summary>Every command of the contract, with its kind (<c>read</c> or <c>action</c>) and the client method that calls it.</summary>")
    w("        public static readonly string[][] Commands = new string[][]")
    w("        {")
    for c in cmds:
        w(f"            new[] {{ {json.dumps(c.name)}, {json.dumps(c.kind)}, {json.dumps(pascal(c.name) + 'Async')} }},")
    w("        };")
    w("    }")
    for n in sorted(m.types):
        td = m.types[n]
        merged = cs_merged(m, n)
        if merged is not None:
            td = {"kind": "obj", "fields": merged, "doc": td["doc"] + " (One class with the members of every form.)"}
        if td["kind"] == "alias":
            if td["lits"] and all(isinstance(v, str) for v, _ in td["lits"]):
                w("")
                if td["doc"]:
                    w(f"    /// <summary>{xml(td['doc'])}</summary>")
                w(f"    public static class {n}")
                w("    {")
                for v, doc in td["lits"]:
                    if doc:
                        w(f"        /// <summary>{xml(doc)}</summary>")
                    w(f"        public const string {pascal(v)} = {json.dumps(v)};")
                w("    }")
            continue
        w("")
        if td["doc"]:
            w(f"    /// <summary>{xml(td['doc'])}</summary>")
        cn = cs_class(n)
        w(f"    public sealed partial class {cn}")
        w("    {")
        for k, t, req, doc in td["fields"]:
            if doc:
                w(f"        /// <summary>{xml(doc)}</summary>")
            w(f"        public {cs_type(t, m)} {cs_prop(cn, k)} {{ get; set; }}")
        w("        /// <summary>The object as received (with any member this client does not know).</summary>")
        w("        public JsonNode Raw { get; private set; }")
        w("")
        w(f"        public static {cn} FromJson(JsonNode j)")
        w("        {")
        w("            if (j == null || j.IsNull) return null;")
        w(f"            var o = new {cn}();")
        w("            o.Raw = j;")
        for k, t, req, doc in td["fields"]:
            w(f"            o.{cs_prop(cn, k)} = {cs_from(t, m, 'j[' + json.dumps(k) + ']')};")
        w("            return o;")
        w("        }")
        w("")
        w("        public JsonNode ToJson()")
        w("        {")
        w("            var o = JsonNode.NewObject();")
        for k, t, req, doc in td["fields"]:
            p = cs_prop(cn, k)
            w(f"            if ({p} != null) o[{json.dumps(k)}] = {cs_to(t, m, p)};")
        w("            return o;")
        w("        }")
        w("    }")
    w("}")
    w("")
    w("namespace Majordomo")
    w("{")
    w("    using Majordomo.Protocol;")
    w("")
    w("    public sealed partial class MajordomoClient")
    w("    {")
    for c in cmds:
        fields = m.types[c.args]["fields"]
        any_req = any(f[2] for f in fields)
        meth = pascal(c.name) + "Async"
        rt = cs_type(c.reply, m)
        w("")
        w(f"        /// <summary><c>{c.name}</c> ({c.kind}): {xml(c.doc)}</summary>")
        if not fields:
            w(f"        public async Task<{rt}> {meth}(CancellationToken cancel = default(CancellationToken))")
            w("        {")
            w(f"            var r = await CallAsync({json.dumps(c.name)}, JsonNode.NewObject(), cancel).ConfigureAwait(false);")
        else:
            dflt = "" if any_req else " = null"
            w(f"        public async Task<{rt}> {meth}({cs_class(c.args)} args{dflt}, CancellationToken cancel = default(CancellationToken))")
            w("        {")
            w(f"            var r = await CallAsync({json.dumps(c.name)}, args == null ? JsonNode.NewObject() : args.ToJson(), cancel).ConfigureAwait(false);")
        w(f"            return {cs_from(c.reply, m, 'r')};")
        w("        }")
    w("    }")
    w("}")
    w("")
    return "\n".join(o)


def main() -> int:
    check = "--check" in sys.argv[1:]
    m, cmds, proto = load()
    outputs = {OUT_PY: gen_python(m, cmds, proto), OUT_TS: gen_ts(m, cmds, proto), OUT_CS: gen_cs(m, cmds, proto)}
    stale = []
    for path, text in outputs.items():
        old = path.read_text() if path.exists() else None
        if old != text:
            if check:
                stale.append(str(path.relative_to(ROOT)))
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
                print(f"wrote {path.relative_to(ROOT)}")
    if stale:
        print(
            "gen_types: generated client code is out of date with schema/: "
            + ", ".join(stale)
            + "\n  run `python3 clients/gen_types.py` and commit the result",
            file=sys.stderr,
        )
        return 1
    if check:
        print(f"gen_types: {len(cmds)} commands, generated code matches schema/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
