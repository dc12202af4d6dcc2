//! Control requests and replies, and the seed-001 compatibility aliases.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::NoArgs;
use serde_json::{Map, Value};

/// A request's `cmd` and its arguments.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// States the client's protocol; the reply carries the daemon's ([`Hello`]).
    Hello {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        client: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        protocol: Option<u32>,
        /// Required first when the instance has `[control] token` set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<String>,
        /// Asks for another framing after the reply: [`crate::bus::BINARY_FRAMING`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        framing: Option<String>,
    },
    /// Answers `"pong"`.
    Ping,
    /// The daemon's [`Status`].
    Status,
    /// The effective configuration as JSON, secrets redacted.
    Config,
    /// Re-reads the config file; the reply is a [`ReloadOutcome`] (an error if it was invalid).
    Reload,
    /// Drains and stops the daemon; the reply comes before the drain starts.
    Shutdown,
}

impl Command {
    /// Every command name, for "unknown command" hints.
    pub const NAMES: &'static [&'static str] =
        &["hello", "ping", "status", "config", "reload", "shutdown"];
}

/// The seed-001 IPC commands (`{"command":"get_status"}`), answered in that protocol's flat shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompatCommand {
    GetStatus,
    GetConfig,
    Ping,
    Stop,
    Restart,
}

impl CompatCommand {
    fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "get_status" => Self::GetStatus,
            "get_config" => Self::GetConfig,
            "ping" => Self::Ping,
            "stop" => Self::Stop,
            "restart" => Self::Restart,
            _ => return None,
        })
    }
}

/// The arguments of `hello`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HelloArgs {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<u32>,
    /// Required first when the instance has `[control] token` set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Asks for another framing after the reply: [`crate::bus::BINARY_FRAMING`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framing: Option<String>,
}

crate::commands! { COMMANDS:
    /// States the client's protocol (and the token, when the instance has one); the reply carries the daemon's.
    HelloCmd "hello" (Read) HelloArgs => Hello;
    /// Answers "pong".
    PingCmd "ping" (Read) NoArgs => String;
    /// The daemon's status: instance, places, subsystems, event counts, active alerts.
    StatusCmd "status" (Read) NoArgs => Status;
    /// The effective configuration as JSON, secrets redacted.
    ConfigCmd "config" (Read) NoArgs => serde_json::Value;
    /// Re-reads the config file; an invalid config is refused (`invalid_config`, every problem in `details`).
    ReloadCmd "reload" (Action) NoArgs => ReloadOutcome;
    /// Drains and stops the daemon; the reply ("stopping") comes before the drain starts.
    ShutdownCmd "shutdown" (Action) NoArgs => String;
}

/// One parsed line from a client.
#[derive(Debug, Clone, PartialEq)]
pub enum Incoming {
    Request {
        id: Option<Value>,
        cmd: Command,
    },
    /// A command the core does not define; subsystems register these (`ps`, `queue.ls`, ...).
    /// `args` is the request object without `id` and `cmd`.
    Ext {
        id: Option<Value>,
        cmd: String,
        args: Map<String, Value>,
    },
    Compat(CompatCommand),
    /// The line could not be understood; `id` is echoed if it could be read.
    Invalid {
        id: Option<Value>,
        error: ErrorBody,
    },
}

