//! The http subsystem: the REST API (`/api/v1/<command>`, every command of the contract), its
//! OpenAPI document, the live event stream (SSE), a WebSocket carrier of the instance protocol,
//! `/metrics` for Prometheus and the dashboard, all on one small axum server.
//!
//! It answers no command itself: reads and actions go through the core command registry (and,
//! for the commands a protocol session answers, through a bus [`Session`]), exactly as on the
//! socket. Who may do what is decided here: the login token in `<state>/http/token` (admin),
//! `[http] tokens` with roles, and browser sessions made from either.
#![deny(unsafe_code)]

pub mod api;
pub mod auth;
pub mod config;
mod live;
pub mod metrics;
mod server;
mod ui;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use majordomo_bus::{Router, Session, SessionConfig};
use majordomo_core::lifecycle::{BoxFuture, Change, Ctx, Subsystem};
use majordomo_proto::http::{HttpInfo, HttpInfoCmd, HttpRotateToken, Rotated};
use majordomo_proto::{ErrorBody, ErrorCode, Status};
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use config::{HttpConfig, Role, TokenConfig, validate};

/// The http subsystem. Its WebSocket connections share the bus [`Router`] with the socket.
pub struct Http {
    router: Arc<Router>,
}

impl Http {
    pub fn new(router: Arc<Router>) -> Self {
        Self { router }
    }
}

impl Subsystem for Http {
    type Config = HttpConfig;

    fn name(&self) -> &'static str {
        "http"
    }

    fn enabled(&self, c: &HttpConfig) -> bool {
        c.enabled
    }

    fn change(&self, old: &HttpConfig, new: &HttpConfig) -> Change {
        if old == new {
            Change::None
        } else if old.listen != new.listen
            || old.tls_cert != new.tls_cert
            || old.tls_key != new.tls_key
            || old.allow_insecure_remote != new.allow_insecure_remote
        {
            Change::Restart
        } else {
            Change::Live
        }
    }

    fn run(&self, ctx: Ctx<HttpConfig>) -> BoxFuture {
        let router = self.router.clone();
        Box::pin(async move {
            let cfg = ctx.config.borrow().clone();
            let token_file = auth::token_path(ctx.state_dir());
            let login = auth::load_or_create(&token_file)?;
            let auth = Arc::new(auth::Auth::new(login, &cfg));
            let tls = match (&cfg.tls_cert, &cfg.tls_key) {
                (Some(c), Some(k)) => Some(server::Tls::load(c, k)?),
                _ => None,
            };
            let mut listeners = Vec::new();
            for a in &cfg.listen {
                listeners.push(bind(a).await?);
            }
            let addrs: Vec<String> = listeners
                .iter()
                .filter_map(|l| l.local_addr().ok())
                .map(|a| a.to_string())
                .collect();
            let info = HttpInfo {
                listen: addrs.clone(),
                tls: tls.is_some(),
                token_file: token_file.display().to_string(),
            };
            let scheme = if info.tls { "https" } else { "http" };
            let urls: Vec<String> = addrs.iter().map(|a| format!("{scheme}://{a}/")).collect();
            let detail = urls.join(" ");
            ctx.handle::<HttpInfoCmd, _, _>(move |_| {
                let info = info.clone();
                async move { Ok(info) }
            });
            {
                let auth = auth.clone();
                let path = token_file.clone();
                ctx.handle::<HttpRotateToken, _, _>(move |_| {
                    let auth = auth.clone();
                    let path = path.clone();
                    async move {
                        let token = auth::random_token()
                            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e))?;
                        auth::write_token(&path, &token)
                            .map_err(|e| ErrorBody::new(ErrorCode::Internal, e))?;
                        auth.set_login(token);
                        tracing::info!(file = %path.display(), "login token rotated");
                        Ok(Rotated {
                            path: path.display().to_string(),
                        })
                    }
                });
            }
            let gate = server::Gate::new(cfg.max_connections);
            // Live changes: tokens, the rate limit and the connection cap.
            {
                let mut config = ctx.config.clone();
                let token = ctx.token.clone();
                let auth = auth.clone();
                let gate = gate.clone();
                ctx.tracker.spawn(async move {
                    loop {
                        tokio::select! {
                            _ = token.cancelled() => return,
                            changed = config.changed() => {
                                if changed.is_err() { return; }
                                let c = config.borrow_and_update().clone();
                                auth.configure(&c);
                                gate.set_max(c.max_connections);
                            }
                        }
                    }
                });
            }
            let (_session_tx, session_rx) = watch::channel(Arc::new(SessionConfig::default()));
            let session = Session {
                commands: ctx.commands.clone(),
                daemon: ctx.daemon.clone(),
                router: router.clone(),
                instance: ctx.layout().instance.as_str().into(),
                config: session_rx,
                token: ctx.token.clone(),
                tracker: ctx.tracker.clone(),
            };
            let app = Arc::new(server::App::new(
                ctx.commands.clone(),
                ctx.hub.clone(),
                router,
                session,
                auth,
                ctx.token.clone(),
                ctx.tracker.clone(),
                tls.is_some(),
                gate.clone(),
            ));
            let service = server::routes(app);
            for l in listeners {
                let addr = l.local_addr().map_err(|e| e.to_string())?;
                let scheme = if tls.is_some() { "https" } else { "http" };
                tracing::info!(%addr, "listening on {scheme}://{addr}/");
                let service = service.clone();
                let token = ctx.token.clone();
                let tls = tls.clone();
                let gate = gate.clone();
                ctx.tracker.spawn(async move {
                    server::serve(l, tls, gate, service, token).await;
                });
            }
            // Running, with where (the console link and `majordomo http url` read it).
            ctx.detail(detail);
            ctx.token.cancelled().await;
            Ok(())
        })
    }
}

