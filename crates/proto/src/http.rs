//! The HTTP subsystem's commands and status.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::contract::NoArgs;

/// What `http.rotate_token` did. The new token itself is never in a reply: it is in the file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Rotated {
    /// The file holding the new login token (mode 0600).
    pub path: String,
}

/// Where the HTTP server listens.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct HttpInfo {
    /// The addresses actually listened on (`127.0.0.1:7373`, or the free port chosen when that was taken).
    pub listen: Vec<String>,
    /// Whether the listeners speak TLS (`https://`).
    pub tls: bool,
    /// The file holding the login token.
    pub token_file: String,
}

crate::commands! { COMMANDS:
    /// Where the HTTP server listens and where its login token is (never the token itself).
    HttpInfoCmd "http.info" (Read) NoArgs => HttpInfo;
    /// Replaces the HTTP login token with a new random one: every link and cookie made with the old one stops working.
    HttpRotateToken "http.rotate_token" (Action) NoArgs => Rotated;
}
