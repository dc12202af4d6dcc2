//! The async Rust SDK for a running majordomo instance.
//!
//! The CLI, the tests and users all talk to the daemon through this crate:
//!
//! ```no_run
//! # async fn demo() -> Result<(), majordomo_client::ClientError> {
//! use std::time::Duration;
//! use majordomo_client::{Client, ConnectOptions};
//! let mut client = Client::connect(
//!     &ConnectOptions::new("/run/user/1000/majordomo/default.sock").wait(Duration::from_secs(5)),
//! ).await?;
//! let status = client.status().await?;
//! println!("{} is up since {} s", status.instance, status.uptime_s);
//! # Ok(()) }
//! ```
#![forbid(unsafe_code)]

pub mod bus;
mod transport;

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use majordomo_proto::{
    Command, ErrorBody, Hello, LineCodec, PROTOCOL_VERSION, ReloadOutcome, Reply, ReplyBody, Status,
};
use serde_json::Value;
use tokio_util::codec::Framed;

pub use majordomo_proto as proto;
pub use transport::Stream;

/// Errors a client call can return. Each says what failed, where, and what to do.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{}: socket {} {reason}; start it with `majordomo run{}`", instance_label(.instance), .socket.display(), instance_flag(.instance))]
    NotRunning {
        instance: Option<String>,
        socket: PathBuf,
        reason: String,
    },
    #[error("permission denied on {}: run as the daemon's user or root, or list your user in [control] allowed_users", .socket.display())]
    PermissionDenied { socket: PathBuf },
    #[error("connection to {} failed: {source}", .socket.display())]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the daemon closed the connection before replying")]
    Closed,
    #[error("no reply within {0:?}")]
    Timeout(Duration),
    #[error("the daemon sent something this client does not understand: {0}")]
    Protocol(String),
    #[error("{} ({})", .0.message, .0.code.as_str())]
    Remote(ErrorBody),
}

fn instance_label(instance: &Option<String>) -> String {
    match instance {
        Some(name) => format!("no instance '{name}' is running"),
        None => "no majordomo instance is running".to_string(),
    }
}

fn instance_flag(instance: &Option<String>) -> String {
    match instance {
        Some(name) if name != "default" => format!(" --instance {name}"),
        _ => String::new(),
    }
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    socket: PathBuf,
    instance: Option<String>,
    wait: Duration,
    call_timeout: Duration,
    max_line: usize,
    token: Option<String>,
}

impl ConnectOptions {
    /// `socket` is a Unix socket path, or a named pipe name (`\\.\pipe\...`) on Windows.
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            instance: None,
            wait: Duration::ZERO,
            call_timeout: Duration::from_secs(30),
            max_line: majordomo_proto::DEFAULT_MAX_LINE * 16,
            token: None,
        }
    }

    /// Names the instance in error messages.
    pub fn instance(mut self, name: impl Into<String>) -> Self {
        self.instance = Some(name.into());
        self
    }

    /// Keep retrying for this long while the daemon is starting (socket absent or refusing).
    pub fn wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// A token for instances with `[control] token`: sent in `hello` right after connecting.
    pub fn token(mut self, token: Option<String>) -> Self {
        self.token = token;
        self
    }

    /// How long one call may wait for its reply (default 30 s).
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }
}

/// One connection to a daemon.
pub struct Client {
    framed: Framed<Stream, LineCodec>,
    next_id: u64,
    call_timeout: Duration,
    token: Option<String>,
}

