//! Durable file moves: the only way the pipeline changes what is on disk.
//!
//! A durable move is: fsync the file, rename it (never replacing), fsync the folders involved.
//! Folder fsyncs go through one [`Syncer`] task that batches them: while one fsync of a folder
//! runs, every request for it queues up and the next fsync answers them all, so a thousand
//! renames into one folder cost a handful of fsyncs, not a thousand.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use tokio::sync::{mpsc, oneshot};

use majordomo_platform::fsops;

type SyncRequest = (Vec<PathBuf>, oneshot::Sender<io::Result<()>>);

/// Batches folder fsyncs. Cheap to clone.
#[derive(Clone)]
pub struct Syncer {
    tx: mpsc::UnboundedSender<SyncRequest>,
}

impl Syncer {
    /// Starts the batching task; it ends when every clone is dropped.
    pub fn spawn(tracker: &tokio_util::task::TaskTracker) -> Syncer {
        let (tx, mut rx) = mpsc::unbounded_channel::<SyncRequest>();
        tracker.spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while let Ok(more) = rx.try_recv() {
                    batch.push(more);
                }
                let mut dirs: BTreeMap<PathBuf, ()> = BTreeMap::new();
                for (ds, _) in &batch {
                    for d in ds {
                        dirs.insert(d.clone(), ());
                    }
                }
                let dirs: Vec<PathBuf> = dirs.into_keys().collect();
                let result = tokio::task::spawn_blocking(move || {
                    let mut failed = Vec::new();
                    for d in &dirs {
                        if let Err(e) = fsops::sync_dir(d) {
                            failed.push(format!("{}: {e}", d.display()));
                        }
                    }
                    failed
                })
                .await
                .unwrap_or_else(|e| vec![format!("fsync task failed: {e}")]);
                for (_, reply) in batch {
                    let r = if result.is_empty() {
                        Ok(())
                    } else {
                        Err(io::Error::other(format!(
                            "cannot fsync {}",
                            result.join("; ")
                        )))
                    };
                    let _ = reply.send(r);
                }
            }
        });
        Syncer { tx }
    }

    /// Asks for `dirs` to be made durable with the next batch, without waiting for it.
    pub fn sync_soon(&self, dirs: Vec<PathBuf>) {
        let (tx, _) = oneshot::channel();
        let _ = self.tx.send((dirs, tx));
    }

    /// Returns once the entries of every folder in `dirs` are on stable storage.
    pub async fn sync(&self, dirs: Vec<PathBuf>) -> io::Result<()> {
        let (tx, rx) = oneshot::channel();
        self.tx
            .send((dirs, tx))
            .map_err(|_| io::Error::other("the fsync task has stopped"))?;
        rx.await
            .map_err(|_| io::Error::other("the fsync task has stopped"))?
    }
}

/// fsync of a file, off the async threads.
pub async fn sync_file(path: PathBuf) -> io::Result<()> {
    tokio::task::spawn_blocking(move || fsops::sync_file(&path))
        .await
        .map_err(io::Error::other)?
}

/// `name` with `-N` before its extension: `report.csv` → `report-1.csv`.
pub fn suffixed(name: &str, n: u32) -> String {
    if n == 0 {
        return name.to_string();
    }
    match name.rsplit_once('.') {
        Some((stem, ext)) if !stem.is_empty() => format!("{stem}-{n}.{ext}"),
        _ => format!("{name}-{n}"),
    }
}

/// Moves `src` into `dir` as `name`, or `name-1`, `name-2`, ... if taken: never overwrites.
/// Across file systems it copies (to a dot-name), fsyncs, renames without replacing, then
/// removes `src`. Returns the new path. The caller syncs the folders.
pub fn move_noclobber(src: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    for n in 0..10_000 {
        let to = dir.join(suffixed(name, n));
        match fsops::rename_noreplace(src, &to) {
            Ok(()) => return Ok(to),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) if e.kind() == io::ErrorKind::CrossesDevices || e.raw_os_error() == Some(18) => {
                return copy_noclobber(src, dir, name);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{} has 10000 files named like {name}",
        dir.display()
    )))
}

fn copy_noclobber(src: &Path, dir: &Path, name: &str) -> io::Result<PathBuf> {
    let tmp = dir.join(format!(".{name}.majordomo-copy"));
    std::fs::copy(src, &tmp)?;
    fsops::sync_file(&tmp)?;
    for n in 0..10_000 {
        let to = dir.join(suffixed(name, n));
        match fsops::rename_noreplace(&tmp, &to) {
            Ok(()) => {
                fsops::sync_dir(dir)?;
                std::fs::remove_file(src)?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "{} has 10000 files named like {name}",
        dir.display()
    )))
}

/// Writes `text` to `dir/name` durably (temp dot-name, fsync, rename, fsync folder), replacing
/// nothing: returns the name used.
pub fn write_durable(dir: &Path, name: &str, text: &str) -> io::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(".{name}.tmp-{:016x}", fastrand::u64(..)));
    std::fs::write(&tmp, text)?;
    fsops::sync_file(&tmp)?;
    for n in 0..10_000 {
        let to = dir.join(suffixed(name, n));
        match fsops::rename_noreplace(&tmp, &to) {
            Ok(()) => {
                fsops::sync_dir(dir)?;
                return Ok(to);
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => {
                let _ = std::fs::remove_file(&tmp);
                return Err(e);
            }
        }
    }
    Err(io::Error::other("too many clashing names"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clashes_get_a_suffix_and_nothing_is_overwritten() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "first").unwrap();
        std::fs::write(&b, "second").unwrap();
        let out = d.path().join("out");
        let p1 = move_noclobber(&a, &out, "r.csv").unwrap();
        let p2 = move_noclobber(&b, &out, "r.csv").unwrap();
        assert_eq!(p1.file_name().unwrap(), "r.csv");
        assert_eq!(p2.file_name().unwrap(), "r-1.csv");
        assert_eq!(std::fs::read_to_string(p1).unwrap(), "first");
        assert_eq!(std::fs::read_to_string(p2).unwrap(), "second");
        assert_eq!(suffixed("noext", 2), "noext-2");
        assert_eq!(suffixed(".hidden", 1), ".hidden-1");
    }
}
