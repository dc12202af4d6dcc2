//! Black-box tests of "Running as an OS service" and "Doctor" in the README: the real binary
//! writes real unit files into a staging root, `systemd-analyze verify` judges them, the refusal
//! of a system install is checked as a real unprivileged user, and `doctor` / `check` run
//! against a real daemon.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::common::{BIN, Home, stderr, stdout};
use serde_json::Value;

/// The binary without any MAJORDOMO_* variable from outside.
fn majordomo() -> Command {
    let mut c = Command::new(BIN);
    for (k, _) in std::env::vars() {
        if k.starts_with("MAJORDOMO_") || k == "NOTIFY_SOCKET" {
            c.env_remove(k);
        }
    }
    c.stdin(Stdio::null());
    c
}

fn run(c: &mut Command) -> Output {
    c.output().expect("run majordomo")
}

/// Every file and link under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

fn install(root: &Path, scope: &str, instance: &str, extra: &[&str]) -> Output {
    let out = run(majordomo()
        .args([
            "service",
            "install",
            scope,
            "--instance",
            instance,
            "--root",
        ])
        .arg(root)
        .args(extra));
    assert!(
        out.status.success(),
        "install {instance}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn uninstall(root: &Path, scope: &str, instance: &str) -> Output {
    let out = run(majordomo()
        .args([
            "service",
            "uninstall",
            scope,
            "--instance",
            instance,
            "--root",
        ])
        .arg(root));
    assert!(
        out.status.success(),
        "uninstall {instance}: {}{}",
        stdout(&out),
        stderr(&out)
    );
    out
}

fn systemd_analyze() -> Option<PathBuf> {
    ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

#[test]
fn running_as_an_os_service_units_pass_systemd_analyze_verify() {
    let Some(analyze) = systemd_analyze() else {
        eprintln!(
            "SKIPPED: systemd-analyze is not installed (scripts/install-test-deps.sh installs the `systemd` package)"
        );
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let cfg = tmp.path().join("my config.toml");
    std::fs::write(&cfg, "[daemon]\ngrace_period = \"20s\"\n").unwrap();
    let root = tmp.path().join("root");
    install(
        &root,
        "--system",
        "web",
        &[
            "--with-backup-timer",
            "10m",
            "--config",
            cfg.to_str().unwrap(),
        ],
    );
    let units = root.join("etc/systemd/system");
    let dropin =
        std::fs::read_to_string(units.join("majordomo@web.service.d/majordomo.conf")).unwrap();
    assert!(
        dropin.contains("TimeoutStopSec=35s"),
        "grace 20 s + margin: {dropin}"
    );
    assert!(dropin.contains("MAJORDOMO_CONFIG="), "{dropin}");
    // The enable link points where systemd will find the template once installed.
    assert_eq!(
        std::fs::read_link(units.join("multi-user.target.wants/majordomo@web.service")).unwrap(),
        PathBuf::from("/etc/systemd/system/majordomo@.service")
    );
    // `verify` loads the template through the instance name, with its drop-in, and checks every
    // key, every command path and every dependency. It exits 0 even for unknown keys, so any
    // complaint on stderr is a failure too.
    let out = run(Command::new(&analyze).arg("verify").args([
        units.join("majordomo@web.service"),
        units.join("majordomo-check-web.service"),
        units.join("majordomo-check-web.timer"),
    ]));
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify (system units): {}{}",
        stdout(&out),
        stderr(&out)
    );

    // User units, verified by the user manager's rules.
    let user_root = tmp.path().join("user-root");
    let home = tmp.path().join("home");
    let out = run(majordomo()
        .env("HOME", &home)
        .env("XDG_CONFIG_HOME", home.join(".config"))
        .env("XDG_STATE_HOME", home.join(".local/state"))
        .args([
            "service",
            "install",
            "--user",
            "--instance",
            "desk",
            "--with-backup-timer",
            "--root",
        ])
        .arg(&user_root));
    assert!(out.status.success(), "{}", stderr(&out));
    let user_units = super_path(&user_root, &home.join(".config/systemd/user"));
    assert!(
        user_units.join("majordomo@.service").exists(),
        "{:?}",
        tree(&user_root)
    );
    // The user manager wants a runtime folder, as a login session would give it.
    let runtime = tmp.path().join("runtime");
    std::fs::create_dir(&runtime).unwrap();
    std::fs::set_permissions(
        &runtime,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let out = run(Command::new(&analyze)
        .env("XDG_RUNTIME_DIR", &runtime)
        .args(["verify", "--user"])
        .args([
            user_units.join("majordomo@desk.service"),
            user_units.join("majordomo-check-desk.timer"),
        ]));
    assert!(
        out.status.success() && stderr(&out).trim().is_empty(),
        "systemd-analyze verify --user: {}{}",
        stdout(&out),
        stderr(&out)
    );

    // A broken unit is caught by the same check (so the check can fail).
    let broken = tmp.path().join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let text = std::fs::read_to_string(units.join("majordomo@.service"))
        .unwrap()
        .replace("Type=notify", "Type=notify\nWatchdogSecs=30");
    std::fs::write(broken.join("majordomo@.service"), text).unwrap();
    let out = run(Command::new(&analyze)
        .arg("verify")
        .arg(broken.join("majordomo@x.service")));
    assert!(
        stderr(&out).contains("WatchdogSecs"),
        "verify should complain: {}",
        stderr(&out)
    );
}

/// `path` (absolute) inside the staging `root`.
fn super_path(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap())
}

#[test]
fn running_as_an_os_service_install_uninstall_round_trip_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    // Something that was there before must stay untouched.
    let foreign = root.join("etc/systemd/system/other.service");
    std::fs::create_dir_all(foreign.parent().unwrap()).unwrap();
    std::fs::write(&foreign, "[Service]\nExecStart=/bin/true\n").unwrap();
    let before = tree(&root);

    let out = install(&root, "--system", "alpha", &["--with-backup-timer", "5m"]);
    assert!(
        stdout(&out).contains("majordomo@alpha.service"),
        "{}",
        stdout(&out)
    );
    install(&root, "--system", "beta", &[]);
    // A second install of the same instance is refused, not doubled.
    let again = run(majordomo()
        .args([
            "service",
            "install",
            "--system",
            "--instance",
            "beta",
            "--root",
        ])
        .arg(&root));
    assert!(!again.status.success());
    assert!(
        stderr(&again).contains("already installed"),
        "{}",
        stderr(&again)
    );
    let manifest: Value = serde_json::from_str(
        &std::fs::read_to_string(root.join("var/lib/majordomo/alpha/service-manifest.json"))
            .unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["manager"], "systemd");
    assert_eq!(manifest["service"], "majordomo@alpha.service");
    assert!(tree(&root).len() > before.len() + 8, "{:?}", tree(&root));

    // alpha goes; the template stays for beta.
    let out = uninstall(&root, "--system", "alpha");
    assert!(
        stdout(&out).contains("used by other instances"),
        "{}",
        stdout(&out)
    );
    assert!(root.join("etc/systemd/system/majordomo@.service").exists());
    assert!(
        !root
            .join("etc/systemd/system/majordomo-check-alpha.timer")
            .exists()
    );
    uninstall(&root, "--system", "beta");
    assert_eq!(tree(&root), before, "uninstall left files behind");
    assert_eq!(
        std::fs::read_to_string(&foreign).unwrap(),
        "[Service]\nExecStart=/bin/true\n"
    );

    // A config a person edited since install is kept, and uninstall says so.
    install(&root, "--system", "gamma", &[]);
    let cfg = root.join("etc/majordomo/gamma.toml");
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("\n# my edit\n");
    std::fs::write(&cfg, &text).unwrap();
    let out = uninstall(&root, "--system", "gamma");
    assert!(
        stdout(&out).contains("changed since install"),
        "{}",
        stdout(&out)
    );
    assert_eq!(std::fs::read_to_string(&cfg).unwrap(), text);

    // Uninstalling what is not installed says so.
    let out = run(majordomo()
        .args([
            "service",
            "uninstall",
            "--system",
            "--instance",
            "nope",
            "--root",
        ])
        .arg(&root));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("no service is installed"),
        "{}",
        stderr(&out)
    );
}

