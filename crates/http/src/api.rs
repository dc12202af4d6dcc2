//! `/api/v1/<command>`: every command of the contract over HTTP (reads as GET with query
//! arguments, actions as POST with a JSON body), answered by the same registry (or protocol
//! session) as on the socket; errors as `{"error":{"code","message"}}`; and the OpenAPI 3.1
//! document generated from the contract.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use axum::body::Bytes;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use majordomo_bus::Peer;
use majordomo_proto::{ErrorBody, ErrorCode, Kind};
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::config::Role;
use crate::server::{App, Ip, St};

/// An error response: `{"error":{"code","message"}}`.
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response {
    let body = json!({"error": {"code": code, "message": message.into()}});
    (status, axum::Json(body)).into_response()
}

/// The HTTP status that fits an error code of the protocol.
pub fn status_of(code: ErrorCode) -> StatusCode {
    match code {
        ErrorCode::BadJson | ErrorCode::BadRequest => StatusCode::BAD_REQUEST,
        ErrorCode::UnknownCommand | ErrorCode::NotFound => StatusCode::NOT_FOUND,
        ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
        ErrorCode::Forbidden => StatusCode::FORBIDDEN,
        ErrorCode::InvalidConfig => StatusCode::UNPROCESSABLE_ENTITY,
        ErrorCode::Busy | ErrorCode::ShuttingDown | ErrorCode::NoResponders => {
            StatusCode::SERVICE_UNAVAILABLE
        }
        ErrorCode::Conflict => StatusCode::CONFLICT,
        ErrorCode::Timeout => StatusCode::GATEWAY_TIMEOUT,
        ErrorCode::Internal | ErrorCode::Other => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn error_body(e: ErrorBody) -> Response {
    let status = status_of(e.code);
    (status, axum::Json(json!({ "error": e }))).into_response()
}

/// The role a command needs: reads `read`, actions `operate`, and the ones that stop the
/// daemon, change its config in force or replace the login token `admin`.
pub fn role_for(name: &str, kind: Kind) -> Role {
    match (name, kind) {
        ("shutdown" | "reload" | "http.rotate_token", _) => Role::Admin,
        (_, Kind::Action) => Role::Operate,
        (_, Kind::Read) => Role::Read,
    }
}

/// Bus commands that only mean something on a lasting connection.
const CONNECTION_SCOPED: &[&str] = &["bus.register", "bus.unregister", "bus.sub", "bus.unsub"];

/// Commands answered by the protocol session rather than the registry.
fn session_answered(name: &str) -> bool {
    matches!(name, "hello" | "ping" | "shutdown") || name.starts_with("bus.")
}

pub async fn get_cmd(
    State(app): State<St>,
    ip: Ip,
    Path(cmd): Path<String>,
    RawQuery(q): RawQuery,
    headers: HeaderMap,
) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let Some(doc) = app.catalog.get(cmd.as_str()).copied() else {
        return unknown(&cmd);
    };
    if doc.kind == Kind::Action {
        return method(&cmd, "POST");
    }
    if let Err(r) = app.allow(&headers, ip.0, role_for(doc.name, doc.kind), false) {
        return r;
    }
    let args = query_args(q.as_deref().unwrap_or(""), &(doc.args)().to_value());
    run(&app, doc.name, args).await
}

pub async fn post_cmd(
    State(app): State<St>,
    ip: Ip,
    Path(cmd): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    app.requests.fetch_add(1, Ordering::Relaxed);
    let Some(doc) = app.catalog.get(cmd.as_str()).copied() else {
        return unknown(&cmd);
    };
    if doc.kind == Kind::Read {
        return method(&cmd, "GET");
    }
    if let Err(r) = app.allow(&headers, ip.0, role_for(doc.name, doc.kind), true) {
        return r;
    }
    let args = if body.iter().all(u8::is_ascii_whitespace) {
        Map::new()
    } else {
        match serde_json::from_slice::<Value>(&body) {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!("the body of {cmd:?} must be a JSON object of its arguments"),
                );
            }
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_json",
                    format!("the body is not JSON: {e}"),
                );
            }
        }
    };
    run(&app, doc.name, args).await
}

fn unknown(cmd: &str) -> Response {
    error(
        StatusCode::NOT_FOUND,
        "unknown_command",
        format!("unknown command {cmd:?}; /api/v1/openapi.json lists them all"),
    )
}

fn method(cmd: &str, want: &'static str) -> Response {
    let mut r = error(
        StatusCode::METHOD_NOT_ALLOWED,
        "bad_request",
        format!("{cmd:?} is called with {want}"),
    );
    r.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(want));
    r
}

async fn run(app: &App, name: &str, args: Map<String, Value>) -> Response {
    let result = call(app, name, args).await;
    match result {
        Ok(v) => axum::Json(v).into_response(),
        Err(e) => error_body(e),
    }
}

