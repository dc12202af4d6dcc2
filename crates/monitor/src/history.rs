//! The metrics history: a bounded on-disk store that survives restarts.
//!
//! Layout, under `<state_dir>/history/`: `raw-<T>.jsonl` holds every collection of the hour that
//! starts at Unix time `T`, one JSON line each (`{"t":..,"m":{"cpu.used_pct":12.5,..}}`);
//! `ds-<T>.jsonl` holds the day starting at `T` downsampled to buckets of `downsample`, each value
//! as `[min, avg, max]`. Raw hours older than `full_resolution` are folded into their day file
//! and deleted; day files older than `retention` are deleted. Every file goes through core's
//! `jsonl`: [`History::open`] repairs torn tails (a crash or a full disk mid-write) and counts
//! corrupt lines, logging both; appends never glue a record onto a torn tail; reading skips
//! what does not parse. Nothing is kept in memory between writes but an open file handle.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use majordomo_core::jsonl;
use serde::{Deserialize, Serialize};

pub use majordomo_proto::monitor::{Point, Stats};

use crate::metrics::Snapshot;

const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot write the metrics history in {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Serialize, Deserialize)]
struct RawLine {
    t: u64,
    m: BTreeMap<String, f64>,
}

#[derive(Serialize, Deserialize)]
struct DsLine {
    t: u64,
    m: BTreeMap<String, [f64; 3]>,
}

pub struct History {
    dir: PathBuf,
    full: u64,
    bucket: u64,
    retention: u64,
    open: Option<(u64, File)>,
    line: String,
}

impl History {
    pub fn new(dir: PathBuf, full_s: u64, bucket_s: u64, retention_s: u64) -> Self {
        Self {
            dir,
            full: full_s.max(HOUR),
            bucket: bucket_s.max(60),
            retention: retention_s.max(DAY),
            open: None,
            line: String::with_capacity(4096),
        }
    }

