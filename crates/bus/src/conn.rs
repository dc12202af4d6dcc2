//! One connection's bus state: what its reader keeps, and the handling of each bus line.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use majordomo_proto::bus::{BusLine, CompatRegister, CompatSendEvent};
use majordomo_proto::{ErrorBody, ErrorCode, Event};
use serde_json::json;
use serde_json::value::RawValue;

use crate::config::{BusConfig, check_endpoint_id};
use crate::outbox::{Limits, OutboxRef, Wakes};
use crate::router::{BusResult, INBOX, LastTopic, Pending, Router, Sub, err, now_ts, reply_line};
use crate::wire;

/// What a connection's reader keeps for the bus.
pub struct ConnBus {
    pub router: Arc<Router>,
    pub outbox: OutboxRef,
    pub endpoint: Option<String>,
    /// Deadlines of this connection's requests and parked events.
    pub deadlines: BTreeMap<(tokio::time::Instant, u64), ()>,
    next_sid: u64,
    /// Set by a handler whose reply comes later (requests, parked events).
    deferred: bool,
    /// The `[bus]` section and queue limits in force, re-read when the router's generation moves.
    pub cfg: Arc<BusConfig>,
    pub limits: Limits,
    generation: u64,
    /// Size of `deadlines` above which answered entries are pruned.
    prune_at: usize,
    last_topic: Option<LastTopic>,
}

impl ConnBus {
    pub fn new(router: Arc<Router>, outbox: OutboxRef) -> Self {
        Self {
            router,
            outbox,
            endpoint: None,
            deadlines: BTreeMap::new(),
            next_sid: 1,
            deferred: false,
            cfg: Arc::new(BusConfig::default()),
            limits: BusConfig::default().limits(),
            generation: 0,
            prune_at: 1024,
            last_topic: None,
        }
    }

    /// Adds a deadline; now and then forgets those whose request was answered meanwhile, so a
    /// busy requester holds memory for its outstanding requests only.
    fn add_deadline(&mut self, at: tokio::time::Instant, token: u64) {
        self.deadlines.insert((at, token), ());
        if self.deadlines.len() > self.prune_at {
            let inner = self.router.lock();
            self.deadlines
                .retain(|(_, t), _| inner.pending.contains_key(t));
            drop(inner);
            self.prune_at = (self.deadlines.len() * 2).max(1024);
        }
    }

    /// Picks up a changed `[bus]` section (one atomic load when nothing changed).
    pub fn refresh(&mut self) {
        let g = self.router.generation.load(Ordering::Acquire);
        if g != self.generation {
            self.generation = g;
            self.cfg = self.router.config();
            self.limits = self.router.limits();
        }
    }

    pub fn next_deadline(&self) -> Option<tokio::time::Instant> {
        self.deadlines.keys().next().map(|(t, _)| *t)
    }

    /// Fails whatever passed its deadline.
    pub fn expire_due(&mut self, wakes: &mut Wakes) {
        let now = tokio::time::Instant::now();
        while let Some((&(t, token), _)) = self.deadlines.iter().next() {
            if t > now {
                break;
            }
            self.deadlines.remove(&(t, token));
            self.router.expire(token, wakes);
        }
    }

    fn reply(&self, limits: &Limits, id: Option<&RawValue>, r: BusResult, wakes: &mut Wakes) {
        match r {
            Ok(None) if id.is_none() => {}
            Ok(v) => {
                let data = v
                    .map(|v| serde_json::to_vec(&v).unwrap_or_default())
                    .unwrap_or_else(|| b"true".to_vec());
                let line = reply_line(id, Ok(&data));
                self.outbox.push_line(limits, &line, wakes, &self.outbox);
            }
            Err(e) => {
                self.router.counters.errors.fetch_add(1, Ordering::Relaxed);
                let line = reply_line(id, Err(e));
                self.outbox.push_line(limits, &line, wakes, &self.outbox);
            }
        }
    }