/// Runs one command as the socket would: through the registry, or for the commands a
/// protocol session answers, through a short-lived session.
pub async fn call(app: &App, name: &str, args: Map<String, Value>) -> Result<Value, ErrorBody> {
    if CONNECTION_SCOPED.contains(&name) {
        return Err(ErrorBody::new(
            ErrorCode::BadRequest,
            format!("{name:?} belongs to a lasting connection; use the WebSocket at /api/v1/ws"),
        ));
    }
    if session_answered(name) {
        return via_session(app, name, args).await;
    }
    app.commands.dispatch(name, args).await
}

/// One request through a protocol session over an in-memory pipe, for the commands the
/// session answers itself.
async fn via_session(
    app: &App,
    name: &str,
    mut args: Map<String, Value>,
) -> Result<Value, ErrorBody> {
    let internal = |e: std::io::Error| ErrorBody::new(ErrorCode::Internal, format!("session: {e}"));
    args.insert("cmd".into(), Value::String(name.into()));
    // With an id: bus lines without one are fire-and-forget (no reply).
    args.insert("id".into(), Value::from(1));
    let mut line = serde_json::to_vec(&Value::Object(args))
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, e.to_string()))?;
    line.push(b'\n');
    let (client, server) = tokio::io::duplex(64 * 1024);
    let id = app.router.next_conn_id();
    app.tracker.spawn(app.session.clone().serve(
        server,
        id,
        Peer {
            via: "http",
            ..Peer::default()
        },
        (),
    ));
    let (rd, mut wr) = tokio::io::split(client);
    wr.write_all(&line).await.map_err(internal)?;
    let mut reply = String::new();
    BufReader::new(rd)
        .read_line(&mut reply)
        .await
        .map_err(internal)?;
    let v: Value = serde_json::from_str(&reply)
        .map_err(|e| ErrorBody::new(ErrorCode::Internal, format!("session reply: {e}")))?;
    if let Some(ok) = v.get("ok") {
        return Ok(ok.clone());
    }
    match v
        .get("error")
        .cloned()
        .map(serde_json::from_value::<ErrorBody>)
    {
        Some(Ok(e)) => Err(e),
        _ => Err(ErrorBody::new(
            ErrorCode::Internal,
            "the session closed without answering",
        )),
    }
}

/// Query arguments as the command's argument object, typed by its schema: a property whose
/// schema takes a string stays a string, an array collects repeated keys (and comma lists),
/// anything else is read as JSON (numbers, booleans, objects).
pub fn query_args(q: &str, schema: &Value) -> Map<String, Value> {
    let mut raw: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in form_pairs(q) {
        raw.entry(k).or_default().push(v);
    }
    let props = schema.get("properties");
    let mut out = Map::new();
    for (k, vals) in raw {
        let prop = props.and_then(|p| p.get(&k)).map(|p| resolve(p, schema));
        let types = types_of(prop.as_ref());
        let v = if types.iter().any(|t| t == "array") {
            let item = prop
                .as_ref()
                .and_then(|p| p.get("items"))
                .map(|i| resolve(i, schema));
            let item_types = types_of(item.as_ref());
            Value::Array(
                vals.iter()
                    .flat_map(|v| v.split(','))
                    .filter(|s| !s.is_empty())
                    .map(|s| scalar(s, &item_types))
                    .collect(),
            )
        } else {
            scalar(vals.last().map(String::as_str).unwrap_or(""), &types)
        };
        out.insert(k, v);
    }
    out
}

fn scalar(s: &str, types: &[String]) -> Value {
    if types.iter().any(|t| t == "string") {
        return Value::String(s.to_string());
    }
    serde_json::from_str(s).unwrap_or_else(|_| Value::String(s.to_string()))
}

fn resolve(p: &Value, root: &Value) -> Value {
    if let Some(r) = p.get("$ref").and_then(Value::as_str)
        && let Some(name) = r.strip_prefix("#/$defs/")
        && let Some(d) = root.get("$defs").and_then(|d| d.get(name))
    {
        return d.clone();
    }
    p.clone()
}

fn types_of(p: Option<&Value>) -> Vec<String> {
    let Some(p) = p else { return vec![] };
    let mut out = vec![];
    match p.get("type") {
        Some(Value::String(t)) => out.push(t.clone()),
        Some(Value::Array(ts)) => {
            out.extend(ts.iter().filter_map(|t| t.as_str().map(String::from)))
        }
        _ => {}
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(Value::Array(alts)) = p.get(key) {
            for a in alts {
                out.extend(types_of(Some(a)));
            }
        }
    }
    if p.get("enum").is_some() && out.is_empty() {
        out.push("string".into());
    }
    out
}

