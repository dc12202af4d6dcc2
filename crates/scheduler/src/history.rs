//! The daemon's history of runs of jobs that are not `persistent`: kept in memory as compact
//! [`Slim`] runs (32 bytes for a run that succeeded without output), appended in batches to one
//! shared JSON-lines log, `<state>/jobs/history.jsonl`, and read back at start-up. The log is
//! compacted (the last `history` runs of each job kept) when it holds about twice what the jobs
//! keep. Persistent jobs keep theirs in their run record (`record`), which decides who runs.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use majordomo_proto::scheduler::{Run, RunOutcome, Trigger};
use serde::{Deserialize, Serialize};

use crate::runner::rfc3339;

/// A finished run, compact. `extra` only when there is output, an error or another runner.
#[derive(Debug, Clone, PartialEq)]
pub struct Slim {
    pub planned_ms: i64,
    /// How late the start was, in ms after `planned_ms`.
    pub late_ms: i32,
    pub duration_ms: u32,
    /// The exit code when `has_exit` (an `Option<i32>` would make a run 40 bytes, not 32).
    pub exit: i32,
    pub has_exit: bool,
    pub outcome: RunOutcome,
    pub trigger: Trigger,
    pub attempt: u8,
    pub extra: Option<Box<Extra>>,
}

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Extra {
    pub output_tail: String,
    pub error: Option<String>,
    /// Who ran it, when not this daemon.
    pub by: Option<String>,
}

impl Slim {
    pub fn exit_code(&self) -> Option<i32> {
        self.has_exit.then_some(self.exit)
    }

    pub fn started_ms(&self) -> i64 {
        self.planned_ms + i64::from(self.late_ms)
    }

    /// From a full run (`own_by`: this daemon's label, not repeated per run).
    pub fn from_run(r: &Run, own_by: &str) -> Slim {
        let by = (r.by != own_by).then(|| r.by.clone());
        let extra = (!r.output_tail.is_empty() || r.error.is_some() || by.is_some()).then(|| {
            Box::new(Extra {
                output_tail: r.output_tail.clone(),
                error: r.error.clone(),
                by,
            })
        });
        Slim {
            planned_ms: r.planned_ms,
            late_ms: i32::try_from(r.late_ms).unwrap_or(if r.late_ms < 0 {
                i32::MIN
            } else {
                i32::MAX
            }),
            duration_ms: r
                .duration_ms
                .map(|d| u32::try_from(d).unwrap_or(u32::MAX))
                .unwrap_or(0),
            exit: r.exit_code.unwrap_or(0),
            has_exit: r.exit_code.is_some(),
            outcome: r.outcome.unwrap_or(RunOutcome::Interrupted),
            trigger: r.trigger,
            attempt: u8::try_from(r.attempt).unwrap_or(u8::MAX),
            extra,
        }
    }

    /// The full run, as `job history` and the events show it.
    pub fn to_run(&self, own_by: &str) -> Run {
        let ts = |ms: i64| {
            Timestamp::from_millisecond(ms)
                .map(rfc3339)
                .unwrap_or_default()
        };
        let started = self.started_ms();
        let extra = self.extra.as_deref();
        Run {
            planned: ts(self.planned_ms),
            planned_ms: self.planned_ms,
            started: ts(started),
            late_ms: i64::from(self.late_ms),
            ended: Some(ts(started + i64::from(self.duration_ms))),
            duration_ms: Some(u64::from(self.duration_ms)),
            outcome: Some(self.outcome),
            exit_code: self.exit_code(),
            output_tail: extra.map(|e| e.output_tail.clone()).unwrap_or_default(),
            trigger: self.trigger,
            by: extra
                .and_then(|e| e.by.clone())
                .unwrap_or_else(|| own_by.to_string()),
            attempt: u32::from(self.attempt),
            error: extra.and_then(|e| e.error.clone()),
        }
    }
}

/// One line of the log.
#[derive(Serialize, Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    job: Cow<'a, str>,
    p: i64,
    l: i32,
    d: u32,
    o: RunOutcome,
    t: Trigger,
    a: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    x: Option<i32>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    tail: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    err: Option<Cow<'a, str>>,
    #[serde(default, borrow, skip_serializing_if = "Option::is_none")]
    by: Option<Cow<'a, str>>,
}

pub fn log_path(state_dir: &Path) -> PathBuf {
    crate::record::jobs_dir(state_dir).join("history.jsonl")
}

/// Appends `runs` (job name, run) to the log as one write.
pub fn append(path: &Path, runs: &[(&str, &Slim)]) -> io::Result<()> {
    if runs.is_empty() {
        return Ok(());
    }
    let mut buf = Vec::with_capacity(runs.len() * 64);
    for (job, s) in runs {
        let e = s.extra.as_deref();
        let line = Line {
            job: Cow::Borrowed(job),
            p: s.planned_ms,
            l: s.late_ms,
            d: s.duration_ms,
            o: s.outcome,
            t: s.trigger,
            a: s.attempt,
            x: s.exit_code(),
            tail: e
                .filter(|e| !e.output_tail.is_empty())
                .map(|e| Cow::Borrowed(e.output_tail.as_str())),
            err: e.and_then(|e| e.error.as_deref()).map(Cow::Borrowed),
            by: e.and_then(|e| e.by.as_deref()).map(Cow::Borrowed),
        };
        serde_json::to_writer(&mut buf, &line).map_err(io::Error::other)?;
        buf.push(b'\n');
    }
    let (mut f, _) = majordomo_core::jsonl::open_append(path)?;
    f.write_all(&buf)
}

