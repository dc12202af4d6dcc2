//! Metric names: what a metric (or a gauge another subsystem publishes) is called, its label
//! key and unit. Names are part of the public interface (`[[check]] metric`, the history,
//! `majordomo metrics`, scripts): they are only ever added to.
//!
//! The monitor's collector has its own catalogue; [`GAUGES`] lists the values other subsystems
//! publish through the core's gauge registry (`majordomo_core::gauges`), which the monitor
//! reads at each collection like its own.

/// One metric name, its label key (if it has one) and what it means.
#[derive(Debug, PartialEq, Eq)]
pub struct MetricDef {
    pub name: &'static str,
    pub label: Option<&'static str>,
    pub unit: &'static str,
    pub help: &'static str,
}

/// A [`MetricDef`], for the catalogues' `const` tables.
pub const fn def(
    name: &'static str,
    label: Option<&'static str>,
    unit: &'static str,
    help: &'static str,
) -> MetricDef {
    MetricDef {
        name,
        label,
        unit,
        help,
    }
}

/// Gauges the bus publishes (the same values `status` and `bus ls` show).
pub const GAUGES: &[MetricDef] = &[
    def("bus.connections", None, "", "open bus connections"),
    def(
        "bus.peak_connections",
        None,
        "",
        "most bus connections open at once since start",
    ),
    def(
        "bus.queue_bytes",
        None,
        "B",
        "memory of every connection's outbound queue together",
    ),
    def(
        "bus.overflows",
        None,
        "",
        "times a connection's queue overflowed (daemon-wide cap or its own) since start",
    ),
    def(
        "bus.dropped",
        None,
        "",
        "messages dropped for slow consumers since start",
    ),
    def(
        "bus.subscriptions",
        None,
        "",
        "subscriptions of every connection",
    ),
    def(
        "bus.endpoint.msgs_in",
        Some("endpoint"),
        "",
        "frames a registered endpoint sent",
    ),
    def(
        "bus.endpoint.msgs_out",
        Some("endpoint"),
        "",
        "frames a registered endpoint was sent",
    ),
    def(
        "bus.endpoint.bytes_in",
        Some("endpoint"),
        "B",
        "bytes a registered endpoint sent",
    ),
    def(
        "bus.endpoint.bytes_out",
        Some("endpoint"),
        "B",
        "bytes a registered endpoint was sent",
    ),
    def(
        "bus.endpoint.dropped",
        Some("endpoint"),
        "",
        "messages dropped for a registered endpoint (slow consumer)",
    ),
];

#[cfg(test)]
mod tests {
    #[test]
    fn gauge_names_are_unique_and_dotted() {
        let mut names: Vec<_> = super::GAUGES.iter().map(|d| d.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), super::GAUGES.len());
        assert!(super::GAUGES.iter().all(|d| d.name.contains('.')));
    }
}