/// `a=1&b=x%20y` decoded (`+` is a space).
fn form_pairs(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|s| !s.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub async fn openapi(State(app): State<St>) -> Response {
    let doc = app
        .openapi
        .get_or_init(|| serde_json::to_string(&openapi_doc()).unwrap_or_default());
    ([(header::CONTENT_TYPE, "application/json")], doc.clone()).into_response()
}

/// Moves a schema's `$defs` into `components/schemas` and points its references there.
fn hoist(mut s: Value, components: &mut Map<String, Value>) -> Value {
    if let Some(Value::Object(defs)) = s.as_object_mut().and_then(|o| o.remove("$defs")) {
        for (k, v) in defs {
            let v = hoist(v, components);
            components.entry(k).or_insert(v);
        }
    }
    if let Some(o) = s.as_object_mut() {
        o.remove("$schema");
    }
    rewrite_refs(&mut s);
    s
}

fn rewrite_refs(v: &mut Value) {
    match v {
        Value::Object(o) => {
            for (k, x) in o.iter_mut() {
                if k == "$ref"
                    && let Value::String(r) = x
                    && let Some(name) = r.strip_prefix("#/$defs/")
                {
                    *r = format!("#/components/schemas/{name}");
                } else {
                    rewrite_refs(x);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

/// The OpenAPI 3.1 document of every command.
pub fn openapi_doc() -> Value {
    let mut components = Map::new();
    components.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "object", "required": ["code", "message"],
                "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}}}}
        }),
    );
    let mut paths = Map::new();
    for doc in majordomo_proto::contract::catalog() {
        let args = hoist((doc.args)().to_value(), &mut components);
        let reply = hoist((doc.reply)().to_value(), &mut components);
        let summary = doc.summary.lines().next().unwrap_or("").trim().to_string();
        let role = role_for(doc.name, doc.kind).as_str();
        let err = json!({"description": "an error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
        let mut responses = json!({
            "200": {"description": "the reply", "content": {"application/json": {"schema": reply}}},
            "400": err, "401": err, "403": err, "404": err,
            "default": err,
        });
        if doc.kind == Kind::Action {
            responses["409"] = err.clone();
        }
        let op_id = doc.name.replace('.', "_");
        let mut op = json!({
            "operationId": op_id,
            "summary": summary,
            "description": format!("{}\n\nNeeds the `{role}` role.", doc.summary.trim()),
            "tags": [doc.name.split('.').next().unwrap_or(doc.name)],
            "responses": responses,
        });
        let item = if doc.kind == Kind::Read {
            let required: Vec<Value> = args
                .get("required")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            let params: Vec<Value> = args
                .get("properties")
                .and_then(Value::as_object)
                .map(|p| {
                    p.iter()
                        .map(|(k, s)| {
                            json!({
                                "name": k, "in": "query",
                                "required": required.contains(&Value::String(k.clone())),
                                "schema": s,
                                "explode": true,
                            })
                        })
                        .collect()
                })
                .unwrap_or_default();
            if !params.is_empty() {
                op["parameters"] = Value::Array(params);
            }
            json!({"get": op})
        } else {
            op["requestBody"] = json!({
                "required": false,
                "content": {"application/json": {"schema": args}}
            });
            json!({"post": op})
        };
        paths.insert(format!("/api/v1/{}", doc.name), item);
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "majordomo",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "Every command of the instance socket. Reads are GET with query arguments, actions POST with a JSON object of arguments. Authenticate with `Authorization: Bearer TOKEN`; browser sessions also send `X-Majordomo-Csrf: 1` on actions. Live events: GET /api/v1/events (SSE, `?topics=kind,...`); the instance protocol: /api/v1/ws (WebSocket, admin)."
        },
        "servers": [{"url": "/"}],
        "security": [{"bearer": []}, {"cookie": []}],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {"type": "apiKey", "in": "cookie", "name": crate::auth::COOKIE}
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_args_follow_the_schema() {
        let schema = json!({
            "properties": {
                "names": {"type": "array", "items": {"type": "string"}},
                "name": {"type": ["string", "null"]},
                "limit": {"type": "integer"},
            }
        });
        let a = query_args("names=api&names=web,db&name=123&limit=5", &schema);
        assert_eq!(a["names"], json!(["api", "web", "db"]));
        assert_eq!(a["name"], json!("123"));
        assert_eq!(a["limit"], json!(5));
        let a = query_args("name=a%20b+c&x=%zz", &schema);
        assert_eq!(a["name"], json!("a b c"));
        assert_eq!(a["x"], json!("%zz"));
    }

    #[test]
    fn every_ref_in_the_openapi_document_resolves() {
        let doc = openapi_doc();
        let text = doc.to_string();
        assert!(!text.contains("#/$defs/"), "a reference was not rewritten");
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for part in text.split("\"#/components/schemas/").skip(1) {
            let name = part.split('"').next().unwrap();
            assert!(schemas.contains_key(name), "dangling $ref to {name}");
        }
        for c in majordomo_proto::contract::catalog() {
            assert!(
                doc["paths"].get(format!("/api/v1/{}", c.name)).is_some(),
                "{}",
                c.name
            );
        }
    }
}