    /// [`History::new`], after repairing the files already in `dir` (see the module doc).
    pub fn open(dir: PathBuf, full_s: u64, bucket_s: u64, retention_s: u64) -> Self {
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if stamp(&name, "raw-")
                    .or_else(|| stamp(&name, "ds-"))
                    .is_some()
                {
                    crate::repair_jsonl(&e.path(), "the metrics history");
                }
            }
        }
        Self::new(dir, full_s, bucket_s, retention_s)
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn io(&self, source: std::io::Error) -> HistoryError {
        HistoryError::Io {
            path: self.dir.clone(),
            source,
        }
    }

    /// Appends one collection. Rolls over to a new hour file (and compacts) when the hour changes.
    pub fn append(&mut self, snap: &Snapshot) -> Result<(), HistoryError> {
        let hour = snap.at - snap.at % HOUR;
        if self.open.as_ref().map(|(h, _)| *h) != Some(hour) {
            self.open = None;
            std::fs::create_dir_all(&self.dir).map_err(|e| self.io(e))?;
            self.compact(snap.at).map_err(|e| self.io(e))?;
            let path = self.dir.join(format!("raw-{hour}.jsonl"));
            // A line torn by a crash is ended, so that it does not swallow the next one.
            let (f, torn) = jsonl::open_append(&path).map_err(|e| self.io(e))?;
            if torn {
                tracing::warn!(path = %path.display(), "the metrics history: its last line was torn (a crash or a full disk); ended it so the new record stays whole");
            }
            self.open = Some((hour, f));
        }
        self.line.clear();
        self.line.push_str("{\"t\":");
        self.line.push_str(&snap.at.to_string());
        self.line.push_str(",\"m\":{");
        let mut first = true;
        for s in &snap.samples {
            if !first {
                self.line.push(',');
            }
            first = false;
            let key = s.key();
            // Keys are metric names and labels (mount paths, interface names): escape properly.
            self.line
                .push_str(&serde_json::to_string(&key).unwrap_or_else(|_| "\"?\"".into()));
            self.line.push(':');
            // Two decimals are plenty for percentages; large byte counts stay integral.
            let v = (s.value * 100.0).round() / 100.0;
            self.line.push_str(
                &serde_json::Number::from_f64(v)
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "0".into()),
            );
        }
        self.line.push_str("}}\n");
        if let Some((_, f)) = self.open.as_mut() {
            f.write_all(self.line.as_bytes())
                .map_err(|e| HistoryError::Io {
                    path: self.dir.clone(),
                    source: e,
                })?;
        }
        Ok(())
    }

    /// Folds raw hours older than the full-resolution window into day files and deletes
    /// what is past retention.
    pub fn compact(&mut self, now: u64) -> std::io::Result<()> {
        // The hour file being written is closed before it can be folded and removed: on Windows
        // a removed file stays listed (and read) while a handle to it is open.
        if matches!(&self.open, Some((hour, _)) if hour + HOUR + self.full <= now) {
            self.open = None;
        }
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Ok(());
        };
        let mut raw = Vec::new();
        let mut ds = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = stamp(&name, "raw-") {
                raw.push(t);
            } else if let Some(t) = stamp(&name, "ds-") {
                ds.push(t);
            }
        }
        raw.sort_unstable();
        for hour in raw {
            if hour + HOUR + self.full > now {
                continue;
            }
            let path = self.dir.join(format!("raw-{hour}.jsonl"));
            let mut buckets: BTreeMap<u64, BTreeMap<String, Acc>> = BTreeMap::new();
            let (lines, skipped) = read_records::<RawLine>(&path);
            if skipped > 0 {
                tracing::warn!(path = %path.display(), lines = skipped, "the metrics history: lines that do not read were left out of the day's summary");
            }
            for l in lines {
                let b = buckets.entry(l.t - l.t % self.bucket).or_default();
                for (k, v) in l.m {
                    let e = b.entry(k).or_insert((f64::MAX, 0.0, f64::MIN, 0));
                    e.0 = e.0.min(v);
                    e.1 += v;
                    e.2 = e.2.max(v);
                    e.3 += 1;
                }
            }
            let day = hour - hour % DAY;
            if day + DAY + self.retention > now && !buckets.is_empty() {
                let mut out = String::new();
                for (t, m) in buckets {
                    let line = DsLine {
                        t,
                        m: m.into_iter()
                            .map(|(k, (min, sum, max, n))| {
                                (k, [min, round2(sum / n.max(1) as f64), max])
                            })
                            .collect(),
                    };
                    if let Ok(s) = serde_json::to_string(&line) {
                        out.push_str(&s);
                        out.push('\n');
                    }
                }
                let ds_path = self.dir.join(format!("ds-{day}.jsonl"));
                let (mut f, torn) = jsonl::open_append(&ds_path)?;
                if torn {
                    tracing::warn!(path = %ds_path.display(), "the metrics history: its last line was torn (a crash or a full disk); ended it so the new records stay whole");
                }
                f.write_all(out.as_bytes())?;
                f.sync_data()?;
            }
            std::fs::remove_file(&path)?;
        }
        for day in ds {
            if day + DAY + self.retention <= now {
                std::fs::remove_file(self.dir.join(format!("ds-{day}.jsonl")))?;
            }
        }
        Ok(())
    }

    /// Points since `since` (Unix seconds) of every series whose key starts with `prefix`
    /// (empty: all), oldest first.
    pub fn query(dir: &Path, since: u64, prefix: &str) -> BTreeMap<String, Vec<Point>> {
        let mut out: BTreeMap<String, Vec<Point>> = BTreeMap::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        let mut files: Vec<(u64, bool, PathBuf)> = Vec::new();
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(t) = stamp(&name, "raw-") {
                if t + HOUR > since {
                    files.push((t, true, e.path()));
                }
            } else if let Some(t) = stamp(&name, "ds-")
                && t + DAY > since
            {
                files.push((t, false, e.path()));
            }
        }
        files.sort_by_key(|(t, raw, _)| (*t, *raw));
        for (_, raw, path) in files {
            if raw {
                for l in read_records::<RawLine>(&path).0 {
                    if l.t < since {
                        continue;
                    }
                    for (k, v) in l.m {
                        if k.starts_with(prefix) {
                            out.entry(k).or_default().push(Point {
                                t: l.t,
                                min: v,
                                avg: v,
                                max: v,
                            });
                        }
                    }
                }
            } else {
                for l in read_records::<DsLine>(&path).0 {
                    if l.t < since {
                        continue;
                    }
                    for (k, [min, avg, max]) in l.m {
                        if k.starts_with(prefix) {
                            out.entry(k).or_default().push(Point {
                                t: l.t,
                                min,
                                avg,
                                max,
                            });
                        }
                    }
                }
            }
        }
        for v in out.values_mut() {
            v.sort_by_key(|p| p.t);
        }
        out
    }
}

/// min, sum, max and count of one series in one bucket.
type Acc = (f64, f64, f64, u32);

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

fn stamp(name: &str, prefix: &str) -> Option<u64> {
    name.strip_prefix(prefix)?
        .strip_suffix(".jsonl")?
        .parse()
        .ok()
}

