//! Running one occurrence of a job, the same code in the daemon and in `majordomo check`:
//! claim (the job's lock + the record), the job's own `lock`, the action (a command in its own
//! process group, killed as a whole tree on timeout; an HTTP request; a bus message), the end
//! recorded.

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use majordomo_platform::process::{self, Group, SpawnOpts};
use majordomo_proto::scheduler::{Run, RunOutcome, Trigger};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio_util::sync::CancellationToken;

use crate::config::JobConfig;
use crate::locks;
use crate::record::Held;

/// Output kept per run.
pub const TAIL: usize = 4096;

/// Publishes a bus message (the daemon's router; `None` in `majordomo check`).
pub type Publisher = Arc<dyn Fn(&str, &[u8]) -> Result<(), String> + Send + Sync>;

pub fn rfc3339(t: Timestamp) -> String {
    t.round(jiff::Unit::Millisecond)
        .map(|t| t.to_string())
        .unwrap_or_else(|_| t.to_string())
}

/// A run about to start.
pub fn new_run(planned: Timestamp, trigger: Trigger, by: &str, attempt: u32) -> Run {
    let now = Timestamp::now();
    Run {
        planned: rfc3339(planned),
        planned_ms: planned.as_millisecond(),
        started: rfc3339(now),
        late_ms: now.as_millisecond() - planned.as_millisecond(),
        ended: None,
        duration_ms: None,
        outcome: None,
        exit_code: None,
        output_tail: String::new(),
        trigger,
        by: by.to_string(),
        attempt,
        error: None,
    }
}

/// Runs the claimed occurrence `run` of `job` (its claim already recorded in `held`), records
/// its end and releases the claim (`held` is `None` for the daemon's in-memory runs of jobs that
/// are not persistent: their history is written in batches). `kill` ends it early (kill-previous, shutdown).
pub async fn execute(
    job: &JobConfig,
    state_dir: &Path,
    held: Option<Held>,
    mut run: Run,
    kill: &CancellationToken,
    publish: Option<&Publisher>,
    cap: usize,
) -> Run {
    let t0 = Instant::now();
    let result = async {
        let _lock = match &job.lock {
            None => None,
            Some(l) => tokio::select! {
                _ = kill.cancelled() => return Err((RunOutcome::Killed, None, format!("killed while waiting for lock {l:?}"))),
                r = locks::acquire_async(state_dir, l, None) => match r {
                    Ok(l) => l,
                    Err(e) => return Err((RunOutcome::Failed, None, format!("cannot take lock {l:?}: {e}"))),
                },
            },
        };
        let planned = run.planned.clone();
        action(job, &planned, kill, publish, &mut run.output_tail).await
    }
    .await;
    match result {
        Ok(code) => {
            run.exit_code = code;
            run.outcome = Some(RunOutcome::Ok);
        }
        Err((outcome, code, error)) => {
            run.outcome = Some(outcome);
            run.exit_code = code;
            run.error = Some(error);
        }
    }
    run.ended = Some(rfc3339(Timestamp::now()));
    run.duration_ms = Some(t0.elapsed().as_millis() as u64);
    if let Some(held) = held
        && let Err(e) = held.finish(run.clone(), cap)
    {
        tracing::error!(job = %job.name, error = %e, "cannot record the end of the run");
    }
    run
}

type ActionError = (RunOutcome, Option<i32>, String);

async fn action(
    job: &JobConfig,
    planned: &str,
    kill: &CancellationToken,
    publish: Option<&Publisher>,
    tail: &mut String,
) -> Result<Option<i32>, ActionError> {
    let timeout = job.timeout.map(|d| d.get());
    if !job.command.is_empty() {
        return command(job, planned, kill, timeout, tail).await;
    }
    if let Some(h) = &job.http {
        let fut = http(h, timeout, tail);
        return tokio::select! {
            _ = kill.cancelled() => Err((RunOutcome::Killed, None, "killed".into())),
            r = fut => r,
        };
    }
    if let Some(p) = &job.publish {
        let Some(publish) = publish else {
            return Err((
                RunOutcome::Failed,
                None,
                "a publish job needs the daemon's bus, which is not running".into(),
            ));
        };
        return publish(&p.topic, p.data.bytes())
            .map(|()| None)
            .map_err(|e| (RunOutcome::Failed, None, e));
    }
    Err((RunOutcome::Failed, None, "the job has no action".into()))
}

