//! `[[program]]`: the programs the supervisor runs, and their semantic checks.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use majordomo_core::{Dur, Problem, Size};

/// One supervised program (`[[program]]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProgramConfig {
    /// Unique name: used by `majordomo ps|start|stop|logs`, in `depends_on`, events and log files.
    pub name: String,
    /// The executable: a path, or a name looked up in PATH. No shell is involved.
    pub command: String,
    /// Arguments passed to the command as they are (no shell splitting or expansion).
    pub args: Vec<String>,
    /// Environment variables added to the daemon's environment for this program.
    pub env: BTreeMap<String, String>,
    /// Working folder; it must exist. Default: the daemon's working folder.
    pub cwd: Option<PathBuf>,
    /// When to restart after the program exits: `always`, `on-failure` or `never`.
    pub restart: RestartPolicy,
    /// Exit codes that count as success (not restarted with `on-failure`).
    pub success_codes: Vec<i32>,
    /// First delay before a restart; it doubles after each failed run, with full jitter.
    pub backoff_initial: Dur,
    /// Longest delay between restarts.
    pub backoff_max: Dur,
    /// A run at least this long resets the backoff to `backoff_initial`.
    pub healthy_after: Dur,
    /// At most `burst` starts within `interval`; then the program is `failed` (or keeps retrying
    /// every `backoff_max` with `retry_forever`). `burst = 0` disables the limit.
    pub start_limit: StartLimitConfig,
    /// Signal that asks the program to stop (sent to its whole process group): TERM, INT, HUP, QUIT, USR1, ...
    pub stop_signal: String,
    /// How long the process group has to exit after `stop_signal` before it is killed (SIGKILL).
    pub stop_timeout: Dur,
    /// Programs that must be `ready` before this one starts; it stops before them.
    pub depends_on: Vec<String>,
    /// When the program counts as ready: `started`, `tcp:PORT`, `tcp:HOST:PORT`, `http://URL` or `https://URL`,
    /// `bus` (it registered a bus endpoint named after the program) or `command:PROGRAM ARGS...`.
    pub ready: Probe,
    /// How long `pre_start` plus the readiness gate may take before the start counts as failed.
    pub start_timeout: Dur,
    /// A command (program and arguments, no shell) that must exit 0 before each start.
    pub pre_start: Vec<String>,
    /// Restart the program when its main process's resident memory exceeds this size.
    pub max_memory: Option<Size>,
    /// Run as this user (Unix, the daemon must be root).
    pub user: Option<String>,
    /// Run with this primary group (Unix, the daemon must be root). Default: the user's group.
    pub group: Option<String>,
    /// File-creation mask in octal, e.g. "022" (Unix).
    pub umask: Option<String>,
    /// A periodic health check; the program is restarted after `failures` failures in a row.
    pub health: Option<HealthConfig>,
    /// Start the program with the daemon (otherwise only on `majordomo start NAME`).
    pub autostart: bool,
    /// Rotate the program's output file (`<log folder>/programs/NAME.log`) at this size...
    pub log_max_size: Size,
    /// ...and keep this many rotated files besides the current one.
    pub log_max_files: usize,
    /// Also copy each output line into the daemon's own log (at info level).
    pub log_to_daemon: bool,
}

impl Default for ProgramConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            command: String::new(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            restart: RestartPolicy::OnFailure,
            success_codes: vec![0],
            backoff_initial: Dur::secs(1),
            backoff_max: Dur::secs(60),
            healthy_after: Dur::secs(10),
            start_limit: StartLimitConfig::default(),
            stop_signal: "TERM".into(),
            stop_timeout: Dur::secs(10),
            depends_on: Vec::new(),
            ready: Probe::Started,
            start_timeout: Dur::secs(60),
            pre_start: Vec::new(),
            max_memory: None,
            user: None,
            group: None,
            umask: None,
            health: None,
            autostart: true,
            log_max_size: Size::mb(10),
            log_max_files: 5,
            log_to_daemon: false,
        }
    }
}

/// When a program is restarted after it exits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartPolicy {
    Always,
    OnFailure,
    Never,
}

/// `start_limit = { burst = 10, interval = "60s", retry_forever = false }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StartLimitConfig {
    /// Most starts within `interval`; 0 = no limit.
    pub burst: u32,
    /// The sliding window the starts are counted in.
    pub interval: Dur,
    /// When the limit is hit, keep retrying every `backoff_max` instead of giving up.
    pub retry_forever: bool,
}

