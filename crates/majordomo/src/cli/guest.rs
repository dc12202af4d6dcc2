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
        outln!(
            "{}",
            serde_json::json!({"ok": !failed, "checks": found})
        );
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
    let mut out: Vec<std::ffi::OsString> =
        args.into_iter().filter(|a| a != "--diagnose").collect();
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
