//! The Windows service control manager: service `majordomo-NAME` running
//! `majordomo.exe --system --instance NAME run`, with a description, a start type, recovery
//! actions (restart after 2 s, 10 s, 60 s; failure count reset after a day; also on a non-zero
//! exit), a preshutdown timeout and an account. The backup trigger is a Task Scheduler task
//! `majordomo-NAME-check` (created with `schtasks.exe`).

use std::ffi::OsString;
use std::time::{Duration, Instant};

use windows_service::service::{
    ServiceAccess, ServiceAction, ServiceActionType, ServiceErrorControl, ServiceFailureActions,
    ServiceFailureResetPeriod, ServiceInfo, ServiceStartType, ServiceState, ServiceType,
};
use windows_service::service_manager::{ServiceManager, ServiceManagerAccess};

use super::manifest::Manifest;
use super::{Action, Failure, InstallOptions, ManagerState, StartType, Target, refusal};
use majordomo_core::exit;

const ERROR_ACCESS_DENIED: i32 = 5;
const ERROR_SERVICE_DOES_NOT_EXIST: i32 = 1060;
const ERROR_SERVICE_NOT_ACTIVE: i32 = 1062;
const ERROR_SERVICE_ALREADY_RUNNING: i32 = 1056;
const ERROR_SERVICE_EXISTS: i32 = 1073;

fn os_code(e: &windows_service::Error) -> Option<i32> {
    match e {
        windows_service::Error::Winapi(io) => io.raw_os_error(),
        _ => None,
    }
}

/// The OS error behind `e`, which the crate's own Display hides.
fn describe(e: &windows_service::Error) -> String {
    match e {
        windows_service::Error::Winapi(io) => io.to_string(),
        other => other.to_string(),
    }
}

/// `what` is a gerund phrase: "installing", "starting", ...
fn fail(what: &str, e: windows_service::Error) -> Failure {
    if os_code(&e) == Some(ERROR_ACCESS_DENIED) {
        return Failure::new(exit::NOPERM, refusal(what));
    }
    let detail = describe(&e);
    Failure::new(
        exit::FAILURE,
        format!("the service control manager failed {what} the service: {detail}"),
    )
}

/// Error codes of a service manager that lacks an optional setting (older Windows, Wine).
fn unsupported(e: &windows_service::Error) -> bool {
    matches!(os_code(e), Some(50 | 87 | 120 | 124))
}

pub fn name(t: &Target) -> String {
    format!("majordomo-{}", t.instance)
}

fn task_name(t: &Target) -> String {
    format!("majordomo-{}-check", t.instance)
}

fn manager(access: ServiceManagerAccess, what: &str) -> Result<ServiceManager, Failure> {
    ServiceManager::local_computer(None::<&str>, access).map_err(|e| fail(what, e))
}

/// Quotes one argument for a Windows command line (the rules `CommandLineToArgvW` undoes).
fn quote(s: &str) -> String {
    if s.is_empty() || s.contains([' ', '\t', '"']) {
        format!("\"{}\"", s.replace('"', "\\\""))
    } else {
        s.to_string()
    }
}