/// Parses one line. Never panics, whatever the bytes.
pub fn parse_line(line: &[u8]) -> Incoming {
    let mut map: Map<String, Value> = match serde_json::from_slice(line) {
        Ok(Value::Object(map)) => map,
        Ok(other) => {
            return Incoming::Invalid {
                id: None,
                error: ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "expected a JSON object like {{\"cmd\":\"ping\"}}, got {}",
                        json_kind(&other)
                    ),
                ),
            };
        }
        Err(e) => {
            return Incoming::Invalid {
                id: None,
                error: ErrorBody::new(
                    ErrorCode::BadJson,
                    format!(
                        "malformed JSON at column {}: {e}; send one JSON object per line",
                        e.column()
                    ),
                ),
            };
        }
    };
    let id = map.remove("id");
    if let Some(id) = &id
        && (id.is_object() || id.is_array())
    {
        return Incoming::Invalid {
            id: None,
            error: ErrorBody::new(
                ErrorCode::BadRequest,
                "\"id\" must be a string, number, boolean or null",
            ),
        };
    }
    match map.get("cmd") {
        Some(Value::String(name)) if !Command::NAMES.contains(&name.as_str()) => {
            let cmd = name.clone();
            map.remove("cmd");
            Incoming::Ext { id, cmd, args: map }
        }
        Some(Value::String(name)) => {
            let name = name.clone();
            match serde_json::from_value::<Command>(Value::Object(map)) {
                Ok(cmd) => Incoming::Request { id, cmd },
                Err(e) => Incoming::Invalid {
                    id,
                    error: ErrorBody::new(
                        ErrorCode::BadRequest,
                        format!("bad arguments for {name:?}: {e}"),
                    ),
                },
            }
        }
        Some(_) => Incoming::Invalid {
            id,
            error: ErrorBody::new(ErrorCode::BadRequest, "\"cmd\" must be a string"),
        },
        None => match map.get("command").and_then(Value::as_str) {
            Some(name) => match CompatCommand::from_name(name) {
                Some(c) => Incoming::Compat(c),
                None => Incoming::Invalid {
                    id,
                    error: ErrorBody::new(
                        ErrorCode::UnknownCommand,
                        format!(
                            "unknown command {name:?}; known: get_status, get_config, ping, stop, restart"
                        ),
                    ),
                },
            },
            None => Incoming::Invalid {
                id,
                error: ErrorBody::new(
                    ErrorCode::BadRequest,
                    "missing \"cmd\": send {\"id\":1,\"cmd\":\"ping\"}",
                ),
            },
        },
    }
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Machine-readable error codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    BadJson,
    BadRequest,
    UnknownCommand,
    TooLarge,
    Forbidden,
    InvalidConfig,
    /// Too many connections; try again later.
    Busy,
    ShuttingDown,
    Internal,
    /// No such endpoint, subscription or pending request.
    NotFound,
    /// The name is taken (an endpoint id registered by another connection).
    Conflict,
    /// A bus request found nobody subscribed to its topic.
    NoResponders,
    /// A deadline passed before the answer came.
    Timeout,
    /// A code this client does not know (a newer daemon).
    #[serde(other)]
    Other,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BadJson => "bad_json",
            Self::BadRequest => "bad_request",
            Self::UnknownCommand => "unknown_command",
            Self::TooLarge => "too_large",
            Self::Forbidden => "forbidden",
            Self::InvalidConfig => "invalid_config",
            Self::Busy => "busy",
            Self::ShuttingDown => "shutting_down",
            Self::Internal => "internal",
            Self::NotFound => "not_found",
            Self::Conflict => "conflict",
            Self::NoResponders => "no_responders",
            Self::Timeout => "timeout",
            Self::Other => "other",
        }
    }
}

/// The `error` member of a failed reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
    /// Extra structured detail, e.g. each config error of a refused reload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<Value>,
}

impl ErrorBody {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: None,
        }
    }
}

/// A reply line: `{"id":..,"ok":..}` or `{"id":..,"error":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Reply {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Value>,
    #[serde(flatten)]
    pub body: ReplyBody,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReplyBody {
    Ok(Value),
    Error(ErrorBody),
}

impl Reply {
    pub fn ok(id: Option<Value>, value: impl Serialize) -> Self {
        let value = serde_json::to_value(value)
            .unwrap_or_else(|e| Value::String(format!("reply could not be serialized: {e}")));
        Self {
            id,
            body: ReplyBody::Ok(value),
        }
    }

    pub fn error(id: Option<Value>, error: ErrorBody) -> Self {
        Self {
            id,
            body: ReplyBody::Error(error),
        }
    }

    /// One line of JSON, without its newline.
    pub fn to_line(&self) -> Vec<u8> {
        // Serializing a Reply cannot fail: every member is a JSON value or a plain struct.
        serde_json::to_vec(self).unwrap_or_else(|_| {
            br#"{"error":{"code":"internal","message":"reply serialization failed"}}"#.to_vec()
        })
    }
}

/// The reply to `hello`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Hello {
    pub protocol: u32,
    pub daemon_version: String,
    pub instance: String,
    pub pid: u32,
    /// Capabilities of this daemon, e.g. `"control"`.
    pub features: Vec<String>,
    /// The framing in force after this reply when the client asked for one it supports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framing: Option<String>,
}

/// The reply to `status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Status {
    pub pid: u32,
    pub instance: String,
    pub version: String,
    pub protocol: u32,
    /// `system` or `user`, or `home` when everything lives under one `--home` directory.
    pub mode: String,
    pub uptime_s: u64,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub socket: String,
    pub config_path: String,
    /// `file` when `config_path` exists and was read, `embedded-default` otherwise.
    pub config_source: String,
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub state_dir: String,
    pub log_dir: String,
    pub subsystems: BTreeMap<String, SubsystemStatus>,
    /// How many internal events of each kind were emitted since start.
    #[serde(default)]
    pub events: BTreeMap<String, u64>,
    /// Active alerts of the health monitor (empty when it is off).
    #[serde(default)]
    pub alerts: AlertSummary,
    /// The message bus's counters and health (connections now and at peak, last activity,
    /// queue memory, overflows), as of the last second; null when the bus is not running.
    #[serde(default)]
    pub bus: Option<crate::bus::BusCounters>,
}

