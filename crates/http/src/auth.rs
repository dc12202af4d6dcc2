//! Who is asking: the login token (`<state>/http/token`, admin), `[http] tokens` with roles,
//! browser sessions (an HttpOnly, SameSite=Strict cookie), and the login rate limit.

use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use majordomo_bus::tokens_match;

use crate::config::{HttpConfig, Role};

/// The cookie that carries a browser session.
pub const COOKIE: &str = "majordomo_session";
/// Sessions kept at most; the oldest is dropped past it.
const MAX_SESSIONS: usize = 1024;
/// A browser session lasts this long.
pub const SESSION_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// A random token: 32 bytes from the OS, hex.
pub fn random_token() -> Result<String, String> {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).map_err(|e| format!("no randomness from the OS: {e}"))?;
    Ok(b.iter().map(|x| format!("{x:02x}")).collect())
}

/// The login token file: `<state>/http/token`.
pub fn token_path(state_dir: &Path) -> PathBuf {
    state_dir.join("http").join("token")
}

/// Reads the login token, creating it (0600, folder 0700) on first start.
pub fn load_or_create(path: &Path) -> Result<String, String> {
    match std::fs::read_to_string(path) {
        Ok(s) if !s.trim().is_empty() => return Ok(s.trim().to_string()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            return Err(format!(
                "cannot read the login token {}: {e}",
                path.display()
            ));
        }
    }
    let token = random_token()?;
    write_token(path, &token)?;
    Ok(token)
}

/// Writes a token file readable by its owner only, atomically.
pub fn write_token(path: &Path, token: &str) -> Result<(), String> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let fail = |e: std::io::Error| format!("cannot write the login token {}: {e}", path.display());
    std::fs::create_dir_all(dir).map_err(fail)?;
    let tmp = path.with_extension("tmp");
    let mut o = std::fs::OpenOptions::new();
    o.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        o.mode(0o600);
        let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
    }
    let mut f = o.open(&tmp).map_err(fail)?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))
            .map_err(fail)?;
    }
    f.write_all(token.as_bytes()).map_err(fail)?;
    f.write_all(b"\n").map_err(fail)?;
    f.sync_all().map_err(fail)?;
    std::fs::rename(&tmp, path).map_err(fail)
}

/// Who a request comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Principal {
    pub role: Role,
    /// Authenticated by the session cookie (actions then need the CSRF header).
    pub cookie: bool,
}

struct SessionEntry {
    role: Role,
    /// Made from the login token (dropped when it is rotated).
    login: bool,
    created: Instant,
}

/// The tokens in force and the browser sessions.
pub struct Auth {
    login: RwLock<String>,
    tokens: RwLock<Vec<(String, String, Role)>>,
    sessions: Mutex<HashMap<String, SessionEntry>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
    per_minute: RwLock<u32>,
}

impl Auth {
    pub fn new(login: String, cfg: &HttpConfig) -> Self {
        let a = Self {
            login: RwLock::new(login),
            tokens: RwLock::default(),
            sessions: Mutex::default(),
            failures: Mutex::default(),
            per_minute: RwLock::new(cfg.login_attempts_per_minute),
        };
        a.configure(cfg);
        a
    }

    /// Applies `[http] tokens` and the rate limit (on reload).
    pub fn configure(&self, cfg: &HttpConfig) {
        if let Ok(mut t) = self.tokens.write() {
            *t = cfg
                .tokens
                .iter()
                .map(|t| (t.name.clone(), t.token.expose().to_string(), t.role))
                .collect();
        }
        if let Ok(mut p) = self.per_minute.write() {
            *p = cfg.login_attempts_per_minute;
        }
    }

    /// Replaces the login token; browser sessions made with the old one end.
    pub fn set_login(&self, token: String) {
        if let Ok(mut l) = self.login.write() {
            *l = token;
        }
        if let Ok(mut s) = self.sessions.lock() {
            s.retain(|_, e| !e.login);
        }
    }