/// The arguments of `majordomo ... VERB` for this target, quoted.
fn args_line(t: &Target, verb: &str) -> String {
    t.base_args()
        .into_iter()
        .chain(std::iter::once(verb.to_string()))
        .map(|a| quote(&a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The whole command line of `exe ... VERB`, quoted.
#[cfg(test)]
fn command_line(t: &Target, verb: &str) -> String {
    format!(
        "{} {}",
        quote(&t.exe.display().to_string()),
        args_line(t, verb)
    )
}

pub fn install(t: &Target, opts: &InstallOptions) -> Result<Manifest, Failure> {
    if t.root.is_some() {
        return Err(Failure::new(
            exit::USAGE,
            "--root stages files for systemd or launchd; the Windows service control manager keeps services in the registry",
        ));
    }
    let svc_name = name(t);
    let mgr = manager(
        ServiceManagerAccess::CONNECT | ServiceManagerAccess::CREATE_SERVICE,
        "installing",
    )?;
    let mut args: Vec<OsString> = t.base_args().into_iter().map(OsString::from).collect();
    args.push("run".into());
    let info = ServiceInfo {
        name: svc_name.clone().into(),
        display_name: format!("majordomo ({})", t.instance).into(),
        service_type: ServiceType::OWN_PROCESS,
        start_type: match opts.start_type {
            StartType::Auto | StartType::DelayedAuto => ServiceStartType::AutoStart,
            StartType::Manual => ServiceStartType::OnDemand,
        },
        error_control: ServiceErrorControl::Normal,
        executable_path: t.exe.clone(),
        launch_arguments: args,
        dependencies: vec![],
        account_name: opts.account.as_ref().map(OsString::from),
        account_password: None,
    };
    let access = ServiceAccess::CHANGE_CONFIG | ServiceAccess::START | ServiceAccess::QUERY_STATUS;
    let service = mgr.create_service(&info, access).map_err(|e| {
        if os_code(&e) == Some(ERROR_SERVICE_EXISTS) {
            Failure::new(
                exit::FAILURE,
                format!(
                    "a service named {svc_name} exists already; run `majordomo service uninstall{}` first",
                    super::instance_flags(t)
                ),
            )
        } else {
            fail("installing", e)
        }
    })?;
    let mut m = Manifest::new(t, "scm", svc_name.clone());
    let configured = (|| -> Result<(), Failure> {
        let cfg = |what: &str| {
            let what = what.to_string();
            move |e| fail(&format!("configuring {what} of"), e)
        };
        service
            .set_description(format!(
                "majordomo background-service layer, instance '{}' (config {})",
                t.instance,
                t.layout.config_file.display()
            ))
            .map_err(cfg("the description"))?;
        service
            .update_failure_actions(ServiceFailureActions {
                reset_period: ServiceFailureResetPeriod::After(Duration::from_secs(86_400)),
                reboot_msg: None,
                command: None,
                actions: Some(
                    [2, 10, 60]
                        .into_iter()
                        .map(|s| ServiceAction {
                            action_type: ServiceActionType::Restart,
                            delay: Duration::from_secs(s),
                        })
                        .collect(),
                ),
            })
            .map_err(cfg("the recovery actions"))?;
        // Optional settings a service manager may lack (Wine has no failure-action flag or
        // preshutdown timeout): noted, not fatal.
        let mut notes = Vec::new();
        let mut optional = |r: windows_service::Result<()>, what: &str| match r {
            Ok(()) => Ok(()),
            Err(e) if unsupported(&e) => {
                notes.push(format!(
                    "this service manager does not support {what} ({})",
                    describe(&e)
                ));
                Ok(())
            }
            Err(e) => Err(fail(&format!("configuring {what} of"), e)),
        };
        if opts.start_type == StartType::DelayedAuto {
            optional(service.set_delayed_auto_start(true), "a delayed start")?;
        }
        optional(
            service.set_failure_actions_on_non_crash_failures(true),
            "recovery on a non-zero exit",
        )?;
        optional(
            service.set_preshutdown_timeout(t.grace() + Duration::from_secs(15)),
            "a preshutdown timeout",
        )?;
        // Register the Event Log source, so the Event Viewer shows the lines without a
        // "description cannot be found" preamble (EventCreate.exe's messages are plain "%1").
        let key = event_source_key(&svc_name);
        match reg(&[
            "add",
            &key,
            "/v",
            "EventMessageFile",
            "/t",
            "REG_EXPAND_SZ",
            "/d",
            r"%SystemRoot%\System32\EventCreate.exe",
            "/f",
        ])
        .and_then(|()| {
            reg(&[
                "add",
                &key,
                "/v",
                "TypesSupported",
                "/t",
                "REG_DWORD",
                "/d",
                "7",
                "/f",
            ])
        }) {
            Ok(()) => m.registry.push(key),
            Err(e) => notes.push(format!("the Event Log source was not registered: {e}")),
        }
        for n in notes {
            eprintln!("majordomo: note: {n}");
        }
        super::systemd::write_default_config(t, &mut m)?;
        if let Some(every) = opts.every {
            let task = task_name(t);
            create_task(&task, &task_xml(t, every))?;
            m.extra.push(task.clone());
            m.trigger = Some(format!(
                "scheduled task {task} runs `majordomo check` every {}",
                humantime::format_duration(every)
            ));
        }
        m.save(t)
    })();
    if let Err(e) = configured {
        let _ = service_delete(&svc_name);
        let _ = m.remove(t, |_| false);
        return Err(e);
    }
    if opts.start {
        service
            .start(&[] as &[&std::ffi::OsStr])
            .map_err(|e| fail("starting", e))?;
        wait_for(t, ServiceState::Running, Duration::from_secs(60))?;
    }
    Ok(m)
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The Task Scheduler definition of the backup trigger: `majordomo check` as LocalSystem every
/// `every`, catching up after missed runs, never two at once, at most 5 minutes each.
pub fn task_xml(t: &Target, every: Duration) -> String {
    let exe = t.exe.display().to_string();
    let args = args_line(t, "check");
    format!(
        r#"<?xml version="1.0" encoding="UTF-16"?>
<Task version="1.2" xmlns="http://schemas.microsoft.com/windows/2004/02/mit/task">
  <RegistrationInfo>
    <Description>majordomo backup trigger: starts service {svc} when instance {i} does not answer (written by `majordomo service install --with-backup-timer`)</Description>
  </RegistrationInfo>
  <Triggers>
    <TimeTrigger>
      <Repetition>
        <Interval>PT{m}M</Interval>
        <StopAtDurationEnd>false</StopAtDurationEnd>
      </Repetition>
      <StartBoundary>2025-01-01T00:00:00</StartBoundary>
      <Enabled>true</Enabled>
    </TimeTrigger>
  </Triggers>
  <Principals>
    <Principal id="Author">
      <UserId>S-1-5-18</UserId>
      <RunLevel>HighestAvailable</RunLevel>
    </Principal>
  </Principals>
  <Settings>
    <MultipleInstancesPolicy>IgnoreNew</MultipleInstancesPolicy>
    <DisallowStartIfOnBatteries>false</DisallowStartIfOnBatteries>
    <StopIfGoingOnBatteries>false</StopIfGoingOnBatteries>
    <StartWhenAvailable>true</StartWhenAvailable>
    <ExecutionTimeLimit>PT5M</ExecutionTimeLimit>
    <Enabled>true</Enabled>
  </Settings>
  <Actions Context="Author">
    <Exec>
      <Command>{exe}</Command>
      <Arguments>{args}</Arguments>
    </Exec>
  </Actions>
</Task>
"#,
        svc = xml_escape(&name(t)),
        i = xml_escape(&t.instance),
        m = (every.as_secs() / 60).max(1),
        exe = xml_escape(&exe),
        args = xml_escape(&args),
    )
}

/// Registers the task from its XML (UTF-16 with a byte-order mark, as schtasks expects).
fn create_task(task: &str, xml: &str) -> Result<(), Failure> {
    let path = std::env::temp_dir().join(format!("{task}.{}.xml", std::process::id()));
    let mut bytes = vec![0xFF, 0xFE];
    for u in xml.replace('\n', "\r\n").encode_utf16() {
        bytes.extend_from_slice(&u.to_le_bytes());
    }
    std::fs::write(&path, bytes).map_err(|e| {
        Failure::new(
            exit::FAILURE,
            format!("cannot write the task definition {}: {e}", path.display()),
        )
    })?;
    let result = schtasks(&[
        "/Create",
        "/F",
        "/TN",
        task,
        "/XML",
        &path.display().to_string(),
    ]);
    let _ = std::fs::remove_file(&path);
    result
}

fn event_source_key(service: &str) -> String {
    format!(r"HKLM\SYSTEM\CurrentControlSet\Services\EventLog\Application\{service}")
}

/// Runs `reg.exe`; the error says what it printed.
/// How long reg.exe and schtasks.exe may take (they answer in well under a second).
const TOOL_LIMIT: Duration = Duration::from_secs(30);

fn reg(args: &[&str]) -> Result<(), String> {
    let mut c = std::process::Command::new("reg.exe");
    c.args(args);
    let out = crate::tool::run(c, "reg.exe", TOOL_LIMIT)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`reg {}` failed ({}): {}{}",
            args.first().copied().unwrap_or(""),
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn schtasks(args: &[&str]) -> Result<(), Failure> {
    let mut c = std::process::Command::new("schtasks.exe");
    c.args(args);
    let out = crate::tool::run(c, "schtasks.exe", TOOL_LIMIT)
        .map_err(|e| Failure::new(exit::FAILURE, e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(Failure::new(
            exit::FAILURE,
            format!(
                "`schtasks {}` failed ({}): {}{}",
                args.first().copied().unwrap_or(""),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ))
    }
}

fn service_delete(svc_name: &str) -> Result<(), Failure> {
    let mgr = manager(ServiceManagerAccess::CONNECT, "removing")?;
    let s = mgr
        .open_service(svc_name, ServiceAccess::DELETE)
        .map_err(|e| fail("removing", e))?;
    s.delete().map_err(|e| fail("removing", e))
}

pub fn uninstall(t: &Target, m: &Manifest) -> Result<Vec<String>, Failure> {
    let mut kept = Vec::new();
    let mgr = manager(ServiceManagerAccess::CONNECT, "removing")?;
    match mgr.open_service(
        &m.service,
        ServiceAccess::STOP | ServiceAccess::QUERY_STATUS | ServiceAccess::DELETE,
    ) {
        Ok(s) => {
            if let Ok(st) = s.query_status()
                && st.current_state != ServiceState::Stopped
            {
                match s.stop() {
                    Ok(_) => wait_for(
                        t,
                        ServiceState::Stopped,
                        t.grace() + Duration::from_secs(20),
                    )?,
                    Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => {}
                    Err(e) => return Err(fail("stopping", e)),
                }
            }
            s.delete().map_err(|e| fail("removing", e))?;
        }
        Err(e) if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
            kept.push(format!("(service {} was already gone)", m.service));
        }
        Err(e) => return Err(fail("removing", e)),
    }
    for key in &m.registry {
        if let Err(e) = reg(&["delete", key, "/f"]) {
            kept.push(format!("(registry key {key}: {e})"));
        }
    }
    for task in &m.extra {
        if let Err(e) = schtasks(&["/Delete", "/F", "/TN", task]) {
            kept.push(format!("(scheduled task {task}: {})", e.message));
        }
    }
    kept.extend(m.remove(t, |_| false));
    Ok(kept)
}

fn wait_for(t: &Target, want: ServiceState, limit: Duration) -> Result<(), Failure> {
    let mgr = manager(ServiceManagerAccess::CONNECT, "querying")?;
    let s = mgr
        .open_service(name(t), ServiceAccess::QUERY_STATUS)
        .map_err(|e| fail("querying", e))?;
    let deadline = Instant::now() + limit;
    loop {
        let st = s.query_status().map_err(|e| fail("querying", e))?;
        if st.current_state == want {
            return Ok(());
        }
        if want == ServiceState::Running && st.current_state == ServiceState::Stopped {
            return Err(Failure::new(
                exit::FAILURE,
                format!(
                    "{} stopped while starting (exit code {:?}); see the Windows Event Log (source {}) and {}",
                    name(t),
                    st.exit_code,
                    name(t),
                    t.layout.log_dir.display()
                ),
            ));
        }
        if Instant::now() > deadline {
            return Err(Failure::new(
                exit::FAILURE,
                format!(
                    "{} is still {:?} after {limit:?}, not {want:?}",
                    name(t),
                    st.current_state
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn action(t: &Target, action: Action) -> Result<(), Failure> {
    let mgr = manager(ServiceManagerAccess::CONNECT, "controlling")?;
    let s = mgr
        .open_service(
            name(t),
            ServiceAccess::START | ServiceAccess::STOP | ServiceAccess::QUERY_STATUS,
        )
        .map_err(|e| {
            if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) {
                Failure::new(
                    exit::FAILURE,
                    format!(
                        "no service {} is installed; install it with `majordomo service install{}`",
                        name(t),
                        super::instance_flags(t)
                    ),
                )
            } else {
                fail("controlling", e)
            }
        })?;
    let stop_within = t.grace() + Duration::from_secs(20);
    let stop = || -> Result<(), Failure> {
        match s.stop() {
            Ok(_) => wait_for(t, ServiceState::Stopped, stop_within),
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_NOT_ACTIVE) => Ok(()),
            Err(e) => Err(fail("stopping", e)),
        }
    };
    let start = || -> Result<(), Failure> {
        match s.start(&[] as &[&std::ffi::OsStr]) {
            Ok(()) => wait_for(t, ServiceState::Running, Duration::from_secs(60)),
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_ALREADY_RUNNING) => Ok(()),
            Err(e) => Err(fail("starting", e)),
        }
    };
    match action {
        Action::Start => start(),
        Action::Stop => stop(),
        Action::Restart => {
            stop()?;
            start()
        }
    }
}

pub fn state(t: &Target) -> ManagerState {
    let q = || -> Result<ManagerState, String> {
        let mgr = ServiceManager::local_computer(None::<&str>, ServiceManagerAccess::CONNECT)
            .map_err(|e| e.to_string())?;
        let s = match mgr.open_service(
            name(t),
            ServiceAccess::QUERY_STATUS | ServiceAccess::QUERY_CONFIG,
        ) {
            Ok(s) => s,
            Err(e) if os_code(&e) == Some(ERROR_SERVICE_DOES_NOT_EXIST) => {
                return Ok(ManagerState {
                    installed: false,
                    enabled: Some(false),
                    running: Some(false),
                    detail: format!("no service {}", name(t)),
                });
            }
            Err(e) => return Err(e.to_string()),
        };
        let st = s.query_status().map_err(|e| e.to_string())?;
        let cfg = s.query_config().map_err(|e| e.to_string())?;
        Ok(ManagerState {
            installed: true,
            enabled: Some(cfg.start_type == ServiceStartType::AutoStart),
            running: Some(st.current_state == ServiceState::Running),
            detail: format!(
                "{:?}, start {:?}, pid {}",
                st.current_state,
                cfg.start_type,
                st.process_id
                    .map(|p| p.to_string())
                    .unwrap_or_else(|| "-".into())
            ),
        })
    };
    q().unwrap_or_else(|e| ManagerState {
        detail: e,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Scope;
    use majordomo_core::{Layout, Mode};

    #[test]
    fn command_lines_quote_what_needs_it() {
        let t = Target {
            instance: "web".into(),
            scope: Scope::System,
            layout: Layout::resolve("web", Mode::System).unwrap(),
            config: Some(r"C:\my dir\web.toml".into()),
            home: None,
            root: None,
            exe: r"C:\Program Files\majordomo\majordomo.exe".into(),
            settings: crate::Settings::default(),
            defaults: crate::Defaults {
                grace: Duration::from_secs(10),
                config_toml: "",
            },
        };
        assert_eq!(
            command_line(&t, "check"),
            r#""C:\Program Files\majordomo\majordomo.exe" --system --instance web --config "C:\my dir\web.toml" check"#
        );
        assert_eq!(name(&t), "majordomo-web");
        assert_eq!(task_name(&t), "majordomo-web-check");
        let xml = task_xml(&t, Duration::from_secs(600));
        assert!(xml.contains("<Interval>PT10M</Interval>"), "{xml}");
        assert!(
            xml.contains(r"<Command>C:\Program Files\majordomo\majordomo.exe</Command>"),
            "{xml}"
        );
        assert!(
            xml.contains(r#"<Arguments>--system --instance web --config &quot;C:\my dir\web.toml&quot; check</Arguments>"#),
            "{xml}"
        );
        // A portable instance's service carries its --home in the SCM's binary path.
        let home = Target {
            home: Some(r"D:\apps\web portable".into()),
            layout: Layout::resolve("web", Mode::Home(r"D:\apps\web portable".into())).unwrap(),
            config: None,
            ..t
        };
        assert_eq!(
            command_line(&home, "run"),
            r#""C:\Program Files\majordomo\majordomo.exe" --system --instance web --home "D:\apps\web portable" run"#
        );
    }
}
