//! The axum application: routes, authentication, the login exchange, security headers, and the
//! accept loop (plain TCP, or TLS with certificates reloaded when their files change).

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::Router as AxRouter;
use axum::extract::{ConnectInfo, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use majordomo_bus::{Router, Session};
use majordomo_core::{Commands, Hub};
use majordomo_proto::CommandDoc;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::{Auth, COOKIE, Principal, SESSION_TTL};
use crate::config::Role;

/// What every request handler shares.
pub struct App {
    pub commands: Arc<Commands>,
    pub hub: Hub,
    pub router: Arc<Router>,
    /// A protocol session (no token gate: HTTP authenticates first) for the WebSocket and for
    /// the commands a session answers itself (`hello`, `ping`, `shutdown`, `bus.*`).
    pub session: Session,
    pub auth: Arc<Auth>,
    pub catalog: BTreeMap<&'static str, CommandDoc>,
    pub openapi: OnceLock<String>,
    pub stop: CancellationToken,
    pub tracker: TaskTracker,
    pub started: Instant,
    pub tls: bool,
    pub requests: AtomicU64,
    pub sse_clients: AtomicU64,
    pub ws_clients: AtomicU64,
    /// Open and refused connections (`[http] max_connections`).
    pub gate: Arc<Gate>,
}

impl App {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        commands: Arc<Commands>,
        hub: Hub,
        router: Arc<Router>,
        session: Session,
        auth: Arc<Auth>,
        stop: CancellationToken,
        tracker: TaskTracker,
        tls: bool,
        gate: Arc<Gate>,
    ) -> Self {
        Self {
            commands,
            hub,
            router,
            session,
            auth,
            catalog: majordomo_proto::contract::catalog()
                .into_iter()
                .map(|c| (c.name, c))
                .collect(),
            openapi: OnceLock::new(),
            stop,
            tracker,
            started: Instant::now(),
            tls,
            requests: AtomicU64::new(0),
            sse_clients: AtomicU64::new(0),
            ws_clients: AtomicU64::new(0),
            gate,
        }
    }

    /// Who is asking: a bearer token, or a browser session cookie. Wrong tokens count against
    /// the client's login attempts.
    pub fn who(&self, headers: &HeaderMap, ip: IpAddr) -> Result<Principal, Response> {
        if let Some(v) = headers.get(header::AUTHORIZATION) {
            let given = v
                .to_str()
                .ok()
                .and_then(|s| s.strip_prefix("Bearer "))
                .map(str::trim)
                .unwrap_or("");
            if !self.auth.may_try(ip) {
                return Err(too_many());
            }
            return match self.auth.check_token(given) {
                Some((role, _)) => Ok(Principal {
                    role,
                    cookie: false,
                }),
                None => {
                    self.auth.failed(ip);
                    Err(unauthorized("the bearer token is not valid"))
                }
            };
        }
        if let Some(sid) = cookie(headers, COOKIE) {
            return match self.auth.session(sid) {
                Some(role) => Ok(Principal { role, cookie: true }),
                None => Err(unauthorized(
                    "the session has ended (the login token was rotated, or it expired); log in again",
                )),
            };
        }
        Err(unauthorized(
            "log in: send `Authorization: Bearer TOKEN`, or open the link `majordomo http url` prints",
        ))
    }

    /// [`App::who`], then the role and, for a browser session doing an action, the CSRF check.
    pub fn allow(
        &self,
        headers: &HeaderMap,
        ip: IpAddr,
        need: Role,
        action: bool,
    ) -> Result<Principal, Response> {
        let p = self.who(headers, ip)?;
        if p.role < need {
            return Err(crate::api::error(
                StatusCode::FORBIDDEN,
                "forbidden",
                format!(
                    "this needs the {} role; the token used has {}",
                    need.as_str(),
                    p.role.as_str()
                ),
            ));
        }
        if action && p.cookie {
            csrf(headers)?;
        }
        Ok(p)
    }
}

/// A browser session's action must carry the `X-Majordomo-Csrf` header (a cross-site form or
/// image cannot set it, and no CORS is granted) and must not come from another site.
fn csrf(headers: &HeaderMap) -> Result<(), Response> {
    let site_ok = headers
        .get("sec-fetch-site")
        .and_then(|v| v.to_str().ok())
        .is_none_or(|s| s == "same-origin" || s == "none");
    if headers.contains_key("x-majordomo-csrf") && site_ok {
        Ok(())
    } else {
        Err(crate::api::error(
            StatusCode::FORBIDDEN,
            "forbidden",
            "an action from a browser session needs the X-Majordomo-Csrf header (cross-site requests are refused)",
        ))
    }
}

pub fn unauthorized(msg: &str) -> Response {
    let mut r = crate::api::error(StatusCode::UNAUTHORIZED, "unauthorized", msg);
    r.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Bearer realm=\"majordomo\""),
    );
    r
}

fn too_many() -> Response {
    let mut r = crate::api::error(
        StatusCode::TOO_MANY_REQUESTS,
        "busy",
        "too many failed logins from this address; wait a minute",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("60"));
    r
}

