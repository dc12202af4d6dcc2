//! systemd: a template unit `majordomo@.service` (one instance per `majordomo@NAME.service`),
//! a per-instance drop-in, an `enable` link, and optionally the backup trigger's timer.
//!
//! The unit is `Type=notify` (the daemon sends READY/RELOADING/STOPPING/WATCHDOG), restarts on
//! failure, and uses `KillMode=mixed`: systemd sends SIGTERM to majordomo alone, which stops its
//! own programs within its grace period; only what is left after `TimeoutStopSec` (the grace
//! period plus a margin) is killed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::manifest::Manifest;
use super::{Action, Failure, InstallOptions, ManagerState, Scope, StartType, Target};
use majordomo_core::exit;

/// How often the daemon must send WATCHDOG=1 (it sends at half this).
pub const WATCHDOG: Duration = Duration::from_secs(30);
/// Margin over the grace period before systemd kills what is left.
const STOP_MARGIN: Duration = Duration::from_secs(15);

/// The template unit's file name.
pub const TEMPLATE: &str = "majordomo@.service";

/// `majordomo@NAME.service`.
pub fn unit_name(instance: &str) -> String {
    format!("majordomo@{instance}.service")
}

/// `majordomo-check@NAME` units of the backup trigger: one service and one timer per instance.
pub fn check_names(instance: &str) -> (String, String) {
    (
        format!("majordomo-check-{instance}.service"),
        format!("majordomo-check-{instance}.timer"),
    )
}

/// Whether systemd is the running init system (what `sd_booted()` checks).
pub fn is_running() -> bool {
    Path::new("/run/systemd/system").is_dir()
}

/// The name of PID 1, for "not supported" messages.
pub fn pid1_name() -> String {
    std::fs::read_to_string("/proc/1/comm")
        .map(|s| format!("`{}`", s.trim()))
        .unwrap_or_else(|_| "unknown".into())
}

/// The folder of units for the scope.
pub fn unit_dir(scope: Scope) -> Result<PathBuf, String> {
    match scope {
        Scope::System => Ok(PathBuf::from("/etc/systemd/system")),
        Scope::User => dirs::config_dir()
            .map(|d| d.join("systemd").join("user"))
            .ok_or_else(|| {
                "cannot find the user's config folder (set HOME or XDG_CONFIG_HOME)".to_string()
            }),
    }
}

