//! `[control]`: the instance socket's permissions, limits and token, and their validation.

use std::path::PathBuf;

use majordomo_core::{Problem, Secret, Size};
use serde::{Deserialize, Serialize};

/// `[control]`: the instance socket that carries control commands (and the message bus).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ControlConfig {
    /// Longest accepted line (one request); a longer one gets an error and the connection is closed.
    pub max_line: Size,
    /// Most connections held at once; further ones are told so and closed.
    pub max_connections: usize,
    /// Permissions of the Unix socket file, in octal: `0600` (owner only) or `0660` (with `socket_group`).
    pub socket_mode: String,
    /// Group owning the socket file, for `0660` (Unix).
    pub socket_group: Option<String>,
    /// Users allowed to connect besides the daemon's own user and root (names or numeric uids; Unix, checked with SO_PEERCRED).
    pub allowed_users: Vec<String>,
    /// When set, every connection must first send `{"cmd":"hello","token":"..."}` with this token.
    pub token: Option<Secret>,
}

impl Default for ControlConfig {
    fn default() -> Self {
        Self {
            max_line: Size::mib(1),
            max_connections: 10_000,
            socket_mode: "0600".into(),
            socket_group: None,
            allowed_users: Vec::new(),
            token: None,
        }
    }
}

impl ControlConfig {
    /// `socket_mode` as a number; validated at load time.
    pub fn socket_mode_bits(&self) -> u32 {
        u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o600)
    }

    /// `max_line` in bytes.
    pub fn max_line_bytes(&self) -> usize {
        usize::try_from(self.max_line.bytes()).unwrap_or(usize::MAX)
    }
}

/// What the control subsystem reads: `[control]`, and the `[paths] socket` override (the
/// effective socket path comes from the instance layout, which has it applied; the field is here
/// so that moving the socket rebinds it).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ControlSection {
    pub control: ControlConfig,
    pub socket: Option<PathBuf>,
}

/// Checks what serde cannot in `[control]`. Adds to `problems`, each with its field path.
pub fn validate(control: &ControlConfig, problems: &mut Vec<Problem>) {
    let mode = control.socket_mode.trim_start_matches("0o");
    match u32::from_str_radix(mode, 8) {
        Ok(bits) if bits & !0o777 == 0 && bits & 0o600 == 0o600 => {
            if bits & 0o007 != 0 {
                problems.push(Problem::at(
                    "control.socket_mode",
                    format!(
                        "{:?} would let every local user control this instance",
                        control.socket_mode
                    ),
                    "use \"0600\", or \"0660\" with socket_group",
                ));
            }
        }
        _ => problems.push(Problem::at(
            "control.socket_mode",
            format!("{:?} is not a valid socket mode", control.socket_mode),
            "write an octal mode that keeps owner read/write, like \"0600\" or \"0660\"",
        )),
    }
    #[cfg(unix)]
    {
        for (i, user) in control.allowed_users.iter().enumerate() {
            let known = user.parse::<u32>().is_ok()
                || matches!(nix::unistd::User::from_name(user), Ok(Some(_)));
            if !known {
                problems.push(Problem::at(
                    format!("control.allowed_users[{i}]"),
                    format!("no user named {user:?} on this system"),
                    "use an existing user name or a numeric uid",
                ));
            }
        }
        if let Some(group) = &control.socket_group
            && !matches!(nix::unistd::Group::from_name(group), Ok(Some(_)))
        {
            problems.push(Problem::at(
                "control.socket_group",
                format!("no group named {group:?} on this system"),
                "create the group, or remove socket_group to keep the socket private (0600)",
            ));
        }
    }
    if control.max_line.bytes() < 1024 {
        problems.push(Problem::at(
            "control.max_line",
            format!("{} is too small for a request", control.max_line),
            "use at least 1KiB; the default is 1MiB",
        ));
    }
    if control.max_connections == 0 {
        problems.push(Problem::at(
            "control.max_connections",
            "0 would refuse every client, the CLI included",
            "use a positive number; the default is 10000",
        ));
    }
    if matches!(&control.token, Some(t) if t.expose().is_empty()) {
        problems.push(Problem::at(
            "control.token",
            "an empty token",
            "remove the field to disable tokens, or set a long random string",
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_is_valid_and_bad_modes_are_not() {
        let mut p = Vec::new();
        validate(&ControlConfig::default(), &mut p);
        assert!(p.is_empty(), "{p:?}");
        for mode in ["0666", "0400", "abc"] {
            let mut p = Vec::new();
            let c = ControlConfig {
                socket_mode: mode.into(),
                ..Default::default()
            };
            validate(&c, &mut p);
            assert_eq!(p.len(), 1, "{mode}: {p:?}");
            assert_eq!(p[0].path, "control.socket_mode");
        }
        assert_eq!(ControlConfig::default().socket_mode_bits(), 0o600);
    }
}
