//! The `config-watch` subsystem: reloads when the config file changes.
//!
//! It watches the file's folder, not the file, so that editors that save by writing a new file
//! and renaming it over the old one are seen, and a file created after start-up is too. Events
//! are debounced; the reload itself goes through the daemon's main loop like any other, which
//! skips it when the text did not change.

use std::path::PathBuf;
use std::time::Duration;

use notify::{RecursiveMode, Watcher};
use tokio::sync::mpsc;

use majordomo_core::{BoxFuture, Change, Ctx, Subsystem};

use crate::app::DaemonConfig;

pub struct ConfigWatch;

/// A file changed under the watcher faster than the debounce this many times in a row is
/// reloaded anyway.
const MAX_DEBOUNCES: u32 = 20;

fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        EventKind::Create(_)
            | EventKind::Modify(_)
            | EventKind::Remove(_)
            | EventKind::Access(AccessKind::Close(AccessMode::Write))
    )
}

impl Subsystem for ConfigWatch {
    type Config = DaemonConfig;

    fn name(&self) -> &'static str {
        "config-watch"
    }

    fn enabled(&self, config: &DaemonConfig) -> bool {
        config.watch_config
    }

    fn change(&self, old: &DaemonConfig, new: &DaemonConfig) -> Change {
        if old.watch_debounce != new.watch_debounce {
            Change::Restart
        } else {
            Change::None
        }
    }

    fn run(&self, ctx: Ctx<DaemonConfig>) -> BoxFuture {
        Box::pin(async move {
            let file = ctx.layout().config_file.clone();
            let debounce = ctx.config.borrow().watch_debounce.get();
            let Some(dir) = file.parent().map(PathBuf::from) else {
                return Err(format!("{} has no folder to watch", file.display()));
            };
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            let name = file.file_name().map(|n| n.to_os_string());
            let mut watcher =
                notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
                    let relevant = match &res {
                        // Reads of the file (every CLI call reads it) are not changes.
                        Ok(ev) => {
                            ev.need_rescan()
                                || (is_change(&ev.kind)
                                    && ev.paths.iter().any(|p| p.file_name() == name.as_deref()))
                        }
                        // An error may mean missed events: check the file.
                        Err(_) => true,
                    };
                    if relevant {
                        let _ = tx.send(());
                    }
                })
                .map_err(|e| format!("cannot start the file watcher: {e}"))?;
            // The folder may not exist yet (no config file written so far): wait for it.
            loop {
                match watcher.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => break,
                    Err(_) => {
                        ctx.detail(format!("waiting for {} to exist", dir.display()));
                        tokio::select! {
                            _ = ctx.token.cancelled() => return Ok(()),
                            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
                        }
                    }
                }
            }
            ctx.detail(format!("watching {}", file.display()));
            // A change between loading the config and arming the watcher would be missed:
            // check once now (a no-op when the text is unchanged).
            let mut pending = true;
            loop {
                if std::mem::take(&mut pending) {
                    ctx.daemon.request_reload("file-change");
                }
                tokio::select! {
                    _ = ctx.token.cancelled() => return Ok(()),
                    ev = rx.recv() => if ev.is_none() { return Ok(()) },
                }
                // Debounce: wait until the file has been quiet for `debounce`, but no longer than
                // `MAX_DEBOUNCES` of it, so a file rewritten without pause is still reloaded.
                let latest = tokio::time::Instant::now() + debounce * MAX_DEBOUNCES;
                loop {
                    tokio::select! {
                        _ = ctx.token.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(debounce) => break,
                        _ = tokio::time::sleep_until(latest) => break,
                        ev = rx.recv() => if ev.is_none() { return Ok(()) },
                    }
                }
                pending = true;
            }
        })
    }
}
