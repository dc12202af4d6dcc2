//! launchd (macOS): a daemon (`/Library/LaunchDaemons`, system) or agent
//! (`~/Library/LaunchAgents`, user) job labelled `org.majordomo.NAME`, kept alive when it fails
//! (`KeepAlive.SuccessfulExit = false`: a clean stop stays stopped). With `--start-type manual`
//! the job is neither started at load/boot (`RunAtLoad` false) nor by `KeepAlive` (whose
//! `SuccessfulExit` key implies `RunAtLoad`): it runs when started (`service start`,
//! `launchctl kickstart`) and is restarted only after a crash (`KeepAlive.Crashed`). The backup
//! trigger is a second job, `org.majordomo.NAME.check`, with `StartInterval`.
//!
//! The plists are generated on every platform (and unit-tested); `launchctl` is only called on
//! macOS.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::manifest::Manifest;
use super::{Action, Failure, InstallOptions, ManagerState, Scope, StartType, Target};
use majordomo_core::exit;

/// `org.majordomo.NAME`.
pub fn label(instance: &str) -> String {
    format!("org.majordomo.{instance}")
}

/// `org.majordomo.NAME.check`.
pub fn check_label(instance: &str) -> String {
    format!("org.majordomo.{instance}.check")
}

/// Where the plists of the scope go.
pub fn plist_dir(scope: Scope) -> Result<PathBuf, String> {
    match scope {
        Scope::System => Ok(PathBuf::from("/Library/LaunchDaemons")),
        Scope::User => dirs::home_dir()
            .map(|h| h.join("Library/LaunchAgents"))
            .ok_or_else(|| "cannot find the user's home folder (set HOME)".to_string()),
    }
}

/// Escapes text for an XML element.
pub fn xml_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

fn header() -> &'static str {
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n\
     <!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" \"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n\
     <!-- Written by `majordomo service install`; `majordomo service uninstall` removes it. -->\n\
     <plist version=\"1.0\">\n<dict>\n"
}

fn key_string(k: &str, v: &str) -> String {
    format!("  <key>{k}</key>\n  <string>{}</string>\n", xml_escape(v))
}

fn program_arguments(exe: &Path, args: &[String]) -> String {
    let mut s = String::from("  <key>ProgramArguments</key>\n  <array>\n");
    for a in std::iter::once(exe.display().to_string()).chain(args.iter().cloned()) {
        s.push_str(&format!("    <string>{}</string>\n", xml_escape(&a)));
    }
    s.push_str("  </array>\n");
    s
}

/// The service job: runs `majordomo run`, restarted when it fails. A `manual` job is not
/// started at load (nor at boot) and is restarted only after a crash: launchd's
/// `KeepAlive.SuccessfulExit` would start it at load.
pub fn service_plist(t: &Target, grace: Duration, start_type: StartType) -> String {
    let mut args = t.base_args();
    args.push("run".into());
    let mut p = String::from(header());
    p.push_str(&key_string("Label", &label(&t.instance)));
    p.push_str(&program_arguments(&t.exe, &args));
    if starts_at_load(start_type) {
        p.push_str("  <key>RunAtLoad</key>\n  <true/>\n");
        p.push_str("  <key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>\n  </dict>\n");
    } else {
        p.push_str("  <key>RunAtLoad</key>\n  <false/>\n");
        p.push_str(
            "  <key>KeepAlive</key>\n  <dict>\n    <key>Crashed</key>\n    <true/>\n  </dict>\n",
        );
    }
    p.push_str("  <key>ThrottleInterval</key>\n  <integer>5</integer>\n");
    p.push_str(&format!(
        "  <key>ExitTimeOut</key>\n  <integer>{}</integer>\n",
        (grace + Duration::from_secs(15)).as_secs()
    ));
    p.push_str(&key_string("ProcessType", "Background"));
    p.push_str(&key_string(
        "StandardErrorPath",
        &t.layout
            .log_dir
            .join("launchd.stderr.log")
            .display()
            .to_string(),
    ));
    p.push_str("</dict>\n</plist>\n");
    p
}

/// Whether launchd starts the job when it is loaded (at install and at boot).
pub fn starts_at_load(start_type: StartType) -> bool {
    start_type != StartType::Manual
}

/// The backup trigger job: `majordomo check` every `every`.
pub fn check_plist(t: &Target, every: Duration) -> String {
    let mut args = t.base_args();
    args.push("check".into());
    let mut p = String::from(header());
    p.push_str(&key_string("Label", &check_label(&t.instance)));
    p.push_str(&program_arguments(&t.exe, &args));
    p.push_str(&format!(
        "  <key>StartInterval</key>\n  <integer>{}</integer>\n",
        every.as_secs()
    ));
    p.push_str(&key_string("ProcessType", "Background"));
    p.push_str("</dict>\n</plist>\n");
    p
}

