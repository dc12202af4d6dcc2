//! Socket commands that subsystems add: `ps`, `alerts`, `queue.ls`, ...
//!
//! The control subsystem answers the core commands itself and routes every other `cmd` here.
//! A subsystem registers its commands when it starts ([`crate::lifecycle::Ctx::handle`]); they
//! are removed when it stops, so a command never reaches a subsystem that is not running and a
//! client gets a clear "unknown command" instead; a subsystem the config leaves off may register
//! what its commands answer meanwhile ([`crate::lifecycle::Subsystem::off`]: "off on this
//! instance"). Handlers get the request object (without `id` and `cmd`) and return the reply's
//! `ok` value or an error body.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, RwLock};

use majordomo_proto::{Cmd, ErrorBody, ErrorCode};
use serde_json::{Map, Value};

pub type Args = Map<String, Value>;
pub type Reply = Result<Value, ErrorBody>;
pub type Handler = Arc<dyn Fn(Args) -> Pin<Box<dyn Future<Output = Reply> + Send>> + Send + Sync>;

/// The registered commands, by name.
#[derive(Default)]
pub struct Commands {
    map: RwLock<BTreeMap<String, (&'static str, Handler)>>,
}

impl Commands {
    /// Registers the typed command `K`: its arguments are parsed into `K::Args` (a wrong or
    /// missing field is `bad_request` naming it) and its reply serialized from `K::Reply`.
    pub fn register_typed<K, F, Fut>(&self, owner: &'static str, f: F)
    where
        K: Cmd,
        F: Fn(K::Args) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<K::Reply, ErrorBody>> + Send + 'static,
    {
        let f = Arc::new(f);
        let handler: Handler = Arc::new(move |args| {
            let f = f.clone();
            Box::pin(async move {
                let args = parse_args::<K::Args>(K::NAME, args)?;
                let reply = f(args).await?;
                serde_json::to_value(reply).map_err(|e| {
                    ErrorBody::new(
                        ErrorCode::Internal,
                        format!("the reply to {:?} could not be serialized: {e}", K::NAME),
                    )
                })
            })
        });
        self.register(owner, K::NAME, handler);
    }

    pub fn register(&self, owner: &'static str, name: &str, handler: Handler) {
        if let Ok(mut m) = self.map.write() {
            m.insert(name.to_string(), (owner, handler));
        }
    }

    /// Removes every command `owner` registered.
    pub fn unregister_owner(&self, owner: &str) {
        if let Ok(mut m) = self.map.write() {
            m.retain(|_, (o, _)| *o != owner);
        }
    }

    pub fn get(&self, name: &str) -> Option<Handler> {
        self.map.read().ok()?.get(name).map(|(_, h)| h.clone())
    }

    pub fn names(&self) -> Vec<String> {
        self.map
            .read()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Runs `name`, or answers `unknown_command` listing what exists.
    pub async fn dispatch(&self, name: &str, args: Args) -> Reply {
        match self.get(name) {
            Some(h) => h(args).await,
            None => {
                let mut known: Vec<String> = majordomo_proto::Command::NAMES
                    .iter()
                    .map(|s| s.to_string())
                    .collect();
                // Some core commands are also registered (for carriers that route every
                // command through the registry): each name once.
                for n in self.names() {
                    if !known.contains(&n) {
                        known.push(n);
                    }
                }
                Err(ErrorBody::new(
                    ErrorCode::UnknownCommand,
                    format!(
                        "unknown command {name:?}; known commands: {}",
                        known.join(", ")
                    ),
                ))
            }
        }
    }
}

/// What a command handler may keep for as long as the connection it came on stays open: a
/// carrier that has connections (the socket session) runs each command inside
/// [`ConnScope::run`], and a handler registers into [`ConnScope::current`] whatever must be
/// dropped when the connection closes (a held lock, a subscription...). Keys are the
/// registrant's own (`"lock.7"`); [`ConnScope::take`] drops one early. Carriers without
/// connections (one HTTP request) give no scope: `current` is `None`. The scope also says who
/// is on the other end ([`ConnScope::who`]), for audit records.
#[derive(Clone, Default)]
pub struct ConnScope {
    held: Arc<Mutex<BTreeMap<String, Box<dyn std::any::Any + Send>>>>,
    who: Arc<Who>,
}

/// Who is on the other end of a connection, as far as its carrier knows: the transport
/// (`"unix socket"`, `"named pipe"`, `"virtio port"`, `"websocket"`, ...; empty when the
/// carrier did not say) and the peer's uid and pid where the OS tells them (Unix sockets).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Who {
    pub via: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
}

tokio::task_local! {
    static CONN: ConnScope;
}

impl ConnScope {
    /// The scope of a new connection from `who`.
    pub fn new(who: Who) -> Self {
        Self {
            held: Arc::default(),
            who: Arc::new(who),
        }
    }