/// Runs the binary as the unprivileged user `nobody` (through `setpriv`), or as we are when we
/// are not root. `None` when we are root and cannot drop privileges.
fn as_unprivileged(args: &[&str], env: &[(&str, &Path)]) -> Option<Output> {
    let mut c = if nix::unistd::geteuid().is_root() {
        let setpriv = ["/usr/bin/setpriv", "/bin/setpriv"]
            .into_iter()
            .find(|p| Path::new(p).exists())?;
        let mut c = Command::new(setpriv);
        c.args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN]);
        c
    } else {
        Command::new(BIN)
    };
    for (k, _) in std::env::vars() {
        if k.starts_with("MAJORDOMO_") {
            c.env_remove(k);
        }
    }
    for (k, v) in env {
        c.env(k, v);
    }
    Some(c.args(args).stdin(Stdio::null()).output().expect("run"))
}

#[test]
fn running_as_an_os_service_system_install_without_rights_is_refused() {
    let Some(out) = as_unprivileged(
        &["service", "install", "--system", "--instance", "web"],
        &[],
    ) else {
        eprintln!("SKIPPED: running as root and setpriv is not available to drop privileges");
        return;
    };
    assert_eq!(
        out.status.code(),
        Some(77),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let msg = stderr(&out);
    assert!(msg.contains("needs root"), "{msg}");
    assert!(
        msg.contains("sudo ") && msg.contains("service install --system"),
        "{msg}"
    );
    assert!(msg.contains("--user"), "{msg}");
    assert!(!Path::new("/etc/systemd/system/majordomo@web.service.d").exists());
    // Uninstall is refused the same way, before it reads or touches anything.
    let out = as_unprivileged(
        &["service", "uninstall", "--system", "--instance", "web"],
        &[],
    )
    .unwrap();
    assert_eq!(out.status.code(), Some(77), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("removing a system-wide service needs root"),
        "{}",
        stderr(&out)
    );

    // A per-user install needs no rights (staged here: no user manager runs in this container).
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(
        tmp.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let root = tmp.path().join("stage");
    let home = tmp.path().join("home");
    let out = as_unprivileged(
        &[
            "service",
            "install",
            "--user",
            "--instance",
            "desk",
            "--root",
            root.to_str().unwrap(),
        ],
        &[("HOME", &home), ("XDG_CONFIG_HOME", &home.join(".config"))],
    )
    .unwrap();
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    assert!(super_path(&root, &home.join(".config/systemd/user/majordomo@.service")).exists());
}

fn doctor(home: &Home, instance: &str) -> (Output, Value) {
    let out = home.cli(instance, &["doctor", "--json"]);
    let v: Value = serde_json::from_str(&stdout(&out))
        .unwrap_or_else(|e| panic!("doctor --json is not JSON ({e}): {}", stdout(&out)));
    (out, v)
}

fn check_of<'a>(v: &'a Value, name: &str) -> &'a Value {
    v["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name}: {v}"))
}