fn slim(l: &Line<'_>) -> Slim {
    let extra = (l.tail.is_some() || l.err.is_some() || l.by.is_some()).then(|| {
        Box::new(Extra {
            output_tail: l.tail.as_deref().unwrap_or_default().to_string(),
            error: l.err.as_deref().map(str::to_string),
            by: l.by.as_deref().map(str::to_string),
        })
    });
    Slim {
        planned_ms: l.p,
        late_ms: l.l,
        duration_ms: l.d,
        exit: l.x.unwrap_or(0),
        has_exit: l.x.is_some(),
        outcome: l.o,
        trigger: l.t,
        attempt: l.a,
        extra,
    }
}

/// Reads the log (a torn tail cut first): calls `f(job, run)` for each run, oldest first.
/// Returns how many lines it holds.
pub fn load(path: &Path, mut f: impl FnMut(&str, Slim)) -> io::Result<usize> {
    let repaired = majordomo_core::jsonl::repair(path)?;
    if !repaired.is_clean() {
        tracing::warn!(file = %path.display(), cut = repaired.cut, corrupt = repaired.corrupt, "the job history log had a torn or corrupt line; skipped");
    }
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut n = 0;
    for line in text.lines() {
        if let Ok(l) = serde_json::from_str::<Line<'_>>(line) {
            f(&l.job, slim(&l));
            n += 1;
        }
    }
    Ok(n)
}

/// Rewrites the log keeping the last `keep(job)` runs of each job (0: a job no longer
/// configured, or persistent). Returns the lines kept.
pub fn compact(path: &Path, keep: impl Fn(&str) -> usize) -> io::Result<usize> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    #[derive(Deserialize)]
    struct JobOnly<'a> {
        #[serde(borrow)]
        job: Cow<'a, str>,
    }
    let lines: Vec<&str> = text.lines().collect();
    let mut seen: HashMap<Cow<'_, str>, usize> = HashMap::new();
    let mut kept = vec![false; lines.len()];
    for (i, line) in lines.iter().enumerate().rev() {
        let Ok(j) = serde_json::from_str::<JobOnly<'_>>(line) else {
            continue;
        };
        let limit = keep(&j.job);
        let n = seen.entry(j.job).or_insert(0);
        if *n < limit {
            *n += 1;
            kept[i] = true;
        }
    }
    let mut out = Vec::with_capacity(text.len() / 2);
    let mut count = 0;
    for (line, k) in lines.iter().zip(&kept) {
        if *k {
            out.extend_from_slice(line.as_bytes());
            out.push(b'\n');
            count += 1;
        }
    }
    crate::store::write_atomic(path, &out, false)?;
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(planned_ms: i64, tail: &str) -> Slim {
        Slim {
            planned_ms,
            late_ms: 2,
            duration_ms: 5,
            exit: 0,
            has_exit: true,
            outcome: RunOutcome::Ok,
            trigger: Trigger::Schedule,
            attempt: 1,
            extra: (!tail.is_empty()).then(|| {
                Box::new(Extra {
                    output_tail: tail.into(),
                    ..Extra::default()
                })
            }),
        }
    }

    #[test]
    fn a_slim_run_is_small_and_round_trips() {
        assert!(std::mem::size_of::<Slim>() <= 32);
        let s = run(1_700_000_000_000, "hi\n");
        let r = s.to_run("daemon pid 1");
        assert_eq!(r.late_ms, 2);
        assert_eq!(r.output_tail, "hi\n");
        assert_eq!(Slim::from_run(&r, "daemon pid 1"), s);
        let other = Slim::from_run(&r, "daemon pid 2");
        assert_eq!(other.to_run("x").by, "daemon pid 1");
    }

    #[test]
    fn the_log_appends_loads_and_compacts() {
        let dir = tempfile::tempdir().expect("tmp");
        let p = dir.path().join("history.jsonl");
        let (a, b, c) = (run(1000, ""), run(2000, "out"), run(3000, ""));
        append(&p, &[("a", &a), ("b", &b)]).expect("append");
        append(&p, &[("a", &c), ("gone", &a)]).expect("append");
        let mut got = vec![];
        assert_eq!(
            load(&p, |j, s| got.push((j.to_string(), s))).expect("load"),
            4
        );
        assert_eq!(got[1], ("b".to_string(), b.clone()));
        // Keep the last run of `a`, both of `b`, nothing of `gone`.
        let kept = compact(&p, |j| match j {
            "a" => 1,
            "b" => 2,
            _ => 0,
        })
        .expect("compact");
        assert_eq!(kept, 2);
        let mut got = vec![];
        load(&p, |j, s| got.push((j.to_string(), s.planned_ms))).expect("load");
        assert_eq!(got, vec![("b".into(), 2000), ("a".into(), 3000)]);
    }
}