    /// Who is on the other end of this connection.
    pub fn who(&self) -> &Who {
        &self.who
    }

    /// Runs `f` (a command) with this connection's scope as [`ConnScope::current`].
    pub async fn run<F: Future>(&self, f: F) -> F::Output {
        CONN.scope(self.clone(), f).await
    }

    /// The scope of the connection the running command came on, if its carrier has one.
    pub fn current() -> Option<ConnScope> {
        CONN.try_with(Clone::clone).ok()
    }

    /// Keeps `value` until the connection closes (or [`ConnScope::take`]); replaces a value
    /// under the same key.
    pub fn hold(&self, key: impl Into<String>, value: impl std::any::Any + Send) {
        if let Ok(mut m) = self.held.lock() {
            m.insert(key.into(), Box::new(value));
        }
    }

    /// Drops the value kept under `key` now; whether there was one.
    pub fn take(&self, key: &str) -> bool {
        // Dropped outside the lock: a value's Drop may do anything.
        let v = self.held.lock().ok().and_then(|mut m| m.remove(key));
        v.is_some()
    }

    /// How many values the connection keeps.
    pub fn len(&self) -> usize {
        self.held.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Reads a typed argument object, or answers `bad_request` naming the command and the field.
pub fn parse_args<T: serde::de::DeserializeOwned>(cmd: &str, args: Args) -> Result<T, ErrorBody> {
    serde_path_to_error::deserialize(Value::Object(args)).map_err(|e| {
        let path = e.path().to_string();
        let at = if path == "." {
            String::new()
        } else {
            format!(" field `{path}`:")
        };
        ErrorBody::new(
            ErrorCode::BadRequest,
            format!("bad arguments for {cmd:?}:{at} {}", e.inner()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Names {
        names: Vec<String>,
    }

    struct Flag(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[tokio::test]
    async fn a_connection_scope_keeps_values_until_taken_or_dropped() {
        assert!(ConnScope::current().is_none(), "no scope outside a command");
        let scope = ConnScope::default();
        let (a, b) = (Arc::default(), Arc::default());
        let (fa, fb) = (Flag(Arc::clone(&a)), Flag(Arc::clone(&b)));
        scope
            .run(async move {
                let s = ConnScope::current().expect("the connection's scope");
                s.hold("a", fa);
                s.hold("b", fb);
            })
            .await;
        assert_eq!(scope.len(), 2);
        assert!(scope.take("a"));
        assert!(
            a.load(std::sync::atomic::Ordering::SeqCst),
            "taken: dropped now"
        );
        assert!(!scope.take("a"));
        assert!(!b.load(std::sync::atomic::Ordering::SeqCst));
        drop(scope);
        assert!(
            b.load(std::sync::atomic::Ordering::SeqCst),
            "the connection closed"
        );
    }

    #[test]
    fn a_wrong_type_names_the_field() {
        let Value::Object(args) = json!({"names": "api"}) else {
            unreachable!()
        };
        let e = parse_args::<Names>("restart", args).unwrap_err();
        assert_eq!(e.code, ErrorCode::BadRequest);
        assert!(e.message.contains("`names`"), "{}", e.message);
    }
}