    /// Handles one bus line. Replies (and errors) go to this connection's outbox.
    pub fn handle(&mut self, line: &BusLine<'_>, wakes: &mut Wakes) {
        let limits = self.limits;
        if let Some(kind) = &line.compat_type {
            return self.handle_compat(kind, line, &limits, wakes);
        }
        let cmd = line.cmd.as_deref().unwrap_or("");
        self.deferred = false;
        let r = match cmd {
            "bus.pub" => self.publish(line, &limits, wakes),
            "bus.sub" => self.subscribe(line),
            "bus.unsub" => self.unsubscribe(line),
            "bus.register" => self.register(line, false, wakes),
            "bus.unregister" => self.unregister(),
            "bus.send" => self.send(line, &limits, wakes),
            "bus.request" => self.request(line, &limits, wakes),
            "bus.reply" => self.answer(line, &limits, wakes),
            "bus.ls" => Ok(Some(self.router.list_value())),
            other => Err(err(
                ErrorCode::UnknownCommand,
                format!(
                    "unknown bus command {other:?}; known: bus.register, bus.unregister, bus.send, bus.pub, bus.sub, bus.unsub, bus.request, bus.reply, bus.ls"
                ),
            )),
        };
        if self.deferred && r.is_ok() {
            // The reply comes from the responder, the registering target, or the deadline.
            return;
        }
        self.reply(&limits, line.id, r, wakes);
    }

