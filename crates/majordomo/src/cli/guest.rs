//! The guest agent's verbs: `majordomo doctor --virtio` (alias `majordomo --diagnose`).

use std::process::ExitCode;

use majordomo_core::exit;
use majordomo_guest::diagnose::{self, Level};

/// `majordomo doctor --virtio`: the virtio-serial findings, each with what to do; exit 1 when
/// any FAILs.
pub fn doctor_virtio(json: bool) -> ExitCode {
    let found = diagnose::findings(&diagnose::Roots::default());
    let failed = found.iter().any(|f| f.status == Level::Fail);
    if json {
        outln!("{}", serde_json::json!({"ok": !failed, "checks": found}));
    } else {
        outln!("majordomo doctor --virtio · the VM guest agent's ports");
        for c in &found {
            outln!("{:<4}  {:<22} {}", c.status.label(), c.name, c.detail);
            if c.status != Level::Ok
                && let Some(h) = &c.hint
            {
                outln!("      {:<22} fix: {h}", "");
            }
        }
    }
    ExitCode::from(if failed { exit::FAILURE } else { exit::OK })
}

/// The seed's `majordomo --diagnose`: rewritten to `doctor --virtio` before parsing, so the
/// global options around it keep their meaning.
pub fn rewrite_diagnose(args: Vec<std::ffi::OsString>) -> Vec<std::ffi::OsString> {
    if !args.iter().skip(1).any(|a| a == "--diagnose") {
        return args;
    }
    let mut out: Vec<std::ffi::OsString> = args.into_iter().filter(|a| a != "--diagnose").collect();
    out.push("doctor".into());
    out.push("--virtio".into());
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn diagnose_is_doctor_virtio() {
        let v = |s: &[&str]| s.iter().map(std::ffi::OsString::from).collect::<Vec<_>>();
        assert_eq!(
            super::rewrite_diagnose(v(&["majordomo", "--json", "--diagnose"])),
            v(&["majordomo", "--json", "doctor", "--virtio"])
        );
        assert_eq!(
            super::rewrite_diagnose(v(&["majordomo", "status"])),
            v(&["majordomo", "status"])
        );
    }
}

/// `majordomo guest ...`: the management commands of the machine a running instance is on
/// (the same socket commands the guest's control port carries).
#[derive(Debug, clap::Subcommand)]
pub enum GuestCmd {
    /// Processes, the busiest first.
    Processes {
        /// Only the first N (`top`).
        #[arg(long)]
        top: Option<usize>,
        /// cpu (default), rss or pid.
        #[arg(long)]
        sort: Option<String>,
    },
    /// Send a signal (default TERM) to a process ([guest] kill_allow must match its name).
    Kill {
        pid: u32,
        #[arg(long)]
        signal: Option<String>,
    },
    /// Open TCP and UDP sockets with their processes.
    Ports,
    /// Services (systemd, the Windows SCM), optionally only those matching a pattern.
    Services { name: Option<String> },
    /// start, stop, restart, enable or disable a service ([guest] service_allow).
    Service { action: String, name: String },
    /// Installed packages, or `--search WORD` in the available ones.
    Packages {
        #[arg(long)]
        search: Option<String>,
    },
    /// install, remove or update packages ([guest] package_allow).
    Package { action: String, names: Vec<String> },
    /// Installed applications (registry, desktop entries, flatpak, snap, bundles).
    Apps { name: Option<String> },
}

/// Runs one `guest` verb; prints JSON with `--json`, else a table.
pub async fn run(
    cmd: &GuestCmd,
    opts: &majordomo_client::ConnectOptions,
    json: bool,
) -> Result<u8, majordomo_client::ClientError> {
    use majordomo_proto::guest::*;
    let mut c = majordomo_client::Client::connect(opts).await?;
    let show = |v: serde_json::Value| {
        if json {
            outln!("{v}");
        }
        !json
    };
    match cmd {
        GuestCmd::Processes { top, sort } => {
            let args = ProcessesArgs {
                top: *top,
                sort: sort.clone(),
            };
            let r = c.call_cmd::<GuestProcessesCmd>(&args).await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                outln!(
                    "{:>7} {:>6} {:>1} {:>9} {:>10}  COMMAND",
                    "PID",
                    "UID",
                    "S",
                    "CPU s",
                    "RSS KiB"
                );
                for p in r {
                    let cmd = if p.cmdline.is_empty() {
                        format!("[{}]", p.name)
                    } else {
                        p.cmdline
                    };
                    outln!(
                        "{:>7} {:>6} {:>1} {:>9.2} {:>10}  {}",
                        p.pid,
                        p.uid.map(|u| u.to_string()).unwrap_or_default(),
                        p.state,
                        p.cpu_s,
                        p.rss_bytes / 1024,
                        cmd
                    );
                }
            }
        }
        GuestCmd::Kill { pid, signal } => {
            let r = c
                .call_cmd::<GuestKillCmd>(&KillArgs {
                    pid: *pid,
                    signal: signal.clone(),
                })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                outln!("{}", r.message);
            }
        }
        GuestCmd::Ports => {
            let r = c
                .call_cmd::<GuestPortsCmd>(&majordomo_proto::NoArgs {})
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                for p in r {
                    outln!(
                        "{:<5} {:<12} {:<45} {:<45} {}",
                        p.proto,
                        p.state,
                        p.local,
                        p.remote,
                        p.pid
                            .map(|pid| format!("{} ({pid})", p.process.unwrap_or_default()))
                            .unwrap_or_default()
                    );
                }
            }
        }
        GuestCmd::Apps { name } => {
            let r = c
                .call_cmd::<GuestAppsCmd>(&AppsArgs { name: name.clone() })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                for a in r {
                    outln!(
                        "{:<40} {:<16} {:<24} {}",
                        a.name,
                        a.version,
                        a.publisher,
                        a.source
                    );
                }
            }
        }
        GuestCmd::Services { name } => {
            let r = c
                .call_cmd::<GuestServicesCmd>(&ServicesArgs { name: name.clone() })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                for s in r {
                    outln!(
                        "{:<40} {:<9} {:<9} {:<9} {}",
                        s.name,
                        s.active,
                        s.sub,
                        s.enabled,
                        s.description
                    );
                }
            }
        }
        GuestCmd::Service { action, name } => {
            let r = c
                .call_cmd::<GuestServiceCmd>(&ServiceAction {
                    action: action.clone(),
                    name: name.clone(),
                })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                outln!("{}", r.message);
            }
        }
        GuestCmd::Packages { search } => {
            let r = c
                .call_cmd::<GuestPackagesCmd>(&PackagesArgs {
                    search: search.clone(),
                })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                outln!("# {} ({} packages)", r.manager, r.packages.len());
                for p in r.packages {
                    outln!("{:<40} {:<30} {}", p.name, p.version, p.detail);
                }
            }
        }
        GuestCmd::Package { action, names } => {
            let r = c
                .call_cmd::<GuestPackageCmd>(&PackageAction {
                    action: action.clone(),
                    names: names.clone(),
                })
                .await?;
            if show(serde_json::to_value(&r).unwrap_or_default()) {
                outln!("{}", r.message);
                if !r.output.is_empty() {
                    outln!("{}", r.output);
                }
            }
        }
    }
    Ok(exit::OK)
}