impl Default for StartLimitConfig {
    fn default() -> Self {
        Self {
            burst: 10,
            interval: Dur::secs(60),
            retry_forever: false,
        }
    }
}

/// `health = { check = "tcp:8080", interval = "10s", timeout = "5s", failures = 3 }`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HealthConfig {
    /// `tcp:PORT`, `tcp:HOST:PORT`, `http://URL`, `https://URL`, `bus` (the program's bus endpoint is up) or `command:PROGRAM ARGS...`.
    pub check: Probe,
    /// Time between checks (the first one runs once the program is ready).
    pub interval: Dur,
    /// A check that takes longer fails.
    pub timeout: Dur,
    /// Failures in a row that make the supervisor restart the program.
    pub failures: u32,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            check: Probe::Tcp {
                host: "127.0.0.1".into(),
                port: 80,
            },
            interval: Dur::secs(10),
            timeout: Dur::secs(5),
            failures: 3,
        }
    }
}

/// A readiness gate or health check, written as one string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Ready as soon as the process runs.
    Started,
    /// A TCP connection to HOST:PORT succeeds.
    Tcp { host: String, port: u16 },
    /// An HTTP(S) GET answers 2xx or 3xx (redirects are not followed).
    Http { url: String },
    /// The program registered a bus endpoint whose id is the program's name.
    Bus,
    /// A command (no shell) exits 0.
    Command { argv: Vec<String> },
}

impl Probe {
    /// Parses `started`, `tcp:PORT`, `tcp:HOST:PORT`, `http://...` or `https://...` (also
    /// prefixed `http:`, as in `http:http://...`),
    /// `bus`, `command:PROGRAM ARGS...`.
    pub fn parse(s: &str) -> Result<Probe, String> {
        let s = s.trim();
        let hint = "write started, tcp:PORT, tcp:HOST:PORT, http://HOST:PORT/PATH (or https://), bus or command:PROGRAM ARGS";
        if s == "started" {
            return Ok(Probe::Started);
        }
        if s == "bus" {
            return Ok(Probe::Bus);
        }
        if let Some(rest) = s.strip_prefix("tcp:") {
            let (host, port) = match rest.rsplit_once(':') {
                Some((h, p)) => (h.trim_matches(['[', ']']).to_string(), p),
                None => ("127.0.0.1".to_string(), rest),
            };
            let port: u16 = port
                .parse()
                .map_err(|_| format!("{s:?}: {port:?} is not a TCP port (1-65535); {hint}"))?;
            if port == 0 || host.is_empty() {
                return Err(format!("{s:?}: needs a host and a port 1-65535; {hint}"));
            }
            return Ok(Probe::Tcp { host, port });
        }
        let url = s.strip_prefix("http:").filter(|r| r.starts_with("http"));
        let url = url.unwrap_or(s);
        if let Some(rest) = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
        {
            let authority = rest.split('/').next().unwrap_or("");
            if authority.is_empty() {
                return Err(format!("{s:?}: the URL has no host; {hint}"));
            }
            if let Err(e) = reqwest::Url::parse(url) {
                return Err(format!("{s:?}: not a valid URL ({e}); {hint}"));
            }
            return Ok(Probe::Http {
                url: url.to_string(),
            });
        }
        if let Some(rest) = s.strip_prefix("command:") {
            let argv: Vec<String> = rest.split_whitespace().map(String::from).collect();
            if argv.is_empty() {
                return Err(format!("{s:?}: the command is empty; {hint}"));
            }
            return Ok(Probe::Command { argv });
        }
        Err(format!("unknown check {s:?}; {hint}"))
    }
}

impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Probe::Started => f.write_str("started"),
            Probe::Tcp { host, port } if host == "127.0.0.1" => write!(f, "tcp:{port}"),
            Probe::Tcp { host, port } if host.contains(':') => write!(f, "tcp:[{host}]:{port}"),
            Probe::Tcp { host, port } => write!(f, "tcp:{host}:{port}"),
            Probe::Http { url } => f.write_str(&majordomo_core::units::redact_url(url)),
            Probe::Bus => f.write_str("bus"),
            Probe::Command { argv } => write!(f, "command:{}", argv.join(" ")),
        }
    }
}

