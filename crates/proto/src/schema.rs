//! `schema/`: the JSON Schema of every command (arguments and reply), every event and every
//! error code, as files. Generated from the contract; a test fails when the committed copy is
//! stale (`MAJORDOMO_BLESS=1 cargo test -p majordomo-proto --test schema` rewrites it).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use crate::contract::{Kind, catalog, schema_of};

/// Every file of `schema/`, by its path relative to that folder, with its contents.
pub fn files() -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut index = Vec::new();
    for c in catalog() {
        let doc = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "title": c.name,
            "description": c.summary.trim(),
            "x-kind": match c.kind { Kind::Read => "read", Kind::Action => "action" },
            "args": (c.args)(),
            "reply": (c.reply)(),
        });
        index.push(json!({"name": c.name, "kind": doc["x-kind"], "file": format!("commands/{}.json", c.name)}));
        out.insert(format!("commands/{}.json", c.name), pretty(&doc));
    }
    out.insert(
        "events.json".into(),
        pretty(&to_value(schema_of::<crate::event::Event>())),
    );
    out.insert(
        "event-kinds.json".into(),
        pretty(&json!(crate::event::Event::KINDS)),
    );
    out.insert(
        "errors.json".into(),
        pretty(&to_value(schema_of::<crate::ErrorBody>())),
    );
    out.insert(
        "reply.json".into(),
        pretty(&to_value(schema_of::<crate::Reply>())),
    );
    out.insert(
        "index.json".into(),
        pretty(&json!({ "protocol": crate::PROTOCOL_VERSION, "commands": index })),
    );
    out
}

fn to_value(s: schemars::Schema) -> Value {
    s.to_value()
}

fn pretty(v: &Value) -> String {
    let mut s = serde_json::to_string_pretty(v).unwrap_or_default();
    s.push('\n');
    s
}