async fn command(
    job: &JobConfig,
    planned: &str,
    kill: &CancellationToken,
    timeout: Option<Duration>,
    tail: &mut String,
) -> Result<Option<i32>, ActionError> {
    let fail = |e: String| (RunOutcome::Failed, None, e);
    let mut cmd = std::process::Command::new(&job.command[0]);
    cmd.args(&job.command[1..])
        .envs(&job.env)
        .env("MAJORDOMO_JOB", &job.name)
        .env("MAJORDOMO_JOB_PLANNED", planned)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    if let Some(cwd) = &job.cwd {
        cmd.current_dir(cwd);
    }
    let mut opts = SpawnOpts::default();
    if let Some(user) = &job.user {
        opts.creds = Some(process::lookup_creds(user, job.group.as_deref()).map_err(fail)?);
    }
    process::prepare(&mut cmd, &opts);
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let mut child = cmd
        .spawn()
        .map_err(|e| fail(format!("cannot start {:?}: {e}", job.command[0])))?;
    let group = Group::adopt(&child).ok();
    let out = child.stdout.take();
    let err = child.stderr.take();
    let buf = Arc::new(std::sync::Mutex::new(Vec::<u8>::new()));
    let readers = async {
        tokio::join!(pump(out, buf.clone()), pump(err, buf.clone()));
    };
    let waited = async {
        let (status, ()) = tokio::join!(child.wait(), readers);
        status
    };
    let sleep = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let r = tokio::select! {
        s = waited => match s {
            Ok(s) if s.success() => Ok(s.code()),
            Ok(s) => Err((RunOutcome::Failed, s.code(), describe(&s))),
            Err(e) => Err(fail(format!("cannot wait for the process: {e}"))),
        },
        _ = sleep => Err((RunOutcome::TimedOut, None, format!(
            "timed out after {}; its process tree was killed",
            job.timeout.map(|t| t.to_string()).unwrap_or_default()
        ))),
        _ = kill.cancelled() => Err((RunOutcome::Killed, None, "killed (overlap = \"kill-previous\", or the daemon stopped); its process tree was killed".into())),
    };
    if r.is_err()
        && let Some(g) = &group
    {
        let _ = g.kill();
    }
    if let Ok(b) = buf.lock() {
        *tail = String::from_utf8_lossy(&b).into_owned();
    }
    r
}

#[cfg(unix)]
fn describe(s: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (s.code(), s.signal()) {
        (Some(c), _) => format!("exited with code {c}"),
        (None, Some(sig)) => format!("killed by signal {sig}"),
        _ => "ended abnormally".into(),
    }
}

#[cfg(not(unix))]
fn describe(s: &std::process::ExitStatus) -> String {
    format!("exited with code {}", s.code().unwrap_or(-1))
}

/// Reads a pipe, keeping the last [`TAIL`] bytes.
async fn pump<R: AsyncRead + Unpin>(r: Option<R>, buf: Arc<std::sync::Mutex<Vec<u8>>>) {
    let Some(mut r) = r else { return };
    let mut chunk = [0u8; 4096];
    while let Ok(n) = r.read(&mut chunk).await {
        if n == 0 {
            break;
        }
        if let Ok(mut b) = buf.lock() {
            b.extend_from_slice(&chunk[..n]);
            if b.len() > TAIL {
                let cut = b.len() - TAIL;
                b.drain(..cut);
            }
        }
    }
}

fn http_client() -> Result<&'static reqwest::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
            reqwest::Client::builder()
                .user_agent(concat!("majordomo/", env!("CARGO_PKG_VERSION")))
                .build()
                .map_err(|e| format!("cannot build the HTTP client for jobs: {e}"))
        })
        .as_ref()
        .map_err(Clone::clone)
}

async fn http(
    h: &crate::config::HttpAction,
    timeout: Option<Duration>,
    tail: &mut String,
) -> Result<Option<i32>, ActionError> {
    let fail = |e: String| (RunOutcome::Failed, None, e);
    let client = http_client().map_err(fail)?;
    let method = reqwest::Method::from_bytes(h.method.to_ascii_uppercase().as_bytes())
        .map_err(|_| fail(format!("{:?} is not an HTTP method", h.method)))?;
    let mut req = client
        .request(method, &h.url)
        .timeout(timeout.unwrap_or(Duration::from_secs(60)));
    for (k, v) in &h.headers {
        req = req.header(k, v);
    }
    if let Some(b) = &h.body {
        req = req.body(b.clone());
    }
    let resp = req.send().await.map_err(|e| {
        if e.is_timeout() {
            (RunOutcome::TimedOut, None, format!("{}: timed out", h.url))
        } else {
            fail(format!("{}: {e}", h.url))
        }
    })?;
    let status = resp.status().as_u16();
    let body = resp.text().await.unwrap_or_default();
    let start = body.len().saturating_sub(TAIL);
    let start = (start..body.len())
        .find(|i| body.is_char_boundary(*i))
        .unwrap_or(body.len());
    *tail = body[start..].to_string();
    if (200..300).contains(&status) {
        Ok(Some(i32::from(status)))
    } else {
        Err((
            RunOutcome::Failed,
            Some(i32::from(status)),
            format!("{} answered HTTP {status}", h.url),
        ))
    }
}

/// Where the instance keeps job records, for both the daemon and `check`.
pub fn by_label(who: &str) -> String {
    format!("{who} pid {}", std::process::id())
}
