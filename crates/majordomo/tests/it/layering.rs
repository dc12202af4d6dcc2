//! The crate layering of `ARCHITECTURE.md`, checked on `cargo metadata` so it cannot regress.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

use serde_json::Value;

/// Each workspace crate and the workspace crates and external crates it depends on (normal
/// dependencies, every target).
fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: Value = serde_json::from_slice(&out.stdout).expect("cargo metadata JSON");
    let mut g = BTreeMap::new();
    for p in meta["packages"].as_array().expect("packages") {
        let deps = p["dependencies"]
            .as_array()
            .expect("dependencies")
            .iter()
            .filter(|d| d["kind"].is_null())
            .map(|d| d["name"].as_str().unwrap_or_default().to_string())
            .collect();
        g.insert(p["name"].as_str().unwrap_or_default().to_string(), deps);
    }
    g
}

const BASE: &[&str] = &["majordomo-proto", "majordomo-core", "majordomo-platform"];
const NOT_SUBSYSTEMS: &[&str] = &[
    "majordomo",
    "majordomo-proto",
    "majordomo-core",
    "majordomo-platform",
    "majordomo-client",
    "majordomo-bench",
];

fn workspace_deps<'a>(g: &'a BTreeMap<String, BTreeSet<String>>, krate: &str) -> Vec<&'a str> {
    g[krate]
        .iter()
        .filter(|d| g.contains_key(d.as_str()))
        .map(String::as_str)
        .collect()
}

#[test]
fn proto_and_client_stand_alone() {
    let g = graph();
    assert!(workspace_deps(&g, "majordomo-proto").is_empty());
    assert_eq!(workspace_deps(&g, "majordomo-client"), ["majordomo-proto"]);
}

#[test]
fn core_names_no_subsystem_and_no_outer_framework() {
    let g = graph();
    for d in workspace_deps(&g, "majordomo-core") {
        assert!(BASE.contains(&d), "majordomo-core depends on {d}");
    }
    for banned in ["clap", "reqwest", "axum", "async-nats"] {
        assert!(
            !g["majordomo-core"].contains(banned),
            "majordomo-core depends on {banned}"
        );
    }
    assert!(workspace_deps(&g, "majordomo-platform").is_empty());
}

#[test]
fn no_subsystem_depends_on_another() {
    let g = graph();
    let subsystems: Vec<&str> = g
        .keys()
        .map(String::as_str)
        .filter(|k| !NOT_SUBSYSTEMS.contains(k))
        .collect();
    assert!(
        subsystems.contains(&"majordomo-bus") && subsystems.len() >= 6,
        "{subsystems:?}"
    );
    for s in &subsystems {
        for d in workspace_deps(&g, s) {
            let allowed = BASE.contains(&d) || d == "majordomo-client" || d == "majordomo-bus";
            assert!(allowed, "{s} depends on {d}");
        }
    }
    // The bus itself carries no other subsystem.
    for d in workspace_deps(&g, "majordomo-bus") {
        assert!(BASE.contains(&d), "majordomo-bus depends on {d}");
    }
}

#[test]
fn only_the_application_names_every_subsystem() {
    let g = graph();
    let app = workspace_deps(&g, "majordomo");
    for s in g.keys().filter(|k| !NOT_SUBSYSTEMS.contains(&k.as_str())) {
        assert!(app.contains(&s.as_str()), "majordomo does not compose {s}");
    }
}

#[test]
fn unsafe_code_only_in_platform() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for entry in std::fs::read_dir(&root).expect("crates folder").flatten() {
        let lib = entry.path().join("src/lib.rs");
        let main = entry.path().join("src/main.rs");
        let name = entry.file_name().to_string_lossy().to_string();
        if name == "platform" {
            continue;
        }
        for file in [lib, main] {
            if let Ok(text) = std::fs::read_to_string(&file) {
                assert!(
                    text.contains("#![deny(unsafe_code)]")
                        || text.contains("#![forbid(unsafe_code)]"),
                    "{} does not forbid unsafe code",
                    file.display()
                );
            }
        }
    }
}