/// The health monitor's active alerts, as `status` shows them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertSummary {
    pub firing: u32,
    pub pending: u32,
    #[serde(default)]
    pub active: Vec<AlertBrief>,
}

/// One active alert.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AlertBrief {
    /// The check name, with the series label for metric checks: `disk-full{mount=/}`.
    pub id: String,
    /// `pending` or `firing`.
    pub state: String,
    /// `info`, `warning` or `critical`.
    pub severity: String,
    /// RFC 3339: when the condition was first seen.
    pub since: String,
    pub summary: String,
}

/// The result of one reload attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// What asked for it: `socket`, `signal`, `file-change`, `restart`.
    pub trigger: String,
    /// RFC 3339, UTC.
    pub at: String,
    /// The generation in force after the attempt.
    pub generation: u64,
    /// Subsystems restarted because their section changed.
    #[serde(default)]
    pub restarted: Vec<String>,
    /// Subsystems that took the new config without a restart.
    #[serde(default)]
    pub updated: Vec<String>,
    /// Each config error, `file:line:col: path: message (hint)`, when `ok` is false.
    #[serde(default)]
    pub errors: Vec<String>,
}

/// One subsystem's lifecycle state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct SubsystemStatus {
    /// `starting`, `running`, `stopping`, `stopped` or `failed`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Seconds in this state.
    pub since_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn parses_requests_with_ids() {
        assert_eq!(
            parse_line(br#"{"id":7,"cmd":"status"}"#),
            Incoming::Request {
                id: Some(json!(7)),
                cmd: Command::Status
            }
        );
        assert_eq!(
            parse_line(br#"{"cmd":"hello","protocol":1}"#),
            Incoming::Request {
                id: None,
                cmd: Command::Hello {
                    client: None,
                    protocol: Some(1),
                    token: None,
                    framing: None,
                }
            }
        );
    }

    #[test]
    fn classifies_bad_lines() {
        let code = |l: &[u8]| match parse_line(l) {
            Incoming::Invalid { error, .. } => error.code,
            other => panic!("expected invalid, got {other:?}"),
        };
        assert_eq!(code(b"{not json"), ErrorCode::BadJson);
        assert_eq!(code(b"[1,2]"), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"id":1,"cmd":7}"#), ErrorCode::BadRequest);
        assert_eq!(code(br#"{"id":1}"#), ErrorCode::BadRequest);
        assert_eq!(
            code(br#"{"id":{"a":1},"cmd":"ping"}"#),
            ErrorCode::BadRequest
        );
        assert_eq!(code(br#"{"command":"dance"}"#), ErrorCode::UnknownCommand);
    }

    #[test]
    fn other_commands_are_extensions_with_their_args() {
        match parse_line(br#"{"id":"x","cmd":"ps","name":"api"}"#) {
            Incoming::Ext { id, cmd, args } => {
                assert_eq!(id, Some(json!("x")));
                assert_eq!(cmd, "ps");
                assert_eq!(args.get("name"), Some(&json!("api")));
                assert!(!args.contains_key("cmd"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn seed_001_aliases() {
        assert_eq!(
            parse_line(br#"{"command":"get_status"}"#),
            Incoming::Compat(CompatCommand::GetStatus)
        );
        assert_eq!(
            parse_line(br#"{"command":"restart"}"#),
            Incoming::Compat(CompatCommand::Restart)
        );
    }

    #[test]
    fn reply_shapes() {
        let ok = Reply::ok(Some(json!(1)), "pong");
        assert_eq!(
            String::from_utf8(ok.to_line()).unwrap(),
            r#"{"id":1,"ok":"pong"}"#
        );
        let err = Reply::error(None, ErrorBody::new(ErrorCode::BadJson, "x"));
        assert_eq!(
            String::from_utf8(err.to_line()).unwrap(),
            r#"{"error":{"code":"bad_json","message":"x"}}"#
        );
        let back: Reply = serde_json::from_slice(&ok.to_line()).unwrap();
        assert_eq!(back, ok);
    }

    proptest! {
        #[test]
        fn parse_line_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = parse_line(&bytes);
        }

        #[test]
        fn parse_line_never_panics_on_jsonish(s in r#"\{("(id|cmd|command|protocol|client)":("[a-z_]{0,10}"|[0-9]{1,3}|null|\[\]|\{\}),?){0,4}\}"#) {
            let _ = parse_line(s.as_bytes());
        }
    }
}

/// How bad one finding of a diagnosis is (`majordomo doctor`, `doctor --virtio`): the `status`
/// of each check in their `--json` output.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

impl Level {
    /// The word printed before the finding: `OK`, `WARN`, `FAIL`.
    pub fn label(self) -> &'static str {
        match self {
            Level::Ok => "OK",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        }
    }
}