impl Serialize for Probe {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Probe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Probe::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Signal names a program may be sent (without the `SIG` prefix).
pub const SIGNALS: &[&str] = &[
    "HUP", "INT", "QUIT", "ILL", "TRAP", "ABRT", "BUS", "FPE", "KILL", "USR1", "SEGV", "USR2",
    "PIPE", "ALRM", "TERM", "CHLD", "CONT", "STOP", "TSTP", "TTIN", "TTOU", "URG", "XCPU", "XFSZ",
    "VTALRM", "PROF", "WINCH", "IO", "SYS",
];

/// Normalizes `term`, `SIGTERM`, `TERM` to `TERM`; `None` for an unknown name.
pub fn signal_name(s: &str) -> Option<&'static str> {
    let up = s.trim().to_ascii_uppercase();
    let bare = up.strip_prefix("SIG").unwrap_or(&up);
    SIGNALS.iter().copied().find(|n| *n == bare)
}

/// Parses an octal umask like `022` or `0o027`.
pub fn parse_umask(s: &str) -> Option<u32> {
    u32::from_str_radix(s.trim().trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
}

/// Checks the `[[program]]` entries: names, references, cycles, signals, values.
pub fn validate(programs: &[ProgramConfig], problems: &mut Vec<Problem>) {
    let mut seen = BTreeMap::new();
    for (i, p) in programs.iter().enumerate() {
        let at = |field: &str| format!("program[{i}].{field}");
        if p.name.is_empty() {
            problems.push(Problem::at(
                format!("program[{i}]"),
                "a program without a name",
                "add name = \"...\" (letters, digits, '-', '_', '.')",
            ));
        } else if !p
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || p.name.len() > 64
            || p.name.starts_with('.')
        {
            problems.push(Problem::at(
                at("name"),
                format!("{:?} is not a valid program name", p.name),
                "use 1-64 of letters, digits, '-', '_', '.' (it names log files)",
            ));
        } else if let Some(first) = seen.insert(p.name.clone(), i) {
            problems.push(Problem::at(
                at("name"),
                format!(
                    "a second program named {:?} (the first is program[{first}])",
                    p.name
                ),
                "give every program a unique name",
            ));
        }
        if p.command.trim().is_empty() {
            problems.push(Problem::at(
                if p.name.is_empty() {
                    format!("program[{i}]")
                } else {
                    at("name")
                },
                format!("program {:?} has no command", p.name),
                "add command = \"/path/to/executable\" (args go in args = [...])",
            ));
        }
        if signal_name(&p.stop_signal).is_none() {
            problems.push(Problem::at(
                at("stop_signal"),
                format!("{:?} is not a signal name", p.stop_signal),
                format!("use one of {}", SIGNALS.join(", ")),
            ));
        }
        if p.backoff_initial > p.backoff_max {
            problems.push(Problem::at(
                at("backoff_initial"),
                format!(
                    "backoff_initial ({}) is longer than backoff_max ({})",
                    p.backoff_initial, p.backoff_max
                ),
                "make backoff_max at least backoff_initial",
            ));
        }
        if p.start_limit.burst > 0 && p.start_limit.interval.get().is_zero() {
            problems.push(Problem::at(
                at("start_limit"),
                "a start limit with an interval of 0 never counts anything",
                "set interval (e.g. \"60s\") or burst = 0 to disable the limit",
            ));
        }
        if p.start_timeout.get().is_zero() {
            problems.push(Problem::at(
                at("start_timeout"),
                "a start timeout of 0 fails every start",
                "use e.g. \"60s\"",
            ));
        }
        if let Some(u) = &p.umask
            && parse_umask(u).is_none()
        {
            problems.push(Problem::at(
                at("umask"),
                format!("{u:?} is not an octal umask"),
                "write it like \"022\" or \"077\"",
            ));
        }
        if p.group.is_some() && p.user.is_none() {
            problems.push(Problem::at(
                at("group"),
                "group without user",
                "set user as well (the group replaces the user's primary group)",
            ));
        }
        if let Some(h) = &p.health {
            if h.check == Probe::Started {
                problems.push(Problem::at(
                    at("health"),
                    "\"started\" is not a health check",
                    "use tcp:PORT, http://..., bus or command:...",
                ));
            }
            if h.interval.get().is_zero() || h.timeout.get().is_zero() {
                problems.push(Problem::at(
                    at("health"),
                    "health interval and timeout must be above 0",
                    "e.g. interval = \"10s\", timeout = \"5s\"",
                ));
            }
            if h.failures == 0 {
                problems.push(Problem::at(
                    at("health"),
                    "failures = 0 would restart the program without any failed check",
                    "use failures = 1 or more",
                ));
            }
        }
        if p.pre_start.first().is_some_and(|c| c.trim().is_empty()) {
            problems.push(Problem::at(
                at("pre_start"),
                "pre_start starts with an empty program name",
                "write pre_start = [\"/path/to/check\", \"arg\", ...]",
            ));
        }
        if p.log_max_size.bytes() < 4096 {
            problems.push(Problem::at(
                at("log_max_size"),
                format!("{} is too small for a log file", p.log_max_size),
                "use at least 4KB, e.g. \"10MB\"",
            ));
        }
        let mut deps = BTreeSet::new();
        for (j, d) in p.depends_on.iter().enumerate() {
            if d == &p.name {
                problems.push(Problem::at(
                    format!("program[{i}].depends_on[{j}]"),
                    format!("program {:?} depends on itself", p.name),
                    "remove it from its own depends_on",
                ));
            } else if !programs.iter().any(|q| &q.name == d) {
                problems.push(Problem::at(
                    format!("program[{i}].depends_on[{j}]"),
                    format!("unknown program {d:?}"),
                    format!(
                        "known programs: {}",
                        programs
                            .iter()
                            .map(|q| q.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            } else if !deps.insert(d) {
                problems.push(Problem::at(
                    format!("program[{i}].depends_on[{j}]"),
                    format!("{d:?} is listed twice"),
                    "list each dependency once",
                ));
            }
        }
    }
    if let Some(cycle) = find_cycle(programs) {
        let first = programs
            .iter()
            .position(|p| p.name == cycle[0])
            .unwrap_or(0);
        problems.push(Problem::at(
            format!("program[{first}].depends_on"),
            format!("dependency cycle: {}", cycle.join(" → ")),
            "remove one of these depends_on entries",
        ));
    }
}

/// A dependency cycle as a list of names (first repeated at the end), if there is one.
pub fn find_cycle(programs: &[ProgramConfig]) -> Option<Vec<String>> {
    let deps: BTreeMap<&str, Vec<&str>> = programs
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.depends_on
                    .iter()
                    .map(String::as_str)
                    .filter(|d| *d != p.name)
                    .collect(),
            )
        })
        .collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
    fn visit<'a>(
        n: &'a str,
        deps: &BTreeMap<&'a str, Vec<&'a str>>,
        mark: &mut BTreeMap<&'a str, u8>,
        stack: &mut Vec<&'a str>,
    ) -> Option<Vec<String>> {
        match mark.get(n) {
            Some(2) => return None,
            Some(1) => {
                let from = stack.iter().position(|s| *s == n).unwrap_or(0);
                let mut cycle: Vec<String> = stack[from..].iter().map(|s| s.to_string()).collect();
                cycle.push(n.to_string());
                return Some(cycle);
            }
            _ => {}
        }
        mark.insert(n, 1);
        stack.push(n);
        for d in deps.get(n).into_iter().flatten() {
            if deps.contains_key(d)
                && let Some(c) = visit(d, deps, mark, stack)
            {
                return Some(c);
            }
        }
        stack.pop();
        mark.insert(n, 2);
        None
    }
    for n in deps.keys() {
        let mut stack = Vec::new();
        if let Some(c) = visit(n, &deps, &mut mark, &mut stack) {
            return Some(c);
        }
    }
    None
}

/// Depth of each program in the dependency graph (0 = depends on nothing): start in ascending,
/// stop in descending order. Assumes no cycle (validated); a cycle counts as depth 0.
pub fn depths(programs: &[ProgramConfig]) -> BTreeMap<String, usize> {
    let by_name: BTreeMap<&str, &ProgramConfig> =
        programs.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut out = BTreeMap::new();
    fn depth<'a>(
        n: &'a str,
        by_name: &BTreeMap<&'a str, &'a ProgramConfig>,
        out: &mut BTreeMap<String, usize>,
        guard: usize,
    ) -> usize {
        if let Some(d) = out.get(n) {
            return *d;
        }
        if guard > by_name.len() {
            return 0;
        }
        let d = by_name
            .get(n)
            .map(|p| {
                p.depends_on
                    .iter()
                    .filter(|d| by_name.contains_key(d.as_str()))
                    .map(|d| depth(d, by_name, out, guard + 1) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        out.insert(n.to_string(), d);
        d
    }
    for p in programs {
        depth(&p.name, &by_name, &mut out, 0);
    }
    out
}

/// What `config check` warns about in `[[program]]`s because it depends on this machine and may
/// change before a start: a missing or non-executable command, a bare command not in PATH, a
/// missing `cwd`, an unknown `user` or `group`. Each names the program's place in the config.
pub fn environment_warnings(programs: &[ProgramConfig]) -> Vec<String> {
    let mut out = Vec::new();
    for (i, p) in programs.iter().enumerate() {
        let at = format!("program[{i}] ({:?})", p.name);
        if let Some(cwd) = &p.cwd
            && !cwd.is_dir()
        {
            out.push(format!(
                "{at}.cwd: the folder {} does not exist; the program cannot start until it does",
                cwd.display()
            ));
        }
        let path_var = p.env.get("PATH").map(String::as_str);
        let cwd = p.cwd.as_deref().filter(|c| c.is_dir());
        if let Err(e) = majordomo_core::procs::find_executable(&p.command, cwd, path_var) {
            out.push(format!("{at}.command: {e}"));
        }
        if let Some(user) = &p.user
            && let Err(e) = majordomo_platform::process::lookup_creds(user, p.group.as_deref())
        {
            out.push(format!("{at}.user: {e}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn prog(name: &str, deps: &[&str]) -> ProgramConfig {
        ProgramConfig {
            name: name.into(),
            command: "/bin/true".into(),
            depends_on: deps.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn probes_parse_and_print_back() {
        for s in [
            "started",
            "bus",
            "tcp:8080",
            "tcp:10.0.0.1:80",
            "tcp:[::1]:80",
            "http://127.0.0.1:8080/health",
            "https://example.com/health",
            "command:/bin/check --fast",
        ] {
            let p = Probe::parse(s).unwrap();
            assert_eq!(p.to_string(), s);
            assert_eq!(Probe::parse(&p.to_string()).unwrap(), p);
        }
        assert_eq!(
            Probe::parse("http:http://x:1/").unwrap(),
            Probe::Http {
                url: "http://x:1/".into()
            }
        );
        for bad in [
            "tcp:0",
            "tcp:http",
            "tcp:99999",
            "https://",
            "command:",
            "soon",
            "http://",
        ] {
            assert!(Probe::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn signal_names_normalize() {
        assert_eq!(signal_name("term"), Some("TERM"));
        assert_eq!(signal_name("SIGHUP"), Some("HUP"));
        assert_eq!(signal_name("TERMINATE"), None);
        assert_eq!(parse_umask("022"), Some(0o22));
        assert_eq!(parse_umask("999"), None);
    }

    #[test]
    fn cycles_unknown_and_duplicate_names_are_reported() {
        let progs = vec![prog("a", &["b"]), prog("b", &["c"]), prog("c", &["a"])];
        let c = find_cycle(&progs).unwrap();
        assert_eq!(c.first(), c.last());
        assert_eq!(c.len(), 4);
        let mut problems = Vec::new();
        validate(&progs, &mut problems);
        assert!(problems.iter().any(|p| p.message.contains("cycle")));

        let progs = vec![prog("a", &["nope"]), prog("a", &[]), prog("", &[])];
        let mut problems = Vec::new();
        validate(&progs, &mut problems);
        let msgs: Vec<_> = problems.iter().map(|p| (&p.path, &p.message)).collect();
        assert!(
            problems
                .iter()
                .any(|p| p.path == "program[0].depends_on[0]"),
            "{msgs:?}"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == "program[1].name" && p.message.contains("second")),
            "{msgs:?}"
        );
        assert!(problems.iter().any(|p| p.path == "program[2]"), "{msgs:?}");
    }

    #[test]
    fn depths_order_dependencies_first() {
        let progs = vec![prog("web", &["api"]), prog("api", &["db"]), prog("db", &[])];
        let d = depths(&progs);
        assert_eq!((d["db"], d["api"], d["web"]), (0, 1, 2));
        assert!(find_cycle(&progs).is_none());
    }

    proptest! {
        #[test]
        fn probe_parser_is_total_and_round_trips(s in "\\PC{0,40}") {
            if let Ok(p) = Probe::parse(&s) {
                prop_assert_eq!(Probe::parse(&p.to_string()).unwrap(), p);
            }
        }

        #[test]
        fn probe_parser_accepts_every_port(port in 1u16..) {
            let p = Probe::parse(&format!("tcp:{port}")).unwrap();
            prop_assert_eq!(p, Probe::Tcp { host: "127.0.0.1".into(), port });
        }

        #[test]
        fn signal_parser_is_total(s in "\\PC{0,12}") {
            if let Some(n) = signal_name(&s) {
                prop_assert!(SIGNALS.contains(&n));
            }
        }

        #[test]
        fn umask_parser_is_total_and_bounded(s in "\\PC{0,8}", m in 0u32..0o1000) {
            if let Some(v) = parse_umask(&s) {
                prop_assert!(v <= 0o777);
            }
            prop_assert_eq!(parse_umask(&format!("{m:03o}")), Some(m));
        }
    }
}
