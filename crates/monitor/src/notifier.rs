//! The `notify` subsystem: one task per `[[notifier]]`, fed from the hub's alert and notice events, and
//! the `notify.log`, `notify.test` and `notify.send` commands. With no notifier the subsystem is
//! off and the commands are unknown: a program's notification fails instead of going nowhere.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use majordomo_core::hub::Event;
use majordomo_core::{BoxFuture, Ctx, Subsystem};
use majordomo_proto::monitor::{
    NotifierTotals, NotifyLog, NotifyLogArgs, NotifyLogCmd, NotifyTestArgs, NotifyTestCmd,
};
use majordomo_proto::scheduler::{Notice, NotifySendArgs, NotifySendCmd, NotifySendReply};
use majordomo_proto::{ErrorBody, ErrorCode};
use tokio::sync::broadcast::error::RecvError;

use crate::alerts::{Alert, AlertState, rfc3339};
use crate::config::{NotifierConfig, Severity};
use crate::notify::{self, Delivery, Outcome};

/// The `notify` subsystem. Its section is the list of `[[notifier]]` tables (TOML key
/// `notifier`); it runs when there is at least one.
pub struct Notify;

impl Subsystem for Notify {
    type Config = Vec<NotifierConfig>;

    fn name(&self) -> &'static str {
        "notify"
    }

    fn enabled(&self, config: &Vec<NotifierConfig>) -> bool {
        !config.is_empty()
    }

    fn run(&self, ctx: Ctx<Vec<NotifierConfig>>) -> BoxFuture {
        Box::pin(run(ctx))
    }
}

type NotifyCtx = Ctx<Vec<NotifierConfig>>;

/// Records, logs and emits one delivery.
fn emit_delivery(ctx: &NotifyCtx, record: &notify::SharedRecord, d: Delivery) {
    if let Ok(mut r) = record.lock() {
        r.add(d.clone());
    }
    crate::log_delivery(&d);
    ctx.hub.emit(Event::Notification(d));
}

/// A delivery that did not happen: suppressed or failed before any attempt.
fn not_sent(n: &NotifierConfig, a: &Alert, outcome: Outcome, reason: String) -> Delivery {
    Delivery {
        at: rfc3339(SystemTime::now()),
        notifier: n.name.clone(),
        kind: n.kind,
        alert: a.id.clone(),
        state: a.state,
        severity: a.severity,
        outcome,
        reason: Some(reason),
        attempts: vec![],
        test: false,
    }
}

async fn run(ctx: NotifyCtx) -> Result<(), String> {
    let notifiers = ctx.config.borrow().clone();
    let dir = ctx.state_dir().to_path_buf();
    std::fs::create_dir_all(&dir)
        .map_err(|e| format!("cannot create {}: {e}; check permissions", dir.display()))?;
    let record: notify::SharedRecord =
        Arc::new(Mutex::new(notify::Record::open(dir.join("notify.jsonl"))));
    let deliverer = notify::Deliverer::new(&notifiers, ctx.daemon.instance().to_string())
        .with_commands(ctx.commands.clone());
    let mut queues = Vec::new();
    for n in notifiers.iter().cloned() {
        let (tx, rx) = tokio::sync::mpsc::channel::<Alert>(64);
        queues.push((n.clone(), tx));
        let span = tracing::info_span!("notifier", name = %n.name);
        let task = run_notifier(ctx.clone(), record.clone(), deliverer.clone(), n, rx);
        ctx.tracker
            .spawn(tracing::Instrument::instrument(task, span));
    }
    register_commands(&ctx, &notifiers, &record, &deliverer);
    let mut rx = ctx.hub.subscribe();
    ctx.ready();
    ctx.detail(format!("{} notifiers", queues.len()));
    loop {
        let ev = tokio::select! {
            _ = ctx.token.cancelled() => return Ok(()),
            ev = rx.recv() => ev,
        };
        match ev {
            Ok(ev) => {
                let (a, only) = match &*ev {
                    Event::Alert(a) => (a.clone(), None),
                    Event::Notice(n) => (notice_alert(n), n.notifier.as_deref()),
                    _ => continue,
                };
                let a = &a;
                for (n, tx) in &queues {
                    if only.is_some_and(|o| o != n.name) {
                        continue;
                    }
                    let routed = if only.is_some() {
                        a.severity >= n.min_severity
                    } else {
                        notify::routes(n, a)
                    };
                    if routed && tx.try_send(a.clone()).is_err() {
                        let reason = "the notifier's queue is full (it is failing or slow)";
                        emit_delivery(
                            &ctx,
                            &record,
                            not_sent(n, a, Outcome::Failed, reason.into()),
                        );
                    }
                }
            }
            Err(RecvError::Lagged(n)) => tracing::warn!(
                missed = n,
                "notify fell behind the event hub; some alerts were not notified"
            ),
            Err(RecvError::Closed) => return Ok(()),
        }
    }
}

