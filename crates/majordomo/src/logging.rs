//! The daemon's own log: console (or journald), plus size-rotated files.
//!
//! Installed once per process by [`init`]. The filter and the file sink can be changed while
//! running: the `log` subsystem applies each new `[log]` section through [`LogHandle::apply`],
//! so a reload changes the level, the format or the rotation without restarting anything.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use file_rotate::{ContentLimit, FileRotate, compression::Compression, suffix::AppendCount};
use tracing_appender::non_blocking::{NonBlocking, WorkerGuard};
use tracing_subscriber::fmt::writer::{EitherWriter, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

use majordomo_core::{BoxFuture, Change, Ctx, Problem, Size, Subsystem};
use serde::{Deserialize, Serialize};

/// `[log]`: the daemon's own log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A level (`error`, `warn`, `info`, `debug`, `trace`) or a filter like `info,majordomo_control=debug`.
    pub level: String,
    /// Format of the log file: `text` or `json` (one JSON object per line).
    pub format: LogFormat,
    /// Write size-rotated files into the instance's log folder.
    pub file: bool,
    /// Rotate the log file when it reaches this size.
    pub max_size: Size,
    /// How many rotated files to keep besides the current one.
    pub max_files: usize,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: LogFormat::Text,
            file: true,
            max_size: Size::mb(10),
            max_files: 5,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Checks `[log]` beyond its types.
pub fn validate(log: &LogConfig, problems: &mut Vec<Problem>) {
    if let Err(e) = parse_filter(&log.level) {
        problems.push(Problem::at(
            "log.level",
            format!("invalid log filter {:?}: {e}", log.level),
            "use error, warn, info, debug or trace, optionally with per-module directives like \"info,majordomo_control=debug\"",
        ));
    }
    if log.max_size.bytes() < 4096 {
        problems.push(Problem::at(
            "log.max_size",
            format!("{} is too small for a log file", log.max_size),
            "use at least 4KB, e.g. \"10MB\"",
        ));
    }
}

/// Lines the file writer queues before it starts dropping (see [`LogHandle::apply`]).
const LOG_QUEUE_LINES: usize = 4096;

/// Parses a level or filter directive string. Unlike a bare `EnvFilter`, a directive without
/// `=` must be a level: `verbose` is a typo, not a target named "verbose".
pub fn parse_filter(s: &str) -> Result<EnvFilter, String> {
    const LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];
    for directive in s.split(',').map(str::trim).filter(|d| !d.is_empty()) {
        if !directive.contains('=') && !LEVELS.contains(&directive.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "{directive:?} is not a level ({})",
                LEVELS.join(", ")
            ));
        }
    }
    EnvFilter::builder()
        .with_regex(false)
        .parse(s)
        .map_err(|e| e.to_string())
}

/// Where file log lines go right now; swapped on reload.
#[derive(Default)]
struct FileSink {
    current: Mutex<Option<Active>>,
}

struct Active {
    format: LogFormat,
    path: PathBuf,
    max_size: u64,
    max_files: usize,
    writer: NonBlocking,
    _guard: WorkerGuard,
}

/// A `MakeWriter` that writes to the file sink when it has the given format, and nowhere else.
#[derive(Clone)]
struct FileWriter {
    sink: Arc<FileSink>,
    format: LogFormat,
}

impl<'a> MakeWriter<'a> for FileWriter {
    type Writer = EitherWriter<NonBlocking, io::Sink>;

    fn make_writer(&'a self) -> Self::Writer {
        match self.sink.current.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(a) if a.format == self.format => EitherWriter::A(a.writer.clone()),
                _ => EitherWriter::B(io::sink()),
            },
            Err(_) => EitherWriter::B(io::sink()),
        }
    }
}

/// Controls the installed logger.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    sink: Arc<FileSink>,
}

/// Installs the global logger: console on stderr (journald when stderr is the journal), and a
/// file sink that stays off until [`LogHandle::apply`] turns it on. `level` is the initial filter.
pub fn init(level: &str) -> LogHandle {
    let filter = parse_filter(level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let sink = Arc::new(FileSink::default());
    let journald = journald_layer();
    let console = journald.is_none().then(|| {
        tracing_subscriber::fmt::layer()
            .with_writer(io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&io::stderr()))
            .with_target(false)
    });
    let file_text = tracing_subscriber::fmt::layer()
        .with_ansi(false)
        .with_writer(FileWriter {
            sink: sink.clone(),
            format: LogFormat::Text,
        });
    let file_json = tracing_subscriber::fmt::layer()
        .json()
        .with_current_span(true)
        .with_writer(FileWriter {
            sink: sink.clone(),
            format: LogFormat::Json,
        });
    // A second init in one process (tests) keeps the first logger.
    let _ = tracing_subscriber::registry()
        .with(filter)
        .with(console)
        .with(journald)
        .with(eventlog_layer())
        .with(file_text)
        .with(file_json)
        .try_init();
    LogHandle {
        filter: handle,
        sink,
    }
}