/// The records of one history file that read, and how many lines did not (core's `jsonl`). A
/// file that cannot be read is empty: the history is best effort.
fn read_records<T: serde::de::DeserializeOwned>(path: &Path) -> (Vec<T>, usize) {
    match std::fs::read(path) {
        Ok(bytes) => jsonl::parse_lines(&String::from_utf8_lossy(&bytes)),
        Err(_) => (Vec::new(), 0),
    }
}

/// min / avg / max / last / count of a series' points.
pub fn stats(points: &[Point]) -> Option<Stats> {
    let last = points.last()?;
    let min = points.iter().map(|p| p.min).fold(f64::MAX, f64::min);
    let max = points.iter().map(|p| p.max).fold(f64::MIN, f64::max);
    let avg = points.iter().map(|p| p.avg).sum::<f64>() / points.len() as f64;
    Some(Stats {
        min,
        avg: round2(avg),
        max,
        last: last.avg,
        count: points.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn snap(t: u64, v: f64) -> Snapshot {
        let mut s = Snapshot {
            at: t,
            ..Snapshot::default()
        };
        s.push("cpu.used_pct", None, v);
        s.push("disk.used_pct", Some("/a \"b\""), v * 2.0);
        s
    }

    #[test]
    fn writes_queries_and_downsamples() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_700_000_000 - 1_700_000_000 % DAY;
        {
            let mut h = History::new(dir.path().to_path_buf(), HOUR, 300, 2 * DAY);
            for i in 0..20 {
                h.append(&snap(t0 + i * 60, i as f64)).unwrap();
            }
        }
        let q = History::query(dir.path(), t0, "cpu.");
        assert_eq!(q["cpu.used_pct"].len(), 20);
        let q = History::query(dir.path(), t0, "disk.used_pct");
        assert_eq!(q["disk.used_pct{mount=/a \"b\"}"][3].avg, 6.0);
        // Two hours later the first hour is past full resolution: folded into 5-minute buckets.
        let mut h = History::new(dir.path().to_path_buf(), HOUR, 300, 2 * DAY);
        h.append(&snap(t0 + 2 * HOUR + 10, 50.0)).unwrap();
        assert!(!dir.path().join(format!("raw-{t0}.jsonl")).exists());
        let q = History::query(dir.path(), t0, "cpu.used_pct");
        let pts = &q["cpu.used_pct"];
        assert_eq!(pts.len(), 5, "{pts:?}");
        assert_eq!((pts[0].min, pts[0].avg, pts[0].max), (0.0, 2.0, 4.0));
        let s = stats(pts).unwrap();
        assert_eq!((s.min, s.max), (0.0, 50.0));
        // Far in the future everything is past retention.
        h.compact(t0 + 10 * DAY).unwrap();
        assert!(History::query(dir.path(), 0, "").is_empty());
    }

    #[test]
    fn a_torn_last_line_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_700_000_000 - 1_700_000_000 % HOUR;
        let mut h = History::new(dir.path().to_path_buf(), DAY, 300, 2 * DAY);
        h.append(&snap(t0, 1.0)).unwrap();
        drop(h);
        let p = dir.path().join(format!("raw-{t0}.jsonl"));
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"t\":17000").unwrap();
        let q = History::query(dir.path(), 0, "");
        assert_eq!(q["cpu.used_pct"].len(), 1);
    }

    #[test]
    fn open_repairs_torn_tails_and_appends_stay_whole() {
        let dir = tempfile::tempdir().unwrap();
        let t0 = 1_700_000_000 - 1_700_000_000 % HOUR;
        let mut h = History::new(dir.path().to_path_buf(), DAY, 300, 2 * DAY);
        h.append(&snap(t0, 1.0)).unwrap();
        drop(h);
        let p = dir.path().join(format!("raw-{t0}.jsonl"));
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"garbage\n{\"t\":17000").unwrap();
        drop(f);
        // Opening cuts the torn fragment (the corrupt line stays, counted and skipped).
        let mut h = History::open(dir.path().to_path_buf(), DAY, 300, 2 * DAY);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.ends_with("garbage\n"), "{text:?}");
        h.append(&snap(t0 + 60, 2.0)).unwrap();
        let (records, skipped) = read_records::<RawLine>(&p);
        assert_eq!((records.len(), skipped), (2, 1));
        // A torn tail made while the store was closed never swallows the next record either.
        drop(h);
        let mut f = OpenOptions::new().append(true).open(&p).unwrap();
        f.write_all(b"{\"t\":1").unwrap();
        drop(f);
        let mut h = History::new(dir.path().to_path_buf(), DAY, 300, 2 * DAY);
        h.append(&snap(t0 + 120, 3.0)).unwrap();
        let q = History::query(dir.path(), 0, "cpu.");
        assert_eq!(q["cpu.used_pct"].len(), 3);
    }
}
