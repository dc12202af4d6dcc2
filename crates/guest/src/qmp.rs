//! The QMP envelope as qemu-ga speaks it: parse one request (`execute`, `arguments`, `id`),
//! encode one reply line (`{"return":...}` / `{"error":{"class":...,"desc":...}}`, `id` echoed),
//! and the command table with each command's policy flags. Pure: no I/O.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

/// An error reply: a QMP error class and a human-readable description.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QmpError {
    pub class: &'static str,
    pub desc: String,
}

impl QmpError {
    pub fn generic(desc: impl Into<String>) -> Self {
        Self {
            class: "GenericError",
            desc: desc.into(),
        }
    }
    pub fn not_found(name: &str) -> Self {
        Self {
            class: "CommandNotFound",
            desc: format!("The command {name} has not been found"),
        }
    }
    pub fn disabled(name: &str) -> Self {
        // qemu-ga answers a disabled command with CommandNotFound too (libvirt and Proxmox
        // treat both classes the same); the text says why.
        Self {
            class: "CommandNotFound",
            desc: format!("Command {name} has been disabled"),
        }
    }
    pub fn unsupported(name: &str) -> Self {
        Self::generic(format!(
            "this feature or command is not currently supported: {name}"
        ))
    }
}

/// One request.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub execute: String,
    pub arguments: Map<String, Value>,
    pub id: Option<Value>,
}

/// Parses one framed value. On error, the `id` (when one could be read) to echo.
pub fn parse(bytes: &[u8]) -> Result<Request, (QmpError, Option<Value>)> {
    let value: Value = match serde_json::from_slice(bytes) {
        Ok(v) => v,
        Err(_) => {
            let text = String::from_utf8_lossy(bytes);
            let shown: String = text.chars().take(64).collect();
            return Err((
                QmpError::generic(format!("JSON parse error, invalid input '{shown}'")),
                None,
            ));
        }
    };
    let Value::Object(mut obj) = value else {
        return Err((QmpError::generic("QMP input must be a JSON object"), None));
    };
    let id = obj.remove("id");
    let execute = match obj.remove("execute") {
        Some(Value::String(s)) => s,
        Some(_) => {
            return Err((
                QmpError::generic("QMP input member 'execute' must be a string"),
                id,
            ));
        }
        None => {
            return Err((QmpError::generic("QMP input lacks member 'execute'"), id));
        }
    };
    let arguments = match obj.remove("arguments") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => {
            return Err((
                QmpError::generic("QMP input member 'arguments' must be an object"),
                id,
            ));
        }
    };
    if let Some(k) = obj.keys().next() {
        return Err((
            QmpError::generic(format!("QMP input member '{k}' is unexpected")),
            id,
        ));
    }
    Ok(Request {
        execute,
        arguments,
        id,
    })
}

/// Deserializes a command's arguments, with qemu's wording for what is wrong.
pub fn args<T: DeserializeOwned>(arguments: Map<String, Value>) -> Result<T, QmpError> {
    serde_json::from_value(Value::Object(arguments)).map_err(|e| {
        let msg = e.to_string();
        if let Some(rest) = msg.strip_prefix("unknown field `") {
            let name = rest.split('`').next().unwrap_or("");
            QmpError::generic(format!("Parameter '{name}' is unexpected"))
        } else if let Some(rest) = msg.strip_prefix("missing field `") {
            let name = rest.split('`').next().unwrap_or("");
            QmpError::generic(format!("Parameter '{name}' is missing"))
        } else {
            QmpError::generic(format!("Invalid parameter: {msg}"))
        }
    })
}

/// Encodes one reply line: compact JSON, one line, ending in `}\n` (Proxmox's regex needs it).
pub fn reply_line(result: &Result<Value, QmpError>, id: Option<&Value>) -> Vec<u8> {
    // Written by hand to keep qemu-ga's member order (return/error first, then id);
    // serde_json escapes control characters, so the line holds no raw newline.
    let mut line = Vec::with_capacity(64);
    match result {
        Ok(v) => {
            line.extend_from_slice(b"{\"return\":");
            line.extend(serde_json::to_vec(v).unwrap_or_else(|_| b"null".to_vec()));
        }
        Err(e) => {
            line.extend_from_slice(b"{\"error\":");
            let err = serde_json::json!({"class": e.class, "desc": e.desc});
            line.extend(serde_json::to_vec(&err).unwrap_or_else(|_| b"{}".to_vec()));
        }
    }
    if let Some(id) = id {
        line.extend_from_slice(b",\"id\":");
        line.extend(serde_json::to_vec(id).unwrap_or_else(|_| b"null".to_vec()));
    }
    line.extend_from_slice(b"}\n");
    line
}

/// A command the agent knows.
#[derive(Debug, Clone, Copy)]
pub struct CommandInfo {
    pub name: &'static str,
    /// `false` for commands that send nothing when they succeed (guest-shutdown, suspend).
    pub success_response: bool,
    /// Off unless `[guest] allow` names it (guest-exec, guest-file-*).
    pub risky: bool,
}

const fn c(name: &'static str) -> CommandInfo {
    CommandInfo {
        name,
        success_response: true,
        risky: false,
    }
}
const fn risky(name: &'static str) -> CommandInfo {
    CommandInfo {
        name,
        success_response: true,
        risky: true,
    }
}
const fn silent(name: &'static str) -> CommandInfo {
    CommandInfo {
        name,
        success_response: false,
        risky: false,
    }
}

/// The protocol's own commands: never disabled (a host must always be able to sync and ask).
pub const ESSENTIAL: &[&str] = &[
    "guest-sync",
    "guest-sync-delimited",
    "guest-ping",
    "guest-info",
];