#[cfg(target_os = "linux")]
fn journald_layer() -> Option<tracing_journald::Layer> {
    if !majordomo_platform::stderr_is_journal() {
        return None;
    }
    tracing_journald::layer()
        .ok()
        .map(|l| l.with_syslog_identifier("majordomo".into()))
}

#[cfg(not(target_os = "linux"))]
fn journald_layer() -> Option<tracing_subscriber::layer::Identity> {
    None
}

/// The Windows Event Log, while the SCM runs the daemon.
#[cfg(windows)]
fn eventlog_layer() -> Option<majordomo_platform::eventlog::EventLogLayer> {
    majordomo_platform::eventlog::layer()
}

#[cfg(not(windows))]
fn eventlog_layer() -> Option<tracing_subscriber::layer::Identity> {
    None
}

impl LogHandle {
    /// Applies a `[log]` section; `dir` is the instance's log folder.
    pub fn apply(&self, cfg: &LogConfig, dir: &Path) -> Result<(), String> {
        let filter = parse_filter(&cfg.level)?;
        self.filter
            .reload(filter)
            .map_err(|e| format!("cannot change the log filter: {e}"))?;
        let mut current = self
            .sink
            .current
            .lock()
            .map_err(|_| "log sink lock poisoned".to_string())?;
        if !cfg.file {
            *current = None;
            return Ok(());
        }
        let path = dir.join("majordomo.log");
        let max_size = cfg.max_size.bytes();
        if let Some(a) = current.as_mut()
            && a.path == path
            && a.max_size == max_size
            && a.max_files == cfg.max_files
        {
            a.format = cfg.format;
            return Ok(());
        }
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create the log folder {}: {e}", dir.display()))?;
        let rotate = FileRotate::new(
            &path,
            AppendCount::new(cfg.max_files),
            ContentLimit::BytesSurpassed(usize::try_from(max_size).unwrap_or(usize::MAX).max(1)),
            Compression::None,
            None,
        );
        // The default queue holds 128,000 lines and initialises every slot up front (about
        // 4 MB resident); 4,096 lines absorb any burst a daemon log sees. When it is full,
        // lines are dropped (and counted by tracing-appender) rather than blocking the daemon.
        let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
            .buffered_lines_limit(LOG_QUEUE_LINES)
            .lossy(true)
            .thread_name("majordomo-log")
            .finish(rotate);
        *current = Some(Active {
            format: cfg.format,
            path,
            max_size,
            max_files: cfg.max_files,
            writer,
            _guard: guard,
        });
        Ok(())
    }

    /// Flushes and closes the file sink (at exit).
    pub fn close(&self) {
        if let Ok(mut c) = self.sink.current.lock() {
            *c = None;
        }
    }
}

/// The `log` subsystem: applies `[log]` and `[paths] log_dir` at start and on every change.
pub struct Log(pub Arc<LogHandle>);

impl Subsystem for Log {
    type Config = LogConfig;

    fn name(&self) -> &'static str {
        "log"
    }

    fn change(&self, old: &LogConfig, new: &LogConfig) -> Change {
        if old != new {
            Change::Live
        } else {
            Change::None
        }
    }

    fn run(&self, mut ctx: Ctx<LogConfig>) -> BoxFuture {
        let handle = self.0.clone();
        Box::pin(async move {
            let dir = ctx.log_dir().to_path_buf();
            loop {
                let cfg = ctx.config.borrow_and_update().clone();
                match handle.apply(&cfg, &dir) {
                    Ok(()) => ctx.detail(if cfg.file {
                        format!("{} → {}", cfg.level, dir.join("majordomo.log").display())
                    } else {
                        cfg.level.clone()
                    }),
                    Err(e) => {
                        tracing::error!(error = %e, "log settings not applied");
                        ctx.detail(format!("not applied: {e}"));
                    }
                }
                tokio::select! {
                    _ = ctx.token.cancelled() => return Ok(()),
                    r = ctx.config.changed() => if r.is_err() { return Ok(()) },
                }
            }
        })
    }
}
