//! The bench's command line, through its real binary. (Its presence also makes `cargo test
//! --workspace` build `majordomo-bench`, which CI's benchmark smoke runs then use against the
//! release daemon instead of building the bench again in release.)

use std::process::Command;

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_majordomo-bench"))
        .args(args)
        .output()
        .expect("the bench binary runs")
}

#[test]
fn every_benchmark_is_listed() {
    let out = bench(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for b in [
        "control",
        "supervisor",
        "bus",
        "monitor",
        "pipeline",
        "scheduler",
        "fleet",
        "http",
        "guest",
    ] {
        assert!(help.contains(b), "{b} missing from:\n{help}");
    }
}

#[test]
fn an_unknown_part_is_refused_with_the_known_ones() {
    let out = bench(&["bus", "--only", "rtt,bogus"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bogus") && err.contains("fanout"), "{err}");
}
