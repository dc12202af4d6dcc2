//! The Windows service runtime: the same `majordomo run` serves the SCM and the console.
//!
//! [`dispatch`] hands the process to the service control dispatcher. When the SCM started the
//! process, the dispatcher calls [`service_main`] on a thread of its own, which registers the
//! control handler, reports StartPending, runs the daemon, and reports Stopped with its exit code.
//! When a console started it, the dispatcher fails at once with error 1063
//! (ERROR_FAILED_SERVICE_CONTROLLER_CONNECT) and the daemon runs in the foreground instead.
//!
//! SCM controls take the daemon's ordinary path: Stop, Shutdown and Preshutdown become
//! [`Signal::Terminate`], ParamChange becomes [`Signal::Hangup`] (reload), delivered through
//! [`super::Signals`]. The daemon's readiness and stopping, which it tells systemd through
//! [`super::Notifier`], are reported to the SCM as Running and StopPending (with a wait hint).
#![allow(unsafe_code)] // `define_windows_service!` expands to an `extern "system"` fn with an unsafe block.

use std::ffi::OsString;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use windows_service::service::{
    ServiceControl, ServiceControlAccept, ServiceExitCode, ServiceState, ServiceStatus, ServiceType,
};
use windows_service::service_control_handler::{
    self, ServiceControlHandlerResult, ServiceStatusHandle,
};
use windows_service::{define_windows_service, service_dispatcher};

use super::Signal;

/// ERROR_FAILED_SERVICE_CONTROLLER_CONNECT: the process was not started by the SCM.
const NOT_A_SERVICE: i32 = 1063;
/// How long the SCM should wait for the daemon to come up before it gives up.
const START_HINT: Duration = Duration::from_secs(60);

/// What the service main runs: the daemon; returns its exit code.
pub type Body = Box<dyn FnOnce() -> u8 + Send>;

struct Reporter {
    handle: ServiceStatusHandle,
    checkpoint: u32,
}

static BODY: Mutex<Option<Body>> = Mutex::new(None);
static NAME: Mutex<String> = Mutex::new(String::new());
static EXIT: Mutex<Option<u8>> = Mutex::new(None);
static REPORTER: Mutex<Option<Reporter>> = Mutex::new(None);
static CONTROLS: Mutex<Option<mpsc::UnboundedReceiver<Signal>>> = Mutex::new(None);
static IS_SERVICE: AtomicBool = AtomicBool::new(false);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How [`dispatch`] ended.
pub enum Outcome {
    /// The SCM ran the daemon as a service; this is its exit code.
    Service(u8),
    /// Started from a console: run `body` in the foreground.
    Console(Body),
}

define_windows_service!(ffi_service_main, service_main);

/// Hands the process to the service control dispatcher (see the module doc).
pub fn dispatch(name: &str, body: Body) -> Result<Outcome, String> {
    *lock(&NAME) = name.to_string();
    *lock(&BODY) = Some(body);
    match service_dispatcher::start(name, ffi_service_main) {
        Ok(()) => Ok(Outcome::Service(lock(&EXIT).take().unwrap_or(1))),
        Err(windows_service::Error::Winapi(e)) if e.raw_os_error() == Some(NOT_A_SERVICE) => {
            match lock(&BODY).take() {
                Some(body) => Ok(Outcome::Console(body)),
                None => Err("the service body ran already".into()),
            }
        }
        Err(e) => Err(format!(
            "cannot connect to the service control manager: {e}"
        )),
    }
}

/// Whether the SCM runs this process (set before the daemon starts).
pub fn is_service() -> bool {
    IS_SERVICE.load(Ordering::SeqCst)
}

/// The service name given to [`dispatch`].
pub fn service_name() -> String {
    lock(&NAME).clone()
}

/// The SCM's control requests as signals, once (taken by [`super::Signals`]).
pub fn take_controls() -> Option<mpsc::UnboundedReceiver<Signal>> {
    lock(&CONTROLS).take()
}

fn service_main(_args: Vec<OsString>) {
    IS_SERVICE.store(true, Ordering::SeqCst);
    let (tx, rx) = mpsc::unbounded_channel();
    *lock(&CONTROLS) = Some(rx);
    let handler = move |control| match control {
        ServiceControl::Stop | ServiceControl::Shutdown | ServiceControl::Preshutdown => {
            let _ = tx.send(Signal::Terminate);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::ParamChange => {
            let _ = tx.send(Signal::Hangup);
            ServiceControlHandlerResult::NoError
        }
        ServiceControl::Interrogate => ServiceControlHandlerResult::NoError,
        _ => ServiceControlHandlerResult::NotImplemented,
    };
    let handle = match service_control_handler::register(service_name(), handler) {
        Ok(h) => h,
        Err(e) => {
            // Nobody sees stderr here; the SCM will report that the service failed to start.
            eprintln!("majordomo: cannot register the service control handler: {e}");
            return;
        }
    };
    *lock(&REPORTER) = Some(Reporter {
        handle,
        checkpoint: 0,
    });
    report(ServiceState::StartPending, START_HINT);
    let code = match lock(&BODY).take() {
        Some(body) => body(),
        None => 1,
    };
    *lock(&EXIT) = Some(code);
    // The daemon has flushed its log already: report Stopped last, the process may end at once.
    let exit_code = if code == 0 {
        ServiceExitCode::Win32(0)
    } else {
        ServiceExitCode::ServiceSpecific(u32::from(code))
    };
    if let Some(r) = lock(&REPORTER).as_ref() {
        let _ = r.handle.set_service_status(ServiceStatus {
            service_type: ServiceType::OWN_PROCESS,
            current_state: ServiceState::Stopped,
            controls_accepted: ServiceControlAccept::empty(),
            exit_code,
            checkpoint: 0,
            wait_hint: Duration::ZERO,
            process_id: None,
        });
    }
}

fn report(state: ServiceState, wait_hint: Duration) {
    let mut guard = lock(&REPORTER);
    let Some(r) = guard.as_mut() else {
        return;
    };
    let pending = matches!(
        state,
        ServiceState::StartPending | ServiceState::StopPending
    );
    r.checkpoint = if pending { r.checkpoint + 1 } else { 0 };
    let controls_accepted = if state == ServiceState::Running {
        ServiceControlAccept::STOP
            | ServiceControlAccept::SHUTDOWN
            | ServiceControlAccept::PRESHUTDOWN
            | ServiceControlAccept::PARAM_CHANGE
    } else {
        ServiceControlAccept::empty()
    };
    let status = ServiceStatus {
        service_type: ServiceType::OWN_PROCESS,
        current_state: state,
        controls_accepted,
        exit_code: ServiceExitCode::Win32(0),
        checkpoint: r.checkpoint,
        wait_hint: if pending { wait_hint } else { Duration::ZERO },
        process_id: None,
    };
    if let Err(e) = r.handle.set_service_status(status) {
        tracing::warn!(error = %e, ?state, "cannot report the service state to the SCM");
    }
}

/// The daemon is up: Running, accepting Stop, Shutdown, Preshutdown and ParamChange.
pub fn report_running() {
    report(ServiceState::Running, Duration::ZERO);
}

/// The daemon is draining; the SCM should wait `within` before it gives up on it.
pub fn report_stop_pending(within: Duration) {
    report(ServiceState::StopPending, within);
}
