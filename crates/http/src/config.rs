//! `[http]`: where the HTTP server listens, its tokens and TLS, and their validation.

use std::net::SocketAddr;
use std::path::PathBuf;

use majordomo_core::{Problem, Secret};
use serde::{Deserialize, Serialize};

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Every read (GET) route, the event stream and `/metrics`.
    Read,
    /// Reads, and actions (start, stop, restart, retry, ...) except the admin ones.
    Operate,
    /// Everything: `reload`, `shutdown`, `http.rotate_token` and the WebSocket (a full protocol connection).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Operate => "operate",
            Role::Admin => "admin",
        }
    }
}

/// One `[[http.tokens]]` entry: a bearer token for a program (or a person) with a role.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// A name for logs (never the token).
    pub name: String,
    /// The token, sent as `Authorization: Bearer TOKEN` (or used once to log in a browser).
    pub token: Secret,
    /// `read`, `operate` or `admin`.
    #[serde(default = "default_role")]
    pub role: Role,
}

fn default_role() -> Role {
    Role::Read
}

/// `[http]`: the HTTP API, dashboard, metrics and WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Serve HTTP at all.
    pub enabled: bool,
    /// Addresses to listen on (`IP:PORT`); when the port of one is taken a free one is chosen and printed.
    pub listen: Vec<String>,
    /// Allow a listen address other than loopback without TLS (tokens would cross the network in clear).
    pub allow_insecure_remote: bool,
    /// TLS certificate chain (PEM); with `tls_key`, every listener speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    pub tls_key: Option<PathBuf>,
    /// Failed logins (or wrong bearer tokens) allowed per client address and minute; more get 429.
    pub login_attempts_per_minute: u32,
    /// Bearer tokens with roles, besides the login token in `<state>/http/token` (which is admin).
    pub tokens: Vec<TokenConfig>,
    /// Open connections allowed at once (all listeners, event streams and WebSockets included);
    /// more are answered 503 (plain HTTP) or closed (TLS) and counted.
    pub max_connections: usize,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: vec!["127.0.0.1:7373".into()],
            allow_insecure_remote: false,
            tls_cert: None,
            tls_key: None,
            login_attempts_per_minute: 10,
            tokens: Vec::new(),
            max_connections: 512,
        }
    }
}

impl HttpConfig {
    pub fn tls(&self) -> bool {
        self.tls_cert.is_some() && self.tls_key.is_some()
    }
}

/// Checks what serde cannot in `[http]`.
pub fn validate(http: &HttpConfig, problems: &mut Vec<Problem>) {
    if !http.enabled {
        return;
    }
    if http.listen.is_empty() {
        problems.push(Problem::at(
            "http.listen",
            "no address to listen on",
            "write at least one, e.g. [\"127.0.0.1:7373\"], or set enabled = false",
        ));
    }
    for (i, a) in http.listen.iter().enumerate() {
        match a.parse::<SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() && !http.tls() && !http.allow_insecure_remote {
                    problems.push(Problem::at(
                        format!("http.listen[{i}]"),
                        format!(
                            "{a} is reachable from the network but the HTTP server has no TLS: tokens and cookies would travel in clear"
                        ),
                        "set tls_cert and tls_key, listen on 127.0.0.1, or set allow_insecure_remote = true if a TLS proxy is in front",
                    ));
                }
            }
            Err(_) => problems.push(Problem::at(
                format!("http.listen[{i}]"),
                format!("{a:?} is not an IP:PORT address"),
                "write it like \"127.0.0.1:7373\" or \"[::1]:7373\"",
            )),
        }
    }
    if http.tls_cert.is_some() != http.tls_key.is_some() {
        problems.push(Problem::at(
            "http.tls_cert",
            "TLS needs both tls_cert and tls_key",
            "set both (PEM files), or neither",
        ));
    }
    if http.login_attempts_per_minute == 0 {
        problems.push(Problem::at(
            "http.login_attempts_per_minute",
            "0 would refuse every login",
            "use a small number like 10",
        ));
    }
    if http.max_connections == 0 {
        problems.push(Problem::at(
            "http.max_connections",
            "0 would refuse every connection",
            "use a number like 512, or set enabled = false",
        ));
    }
    let mut names = std::collections::BTreeSet::new();
    for (i, t) in http.tokens.iter().enumerate() {
        if t.token.expose().len() < 16 {
            problems.push(Problem::at(
                format!("http.tokens[{i}].token"),
                "a token shorter than 16 characters is easy to guess",
                "use a long random string, e.g. from `openssl rand -hex 24`",
            ));
        }
        if !names.insert(t.name.as_str()) {
            problems.push(Problem::at(
                format!("http.tokens[{i}].name"),
                format!("the name {:?} is used twice", t.name),
                "give each token its own name",
            ));
        }
    }
}