/// The value of cookie `name`.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub type St = Arc<App>;

/// The client's address, from either kind of listener.
#[derive(Debug, Clone, Copy)]
pub struct Ip(pub IpAddr);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Ip {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<Peer>>().map(|c| c.0.0);
        Ok(Ip(addr
            .map(|a| a.ip())
            .unwrap_or(IpAddr::from([0, 0, 0, 0]))))
    }
}

/// The peer address of a connection, from either kind of listener.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TlsListener>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, TlsListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, PlainListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, PlainListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// `[http] max_connections`: open connections across every listener, and those refused.
pub struct Gate {
    max: AtomicUsize,
    open: AtomicUsize,
    refused: AtomicU64,
}

impl Gate {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            max: AtomicUsize::new(max),
            open: AtomicUsize::new(0),
            refused: AtomicU64::new(0),
        })
    }

    /// A live config change.
    pub fn set_max(&self, max: usize) {
        self.max.store(max, Ordering::Relaxed);
    }

    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// A ticket for one more connection, or `None` (counted) when the cap is reached.
    fn enter(self: &Arc<Self>) -> Option<Ticket> {
        let max = self.max.load(Ordering::Relaxed);
        let mut cur = self.open.load(Ordering::Relaxed);
        loop {
            if cur >= max {
                self.refused.fetch_add(1, Ordering::Relaxed);
                return None;
            }
            match self
                .open
                .compare_exchange_weak(cur, cur + 1, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => return Some(Ticket(self.clone())),
                Err(now) => cur = now,
            }
        }
    }
}

/// One admitted connection; dropping it (the connection closed) frees its place.
struct Ticket(Arc<Gate>);

impl Drop for Ticket {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A connection's byte stream with its [`Ticket`].
pub struct Counted<T> {
    io: T,
    _ticket: Ticket,
}

impl<T: AsyncRead + Unpin> AsyncRead for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What a plain-HTTP connection over the cap is told before it is closed.
const OVER_CAP: &str = r#"{"error":{"code":"busy","message":"too many connections ([http] max_connections); try again later"}}"#;

/// Answers 503 to a connection over the cap, reads what it sent (so the close is not a reset
/// that could hide the answer) for a moment, and closes it.
async fn refuse(mut s: tokio::net::TcpStream) {
    let _ = tokio::time::timeout(Duration::from_millis(500), async {
        let answer = format!(
            "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{OVER_CAP}",
            OVER_CAP.len()
        );
        if s.write_all(answer.as_bytes()).await.is_ok() && s.shutdown().await.is_ok() {
            let mut buf = [0u8; 1024];
            while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
        }
    })
    .await;
}

/// The plain-HTTP listener: accepts under the [`Gate`].
pub struct PlainListener {
    l: TcpListener,
    gate: Arc<Gate>,
}

impl axum::serve::Listener for PlainListener {
    type Io = Counted<tokio::net::TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.l.accept().await {
                Ok((s, addr)) => match self.gate.enter() {
                    Some(t) => {
                        let _ = s.set_nodelay(true);
                        return (Counted { io: s, _ticket: t }, addr);
                    }
                    None => {
                        tokio::spawn(refuse(s));
                    }
                },
                // Out of file descriptors and the like: wait a little, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.l.local_addr()
    }
}

pub fn routes(app: St) -> AxRouter {
    AxRouter::new()
        .route("/", get(index))
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/assets/{name}", get(crate::ui::asset))
        .route("/assets/vendor/{name}", get(crate::ui::vendor))
        .route("/metrics", get(crate::metrics::scrape))
        .route("/api/v1/openapi.json", get(crate::api::openapi))
        .route("/api/v1/events", get(crate::live::events))
        .route("/api/v1/ws", get(crate::live::ws))
        .route(
            "/api/v1/{cmd}",
            get(crate::api::get_cmd).post(crate::api::post_cmd),
        )
        .fallback(|| async {
            crate::api::error(StatusCode::NOT_FOUND, "not_found", "no such page")
        })
        .layer(axum::middleware::map_response(security_headers))
        .with_state(app)
}

/// The strict Content-Security-Policy and friends, on every response.
async fn security_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    r
}

fn session_cookie(app: &App, sid: &str) -> String {
    format!(
        "{COOKIE}={sid}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{}",
        SESSION_TTL.as_secs(),
        if app.tls { "; Secure" } else { "" }
    )
}

/// Exchanges a token for a session cookie, or says why not.
fn exchange(app: &App, ip: IpAddr, token: &str) -> Response {
    if !app.auth.may_try(ip) {
        return crate::ui::login_page(
            StatusCode::TOO_MANY_REQUESTS,
            "Too many failed logins from this address; wait a minute.",
        );
    }
    match app.auth.check_token(token.trim()) {
        Some((role, login)) => match app.auth.open_session(role, login) {
            Some(sid) => {
                // The redirect drops the token from the address bar, history and Referer.
                let mut r = Redirect::to("/").into_response();
                if let Ok(v) = HeaderValue::from_str(&session_cookie(app, &sid)) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
                r
            }
            None => crate::api::error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "no session could be opened",
            ),
        },
        None => {
            app.auth.failed(ip);
            crate::ui::login_page(StatusCode::UNAUTHORIZED, "That token is not valid.")
        }
    }
}

