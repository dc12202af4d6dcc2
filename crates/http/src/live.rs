//! Live: the hub's events as Server-Sent Events, and the WebSocket that carries the instance
//! protocol (one text message = one NDJSON line) through the bus crate's [`Session`].

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use majordomo_bus::Peer;
use majordomo_proto::Event;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::broadcast::{self, error::RecvError};

use crate::config::Role;
use crate::server::{Ip, St};

/// Whether an event kind is wanted by `?topics=` (none = all): a topic matches its kind
/// exactly, a prefix of it ending at a dot (`program` → `program.state`), or with `*`.
fn wanted(filters: &[String], kind: &str) -> bool {
    filters.is_empty()
        || filters.iter().any(|f| {
            let f = f.strip_prefix("$sys.").unwrap_or(f);
            f == "*"
                || f == "#"
                || f == kind
                || kind.strip_prefix(f).is_some_and(|r| r.starts_with('.'))
                || f.strip_suffix(".*")
                    .is_some_and(|p| kind.strip_prefix(p).is_some_and(|r| r.starts_with('.')))
        })
}

fn sse_event(e: &Event) -> SseEvent {
    SseEvent::default()
        .event(e.kind())
        .data(serde_json::to_string(e).unwrap_or_default())
}

struct Feed {
    rx: broadcast::Receiver<Arc<Event>>,
    first: VecDeque<Arc<Event>>,
    filters: Vec<String>,
    app: St,
}

impl Drop for Feed {
    fn drop(&mut self) {
        self.app.sse_clients.fetch_sub(1, Ordering::Relaxed);
    }
}

pub async fn events(
    State(app): State<St>,
    ip: Ip,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    if let Err(r) = app.allow(&headers, ip.0, Role::Read, false) {
        return r;
    }
    let filters: Vec<String> = q
        .get("topics")
        .map(|t| {
            t.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect()
        })
        .unwrap_or_default();
    // Subscribe first, then read the programs' last states: nothing falls between the two.
    let rx = app.hub.subscribe();
    let first: VecDeque<Arc<Event>> = if wanted(&filters, "program.state") {
        app.hub.program_states().into()
    } else {
        VecDeque::new()
    };
    app.sse_clients.fetch_add(1, Ordering::Relaxed);
    let stop = app.stop.clone();
    let feed = Feed {
        rx,
        first,
        filters,
        app: app.clone(),
    };
    let stream = futures_util::stream::unfold(feed, move |mut f| {
        let stop = stop.clone();
        async move {
            if let Some(e) = f.first.pop_front() {
                return Some((Ok::<_, Infallible>(sse_event(&e)), f));
            }
            loop {
                let got = tokio::select! {
                    _ = stop.cancelled() => return None,
                    r = f.rx.recv() => r,
                };
                match got {
                    Ok(e) if wanted(&f.filters, e.kind()) => {
                        return Some((Ok(sse_event(&e)), f));
                    }
                    Ok(_) => continue,
                    Err(RecvError::Lagged(n)) => {
                        let ev = SseEvent::default()
                            .event("lagged")
                            .data(format!("{{\"missed\":{n}}}"));
                        return Some((Ok(ev), f));
                    }
                    Err(RecvError::Closed) => return None,
                }
            }
        }
    });
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

pub async fn ws(
    State(app): State<St>,
    ip: Ip,
    headers: HeaderMap,
    up: WebSocketUpgrade,
) -> Response {
    // A WebSocket is a whole protocol connection (it can reload, shut down, publish anywhere):
    // as for the socket's owner, it needs the admin role.
    if let Err(r) = app.allow(&headers, ip.0, Role::Admin, false) {
        return r;
    }
    // A browser's WebSocket is not bound by the same-origin policy: refuse other sites.
    if let (Some(origin), Some(host)) = (
        headers.get("origin").and_then(|v| v.to_str().ok()),
        headers.get("host").and_then(|v| v.to_str().ok()),
    ) {
        let o = origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .unwrap_or(origin);
        if o != host {
            return crate::api::error(
                axum::http::StatusCode::FORBIDDEN,
                "forbidden",
                "a WebSocket from another site is refused",
            );
        }
    }
    let max = majordomo_proto::DEFAULT_MAX_LINE;
    up.max_message_size(max + 1)
        .on_upgrade(move |socket| carry(app, socket))
        .into_response()
}

/// Runs a protocol session with the WebSocket as its byte stream: each text (or binary)
/// message is a line in, each line out is a text message.
async fn carry(app: St, socket: WebSocket) {
    app.ws_clients.fetch_add(1, Ordering::Relaxed);
    let (client, server) = tokio::io::duplex(256 * 1024);
    let id = app.router.next_conn_id();
    let span = tracing::debug_span!("ws", id);
    app.tracker.spawn(tracing::Instrument::instrument(
        app.session.clone().serve(
            server,
            id,
            Peer {
                via: "websocket",
                ..Peer::default()
            },
            (),
        ),
        span,
    ));
    let (mut rd, mut wr) = tokio::io::split(client);
    let (mut sink, mut stream) = socket.split();
    let up = async move {
        while let Some(Ok(msg)) = stream.next().await {
            let data: &[u8] = match &msg {
                Message::Text(t) => t.as_bytes(),
                Message::Binary(b) => b,
                Message::Close(_) => break,
                _ => continue,
            };
            if wr.write_all(data).await.is_err() {
                break;
            }
            if !data.ends_with(b"\n") && wr.write_all(b"\n").await.is_err() {
                break;
            }
        }
        // The session sees the end of its input and closes.
        let _ = wr.shutdown().await;
    };
    let down = async move {
        let mut buf = BytesMut::with_capacity(8192);
        loop {
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            }
            while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
                let line = buf.split_to(pos + 1);
                let line = &line[..pos];
                let msg = match std::str::from_utf8(line) {
                    Ok(s) => Message::Text(s.to_owned().into()),
                    Err(_) => Message::Binary(bytes::Bytes::copy_from_slice(line)),
                };
                if sink.send(msg).await.is_err() {
                    return;
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    };
    // Either side ending ends the connection.
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    app.ws_clients.fetch_sub(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::wanted;

    #[test]
    fn topic_filters() {
        let f = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        assert!(wanted(&[], "program.state"));
        assert!(wanted(&f(&["program"]), "program.state"));
        assert!(wanted(&f(&["program.state"]), "program.state"));
        assert!(wanted(&f(&["$sys.program.*"]), "program.state"));
        assert!(!wanted(&f(&["prog"]), "program.state"));
        assert!(!wanted(&f(&["alert"]), "program.state"));
    }
}
