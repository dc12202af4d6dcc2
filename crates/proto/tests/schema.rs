//! `schema/` at the repository root is generated from the contract. This fails when the
//! committed copy is stale; `MAJORDOMO_BLESS=1 cargo test -p majordomo-proto --test schema`
//! rewrites it.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn schema_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../schema")
}

fn on_disk(dir: &Path) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(rel) = p.strip_prefix(dir) {
                out.insert(rel.to_string_lossy().replace('\\', "/"));
            }
        }
    }
    out
}

#[test]
fn schema_folder_is_current() {
    let dir = schema_dir();
    let files = majordomo_proto::schema::files();
    if std::env::var_os("MAJORDOMO_BLESS").is_some() {
        for stale in on_disk(&dir) {
            if !files.contains_key(&stale) {
                std::fs::remove_file(dir.join(&stale)).expect("remove a stale schema file");
            }
        }
        for (rel, text) in &files {
            let path = dir.join(rel);
            std::fs::create_dir_all(path.parent().expect("a file has a folder"))
                .expect("create schema folder");
            std::fs::write(&path, text).expect("write schema file");
        }
        return;
    }
    let mut problems = Vec::new();
    for (rel, text) in &files {
        match std::fs::read_to_string(dir.join(rel)) {
            Ok(old) if old.replace("\r\n", "\n") == *text => {}
            Ok(_) => problems.push(format!("{rel} differs")),
            Err(_) => problems.push(format!("{rel} is missing")),
        }
    }
    for extra in on_disk(&dir) {
        if !files.contains_key(&extra) {
            problems.push(format!("{extra} is no longer generated"));
        }
    }
    assert!(
        problems.is_empty(),
        "schema/ is stale: {problems:#?}\nrun `MAJORDOMO_BLESS=1 cargo test -p majordomo-proto --test schema` and commit schema/"
    );
}

#[test]
fn every_command_and_event_kind_is_covered() {
    let files = majordomo_proto::schema::files();
    for c in majordomo_proto::contract::catalog() {
        assert!(
            files.contains_key(&format!("commands/{}.json", c.name)),
            "{}",
            c.name
        );
    }
    let events = &files["events.json"];
    for variant in [
        "daemon_started",
        "program_state",
        "alert",
        "notification",
        "file_uploaded",
    ] {
        assert!(
            events.contains(variant),
            "{variant} missing from events.json"
        );
    }
    let names: BTreeSet<&str> = majordomo_proto::contract::catalog()
        .iter()
        .map(|c| c.name)
        .collect();
    for core in ["hello", "ping", "status", "config", "reload", "shutdown"] {
        assert!(names.contains(core), "{core} missing from the catalog");
    }
}