async fn index(
    State(app): State<St>,
    ip: Ip,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Some(t) = q.get("token") {
        return exchange(&app, ip.0, t);
    }
    match cookie(&headers, COOKIE).and_then(|sid| app.auth.session(sid)) {
        Some(_) => crate::ui::index(),
        None => crate::ui::login_page(StatusCode::OK, ""),
    }
}

async fn login(State(app): State<St>, ip: Ip, Form(f): Form<HashMap<String, String>>) -> Response {
    exchange(&app, ip.0, f.get("token").map(String::as_str).unwrap_or(""))
}

async fn logout(State(app): State<St>, ip: Ip, headers: HeaderMap) -> Response {
    if let Err(r) = app.allow(&headers, ip.0, Role::Read, true) {
        return r;
    }
    if let Some(sid) = cookie(&headers, COOKIE) {
        app.auth.close_session(sid);
    }
    let mut r = StatusCode::NO_CONTENT.into_response();
    r.headers_mut().insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "majordomo_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    r
}

/// The certificate's and key's modification times, and the acceptor made from them.
type Loaded = (
    Option<SystemTime>,
    Option<SystemTime>,
    tokio_rustls::TlsAcceptor,
);

/// TLS: the acceptor, rebuilt when the certificate or key file changes.
#[derive(Clone)]
pub struct Tls {
    cert: PathBuf,
    key: PathBuf,
    current: Arc<Mutex<Loaded>>,
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor, String> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| {
            format!(
                "[http] tls_cert {}: {e}; give a PEM certificate chain",
                cert.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "[http] tls_cert {} holds no certificate",
            cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        format!(
            "[http] tls_key {}: {e}; give a PEM private key",
            key.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("[http] TLS certificate and key do not fit: {e}"))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))
}

impl Tls {
    pub fn load(cert: &Path, key: &Path) -> Result<Self, String> {
        let a = acceptor(cert, key)?;
        Ok(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: Arc::new(Mutex::new((mtime(cert), mtime(key), a))),
        })
    }

    /// The acceptor for the next connection: rebuilt first if a file changed (a bad new file
    /// is logged and the old certificate kept).
    fn get(&self) -> Option<tokio_rustls::TlsAcceptor> {
        let mut cur = self.current.lock().ok()?;
        let (c, k) = (mtime(&self.cert), mtime(&self.key));
        if (c, k) != (cur.0, cur.1) {
            match acceptor(&self.cert, &self.key) {
                Ok(a) => {
                    tracing::info!(cert = %self.cert.display(), "TLS certificate reloaded");
                    *cur = (c, k, a);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "TLS certificate changed but cannot be used; keeping the old one");
                    cur.0 = c;
                    cur.1 = k;
                }
            }
        }
        Some(cur.2.clone())
    }
}

/// A TLS listener for axum: TCP accepts and handshakes run in their own tasks, so a slow
/// client never holds up the others.
pub struct TlsListener {
    rx: tokio::sync::mpsc::Receiver<(Counted<TlsStream>, SocketAddr)>,
    local: SocketAddr,
}

type TlsStream = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;

impl axum::serve::Listener for TlsListener {
    type Io = Counted<TlsStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept loop ended (shutdown): wait for the graceful shutdown to stop us.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

pub async fn serve(
    l: TcpListener,
    tls: Option<Tls>,
    gate: Arc<Gate>,
    app: AxRouter,
    stop: CancellationToken,
) {
    let shutdown = stop.clone().cancelled_owned();
    let Some(tls) = tls else {
        let svc = app.into_make_service_with_connect_info::<Peer>();
        let l = PlainListener { l, gate };
        if let Err(e) = axum::serve(l, svc).with_graceful_shutdown(shutdown).await {
            tracing::warn!(error = %e, "HTTP server ended");
        }
        return;
    };
    let Ok(local) = l.local_addr() else { return };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let stop2 = stop.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, addr) = tokio::select! {
                _ = stop2.cancelled() => return,
                r = l.accept() => match r {
                    Ok(c) => c,
                    Err(_) => { tokio::time::sleep(Duration::from_millis(50)).await; continue; }
                },
            };
            // Over the cap: closed before the handshake (no plain-text answer is possible).
            let Some(ticket) = gate.enter() else { continue };
            let Some(acceptor) = tls.get() else { continue };
            let _ = tcp.set_nodelay(true);
            let tx = tx.clone();
            tokio::spawn(async move {
                if let Ok(Ok(io)) =
                    tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                {
                    let _ = tx
                        .send((
                            Counted {
                                io,
                                _ticket: ticket,
                            },
                            addr,
                        ))
                        .await;
                }
            });
        }
    });
    let listener = TlsListener { rx, local };
    let svc = app.into_make_service_with_connect_info::<Peer>();
    if let Err(e) = axum::serve(listener, svc)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::warn!(error = %e, "HTTPS server ended");
    }
}
