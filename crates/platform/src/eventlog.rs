//! The Windows Event Log, as a `tracing` layer: while the SCM runs the daemon, every log line
//! that passes the `[log] level` filter also goes to the Application log, under the service's
//! name as the source (errors as errors, warnings as warnings, the rest as information).

use std::fmt::Write as _;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use windows_sys::Win32::Foundation::HANDLE;
use windows_sys::Win32::System::EventLog::{
    DeregisterEventSource, EVENTLOG_ERROR_TYPE, EVENTLOG_INFORMATION_TYPE, EVENTLOG_WARNING_TYPE,
    RegisterEventSourceW, ReportEventW,
};

/// An event source handle.
struct Source(HANDLE);

// SAFETY: an event log handle may be used from any thread (ReportEventW is thread-safe); it is
// only closed in Drop, when no other reference exists.
unsafe impl Send for Source {}
// SAFETY: as above: ReportEventW may be called concurrently on one handle.
unsafe impl Sync for Source {}

impl Drop for Source {
    fn drop(&mut self) {
        // SAFETY: the handle came from RegisterEventSourceW and is closed exactly once.
        unsafe { DeregisterEventSource(self.0) };
    }
}

/// The layer; see the module doc.
pub struct EventLogLayer {
    source: Source,
}

fn wide(s: &str) -> Vec<u16> {
    s.encode_utf16().chain(Some(0)).collect()
}

impl EventLogLayer {
    /// Opens the event source `name` on this machine; `None` if the Event Log refuses.
    pub fn new(name: &str) -> Option<EventLogLayer> {
        let w = wide(name);
        // SAFETY: a null server name means the local computer; `w` is NUL-terminated and lives
        // through the call.
        let h = unsafe { RegisterEventSourceW(std::ptr::null(), w.as_ptr()) };
        if h.is_null() {
            None
        } else {
            Some(EventLogLayer { source: Source(h) })
        }
    }
}

/// The layer for this process: only when the SCM runs it.
pub fn layer() -> Option<EventLogLayer> {
    if super::winsvc::is_service() {
        EventLogLayer::new(&super::winsvc::service_name())
    } else {
        None
    }
}

struct Text(String);

impl Visit for Text {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        if field.name() == "message" {
            let _ = write!(self.0, "{value:?}");
        } else {
            let _ = write!(self.0, " {}={value:?}", field.name());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.0.push_str(value);
        } else {
            let _ = write!(self.0, " {}={value}", field.name());
        }
    }
}

impl<S: Subscriber> Layer<S> for EventLogLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let mut text = Text(String::new());
        event.record(&mut text);
        let kind = match *event.metadata().level() {
            Level::ERROR => EVENTLOG_ERROR_TYPE,
            Level::WARN => EVENTLOG_WARNING_TYPE,
            _ => EVENTLOG_INFORMATION_TYPE,
        };
        let w = wide(&text.0);
        let strings = [w.as_ptr()];
        // SAFETY: the handle is live (owned by self); `strings` holds one pointer to a
        // NUL-terminated UTF-16 string, both alive through the call; no SID and no raw data.
        unsafe {
            ReportEventW(
                self.source.0,
                kind,
                0,
                1,
                std::ptr::null_mut(),
                1,
                0,
                strings.as_ptr(),
                std::ptr::null(),
            );
        }
    }
}