/// Every command answered, in `guest-info` order.
pub const COMMANDS: &[CommandInfo] = &[
    c("guest-sync"),
    c("guest-sync-delimited"),
    c("guest-ping"),
    c("guest-info"),
    c("guest-get-osinfo"),
    c("guest-get-host-name"),
    c("guest-get-timezone"),
    c("guest-get-time"),
    c("guest-set-time"),
    c("guest-get-users"),
    c("guest-get-vcpus"),
    c("guest-network-get-interfaces"),
    c("guest-get-fsinfo"),
    c("guest-get-disks"),
    c("guest-get-diskstats"),
    c("guest-get-cpustats"),
    c("guest-get-load"),
    c("guest-get-memory-blocks"),
    c("guest-get-memory-block-info"),
    c("guest-fsfreeze-status"),
    c("guest-fsfreeze-freeze"),
    c("guest-fsfreeze-freeze-list"),
    c("guest-fsfreeze-thaw"),
    c("guest-fstrim"),
    silent("guest-shutdown"),
    risky("guest-exec"),
    risky("guest-exec-status"),
    risky("guest-file-open"),
    risky("guest-file-read"),
    risky("guest-file-write"),
    risky("guest-file-seek"),
    risky("guest-file-flush"),
    risky("guest-file-close"),
    c("guest-set-user-password"),
    c("__org.majordomo_exec"),
    c("__org.majordomo_metrics"),
];

pub fn lookup(name: &str) -> Option<&'static CommandInfo> {
    COMMANDS.iter().find(|c| c.name == name)
}

/// `[guest] allow`/`block` turned into a decision per command (patterns with `*`/`?`).
#[derive(Debug, Clone, Default)]
pub struct Policy {
    allow: Vec<glob::Pattern>,
    block: Vec<glob::Pattern>,
}

impl Policy {
    /// Builds the policy; a pattern that does not compile is returned as the error.
    pub fn new(allow: &[String], block: &[String]) -> Result<Self, String> {
        let compile = |list: &[String]| -> Result<Vec<glob::Pattern>, String> {
            list.iter()
                .map(|p| glob::Pattern::new(p).map_err(|e| format!("{p:?}: {e}")))
                .collect()
        };
        Ok(Self {
            allow: compile(allow)?,
            block: compile(block)?,
        })
    }

    /// qemu-ga's `--allow-rpcs`/`--block-rpcs`: an empty allow list enables every command but
    /// the risky ones; a non-empty one enables exactly what it matches; block then disables.
    pub fn enabled(&self, cmd: &CommandInfo) -> bool {
        if ESSENTIAL.contains(&cmd.name) {
            return true;
        }
        let allowed = if self.allow.is_empty() {
            !cmd.risky
        } else {
            self.allow.iter().any(|p| p.matches(cmd.name))
        };
        allowed && !self.block.iter().any(|p| p.matches(cmd.name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde_json::json;

    #[test]
    fn envelope_errors_match_qemu() {
        let e = |s: &str| parse(s.as_bytes()).unwrap_err().0.desc;
        assert_eq!(e("[1]"), "QMP input must be a JSON object");
        assert_eq!(
            e(r#"{"execute":"guest-ping","arguments":null}"#),
            "QMP input member 'arguments' must be an object"
        );
        assert_eq!(
            e(r#"{"execute":"guest-ping","foo":1}"#),
            "QMP input member 'foo' is unexpected"
        );
        assert!(e("hello").starts_with("JSON parse error"));
        let (_, id) = parse(br#"{"arguments":{},"id":7}"#).unwrap_err();
        assert_eq!(id, Some(json!(7)));
        let r = parse(br#"{"execute":"guest-sync","arguments":{"id":5},"id":"x"}"#).unwrap();
        assert_eq!(r.execute, "guest-sync");
        assert_eq!(r.id, Some(json!("x")));
    }

    #[test]
    fn reply_is_one_compact_line() {
        let l = reply_line(&Ok(json!({"a":"x\ny"})), Some(&json!(1)));
        assert_eq!(l, b"{\"return\":{\"a\":\"x\\ny\"},\"id\":1}\n");
        let l = reply_line(&Err(QmpError::not_found("x")), None);
        assert_eq!(
            String::from_utf8(l).unwrap(),
            "{\"error\":{\"class\":\"CommandNotFound\",\"desc\":\"The command x has not been found\"}}\n"
        );
    }

    #[test]
    fn policy_follows_qemu_ga() {
        let get = |n| lookup(n).unwrap();
        let p = Policy::new(&[], &[]).unwrap();
        assert!(p.enabled(get("guest-get-osinfo")));
        assert!(!p.enabled(get("guest-exec")));
        assert!(!p.enabled(get("guest-file-open")));
        let p = Policy::new(&["guest-exec*".into()], &["guest-exec-status".into()]).unwrap();
        assert!(p.enabled(get("guest-exec")));
        assert!(!p.enabled(get("guest-exec-status")));
        assert!(!p.enabled(get("guest-get-osinfo")));
        assert!(p.enabled(get("guest-sync-delimited")));
        let p = Policy::new(&["*".into()], &["guest-shutdown".into()]).unwrap();
        assert!(p.enabled(get("guest-file-write")));
        assert!(!p.enabled(get("guest-shutdown")));
    }

    proptest! {
        #[test]
        fn parse_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = parse(&bytes);
        }
        #[test]
        fn parse_never_panics_on_objects(s in r#"\{("(execute|arguments|id|x)":(null|1|"[a-z-]{0,12}"|\{\}|\[\]),?){0,4}\}"#) {
            let _ = parse(s.as_bytes());
        }
    }
}