impl Client {
    /// Connects, retrying with a short backoff until `wait` has passed.
    pub async fn connect(opts: &ConnectOptions) -> Result<Self, ClientError> {
        let deadline = tokio::time::Instant::now() + opts.wait;
        let mut delay = Duration::from_millis(10);
        loop {
            match transport::connect(&opts.socket).await {
                Ok(stream) => {
                    let mut client = Self {
                        framed: Framed::new(stream, LineCodec::new(opts.max_line)),
                        next_id: 1,
                        call_timeout: opts.call_timeout,
                        token: opts.token.clone(),
                    };
                    if client.token.is_some() {
                        client.hello().await?;
                    }
                    return Ok(client);
                }
                Err(e) => {
                    let retryable = transport::is_not_running(&e);
                    if retryable && tokio::time::Instant::now() + delay < deadline {
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_millis(200));
                        continue;
                    }
                    return Err(if e.kind() == std::io::ErrorKind::PermissionDenied {
                        ClientError::PermissionDenied {
                            socket: opts.socket.clone(),
                        }
                    } else if retryable {
                        ClientError::NotRunning {
                            instance: opts.instance.clone(),
                            socket: opts.socket.clone(),
                            reason: if e.kind() == std::io::ErrorKind::NotFound {
                                "not found".to_string()
                            } else {
                                format!("refused the connection ({e})")
                            },
                        }
                    } else {
                        ClientError::Io {
                            socket: opts.socket.clone(),
                            source: e,
                        }
                    });
                }
            }
        }
    }

    /// Sends a core command and waits for its reply's `ok` value.
    pub async fn call(&mut self, cmd: Command) -> Result<Value, ClientError> {
        let request = serde_json::to_value(&cmd)
            .map_err(|e| ClientError::Protocol(format!("request not serializable: {e}")))?;
        self.request(request).await
    }

    /// Sends any command by name, with `args` (a JSON object, or null) as its arguments, and
    /// waits for its reply's `ok` value. This is how subsystem commands (`ps`, ...) are called.
    pub async fn call_named(&mut self, cmd: &str, args: Value) -> Result<Value, ClientError> {
        let mut request = match args {
            Value::Object(map) => map,
            Value::Null => serde_json::Map::new(),
            other => {
                return Err(ClientError::Protocol(format!(
                    "arguments of {cmd:?} must be a JSON object, got {other}"
                )));
            }
        };
        request.insert("cmd".into(), Value::from(cmd));
        self.request(Value::Object(request)).await
    }

    /// Calls the typed command `K` of the contract: `args` serialized as its arguments, the
    /// reply read as `K::Reply`.
    pub async fn call_cmd<K: majordomo_proto::Cmd>(
        &mut self,
        args: &K::Args,
    ) -> Result<K::Reply, ClientError> {
        let args = serde_json::to_value(args)
            .map_err(|e| ClientError::Protocol(format!("arguments not serializable: {e}")))?;
        let value = self.call_named(K::NAME, args).await?;
        serde_json::from_value(value)
            .map_err(|e| ClientError::Protocol(format!("unexpected reply to {:?}: {e}", K::NAME)))
    }

    async fn request(&mut self, mut request: Value) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        if let Value::Object(map) = &mut request {
            map.insert("id".into(), Value::from(id));
        }
        let line = serde_json::to_vec(&request)
            .map_err(|e| ClientError::Protocol(format!("request not serializable: {e}")))?;
        self.send_line(&line).await?;
        let timeout = self.call_timeout;
        tokio::time::timeout(timeout, async {
            loop {
                let line = self.recv_line().await?.ok_or(ClientError::Closed)?;
                let reply: Reply = match serde_json::from_slice(&line) {
                    Ok(r) => r,
                    // Not a reply (e.g. a pushed message): not ours to answer.
                    Err(_) => continue,
                };
                if reply.id != Some(Value::from(id)) {
                    continue;
                }
                return match reply.body {
                    ReplyBody::Ok(v) => Ok(v),
                    ReplyBody::Error(e) => Err(ClientError::Remote(e)),
                };
            }
        })
        .await
        .map_err(|_| ClientError::Timeout(timeout))?
    }

    async fn typed<T: serde::de::DeserializeOwned>(
        &mut self,
        cmd: Command,
    ) -> Result<T, ClientError> {
        let v = self.call(cmd).await?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    pub async fn hello(&mut self) -> Result<Hello, ClientError> {
        self.typed(Command::Hello {
            client: Some(format!("majordomo-client/{}", env!("CARGO_PKG_VERSION"))),
            protocol: Some(PROTOCOL_VERSION),
            token: self.token.clone(),
            framing: None,
        })
        .await
    }

    pub async fn ping(&mut self) -> Result<(), ClientError> {
        self.call(Command::Ping).await.map(drop)
    }

    pub async fn status(&mut self) -> Result<Status, ClientError> {
        self.typed(Command::Status).await
    }

    /// The effective configuration, secrets redacted.
    pub async fn config(&mut self) -> Result<Value, ClientError> {
        self.call(Command::Config).await
    }

    /// Asks for a reload; a rejected config comes back as `Remote` with code `invalid_config`
    /// and every error in `details`.
    pub async fn reload(&mut self) -> Result<ReloadOutcome, ClientError> {
        self.typed(Command::Reload).await
    }

    pub async fn shutdown(&mut self) -> Result<(), ClientError> {
        self.call(Command::Shutdown).await.map(drop)
    }

    /// Writes one raw line (a newline is appended). For tests and protocol experiments.
    pub async fn send_line(&mut self, line: &[u8]) -> Result<(), ClientError> {
        self.framed
            .send(line)
            .await
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Reads one raw line; `None` when the daemon closed the connection.
    pub async fn recv_line(&mut self) -> Result<Option<bytes::Bytes>, ClientError> {
        match self.framed.next().await {
            Some(Ok(line)) => Ok(Some(line)),
            Some(Err(majordomo_proto::FrameError::Io(e)))
                if e.kind() == std::io::ErrorKind::ConnectionReset =>
            {
                Ok(None)
            }
            Some(Err(e)) => Err(ClientError::Protocol(e.to_string())),
            None => Ok(None),
        }
    }
}
