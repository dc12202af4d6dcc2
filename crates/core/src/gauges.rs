//! Gauges: numeric values a subsystem publishes for the others to read, without either naming
//! the other (the bus's connection count, an endpoint's counters).
//!
//! A subsystem registers a *source*, a function that writes its current values when asked, and
//! keeps the returned [`GaugeGuard`] while it runs (dropping it unregisters). A reader (the
//! monitor, at each collection) calls [`Gauges::read`]. Nothing is pushed on the publisher's hot
//! path: a source reads its own counters only when someone asks. Names and label keys are the
//! documented catalogue in `majordomo_proto::metric` (`bus.connections`,
//! `bus.endpoint.msgs_in{endpoint=..}`); the reader ignores names it does not know.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Where a source writes its values: `(name, label value, value)`.
pub type Sink<'a> = dyn FnMut(&'static str, Option<&str>, f64) + 'a;

type Source = Arc<dyn Fn(&mut Sink<'_>) + Send + Sync>;

/// The registry of gauge sources. Cheap to clone; every clone is the same registry.
#[derive(Clone, Default)]
pub struct Gauges {
    sources: Arc<Mutex<BTreeMap<u64, (&'static str, Source)>>>,
    next: Arc<AtomicU64>,
}

impl Gauges {
    /// Registers `source` on behalf of `owner` (the subsystem's name); it is asked for its
    /// values until the returned guard is dropped.
    pub fn register(
        &self,
        owner: &'static str,
        source: impl Fn(&mut Sink<'_>) + Send + Sync + 'static,
    ) -> GaugeGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut s) = self.sources.lock() {
            s.insert(id, (owner, Arc::new(source)));
        }
        GaugeGuard {
            gauges: self.clone(),
            id,
        }
    }

    /// Asks every registered source for its current values (outside the registry's lock, so a
    /// source may take its own locks).
    pub fn read(&self, sink: &mut Sink<'_>) {
        let sources: Vec<Source> = self
            .sources
            .lock()
            .map(|s| s.values().map(|(_, f)| f.clone()).collect())
            .unwrap_or_default();
        for f in sources {
            f(sink);
        }
    }

    /// The owners of the registered sources (for diagnostics and tests).
    pub fn owners(&self) -> Vec<&'static str> {
        self.sources
            .lock()
            .map(|s| s.values().map(|(o, _)| *o).collect())
            .unwrap_or_default()
    }
}

/// Unregisters its source when dropped.
pub struct GaugeGuard {
    gauges: Gauges,
    id: u64,
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        if let Ok(mut s) = self.gauges.sources.lock() {
            s.remove(&self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_are_read_while_their_guard_lives() {
        let g = Gauges::default();
        let guard = g.register("bus", |out| {
            out("bus.connections", None, 3.0);
            out("bus.endpoint.msgs_in", Some("w"), 7.0);
        });
        let mut seen = Vec::new();
        g.read(&mut |n, l, v| seen.push((n, l.map(String::from), v)));
        assert_eq!(
            seen,
            vec![
                ("bus.connections", None, 3.0),
                ("bus.endpoint.msgs_in", Some("w".to_string()), 7.0)
            ]
        );
        assert_eq!(g.owners(), vec!["bus"]);
        drop(guard);
        let mut n = 0;
        g.read(&mut |_, _, _| n += 1);
        assert_eq!(n, 0);
        assert!(g.owners().is_empty());
    }
}
