//! The metric catalogue (stable, documented names) and one collection's values.

use std::fmt::Write as _;

pub use majordomo_proto::metric::MetricDef;
use majordomo_proto::metric::def as m;

/// Every metric the collector produces. Names are part of the public interface: checks, the
/// history, reports and scripts use them, so they only ever get added to.
pub const CATALOGUE: &[MetricDef] = &[
    m("cpu.used_pct", None, "%", "CPU busy time, all cores"),
    m(
        "cpu.iowait_pct",
        None,
        "%",
        "CPU time waiting for IO, all cores",
    ),
    m(
        "cpu.core_used_pct",
        Some("core"),
        "%",
        "CPU busy time of one core",
    ),
    m("load.1m", None, "", "load average over 1 minute"),
    m("load.5m", None, "", "load average over 5 minutes"),
    m("load.15m", None, "", "load average over 15 minutes"),
    m("memory.total_bytes", None, "B", "physical memory"),
    m(
        "memory.used_bytes",
        None,
        "B",
        "memory in use (total - available)",
    ),
    m(
        "memory.available_bytes",
        None,
        "B",
        "memory available to new work",
    ),
    m("memory.used_pct", None, "%", "memory in use"),
    m("swap.total_bytes", None, "B", "swap space"),
    m("swap.used_bytes", None, "B", "swap in use"),
    m("swap.used_pct", None, "%", "swap in use (0 without swap)"),
    m(
        "disk.total_bytes",
        Some("mount"),
        "B",
        "size of a mounted file system",
    ),
    m(
        "disk.used_bytes",
        Some("mount"),
        "B",
        "space used on a mounted file system",
    ),
    m(
        "disk.free_bytes",
        Some("mount"),
        "B",
        "space available to unprivileged users",
    ),
    m(
        "disk.used_pct",
        Some("mount"),
        "%",
        "space used on a mounted file system",
    ),
    m(
        "disk.read_bytes_per_s",
        Some("mount"),
        "B/s",
        "reads from the mount's block device",
    ),
    m(
        "disk.write_bytes_per_s",
        Some("mount"),
        "B/s",
        "writes to the mount's block device",
    ),
    m("net.rx_bytes_per_s", Some("iface"), "B/s", "bytes received"),
    m("net.tx_bytes_per_s", Some("iface"), "B/s", "bytes sent"),
    m(
        "net.rx_errors",
        Some("iface"),
        "",
        "receive errors since boot",
    ),
    m(
        "net.tx_errors",
        Some("iface"),
        "",
        "transmit errors since boot",
    ),
    m(
        "net.rx_dropped",
        Some("iface"),
        "",
        "received packets dropped since boot",
    ),
    m("processes.count", None, "", "processes on the machine"),
    m("uptime.seconds", None, "s", "time since the machine booted"),
    m(
        "self.cpu_pct",
        None,
        "%",
        "majordomo's own CPU use (100 = one core)",
    ),
    m(
        "self.rss_bytes",
        None,
        "B",
        "majordomo's own resident memory",
    ),
    m("self.threads", None, "", "majordomo's own threads"),
    m(
        "self.open_files",
        None,
        "",
        "majordomo's own open file descriptors / handles",
    ),
    m(
        "program.cpu_pct",
        Some("program"),
        "%",
        "a supervised program's CPU use (100 = one core)",
    ),
    m(
        "program.rss_bytes",
        Some("program"),
        "B",
        "a supervised program's resident memory",
    ),
];

/// A metric of the collector's catalogue, or a gauge another subsystem publishes
/// (`majordomo_proto::metric::GAUGES`).
pub fn lookup(name: &str) -> Option<&'static MetricDef> {
    all().find(|d| d.name == name)
}

/// Every name a check may use: the collector's and the published gauges.
pub fn all() -> impl Iterator<Item = &'static MetricDef> {
    CATALOGUE
        .iter()
        .chain(majordomo_proto::metric::GAUGES.iter())
}

/// One value of one series.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: &'static str,
    /// The label's value (`/` for `mount`, `0` for `core`), when the metric has a label.
    pub label: Option<Box<str>>,
    pub value: f64,
}

impl Sample {
    /// `disk.used_pct{mount=/}`, the series key used by the history and the CLI.
    pub fn key(&self) -> String {
        let mut s = String::with_capacity(self.name.len() + 16);
        self.write_key(&mut s);
        s
    }

    pub fn write_key(&self, out: &mut String) {
        out.push_str(self.name);
        if let (Some(v), Some(def)) = (&self.label, lookup(self.name).and_then(|d| d.label)) {
            let _ = write!(out, "{{{def}={v}}}");
        }
    }

    pub fn label_key(&self) -> Option<&'static str> {
        lookup(self.name).and_then(|d| d.label)
    }
}

/// Splits `disk.used_pct{mount=/}` into the name and its label, if any.
pub fn split_key(key: &str) -> (&str, Option<(&str, &str)>) {
    match key.split_once('{') {
        Some((name, rest)) => {
            let inner = rest.strip_suffix('}').unwrap_or(rest);
            (name, inner.split_once('='))
        }
        None => (key, None),
    }
}

pub use majordomo_proto::monitor::Proc;

/// One collection cycle's result.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Unix time of the collection, in seconds.
    pub at: u64,
    pub samples: Vec<Sample>,
    pub top_cpu: Vec<Proc>,
    pub top_mem: Vec<Proc>,
}

impl Snapshot {
    pub fn push(&mut self, name: &'static str, label: Option<&str>, value: f64) {
        if value.is_finite() {
            self.samples.push(Sample {
                name,
                label: label.map(Box::from),
                value,
            });
        }
    }
}

/// Percentage of `part` in `whole`, 0 when `whole` is 0.
pub fn pct(part: f64, whole: f64) -> f64 {
    if whole > 0.0 {
        (part / whole * 100.0).clamp(0.0, 100.0)
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip() {
        let s = Sample {
            name: "disk.used_pct",
            label: Some("/var".into()),
            value: 1.0,
        };
        assert_eq!(s.key(), "disk.used_pct{mount=/var}");
        assert_eq!(
            split_key(&s.key()),
            ("disk.used_pct", Some(("mount", "/var")))
        );
        assert_eq!(split_key("load.1m"), ("load.1m", None));
    }

    #[test]
    fn catalogue_names_are_unique_and_dotted() {
        let mut names: Vec<_> = all().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), all().count());
        assert!(CATALOGUE.iter().all(|d| d.name.contains('.')));
    }
}