/// The `launchctl` domain of the scope: `system` or `gui/UID`.
#[cfg(target_os = "macos")]
fn domain(scope: Scope) -> String {
    match scope {
        Scope::System => "system".into(),
        Scope::User => format!("gui/{}", nix::unistd::getuid()),
    }
}

#[cfg(target_os = "macos")]
fn launchctl(args: &[&str]) -> Result<String, String> {
    let mut c = std::process::Command::new("launchctl");
    c.args(args);
    let out = crate::tool::run(c, "launchctl", std::time::Duration::from_secs(120))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`launchctl {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

pub fn install(t: &Target, opts: &InstallOptions) -> Result<Manifest, Failure> {
    let dir = plist_dir(t.scope).map_err(Failure::from)?;
    let name = label(&t.instance);
    let mut m = Manifest::new(t, "launchd", name.clone());
    let plist = t.staged(&dir.join(format!("{name}.plist")));
    let result = (|| {
        super::systemd::write_default_config(t, &mut m)?;
        m.create_dir(&t.staged(&t.layout.log_dir))?;
        m.write_file(
            &plist,
            &service_plist(t, t.grace(), opts.start_type),
            false,
            false,
        )?;
        if let Some(every) = opts.every {
            let check = check_label(&t.instance);
            m.write_file(
                &t.staged(&dir.join(format!("{check}.plist"))),
                &check_plist(t, every),
                false,
                false,
            )?;
            m.extra.push(check.clone());
            m.trigger = Some(format!(
                "{check} runs `majordomo check` every {}",
                humantime::format_duration(every)
            ));
        }
        m.save(t)
    })();
    if let Err(e) = result {
        let _ = m.remove(t, |_| false);
        return Err(e);
    }
    #[cfg(target_os = "macos")]
    if t.root.is_none() {
        let d = domain(t.scope);
        for f in &m.files {
            if f.path.extension().is_some_and(|x| x == "plist") {
                launchctl(&["bootstrap", &d, &f.path.display().to_string()])
                    .map_err(Failure::from)?;
            }
        }
        if !opts.start && starts_at_load(opts.start_type) {
            // RunAtLoad started it; honour "install without --start".
            let _ = launchctl(&["kill", "TERM", &format!("{d}/{name}")]);
        } else if opts.start && !starts_at_load(opts.start_type) {
            launchctl(&["kickstart", &format!("{d}/{name}")]).map_err(Failure::from)?;
        }
    }
    Ok(m)
}

pub fn uninstall(t: &Target, m: &Manifest) -> Result<Vec<String>, Failure> {
    #[cfg(target_os = "macos")]
    if t.root.is_none() {
        let d = domain(t.scope);
        for l in m.extra.iter().chain(std::iter::once(&m.service)) {
            let _ = launchctl(&["bootout", &format!("{d}/{l}")]);
        }
    }
    Ok(m.remove(t, |_| false))
}

#[cfg(target_os = "macos")]
pub fn action(t: &Target, action: Action) -> Result<(), Failure> {
    let target = format!("{}/{}", domain(t.scope), label(&t.instance));
    let r = match action {
        Action::Start => launchctl(&["kickstart", &target]),
        Action::Stop => launchctl(&["kill", "TERM", &target]),
        Action::Restart => launchctl(&["kickstart", "-k", &target]),
    };
    r.map(|_| ()).map_err(|e| Failure::new(exit::FAILURE, e))
}

#[cfg(not(target_os = "macos"))]
pub fn action(_t: &Target, _action: Action) -> Result<(), Failure> {
    Err(Failure::new(
        exit::UNAVAILABLE,
        "launchd is only available on macOS",
    ))
}

#[cfg(target_os = "macos")]
pub fn state(t: &Target) -> ManagerState {
    let target = format!("{}/{}", domain(t.scope), label(&t.instance));
    match launchctl(&["print", &target]) {
        Ok(out) => {
            let field = |k: &str| {
                out.lines()
                    .find_map(|l| l.trim().strip_prefix(&format!("{k} = ")))
                    .unwrap_or("")
                    .to_string()
            };
            ManagerState {
                installed: true,
                enabled: Some(true),
                running: Some(field("state") == "running"),
                detail: format!("state {} pid {}", field("state"), field("pid")),
            }
        }
        Err(e) => ManagerState {
            installed: false,
            enabled: None,
            running: Some(false),
            detail: e,
        },
    }
}

#[cfg(not(target_os = "macos"))]
pub fn state(_t: &Target) -> ManagerState {
    ManagerState {
        detail: "launchd is only available on macOS".into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use majordomo_core::{Layout, Mode};

    fn target() -> Target {
        Target {
            instance: "web".into(),
            scope: Scope::User,
            layout: Layout::resolve("web", Mode::Home("/h".into())).unwrap(),
            config: Some("/cfg/a&b.toml".into()),
            home: None,
            root: None,
            exe: "/usr/local/bin/majordomo".into(),
            settings: crate::Settings::default(),
            defaults: crate::Defaults {
                grace: Duration::from_secs(10),
                config_toml: "",
            },
        }
    }

    /// Every opened tag is closed, in order (a small well-formedness check).
    fn balanced(xml: &str) -> bool {
        let mut stack = Vec::new();
        let mut rest = xml;
        while let Some(i) = rest.find('<') {
            let end = rest[i..].find('>').map(|e| i + e).unwrap_or(rest.len());
            let tag = &rest[i + 1..end];
            rest = &rest[(end + 1).min(rest.len())..];
            if tag.starts_with('?') || tag.starts_with('!') || tag.ends_with('/') {
                continue;
            }
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop() != Some(name.to_string()) {
                    return false;
                }
            } else {
                stack.push(tag.split_whitespace().next().unwrap_or("").to_string());
            }
        }
        stack.is_empty()
    }

    #[test]
    fn service_plist_keeps_the_job_alive_on_failure() {
        let p = service_plist(&target(), Duration::from_secs(10), StartType::Auto);
        assert!(balanced(&p), "{p}");
        assert!(p.contains("<string>org.majordomo.web</string>"));
        assert!(p.contains(
            "<key>KeepAlive</key>\n  <dict>\n    <key>SuccessfulExit</key>\n    <false/>"
        ));
        assert!(p.contains("<key>RunAtLoad</key>\n  <true/>"));
        assert!(p.contains("<string>/cfg/a&amp;b.toml</string>"), "{p}");
        assert!(
            p.contains("<integer>25</integer>"),
            "ExitTimeOut = grace + 15 s: {p}"
        );
        let args: Vec<&str> = p
            .lines()
            .skip_while(|l| !l.contains("ProgramArguments"))
            .skip(2)
            .take_while(|l| !l.contains("</array>"))
            .collect();
        assert_eq!(args.len(), 7, "{args:?}");
        assert!(args.last().unwrap().contains("<string>run</string>"));
    }

    #[test]
    fn manual_start_type_is_not_started_at_load_or_by_keep_alive() {
        for st in [StartType::Auto, StartType::DelayedAuto] {
            let p = service_plist(&target(), Duration::from_secs(10), st);
            assert!(p.contains("<key>RunAtLoad</key>\n  <true/>"), "{p}");
        }
        let p = service_plist(&target(), Duration::from_secs(10), StartType::Manual);
        assert!(balanced(&p), "{p}");
        assert!(p.contains("<key>RunAtLoad</key>\n  <false/>"), "{p}");
        // SuccessfulExit implies RunAtLoad (launchd.plist(5)); only a crash restarts it.
        assert!(!p.contains("SuccessfulExit"), "{p}");
        assert!(
            p.contains("<key>KeepAlive</key>\n  <dict>\n    <key>Crashed</key>\n    <true/>"),
            "{p}"
        );
        assert!(p.contains("<string>run</string>"), "{p}");
    }

    #[test]
    fn a_portable_instance_runs_with_its_home() {
        let t = Target {
            home: Some("/opt/web".into()),
            layout: Layout::resolve("web", Mode::Home("/opt/web".into())).unwrap(),
            ..target()
        };
        let p = service_plist(&t, Duration::from_secs(10), StartType::Auto);
        assert!(
            p.contains("<string>--home</string>\n    <string>/opt/web</string>"),
            "{p}"
        );
        let log = t.layout.log_dir.join("launchd.stderr.log");
        assert!(log.starts_with("/opt/web"));
        assert!(p.contains(&xml_escape(&log.display().to_string())), "{p}");
    }

    #[test]
    fn check_plist_runs_check_at_an_interval() {
        let p = check_plist(&target(), Duration::from_secs(300));
        assert!(balanced(&p), "{p}");
        assert!(p.contains("<string>org.majordomo.web.check</string>"));
        assert!(p.contains("<key>StartInterval</key>\n  <integer>300</integer>"));
        assert!(p.contains("<string>check</string>"));
        assert!(!p.contains("KeepAlive"));
    }

    proptest::proptest! {
        #[test]
        fn escaped_text_never_opens_a_tag(s in ".{0,40}") {
            let e = xml_escape(&s);
            proptest::prop_assert!(!e.contains('<') && !e.contains('>'));
        }
    }
}