    fn data<'a>(&self, line: &BusLine<'a>) -> Result<&'a [u8], ErrorBody> {
        let data = line.data.map(|d| d.get().as_bytes()).unwrap_or(b"null");
        let max = self.cfg.clone().max_message();
        if data.len() > max {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "data of {} bytes exceeds [bus] max_message ({max} bytes); send less, or raise the limit",
                    data.len()
                ),
            ));
        }
        strict(data)?;
        Ok(data)
    }

    fn topic<'b>(
        &self,
        line: &'b BusLine<'_>,
        field: &str,
        wild: bool,
    ) -> Result<&'b str, ErrorBody> {
        let t = match field {
            "topic" => line.topic.as_deref(),
            _ => line.pattern.as_deref(),
        }
        .ok_or_else(|| err(ErrorCode::BadRequest, format!("missing \"{field}\"")))?;
        wire::check_topic(t, wild)
            .map_err(|e| err(ErrorCode::BadRequest, format!("{field} {t:?} {e}")))?;
        Ok(t)
    }

    fn may_publish(&self, topic: &str) -> Result<(), ErrorBody> {
        if wire::is_reserved(topic) {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{topic:?} is reserved for the daemon (`$sys.>`) or for replies (`_INBOX.>`, use bus.reply)"
                ),
            ));
        }
        let cfg = self.cfg.clone();
        if !self
            .router
            .allowed(&cfg, self.endpoint.as_deref(), true, topic)
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{} may not publish to {topic:?}; see [bus] publish and [bus.endpoints] in the config",
                    self.who()
                ),
            ));
        }
        Ok(())
    }

    fn who(&self) -> String {
        match &self.endpoint {
            Some(e) => format!("endpoint {e:?}"),
            None => "an unregistered connection".into(),
        }
    }

    /// Why a publish on `topic` (binary, or the common JSON line) is refused: its syntax, a
    /// reserved prefix, the connection's permissions. Checked once per run of publishes on one
    /// topic.
    pub fn check_pub_topic(&self, topic: &str) -> Result<(), ErrorBody> {
        wire::check_topic(topic, false)
            .map_err(|e| err(ErrorCode::BadRequest, format!("topic {topic:?} {e}")))?;
        self.may_publish(topic)
    }

    /// Why a published payload is refused: its size, JSON text, what strict parsers reject.
    /// `checked` is the strict verdict of a reader that already validated the payload in the
    /// same pass ([`wire::fast_pub_checked`]); `None` validates it here
    /// ([`wire::validate_json`], one pass).
    pub fn check_pub_data(
        &self,
        data: &[u8],
        checked: Option<Result<(), &'static str>>,
    ) -> Result<(), ErrorBody> {
        let max = self.cfg.max_message();
        if data.len() > max {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "data of {} bytes exceeds [bus] max_message ({max} bytes); send less, or raise the limit",
                    data.len()
                ),
            ));
        }
        let verdict = match checked {
            Some(v) => v,
            None => match wire::validate_json(data) {
                Ok(()) => Ok(()),
                Err(wire::JsonFault::NotJson) => {
                    return Err(err(ErrorCode::BadJson, "published data is not JSON text"));
                }
                Err(wire::JsonFault::Strict(e)) => Err(e),
            },
        };
        verdict.map_err(strict_refusal)
    }

    /// Delivers a run of checked publishes on one topic ([`ConnBus::check_pub_topic`],
    /// [`ConnBus::check_pub_data`]).
    pub fn publish_run(&mut self, topic: &str, datas: &[&[u8]], wakes: &mut Wakes) {
        let limits = self.limits;
        self.router
            .publish_run(&mut self.last_topic, topic, datas, &limits, wakes);
    }

    /// Answers a publish without an id that was refused.
    pub fn refuse(&self, e: ErrorBody, wakes: &mut Wakes) {
        self.reply(&self.limits, None, Err(e), wakes);
    }

    /// A binary-framed publish.
    pub fn publish_raw(&mut self, topic: &str, data: &[u8], wakes: &mut Wakes) {
        match self
            .check_pub_topic(topic)
            .and_then(|()| self.check_pub_data(data, None))
        {
            Ok(()) => self.publish_run(topic, &[data], wakes),
            Err(e) => self.refuse(e, wakes),
        }
    }

    fn publish(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let topic = self.topic(line, "topic", false)?;
        let data = self.data(line)?;
        if let Some(token) = topic.strip_prefix(INBOX) {
            return self.route_reply(token, data, limits, wakes);
        }
        self.may_publish(topic)?;
        let n = self
            .router
            .publish_run(&mut self.last_topic, topic, &[data], limits, wakes);
        Ok(line.id.map(|_| json!({ "delivered": n })))
    }

    fn subscribe(&mut self, line: &BusLine<'_>) -> BusResult {
        let pattern = self.topic(line, "pattern", true)?;
        let queue = match line.queue.as_deref() {
            Some(q) if q.is_empty() || q.len() > 128 || q.contains(char::is_whitespace) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    "queue must be 1-128 characters without whitespace",
                ));
            }
            q => q.map(Arc::<str>::from),
        };
        let cfg = self.cfg.clone();
        if !self
            .router
            .allowed(&cfg, self.endpoint.as_deref(), false, pattern)
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{} may not subscribe to {pattern:?}; see [bus] subscribe and [bus.endpoints] in the config",
                    self.who()
                ),
            ));
        }
        let conn = self.outbox.conn;
        let mut inner = self.router.lock();
        let Some(info) = inner.conns.get_mut(&conn) else {
            return Err(err(ErrorCode::Internal, "connection not known to the bus"));
        };
        if info.subs.len() >= cfg.max_subscriptions {
            return Err(err(
                ErrorCode::TooLarge,
                format!(
                    "this connection already holds {} subscriptions ([bus] max_subscriptions); unsubscribe first or raise the limit",
                    info.subs.len()
                ),
            ));
        }
        let sid = match line.sid {
            Some(s) if info.subs.contains_key(&s) => {
                return Err(err(
                    ErrorCode::BadRequest,
                    format!("sid {s} is already used on this connection"),
                ));
            }
            Some(s) => s,
            None => {
                while info.subs.contains_key(&self.next_sid) {
                    self.next_sid += 1;
                }
                self.next_sid
            }
        };
        let pattern: Arc<str> = pattern.into();
        info.subs.insert(sid, (pattern.clone(), queue.clone()));
        inner.subs.add(Arc::new(Sub {
            conn,
            sid,
            pattern,
            queue,
            outbox: self.outbox.clone(),
        }));
        Ok(Some(json!({ "sid": sid })))
    }

    fn unsubscribe(&mut self, line: &BusLine<'_>) -> BusResult {
        let sid = line
            .sid
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"sid\""))?;
        let conn = self.outbox.conn;
        let mut inner = self.router.lock();
        let removed = inner
            .conns
            .get_mut(&conn)
            .and_then(|i| i.subs.remove(&sid))
            .is_some();
        if !removed {
            return Err(err(
                ErrorCode::NotFound,
                format!("no subscription {sid} on this connection"),
            ));
        }
        inner.subs.remove(conn, Some(sid));
        Ok(Some(json!({ "sid": sid })))
    }

    fn register(&mut self, line: &BusLine<'_>, compat: bool, wakes: &mut Wakes) -> BusResult {
        let id = line
            .endpoint
            .as_deref()
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"endpoint\""))?;
        self.register_id(
            id,
            line.token.as_deref(),
            line.takeover == Some(true),
            compat,
            wakes,
        )
    }

    fn register_id(
        &mut self,
        id: &str,
        token: Option<&str>,
        takeover: bool,
        compat: bool,
        wakes: &mut Wakes,
    ) -> BusResult {
        check_endpoint_id(id)
            .map_err(|e| err(ErrorCode::BadRequest, format!("endpoint id {id:?} {e}")))?;
        if let Some(current) = &self.endpoint {
            if current == id {
                return Ok(Some(json!({ "endpoint": id })));
            }
            return Err(err(
                ErrorCode::Conflict,
                format!(
                    "this connection is already registered as {current:?}; unregister first or use another connection"
                ),
            ));
        }
        let cfg = self.cfg.clone();
        if let Some(expected) = cfg.endpoints.get(id).and_then(|a| a.token.as_ref())
            && !token.is_some_and(|t| crate::tokens_match(expected.expose(), t))
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "endpoint {id:?} requires its token ([bus.endpoints.{id}] token); send \"token\" with bus.register"
                ),
            ));
        }
        let limits = self.limits;
        let conn = self.outbox.conn;
        let mut events = Vec::new();
        let mut delivered = Vec::new();
        {
            let mut inner = self.router.lock();
            if let Some(&old) = inner.endpoints.get(id) {
                if !takeover {
                    let pid = inner.conns.get(&old).and_then(|c| c.pid);
                    return Err(err(
                        ErrorCode::Conflict,
                        format!(
                            "endpoint {id:?} is already registered by another connection{}; pass \"takeover\":true to replace it",
                            pid.map(|p| format!(" (pid {p})")).unwrap_or_default()
                        ),
                    ));
                }
                if let Some(info) = inner.conns.get_mut(&old) {
                    info.endpoint = None;
                    info.outbox.kick(
                        "taken_over",
                        &format!("endpoint {id:?} was taken over by another connection; closing"),
                    );
                }
                events.push(Event::EndpointDown {
                    id: id.to_string(),
                    reason: "taken over".into(),
                });
            }
            inner.endpoints.insert(id.to_string(), conn);
            if let Some(info) = inner.conns.get_mut(&conn) {
                info.endpoint = Some(id.to_string());
                info.compat = compat;
            }
            // Events that were waiting for this endpoint.
            for token in inner.parked.remove(id).unwrap_or_default() {
                if let Some(p) = inner.pending.remove(&token) {
                    delivered.push(p);
                }
            }
            let target = self.outbox.clone();
            for p in &delivered {
                if let Pending::Send {
                    conn: sender,
                    id: rid,
                    from,
                    target: t,
                    event,
                    data,
                } = p
                {
                    let ts = now_ts();
                    if target.push_droppable(&limits, |b| {
                        encode_event(
                            b,
                            compat,
                            event,
                            from.as_deref(),
                            t,
                            data.get().as_bytes(),
                            &ts,
                        )
                    }) {
                        wakes.add(&target);
                    }
                    self.router.counters.events.fetch_add(1, Ordering::Relaxed);
                    if let (Some(rid), Some(s)) = (rid, inner.conns.get(sender)) {
                        let line = reply_line(Some(rid), Ok(br#"{"delivered":true}"#));
                        s.outbox.push_line(&limits, &line, wakes, &s.outbox);
                    }
                }
            }
        }
        self.endpoint = Some(id.to_string());
        events.push(Event::EndpointUp { id: id.to_string() });
        for e in events {
            match &e {
                Event::EndpointUp { id } => tracing::debug!(endpoint = %id, "endpoint up"),
                Event::EndpointDown { id, reason } => {
                    tracing::debug!(endpoint = %id, %reason, "endpoint down")
                }
                _ => {}
            }
            self.router.hub.emit(e);
        }
        Ok(Some(json!({ "endpoint": id })))
    }

    fn unregister(&mut self) -> BusResult {
        let Some(id) = self.endpoint.take() else {
            return Err(err(
                ErrorCode::NotFound,
                "this connection is not registered",
            ));
        };
        {
            let mut inner = self.router.lock();
            if inner.endpoints.get(&id) == Some(&self.outbox.conn) {
                inner.endpoints.remove(&id);
            }
            if let Some(info) = inner.conns.get_mut(&self.outbox.conn) {
                info.endpoint = None;
            }
        }
        tracing::debug!(endpoint = %id, reason = "unregistered", "endpoint down");
        self.router.hub.emit(Event::EndpointDown {
            id: id.clone(),
            reason: "unregistered".into(),
        });
        Ok(Some(json!({ "endpoint": id })))
    }

    fn send(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let target = line.to.as_deref().ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                "missing \"to\" (the target endpoint)",
            )
        })?;
        let event = line
            .event
            .as_deref()
            .ok_or_else(|| err(ErrorCode::BadRequest, "missing \"event\" (the event name)"))?;
        let data = self.data(line)?;
        let from = self.endpoint.clone();
        self.send_event(
            target,
            event,
            from.as_deref(),
            data,
            line.id,
            line.wait_ms,
            limits,
            wakes,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn send_event(
        &mut self,
        target: &str,
        event: &str,
        from: Option<&str>,
        data: &[u8],
        id: Option<&RawValue>,
        wait_ms: Option<u64>,
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> BusResult {
        let cfg = self.cfg.clone();
        if !self
            .router
            .allowed_event(&cfg, self.endpoint.as_deref(), target, event)
        {
            return Err(err(
                ErrorCode::Forbidden,
                format!(
                    "{} may not send event {event:?} to {target:?}; events need publish permission on \"$event.<target>.<event>\" ([bus] publish, [bus.endpoints])",
                    self.who()
                ),
            ));
        }
        let mut inner = self.router.lock();
        let found = inner
            .endpoints
            .get(target)
            .and_then(|c| inner.conns.get(c))
            .map(|c| (c.outbox.clone(), c.compat));
        match found {
            Some((outbox, compat)) => {
                let ts = now_ts();
                drop(inner);
                if outbox.push_droppable(limits, |b| {
                    encode_event(b, compat, event, from, target, data, &ts)
                }) {
                    wakes.add(&outbox);
                }
                self.router.counters.events.fetch_add(1, Ordering::Relaxed);
                Ok(id.map(|_| json!({ "delivered": true })))
            }
            None => match wait_ms {
                Some(ms) if ms > 0 => {
                    let max = self.cfg.clone().max_wait.get();
                    let wait = Duration::from_millis(ms).min(max);
                    let token = self.router.new_token(&inner);
                    let data = RawValue::from_string(String::from_utf8_lossy(data).into_owned())
                        .map_err(|e| err(ErrorCode::BadJson, format!("data: {e}")))?;
                    inner.pending.insert(
                        token,
                        Pending::Send {
                            conn: self.outbox.conn,
                            id: id.map(|i| i.to_owned()),
                            from: from.map(String::from),
                            target: target.to_string(),
                            event: event.to_string(),
                            data,
                        },
                    );
                    inner
                        .parked
                        .entry(target.to_string())
                        .or_default()
                        .push(token);
                    drop(inner);
                    self.add_deadline(tokio::time::Instant::now() + wait, token);
                    // The reply comes when the target registers, or at the deadline.
                    self.deferred = true;
                    Ok(None)
                }
                _ => Err(err(
                    ErrorCode::NotFound,
                    format!(
                        "no endpoint {target:?} is registered; check the id with `majordomo bus ls`, or pass \"wait_ms\" to wait for it"
                    ),
                )),
            },
        }
    }

    fn request(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let topic = self.topic(line, "topic", false)?;
        let data = self.data(line)?;
        self.may_publish(topic)?;
        let Some(id) = line.id else {
            return Err(err(
                ErrorCode::BadRequest,
                "bus.request needs an \"id\" to route its reply to",
            ));
        };
        self.router
            .counters
            .requests
            .fetch_add(1, Ordering::Relaxed);
        let mut chosen: Vec<Arc<Sub>> = Vec::new();
        let token = {
            let mut inner = self.router.lock();
            let targets = inner.subs.lookup(topic);
            if targets.is_empty() {
                drop(inner);
                self.router
                    .counters
                    .no_responders
                    .fetch_add(1, Ordering::Relaxed);
                return Err(err(
                    ErrorCode::NoResponders,
                    format!("no subscriber on {topic:?} to answer the request"),
                ));
            }
            self.router.choose(&targets, |s| chosen.push(s.clone()));
            let token = self.router.new_token(&inner);
            inner.pending.insert(
                token,
                Pending::Request {
                    conn: self.outbox.conn,
                    id: id.to_owned(),
                    responders: chosen.iter().map(|s| s.conn).collect(),
                },
            );
            token
        };
        let timeout = line
            .timeout_ms
            .map(Duration::from_millis)
            .unwrap_or_else(|| self.cfg.clone().request_timeout.get());
        self.add_deadline(tokio::time::Instant::now() + timeout, token);
        let reply_to = format!("{INBOX}{token:016x}");
        for s in &chosen {
            if s.outbox
                .push_msg(limits, s.sid, topic, Some(&reply_to), data)
            {
                wakes.add(&s.outbox);
            }
        }
        self.router
            .counters
            .delivered
            .fetch_add(chosen.len() as u64, Ordering::Relaxed);
        self.deferred = true;
        Ok(None)
    }

    fn answer(&mut self, line: &BusLine<'_>, limits: &Limits, wakes: &mut Wakes) -> BusResult {
        let to = line.to.as_deref().ok_or_else(|| {
            err(
                ErrorCode::BadRequest,
                "missing \"to\" (the request's reply_to)",
            )
        })?;
        let data = self.data(line)?;
        let token = to.strip_prefix(INBOX).unwrap_or(to);
        self.route_reply(token, data, limits, wakes)
            .map(|v| v.and(line.id.map(|_| json!({"delivered": true}))))
    }

    fn route_reply(
        &mut self,
        token: &str,
        data: &[u8],
        limits: &Limits,
        wakes: &mut Wakes,
    ) -> BusResult {
        let not_waiting = || {
            err(
                ErrorCode::NotFound,
                "no request is waiting on this reply subject (answered already, timed out, or its requester left)",
            )
        };
        if token.len() != 16 {
            return Err(not_waiting());
        }
        let token = u64::from_str_radix(token, 16).map_err(|_| not_waiting())?;
        let me = self.outbox.conn;
        let inner = &mut *self.router.lock();
        match inner.pending.get(&token) {
            Some(Pending::Request { responders, .. }) if responders.contains(&me) => {}
            Some(Pending::Request { .. }) => {
                return Err(err(
                    ErrorCode::Forbidden,
                    "this connection did not receive that request, so it may not answer it",
                ));
            }
            _ => return Err(not_waiting()),
        }
        if let Some(Pending::Request { conn, id, .. }) = inner.pending.remove(&token)
            && let Some(c) = inner.conns.get(&conn)
        {
            let line = reply_line(Some(&id), Ok(data));
            c.outbox.push_line(limits, &line, wakes, &c.outbox);
            self.router.counters.replies.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(json!({"delivered": true})))
    }

    fn handle_compat(
        &mut self,
        kind: &str,
        line: &BusLine<'_>,
        limits: &Limits,
        wakes: &mut Wakes,
    ) {
        let payload = line.compat_payload.map(|p| p.get()).unwrap_or("null");
        let r = match kind {
            "Register" => match serde_json::from_str::<CompatRegister>(payload) {
                Ok(p) => self.register_id(&p.machine_id, line.token.as_deref(), false, true, wakes),
                Err(e) => Err(err(
                    ErrorCode::BadRequest,
                    format!("Register needs Payload.MachineId: {e}"),
                )),
            },
            "SendEvent" => match serde_json::from_str::<CompatSendEvent>(payload) {
                Ok(p) => {
                    let data = p.payload.map(|d| d.get().as_bytes()).unwrap_or(b"null");
                    // The sender is the connection's endpoint, whatever SourceMachineId says.
                    let from = self.endpoint.clone();
                    let max = self.cfg.clone().max_message();
                    if let Err(e) = strict(data) {
                        Err(e)
                    } else if data.len() > max {
                        Err(err(
                            ErrorCode::TooLarge,
                            format!(
                                "Payload of {} bytes exceeds [bus] max_message ({max} bytes)",
                                data.len()
                            ),
                        ))
                    } else {
                        self.send_event(
                            &p.target,
                            &p.event,
                            from.as_deref(),
                            data,
                            None,
                            None,
                            limits,
                            wakes,
                        )
                    }
                }
                Err(e) => Err(err(
                    ErrorCode::BadRequest,
                    format!("SendEvent needs Payload.TargetMachineId and Payload.EventName: {e}"),
                )),
            },
            other => Err(err(
                ErrorCode::UnknownCommand,
                format!("unknown Type {other:?}; known: Register, SendEvent"),
            )),
        };
        // Seed-004 clients expect no acknowledgement; errors come back in their shape.
        if let Err(e) = r {
            self.router.counters.errors.fetch_add(1, Ordering::Relaxed);
            let v = json!({"Type": "Error", "Payload": {"Code": e.code.as_str(), "Message": e.message}});
            let line = serde_json::to_vec(&v).unwrap_or_default();
            self.outbox.push_line(limits, &line, wakes, &self.outbox);
        }
    }
}

/// Refuses `data` that strict JSON parsers reject, so no subscriber ever receives it.
fn strict(data: &[u8]) -> Result<(), ErrorBody> {
    wire::check_strict_json(data).map_err(strict_refusal)
}

fn strict_refusal(e: &str) -> ErrorBody {
    err(
        ErrorCode::BadRequest,
        format!("data refused: it holds {e}, which strict JSON parsers reject; send standard JSON"),
    )
}

fn encode_event(
    b: &mut BytesMut,
    compat: bool,
    event: &str,
    from: Option<&str>,
    target: &str,
    data: &[u8],
    ts: &str,
) {
    if compat {
        wire::put_event_compat(b, event, from, target, data, ts);
    } else {
        wire::put_event_json(b, event, from, data, ts);
    }
}