/// Quotes one ExecStart argument: `%` and `$` doubled (specifier and variable escapes), and
/// wrapped in double quotes with `\` and `"` escaped when it holds blanks or quotes.
pub fn quote_arg(s: &str) -> String {
    let s = s.replace('%', "%%").replace('$', "$$");
    let plain = !s.is_empty()
        && !s
            .chars()
            .any(|c| c.is_whitespace() || matches!(c, '"' | '\'' | '\\' | ';'));
    if plain {
        return s;
    }
    let mut out = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn command_line(exe: &Path, args: &[String]) -> String {
    std::iter::once(quote_arg(&exe.display().to_string()))
        .chain(args.iter().map(|a| quote_arg(a)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The template unit for `scope`, running `exe`; its stop timeout follows the built-in grace
/// period `default_grace` (each instance's drop-in sets its own).
pub fn template_unit(exe: &Path, scope: Scope, default_grace: Duration) -> String {
    let run = command_line(
        exe,
        &[
            scope.flag().into(),
            "--instance".into(),
            "%i".into(),
            "run".into(),
        ],
    )
    // `%i` is a specifier here, not a literal.
    .replace("%%i", "%i");
    let mut u = String::new();
    u.push_str(
        "# Written by `majordomo service install`; `majordomo service uninstall` removes it.\n",
    );
    u.push_str("# Per-instance settings live in majordomo@NAME.service.d/majordomo.conf.\n");
    u.push_str("[Unit]\n");
    u.push_str("Description=majordomo background-service layer (instance %i)\n");
    if scope == Scope::System {
        u.push_str("After=network-online.target\nWants=network-online.target\n");
    }
    u.push_str("StartLimitIntervalSec=300\nStartLimitBurst=5\n\n");
    u.push_str("[Service]\n");
    u.push_str("Type=notify\nNotifyAccess=main\n");
    u.push_str(&format!("ExecStart={run}\n"));
    // SIGHUP, not `majordomo reload`: it needs no control token. A refused config is logged
    // and the running one kept.
    u.push_str("ExecReload=/bin/kill -HUP $MAINPID\n");
    u.push_str("Restart=on-failure\nRestartSec=2s\n");
    u.push_str(&format!("WatchdogSec={}s\n", WATCHDOG.as_secs()));
    u.push_str("TimeoutStartSec=90s\n");
    u.push_str(
        "# majordomo stops its own programs first; what is left after TimeoutStopSec is killed.\n",
    );
    u.push_str("KillMode=mixed\n");
    u.push_str(&format!(
        "TimeoutStopSec={}s\n",
        (default_grace + STOP_MARGIN).as_secs()
    ));
    u.push_str("NoNewPrivileges=yes\n");
    if scope == Scope::System {
        u.push_str("UMask=0027\n");
        u.push_str("ConfigurationDirectory=majordomo\n");
        u.push_str("StateDirectory=majordomo/%i\n");
        u.push_str("LogsDirectory=majordomo/%i\n");
        u.push_str("RuntimeDirectory=majordomo\nRuntimeDirectoryPreserve=yes\n");
        u.push_str("PrivateTmp=yes\n");
        u.push_str("ProtectSystem=full\n");
        u.push_str(
            "ProtectKernelTunables=yes\nProtectKernelModules=yes\nProtectControlGroups=yes\n",
        );
        u.push_str("RestrictSUIDSGID=yes\nRestrictRealtime=yes\nLockPersonality=yes\n");
    }
    u.push_str("\n[Install]\n");
    u.push_str(match scope {
        Scope::System => "WantedBy=multi-user.target\n",
        Scope::User => "WantedBy=default.target\n",
    });
    u
}

/// The per-instance drop-in: stop timeout from the instance's grace period, its config file,
/// and for a portable instance (`--home`) the template's `ExecStart` replaced by `exec_start`.
pub fn dropin(grace: Duration, config: Option<&Path>, exec_start: Option<&str>) -> String {
    let mut d =
        String::from("# Written by `majordomo service install` for this instance.\n[Service]\n");
    if let Some(run) = exec_start {
        // An empty ExecStart= clears the template's before the instance's own.
        d.push_str(&format!("ExecStart=\nExecStart={run}\n"));
    }
    d.push_str(&format!(
        "TimeoutStopSec={}s\n",
        (grace + STOP_MARGIN).as_secs()
    ));
    if let Some(c) = config {
        // Environment= expands specifiers (`%`) but not variables (`$`).
        let value = format!("MAJORDOMO_CONFIG={}", c.display())
            .replace('%', "%%")
            .replace('\\', "\\\\")
            .replace('"', "\\\"");
        d.push_str(&format!("Environment=\"{value}\"\n"));
    }
    d
}

/// `exe --scope --instance NAME [--home DIR] [--config FILE] run`, as an ExecStart value.
fn run_line(t: &Target) -> String {
    let mut args = t.base_args();
    args.push("run".into());
    command_line(&t.exe, &args)
}

/// The backup trigger: a oneshot service running `majordomo check`, and its timer.
pub fn check_units(t: &Target, every: Duration) -> (String, String) {
    let (service, _) = check_names(&t.instance);
    let mut args = t.base_args();
    args.push("check".into());
    let svc = format!(
        "# Written by `majordomo service install --with-backup-timer`.\n\
         [Unit]\n\
         Description=majordomo backup trigger: start instance {i} if it does not answer\n\n\
         [Service]\n\
         Type=oneshot\n\
         ExecStart={cmd}\n",
        i = t.instance,
        cmd = command_line(&t.exe, &args)
    );
    let timer = format!(
        "# Written by `majordomo service install --with-backup-timer`.\n\
         [Unit]\n\
         Description=majordomo backup trigger for instance {i} (every {every})\n\n\
         [Timer]\n\
         OnBootSec={s}s\n\
         OnUnitActiveSec={s}s\n\
         Unit={service}\n\n\
         [Install]\n\
         WantedBy=timers.target\n",
        i = t.instance,
        every = humantime::format_duration(every),
        s = every.as_secs(),
    );
    (svc, timer)
}

fn systemctl(scope: Scope, args: &[&str]) -> Result<String, String> {
    let mut c = Command::new("systemctl");
    if scope == Scope::User {
        c.arg("--user");
    }
    c.args(args);
    let out = crate::tool::run(c, "systemctl", std::time::Duration::from_secs(120))
        .map_err(|e| format!("{e}; is systemd installed and running?"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(format!(
            "`systemctl{} {}` failed ({}): {}",
            if scope == Scope::User { " --user" } else { "" },
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Writes the units (and the default config when the instance has none), enables them, and
/// unless staging, reloads systemd and starts what was asked.
pub fn install(t: &Target, opts: &InstallOptions) -> Result<Manifest, Failure> {
    let unit_dir = unit_dir(t.scope).map_err(Failure::from)?;
    let unit = unit_name(&t.instance);
    if t.staged(&t.manifest_path()).exists() {
        return Err(Failure::new(
            exit::FAILURE,
            format!(
                "{unit} is already installed (manifest {}); run `majordomo service uninstall{}` first",
                t.staged(&t.manifest_path()).display(),
                super::instance_flags(t)
            ),
        ));
    }
    // Another instance (a portable one, or the same name in another place) owns the unit.
    let dropin_file = t.staged(&unit_dir.join(format!("{unit}.d")).join("majordomo.conf"));
    if dropin_file.exists() {
        return Err(Failure::new(
            exit::FAILURE,
            format!(
                "{unit} is already installed for another instance named '{}' ({} exists, and this \
                 instance has no manifest at {}); uninstall that one with its own --home/--config, \
                 or choose another --instance",
                t.instance,
                dropin_file.display(),
                t.staged(&t.manifest_path()).display()
            ),
        ));
    }
    let mut m = Manifest::new(t, "systemd", unit.clone());
    let wants = match t.scope {
        Scope::System => "multi-user.target.wants",
        Scope::User => "default.target.wants",
    };
    let result = (|| {
        write_default_config(t, &mut m)?;
        let template = t.staged(&unit_dir.join(TEMPLATE));
        m.write_file(
            &template,
            &template_unit(&t.exe, t.scope, t.defaults.grace),
            true,
            false,
        )?;
        let dropin_path = t.staged(&unit_dir.join(format!("{unit}.d")).join("majordomo.conf"));
        m.write_file(
            &dropin_path,
            &dropin(
                t.grace(),
                t.config.as_deref(),
                t.home.is_some().then(|| run_line(t)).as_deref(),
            ),
            false,
            false,
        )?;
        // `--start-type manual`: installed but not enabled, so nothing starts it at boot.
        if enables_at_boot(opts.start_type) {
            m.link(
                &t.staged(&unit_dir.join(wants).join(&unit)),
                &unit_dir.join(TEMPLATE),
            )?;
        }
        if let Some(every) = opts.every {
            let (svc_name, timer_name) = check_names(&t.instance);
            let (svc, timer) = check_units(t, every);
            m.write_file(&t.staged(&unit_dir.join(&svc_name)), &svc, false, false)?;
            m.write_file(&t.staged(&unit_dir.join(&timer_name)), &timer, false, false)?;
            m.link(
                &t.staged(&unit_dir.join("timers.target.wants").join(&timer_name)),
                &unit_dir.join(&timer_name),
            )?;
            m.extra.push(timer_name.clone());
            m.trigger = Some(format!(
                "{timer_name} runs `majordomo check` every {}",
                humantime::format_duration(every)
            ));
        }
        m.save(t)
    })();
    if let Err(e) = result {
        // Leave nothing half-installed.
        let _ = m.remove(t, |p| other_instances_use(p, &t.instance));
        return Err(e);
    }
    if t.root.is_none() {
        systemctl(t.scope, &["daemon-reload"]).map_err(Failure::from)?;
        for timer in &m.extra {
            systemctl(t.scope, &["start", timer]).map_err(Failure::from)?;
        }
        if opts.start {
            systemctl(t.scope, &["start", &unit]).map_err(Failure::from)?;
        }
    }
    Ok(m)
}

/// Whether the install links the unit into the boot target's `.wants` folder (`enabled`).
pub fn enables_at_boot(start_type: StartType) -> bool {
    start_type != StartType::Manual
}

/// The folders `PrivateTmp=yes` hides from the service: it gets its own empty ones.
const PRIVATE_TMP: [&str; 2] = ["/tmp", "/var/tmp"];

/// Warnings about paths the unit would not see: the system unit runs with `PrivateTmp=yes`, so
/// a binary or config under `/tmp` or `/var/tmp` is missing when systemd starts it.
pub fn private_tmp_warnings(
    scope: Scope,
    exe: &Path,
    config: &Path,
    home: Option<&Path>,
) -> Vec<String> {
    if scope != Scope::System {
        return Vec::new();
    }
    let under_tmp = |p: &Path| PRIVATE_TMP.iter().find(|t| p.starts_with(t)).copied();
    let mut out = Vec::new();
    let home = home.map(|h| ("--home folder", h));
    for (what, p) in [("binary", exe), ("config file", config)]
        .into_iter()
        .chain(home)
    {
        if let Some(tmp) = under_tmp(p) {
            out.push(format!(
                "the {what} {} is under {tmp}, which the unit hides (PrivateTmp=yes gives the \
                 service its own empty {tmp}): the service will not find it; move it to a \
                 permanent place (e.g. /usr/local/bin, /etc/majordomo) and install again",
                p.display()
            ));
        }
    }
    out
}

/// Whether a staged install enabled the unit: its link in a `.wants` folder exists (the
/// manifest records the staged paths).
pub fn staged_enabled(t: &Target, m: &Manifest) -> bool {
    let unit = unit_name(&t.instance);
    m.links.iter().any(|l| {
        l.file_name().is_some_and(|n| n == unit.as_str())
            && l.parent()
                .and_then(|d| d.extension())
                .is_some_and(|x| x == "wants")
            && std::fs::symlink_metadata(l).is_ok()
    })
}

/// Writes the commented default config where the instance looks for it, unless it has one.
pub fn write_default_config(t: &Target, m: &mut Manifest) -> Result<(), Failure> {
    if t.config.is_some() {
        return Ok(());
    }
    let path = t.staged(&t.layout.config_file);
    if path.exists() {
        return Ok(());
    }
    m.write_file(&path, t.defaults.config_toml, false, true)
}

/// Whether another instance still has units next to the shared template.
fn other_instances_use(template: &Path, instance: &str) -> bool {
    let Some(dir) = template.parent() else {
        return false;
    };
    let ours = unit_name(instance);
    let mut places = vec![dir.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(dir) {
        places.extend(
            rd.flatten()
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "wants")),
        );
    }
    places.iter().any(|d| {
        std::fs::read_dir(d).is_ok_and(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with("majordomo@")
                    && name != TEMPLATE
                    && !name.starts_with(&ours)
                    && (name.ends_with(".service") || name.ends_with(".service.d"))
            })
        })
    })
}

/// Stops and disables the units (unless staging), then removes the files.
pub fn uninstall(t: &Target, m: &Manifest) -> Result<Vec<String>, Failure> {
    let mut kept = Vec::new();
    if t.root.is_none() && is_running() {
        for u in m.extra.iter().chain(std::iter::once(&m.service)) {
            if let Err(e) = systemctl(t.scope, &["stop", u]) {
                kept.push(format!("(could not stop {u}: {e})"));
            }
        }
    }
    kept.extend(m.remove(t, |p| other_instances_use(p, &t.instance)));
    if t.root.is_none() && is_running() {
        systemctl(t.scope, &["daemon-reload"]).map_err(Failure::from)?;
    }
    Ok(kept)
}

pub fn action(t: &Target, action: Action) -> Result<(), Failure> {
    let unit = unit_name(&t.instance);
    let verb = match action {
        Action::Start => "start",
        Action::Stop => "stop",
        Action::Restart => "restart",
    };
    systemctl(t.scope, &[verb, &unit])
        .map(|_| ())
        .map_err(Failure::from)
}

pub fn state(t: &Target) -> ManagerState {
    let unit = unit_name(&t.instance);
    let enabled = systemctl(t.scope, &["is-enabled", &unit])
        .ok()
        .map(|s| s == "enabled");
    let show = systemctl(
        t.scope,
        &[
            "show",
            &unit,
            "-p",
            "LoadState,ActiveState,SubState,MainPID,NRestarts",
        ],
    )
    .unwrap_or_default();
    let field = |k: &str| {
        show.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or("")
            .to_string()
    };
    ManagerState {
        installed: field("LoadState") == "loaded",
        enabled,
        running: Some(field("ActiveState") == "active"),
        detail: format!(
            "{}/{} pid {} restarts {}",
            field("ActiveState"),
            field("SubState"),
            field("MainPID"),
            field("NRestarts")
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_unit_has_the_required_options() {
        let u = template_unit(
            Path::new("/usr/bin/majordomo"),
            Scope::System,
            Duration::from_secs(10),
        );
        for want in [
            "Type=notify",
            "WatchdogSec=30s",
            "Restart=on-failure",
            "RestartSec=2s",
            "KillMode=mixed",
            "NoNewPrivileges=yes",
            "ProtectSystem=full",
            "PrivateTmp=yes",
            "ExecStart=/usr/bin/majordomo --system --instance %i run",
            "WantedBy=multi-user.target",
        ] {
            assert!(u.contains(want), "missing {want}:\n{u}");
        }
        // StartLimit* belong to [Unit] (systemd ignores them in [Service]).
        let unit_section = &u[..u.find("[Service]").unwrap()];
        assert!(
            unit_section.contains("StartLimitIntervalSec=")
                && unit_section.contains("StartLimitBurst=")
        );
    }

    #[test]
    fn user_unit_avoids_options_a_user_manager_cannot_apply() {
        let u = template_unit(
            Path::new("/opt/m d/majordomo"),
            Scope::User,
            Duration::from_secs(10),
        );
        assert!(
            u.contains("ExecStart=\"/opt/m d/majordomo\" --user --instance %i run"),
            "{u}"
        );
        assert!(u.contains("WantedBy=default.target"));
        assert!(!u.contains("ProtectSystem") && !u.contains("StateDirectory"));
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_arg("/usr/bin/x"), "/usr/bin/x");
        assert_eq!(quote_arg("a b"), "\"a b\"");
        assert_eq!(quote_arg("50%"), "50%%");
        assert_eq!(quote_arg("$HOME"), "$$HOME");
        assert_eq!(quote_arg("say \"hi\""), "\"say \\\"hi\\\"\"");
    }

    #[test]
    fn dropin_sets_stop_timeout_above_the_grace_period() {
        let d = dropin(
            Duration::from_secs(20),
            Some(Path::new("/etc/x y.toml")),
            None,
        );
        assert!(d.contains("TimeoutStopSec=35s"), "{d}");
        assert!(!d.contains("ExecStart"), "{d}");
        assert!(
            d.contains("Environment=\"MAJORDOMO_CONFIG=/etc/x y.toml\""),
            "{d}"
        );
        // A portable instance replaces the template's command with its own.
        let d = dropin(
            Duration::from_secs(20),
            None,
            Some("/usr/bin/majordomo --system --instance web --home /opt/web run"),
        );
        assert!(
            d.contains("ExecStart=\nExecStart=/usr/bin/majordomo --system --instance web --home /opt/web run\n"),
            "{d}"
        );
    }

    #[test]
    fn manual_start_type_is_not_enabled_at_boot() {
        assert!(enables_at_boot(StartType::Auto));
        assert!(enables_at_boot(StartType::DelayedAuto));
        assert!(!enables_at_boot(StartType::Manual));
    }

    #[test]
    fn private_tmp_hides_a_binary_or_config_under_tmp() {
        let w = private_tmp_warnings(
            Scope::System,
            Path::new("/tmp/build/majordomo"),
            Path::new("/var/tmp/m.toml"),
            None,
        );
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].contains("/tmp/build/majordomo") && w[0].contains("PrivateTmp=yes"));
        assert!(w[1].contains("/var/tmp/m.toml"));
        // `/tmpfoo` is not under `/tmp`; user units have no PrivateTmp.
        assert!(
            private_tmp_warnings(
                Scope::System,
                Path::new("/tmpfoo/majordomo"),
                Path::new("/etc/majordomo/default.toml"),
                None,
            )
            .is_empty()
        );
        assert!(
            private_tmp_warnings(
                Scope::User,
                Path::new("/tmp/majordomo"),
                Path::new("/tmp/m.toml"),
                None,
            )
            .is_empty()
        );
        // A portable instance's --home under /tmp is hidden as well.
        let w = private_tmp_warnings(
            Scope::System,
            Path::new("/usr/bin/majordomo"),
            Path::new("/opt/x.toml"),
            Some(Path::new("/tmp/portable")),
        );
        assert!(
            w.len() == 1 && w[0].contains("--home folder /tmp/portable"),
            "{w:?}"
        );
        // The warning is about the option the unit really sets.
        let u = template_unit(Path::new("/tmp/m"), Scope::System, Duration::from_secs(1));
        assert!(u.contains("PrivateTmp=yes"));
    }
}