/// A notification raised by a program (`notify send`) or a job (`notify_on`), as the alert
/// the notifiers deliver: firing, its title and body in `labels`, dedup by its id.
fn notice_alert(n: &majordomo_proto::scheduler::Notice) -> Alert {
    let mut labels = BTreeMap::new();
    labels.insert("title".to_string(), n.title.clone());
    labels.insert("body".to_string(), n.body.clone());
    Alert {
        id: n.id.clone(),
        check: n.id.clone(),
        source: n.source.clone(),
        state: AlertState::Firing,
        severity: n.severity,
        labels,
        value: None,
        summary: if n.body.is_empty() {
            n.title.clone()
        } else {
            format!("{}: {}", n.title, n.body)
        },
        since: n.at.clone(),
        fired_at: Some(n.at.clone()),
        resolved_at: None,
    }
}

/// One notifier's task: gate (quiet hours, dedup, rate limit), then deliver, in order.
async fn run_notifier(
    ctx: NotifyCtx,
    record: notify::SharedRecord,
    deliverer: notify::Deliverer,
    n: NotifierConfig,
    mut rx: tokio::sync::mpsc::Receiver<Alert>,
) {
    let mut gate = notify::Gate::default();
    loop {
        let a = tokio::select! {
            _ = ctx.token.cancelled() => return,
            a = rx.recv() => match a { Some(a) => a, None => return },
        };
        if let Some(reason) = gate.check(&n, &a, Instant::now(), jiff::Timestamp::now()) {
            emit_delivery(&ctx, &record, not_sent(&n, &a, Outcome::Suppressed, reason));
            continue;
        }
        let d = tokio::select! {
            _ = ctx.token.cancelled() => return,
            d = deliverer.deliver(&n, &a, false) => d,
        };
        emit_delivery(&ctx, &record, d);
    }
}

fn register_commands(
    ctx: &NotifyCtx,
    notifiers: &[NotifierConfig],
    record: &notify::SharedRecord,
    deliverer: &notify::Deliverer,
) {
    let r = record.clone();
    ctx.handle::<NotifyLogCmd, _, _>(move |a: NotifyLogArgs| {
        let record = r.clone();
        async move {
            let r = record.lock().map_err(|_| {
                ErrorBody::new(
                    ErrorCode::Internal,
                    "the delivery record is unavailable (a notifier task panicked); restart the daemon",
                )
            })?;
            let counts = r
                .counts()
                .iter()
                .filter(|(k, _)| a.notifier.as_ref().is_none_or(|n| n == *k))
                .map(|(k, c)| {
                    let tried = c.delivered + c.failed;
                    let rate = (tried > 0).then(|| c.delivered as f64 / tried as f64 * 100.0);
                    let totals = NotifierTotals {
                        delivered: c.delivered,
                        failed: c.failed,
                        suppressed: c.suppressed,
                        attempts: c.attempts,
                        delivery_rate_pct: rate,
                    };
                    (k.clone(), totals)
                })
                .collect();
            Ok(NotifyLog {
                counts,
                deliveries: r.recent(a.notifier.as_deref(), a.limit.unwrap_or(20)),
            })
        }
    });
    let (hub, names): (_, Vec<String>) = (
        ctx.hub.clone(),
        notifiers.iter().map(|n| n.name.clone()).collect(),
    );
    ctx.handle::<NotifySendCmd, _, _>(move |a: NotifySendArgs| {
        let (hub, names) = (hub.clone(), names.clone());
        async move {
            if a.title.trim().is_empty() {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    "a notification needs a title (--title)",
                ));
            }
            if let Some(n) = &a.notifier
                && !names.contains(n)
            {
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!("no notifier named {n:?}; configured: {}", names.join(", ")),
                ));
            }
            let id = format!("notify:{}", a.title);
            tracing::info!(title = %a.title, severity = a.severity.as_str(), "notification raised");
            hub.emit(Event::Notice(Notice {
                id: id.clone(),
                source: "program".into(),
                title: a.title,
                body: a.body,
                severity: a.severity,
                notifier: a.notifier,
                at: rfc3339(SystemTime::now()),
            }));
            Ok(NotifySendReply { id })
        }
    });
    let ctx2 = ctx.clone();
    let notifiers = notifiers.to_vec();
    let record = record.clone();
    let deliverer = deliverer.clone();
    ctx.handle::<NotifyTestCmd, _, _>(move |a: NotifyTestArgs| {
        let (ctx, notifiers, record, deliverer) = (
            ctx2.clone(),
            notifiers.clone(),
            record.clone(),
            deliverer.clone(),
        );
        async move {
            let Some(n) = notifiers.iter().find(|n| n.name == a.name) else {
                let names: Vec<&str> = notifiers.iter().map(|n| n.name.as_str()).collect();
                return Err(ErrorBody::new(
                    ErrorCode::BadRequest,
                    format!(
                        "no notifier named {:?}; configured: {}",
                        a.name,
                        names.join(", ")
                    ),
                ));
            };
            let now = rfc3339(SystemTime::now());
            let alert = Alert {
                id: "test".into(),
                check: "test".into(),
                source: "test".into(),
                state: AlertState::Firing,
                severity: Severity::Info,
                labels: BTreeMap::new(),
                value: None,
                summary: format!("test notification from majordomo via notifier {:?}", n.name),
                since: now.clone(),
                fired_at: Some(now),
                resolved_at: None,
            };
            let d = deliverer.deliver(n, &alert, true).await;
            emit_delivery(&ctx, &record, d.clone());
            Ok(d)
        }
    });
}