#[test]
fn doctor_on_a_healthy_and_on_a_broken_setup() {
    let home = Home::new();
    home.write_config("web", "[daemon]\ngrace_period = \"5s\"\n");
    let mut d = home.start("web");
    let (out, v) = doctor(&home, "web");
    assert!(out.status.success(), "healthy setup must pass: {v:#}");
    assert_eq!(v["ok"], true);
    for name in [
        "config",
        "state folder",
        "log folder",
        "socket",
        "clock",
        "permissions",
    ] {
        assert_eq!(check_of(&v, name)["status"], "OK", "{name}: {v:#}");
    }
    // These depend on the machine, not on the setup: a build machine's disk may well be under
    // doctor's 10 % warning line (`disk_level` is unit-tested on its own).
    for name in [
        "free disk",
        "service manager",
        "desktop session",
        "virtio-serial",
        "service",
    ] {
        let s = check_of(&v, name)["status"].as_str().unwrap().to_string();
        assert!(s == "OK" || s == "WARN", "{name} is {s}");
    }
    assert!(
        check_of(&v, "socket")["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("pid {}", d.pid()))
    );
    // Human output: one line per check and a summary.
    let human = stdout(&home.cli("web", &["doctor"]));
    assert!(
        human.contains("OK    socket") && human.contains("0 failures"),
        "{human}"
    );

    // Broken: the daemon is gone, the config is invalid and writable by everyone.
    home.cli("web", &["shutdown"]);
    d.wait_exit(Duration::from_secs(30));
    home.write_config("web", "[daemon]\ngrace_period = \"soon\"\nbogus = 1\n");
    let cfg = home.config_path("web");
    std::fs::set_permissions(&cfg, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (out, v) = doctor(&home, "web");
    assert_eq!(out.status.code(), Some(1), "{v:#}");
    assert_eq!(v["ok"], false);
    let config = check_of(&v, "config");
    assert_eq!(config["status"], "FAIL");
    assert!(
        config["detail"].as_str().unwrap().contains("bogus"),
        "{config}"
    );
    assert!(
        config["hint"].as_str().unwrap().contains("config check"),
        "{config}"
    );
    let socket = check_of(&v, "socket");
    assert_eq!(socket["status"], "FAIL");
    assert!(
        socket["hint"].as_str().unwrap().contains("service start"),
        "{socket}"
    );
    let perms = check_of(&v, "permissions");
    assert_eq!(perms["status"], "FAIL");
    assert!(
        perms["hint"].as_str().unwrap().contains("chmod o-w"),
        "{perms}"
    );
    let human = home.cli("web", &["doctor"]);
    assert!(stdout(&human).contains("FAIL  config") && stdout(&human).contains("fix:"));
}

#[test]
fn backup_trigger_check_starts_or_records() {
    let home = Home::new();
    // A token-protected instance: `check` finds the token in the instance's config.
    home.write_config("api", "[control]\ntoken = \"t0ps3cret\"\n");
    // Nobody answers: `check` tries to start the instance through the service manager. There is
    // no usable one here (no systemd running, or no unit installed), so the attempt fails; it is
    // recorded either way.
    let out = home.cli("api", &["check", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}{}",
        stdout(&out),
        stderr(&out)
    );
    let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(v["answers"], false);
    assert_eq!(v["started"], false);
    let record_path = home.path().join("api/state/backup-trigger.json");
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(r["starts"], 1);
    assert_eq!(r["start_failures"], 1);
    assert!(r["last_error"].as_str().unwrap().contains("systemd"), "{r}");
    // `doctor` shows it.
    let (_, v) = doctor(&home, "api");
    let bt = check_of(&v, "backup trigger");
    assert_eq!(bt["status"], "WARN");
    assert!(bt["detail"].as_str().unwrap().contains("1 time"), "{bt}");

    // The instance answers (to its token): nothing to do, counted as a good check.
    let _d = home.start("api");
    let out = home.cli("api", &["check"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("answers"), "{}", stdout(&out));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&record_path).unwrap()).unwrap();
    assert_eq!(r["checks_ok"], 1);
    assert_eq!(r["starts"], 1);
}

#[test]
fn running_as_an_os_service_without_a_service_manager_is_not_supported() {
    if Path::new("/run/systemd/system").is_dir() {
        eprintln!("SKIPPED: systemd runs here; this checks the message on systems without it");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let out = run(majordomo()
        .env("HOME", tmp.path())
        .env("XDG_CONFIG_HOME", tmp.path().join(".config"))
        .args(["service", "install", "--user", "--instance", "x"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not supported on this system: systemd is not running (PID 1 is"),
        "{}",
        stderr(&out)
    );
    assert!(
        tree(tmp.path()).is_empty(),
        "nothing written: {:?}",
        tree(tmp.path())
    );
    let out = run(majordomo().args(["service", "start", "--system", "--instance", "x"]));
    assert_eq!(out.status.code(), Some(69), "{}", stderr(&out));
}

#[test]
fn running_as_an_os_service_launchd_plists_are_valid_property_lists() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    install(
        &root,
        "--system",
        "web",
        &["--manager", "launchd", "--with-backup-timer", "15m"],
    );
    let dir = root.join("Library/LaunchDaemons");
    let service = dir.join("org.majordomo.web.plist");
    let check = dir.join("org.majordomo.web.check.plist");
    assert!(service.exists() && check.exists(), "{:?}", tree(&root));
    // Parsed by a real property-list reader (Python's plistlib), when there is one.
    let python = ["/usr/bin/python3", "/bin/python3"]
        .into_iter()
        .find(|p| Path::new(p).exists());
    match python {
        None => eprintln!("SKIPPED plist parsing: python3 is not installed"),
        Some(py) => {
            let script = r#"
import json, plistlib, sys
print(json.dumps([plistlib.load(open(p, "rb")) for p in sys.argv[1:]]))
"#;
            let out = run(Command::new(py)
                .arg("-c")
                .arg(script)
                .arg(&service)
                .arg(&check));
            assert!(
                out.status.success(),
                "plistlib refused the plists: {}",
                stderr(&out)
            );
            let v: Value = serde_json::from_str(&stdout(&out)).unwrap();
            let (svc, chk) = (&v[0], &v[1]);
            assert_eq!(svc["Label"], "org.majordomo.web");
            assert_eq!(svc["KeepAlive"]["SuccessfulExit"], false);
            assert_eq!(svc["RunAtLoad"], true);
            let args: Vec<&str> = svc["ProgramArguments"]
                .as_array()
                .unwrap()
                .iter()
                .map(|a| a.as_str().unwrap())
                .collect();
            assert_eq!(&args[1..], ["--system", "--instance", "web", "run"]);
            assert!(args[0].ends_with("majordomo"), "{args:?}");
            assert_eq!(chk["Label"], "org.majordomo.web.check");
            assert_eq!(chk["StartInterval"], 900);
            assert_eq!(
                chk["ProgramArguments"].as_array().unwrap().last().unwrap(),
                "check"
            );
        }
    }
    uninstall(&root, "--system", "web");
    // Install created the root itself, so uninstall removes it too.
    assert!(!root.exists(), "left behind: {:?}", tree(&root));
}

#[test]
fn running_as_an_os_service_manual_start_type_private_tmp_warning_and_staged_status() {
    // In /tmp itself, whatever TMPDIR says: the warning is about /tmp.
    let tmp = tempfile::Builder::new()
        .prefix("md-svc-")
        .tempdir_in("/tmp")
        .unwrap();
    let cfg = tmp.path().join("m.toml");
    std::fs::write(&cfg, "").unwrap();
    let root = tmp.path().join("root");
    let out = install(
        &root,
        "--system",
        "man",
        &["--start-type", "manual", "--config", cfg.to_str().unwrap()],
    );
    let units = root.join("etc/systemd/system");
    assert!(units.join("majordomo@.service").exists());
    // Manual: installed, not enabled.
    assert!(
        !units.join("multi-user.target.wants").exists(),
        "{:?}",
        tree(&root)
    );
    let err = stderr(&out);
    assert!(
        err.contains("warning")
            && err.contains(cfg.to_str().unwrap())
            && err.contains("PrivateTmp"),
        "{err}"
    );
    // Staged status reads the staged files and asks no manager.
    let status = |instance: &str| {
        let out = run(majordomo()
            .args([
                "--json",
                "service",
                "status",
                "--system",
                "--instance",
                instance,
            ])
            .args(["--config", cfg.to_str().unwrap(), "--root"])
            .arg(&root));
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        serde_json::from_str::<Value>(stdout(&out).trim()).unwrap()
    };
    let v = status("man");
    assert_eq!(v["manifest"]["instance"], "man", "{v}");
    assert_eq!(v["manager"]["installed"], true, "{v}");
    assert_eq!(v["manager"]["enabled"], false, "{v}");
    assert_eq!(v["answers"], false, "{v}");
    // An automatic one is enabled; one never installed is reported as such.
    install(
        &root,
        "--system",
        "auto",
        &["--config", cfg.to_str().unwrap()],
    );
    assert_eq!(status("auto")["manager"]["enabled"], true);
    let v = status("none");
    assert!(
        v["manifest"].is_null() && v["manager"]["installed"] == false,
        "{v}"
    );
    // The text form says where it looked.
    let out = run(majordomo()
        .args([
            "service",
            "status",
            "--system",
            "--instance",
            "man",
            "--root",
        ])
        .arg(&root));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("staged under"), "{}", stdout(&out));
}

/// Kills the daemon it holds when the test ends, however it ends.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn instances_are_found_in_either_mode_without_system_or_user() {
    let tmp = tempfile::tempdir().unwrap();
    let instance = format!("find{}", std::process::id());
    let runtime = tmp.path().join("run");
    std::fs::create_dir_all(&runtime).unwrap();
    // A per-user instance in private XDG folders.
    let cli = |args: &[&str]| {
        let mut c = majordomo();
        c.env("HOME", tmp.path())
            .env("XDG_CONFIG_HOME", tmp.path().join("config"))
            .env("XDG_STATE_HOME", tmp.path().join("state"))
            .env("XDG_DATA_HOME", tmp.path().join("data"))
            .env("XDG_RUNTIME_DIR", &runtime)
            .args(["--instance", &instance])
            .args(args);
        c
    };
    let _d = Killed(
        cli(&["--user", "run"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    crate::common::eventually(Duration::from_secs(30), || {
        run(&mut cli(&["--user", "status"]))
            .status
            .success()
            .then_some(())
    })
    .expect("the per-user instance answers with --user");
    // Without --user (as root the default mode is --system): still found, in whichever mode.
    let out = run(&mut cli(&["--json", "status"]));
    assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
    let s: Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(s["instance"], instance.as_str(), "{s}");
    // An explicit mode is not second-guessed: --system looks only there.
    let out = run(&mut cli(&["--system", "status"]));
    assert!(!out.status.success());
    assert!(!stderr(&out).contains("looked for"), "{}", stderr(&out));
    // Once it is gone, the message names every place looked at.
    let out = run(&mut cli(&["shutdown"]));
    assert!(out.status.success(), "{}", stderr(&out));
    let user_sock = runtime.join("majordomo").join(format!("{instance}.sock"));
    crate::common::eventually(Duration::from_secs(30), || {
        (!user_sock.exists()).then_some(())
    })
    .expect("the daemon removes its socket");
    let out = run(&mut cli(&["status"]));
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains(&format!(
            "no instance '{instance}' is running: looked for the "
        )) && err.contains(&format!("the user socket {}", user_sock.display()))
            && err.contains(&format!("the system socket /run/majordomo/{instance}.sock")),
        "{err}"
    );
}

#[test]
fn running_as_an_os_service_portable_home_install_round_trip() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("root");
    let home = tmp.path().join("portable");
    let h = home.to_str().unwrap();
    install(&root, "--system", "web", &["--home", h]);
    let units = root.join("etc/systemd/system");
    // The instance's drop-in runs the portable instance: the template's ExecStart is replaced.
    let dropin =
        std::fs::read_to_string(units.join("majordomo@web.service.d/majordomo.conf")).unwrap();
    assert!(
        dropin.contains("ExecStart=\n")
            && dropin.contains(&format!("--system --instance web --home {h} run")),
        "{dropin}"
    );
    // The manifest lives with the portable instance and records its home.
    let manifest = super_path(&root, &home.join("web/state/service-manifest.json"));
    let m: Value = serde_json::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    assert_eq!(m["home"], h, "{m}");
    assert!(super_path(&root, &home.join("web/config.toml")).exists());
    // status with the same --home finds it; without it, the system instance has none.
    let status = |extra: &[&str]| {
        let out = run(majordomo()
            .args([
                "--json",
                "service",
                "status",
                "--system",
                "--instance",
                "web",
            ])
            .args(extra)
            .arg("--root")
            .arg(&root));
        assert!(out.status.success(), "{}{}", stdout(&out), stderr(&out));
        serde_json::from_str::<Value>(stdout(&out).trim()).unwrap()
    };
    let v = status(&["--home", h]);
    assert_eq!(v["manager"]["installed"], true, "{v}");
    assert_eq!(v["manifest"]["home"], h, "{v}");
    assert!(status(&[])["manifest"].is_null());
    // Another instance of the same name cannot take over the unit.
    let out = run(majordomo()
        .args([
            "service",
            "install",
            "--system",
            "--instance",
            "web",
            "--root",
        ])
        .arg(&root));
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("already installed for another instance named 'web'"),
        "{}",
        stderr(&out)
    );
    // launchd and its plist carry --home too.
    let lroot = tmp.path().join("lroot");
    install(
        &lroot,
        "--system",
        "web",
        &["--home", h, "--manager", "launchd"],
    );
    let plist =
        std::fs::read_to_string(lroot.join("Library/LaunchDaemons/org.majordomo.web.plist"))
            .unwrap();
    assert!(
        plist.contains(&format!(
            "<string>--home</string>\n    <string>{h}</string>"
        )),
        "{plist}"
    );
    // Uninstall with the same --home removes what install wrote.
    let out = run(majordomo()
        .args([
            "service",
            "uninstall",
            "--system",
            "--instance",
            "web",
            "--home",
            h,
            "--root",
        ])
        .arg(&root));
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(!manifest.exists());
    assert!(
        !units
            .join("majordomo@web.service.d/majordomo.conf")
            .exists()
    );
}