/// Binds `addr`; when its port is taken, a free port on the same address instead (logged and
/// shown in `status` and the console link).
async fn bind(addr: &str) -> Result<TcpListener, String> {
    let a: SocketAddr = addr
        .parse()
        .map_err(|_| format!("[http] listen {addr:?} is not an IP:PORT address"))?;
    match TcpListener::bind(a).await {
        Ok(l) => Ok(l),
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && a.port() != 0 => {
            let l = TcpListener::bind(SocketAddr::new(a.ip(), 0))
                .await
                .map_err(|e| format!("cannot listen on {}: {e}", a.ip()))?;
            let got = l.local_addr().map(|x| x.to_string()).unwrap_or_default();
            tracing::warn!(wanted = %a, listening = %got, "port taken: listening on a free port instead");
            Ok(l)
        }
        Err(e) => Err(format!(
            "cannot listen on {a}: {e}; change [http] listen or set [http] enabled = false"
        )),
    }
}

/// The dashboard link with the login token, for the console of a daemon in the foreground (and
/// `majordomo http url`): `None` when HTTP is off. Never log it.
pub fn console_link(status: &Status) -> Option<String> {
    let detail = status.subsystems.get("http")?.detail.as_deref()?;
    let url = detail.split_whitespace().next()?;
    let (tls, rest) = match url.strip_prefix("https://") {
        Some(r) => (true, r),
        None => (false, url.strip_prefix("http://")?),
    };
    let addr = rest.trim_end_matches('/');
    let path = auth::token_path(Path::new(&status.state_dir));
    let token = std::fs::read_to_string(path).ok()?;
    Some(link(addr, tls, token.trim()))
}

/// `http://ADDR/?token=TOKEN`, with `0.0.0.0`/`::` shown as loopback.
pub fn link(addr: &str, tls: bool, token: &str) -> String {
    let scheme = if tls { "https" } else { "http" };
    let shown = match addr.parse::<SocketAddr>() {
        Ok(a) if a.ip().is_unspecified() => {
            if a.is_ipv4() {
                format!("127.0.0.1:{}", a.port())
            } else {
                format!("[::1]:{}", a.port())
            }
        }
        _ => addr.to_string(),
    };
    format!("{scheme}://{shown}/?token={token}")
}