    /// The role of a token, if it is one: `(role, is the login token)`.
    pub fn check_token(&self, given: &str) -> Option<(Role, bool)> {
        if given.is_empty() {
            return None;
        }
        if let Ok(l) = self.login.read()
            && tokens_match(&l, given)
        {
            return Some((Role::Admin, true));
        }
        let tokens = self.tokens.read().ok()?;
        tokens
            .iter()
            .find(|(_, t, _)| tokens_match(t, given))
            .map(|(_, _, r)| (*r, false))
    }

    /// Opens a browser session for a valid token; returns the cookie value.
    pub fn open_session(&self, role: Role, login: bool) -> Option<String> {
        let id = random_token().ok()?;
        let mut s = self.sessions.lock().ok()?;
        let now = Instant::now();
        s.retain(|_, e| now.duration_since(e.created) < SESSION_TTL);
        if s.len() >= MAX_SESSIONS
            && let Some(oldest) = s
                .iter()
                .min_by_key(|(_, e)| e.created)
                .map(|(k, _)| k.clone())
        {
            s.remove(&oldest);
        }
        s.insert(
            id.clone(),
            SessionEntry {
                role,
                login,
                created: now,
            },
        );
        Some(id)
    }

    pub fn session(&self, id: &str) -> Option<Role> {
        let s = self.sessions.lock().ok()?;
        // The map is keyed by the random id: a lookup leaks no timing worth having over 256 bits.
        s.get(id)
            .filter(|e| e.created.elapsed() < SESSION_TTL)
            .map(|e| e.role)
    }

    pub fn close_session(&self, id: &str) {
        if let Ok(mut s) = self.sessions.lock() {
            s.remove(id);
        }
    }

    /// Whether `ip` may try a token now (under the per-minute limit of failures).
    pub fn may_try(&self, ip: IpAddr) -> bool {
        let limit = self.per_minute.read().map(|p| *p).unwrap_or(10);
        let Ok(f) = self.failures.lock() else {
            return true;
        };
        match f.get(&ip) {
            Some((start, n)) => start.elapsed() >= Duration::from_secs(60) || *n < limit,
            None => true,
        }
    }

    /// Counts a failed attempt from `ip`.
    pub fn failed(&self, ip: IpAddr) {
        let Ok(mut f) = self.failures.lock() else {
            return;
        };
        if f.len() > 10_000 {
            f.retain(|_, (s, _)| s.elapsed() < Duration::from_secs(60));
        }
        let e = f.entry(ip).or_insert((Instant::now(), 0));
        if e.0.elapsed() >= Duration::from_secs(60) {
            *e = (Instant::now(), 0);
        }
        e.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TokenConfig;
    use majordomo_core::Secret;

    #[test]
    fn roles_sessions_rotation_and_rate_limit() {
        let mut cfg = HttpConfig::default();
        cfg.tokens.push(TokenConfig {
            name: "grafana".into(),
            token: Secret::new("r".repeat(20)),
            role: Role::Read,
        });
        cfg.login_attempts_per_minute = 2;
        let a = Auth::new("L".repeat(64), &cfg);
        assert_eq!(a.check_token(&"L".repeat(64)), Some((Role::Admin, true)));
        assert_eq!(a.check_token(&"r".repeat(20)), Some((Role::Read, false)));
        assert_eq!(a.check_token("nope"), None);
        assert_eq!(a.check_token(""), None);
        let sid = a.open_session(Role::Admin, true).unwrap();
        assert_eq!(a.session(&sid), Some(Role::Admin));
        a.set_login("N".repeat(64));
        assert_eq!(a.session(&sid), None, "rotation ends login sessions");
        assert_eq!(a.check_token(&"L".repeat(64)), None);
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(a.may_try(ip));
        a.failed(ip);
        a.failed(ip);
        assert!(!a.may_try(ip));
    }

    #[test]
    fn token_file_is_created_private_and_reused() {
        let d = tempfile::tempdir().unwrap();
        let p = token_path(d.path());
        let t = load_or_create(&p).unwrap();
        assert_eq!(t.len(), 64);
        assert_eq!(load_or_create(&p).unwrap(), t);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600);
        }
    }
}
