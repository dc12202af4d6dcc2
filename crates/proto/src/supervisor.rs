//! Wire types of the program supervisor.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The states of a program. `as_str` is what `ps`, events and `docs/supervisor.md` use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ProgramState {
    /// Not running and not wanted (initial state when `autostart = false`, or after `stop`).
    Stopped,
    /// Wanted, waiting for its `depends_on` programs to be ready.
    Waiting,
    /// Running `pre_start`, then creating the process.
    Starting,
    /// The process runs; the readiness gate has not passed yet.
    Running,
    /// The process runs and passed its readiness gate.
    Ready,
    /// Being stopped: stop signal sent to its group, SIGKILL after `stop_timeout`.
    Stopping,
    /// The process ended and will not be restarted (policy), or just ended (transient).
    Exited,
    /// Waiting out the restart delay.
    Backoff,
    /// Gave up: start limit hit, or it cannot be started at all (missing executable, cwd, user).
    Failed,
}

impl ProgramState {
    pub fn as_str(self) -> &'static str {
        match self {
            ProgramState::Stopped => "stopped",
            ProgramState::Waiting => "waiting",
            ProgramState::Starting => "starting",
            ProgramState::Running => "running",
            ProgramState::Ready => "ready",
            ProgramState::Stopping => "stopping",
            ProgramState::Exited => "exited",
            ProgramState::Backoff => "backoff",
            ProgramState::Failed => "failed",
        }
    }

    /// Whether a process of the program exists in this state.
    pub fn has_process(self) -> bool {
        matches!(
            self,
            ProgramState::Running | ProgramState::Ready | ProgramState::Stopping
        )
    }
}

impl std::fmt::Display for ProgramState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which programs a command is about: `names`, and `name` for one (the two are joined).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NamesArgs {
    /// Program names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
    /// One program (the same as `names: [name]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl NamesArgs {
    pub fn new(names: Vec<String>) -> Self {
        Self { names, name: None }
    }

    /// Every name given, `names` first, then `name`.
    pub fn all(&self) -> Vec<String> {
        let mut all = self.names.clone();
        all.extend(self.name.iter().cloned());
        all
    }
}

/// The arguments of `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignalArgs {
    /// The program.
    pub name: String,
    /// A signal name: `HUP`, `USR1`, `TERM`, ... (with or without `SIG`, any case).
    pub signal: String,
}

/// One program as `ps` shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ProgramRow {
    pub name: String,
    pub state: ProgramState,
    /// The main process, while there is one.
    pub pid: Option<u32>,
    /// Restarts since the daemon started (or since the last manual start).
    pub restarts: u64,
    pub last_exit_code: Option<i32>,
    pub last_signal: Option<i32>,
    /// Why it is in this state (exit, backoff delay, readiness, failure reason).
    pub detail: Option<String>,
    /// The program's output file.
    pub log_file: String,
    /// The delay cap of the current/last backoff, in ms (grows with each failure in a row).
    pub backoff_cap_ms: Option<u64>,
    /// Seconds since the process started.
    pub uptime_s: Option<f64>,
    /// CPU time (user + system) of the main process, in seconds.
    pub cpu_s: Option<f64>,
    /// Resident memory of the main process.
    pub rss_bytes: Option<u64>,
    /// The configured executable.
    pub command: String,
}

/// The reply of `ps`, `start`, `stop` and `restart`: the programs' rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Programs {
    pub programs: Vec<ProgramRow>,
}

/// The reply of `signal`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Signaled {
    pub name: String,
    /// The signal sent, normalized (`USR1`).
    pub signal: String,
    /// The process that got it.
    pub pid: Option<u32>,
}

/// The arguments of `logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct LogsArgs {
    /// The program.
    pub name: String,
    /// How many of the last lines (100 when absent; at most 1000).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lines: Option<usize>,
}

impl LogsArgs {
    /// The most lines one `logs` answers.
    pub const MAX_LINES: usize = 1000;

    /// The number of lines asked for, within bounds.
    pub fn count(&self) -> usize {
        self.lines.unwrap_or(100).min(Self::MAX_LINES)
    }
}

/// The reply of `logs`: the end of a program's output file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LogTail {
    pub name: String,
    /// The output file read (and its previous rotated file `.1` when it holds too few lines).
    pub file: String,
    /// The last lines, as UTF-8 (invalid bytes replaced).
    pub text: String,
}

crate::commands! { COMMANDS:
    /// The supervised programs (all of them, or those named): state, pid, uptime, restarts, last exit, CPU, memory.
    PsCmd "ps" (Read) NamesArgs => Programs;
    /// Starts programs (after their dependencies are ready); clears a `failed` state. Answers once their states settled.
    StartCmd "start" (Action) NamesArgs => Programs;
    /// Stops programs (stop signal to their process group, SIGKILL after `stop_timeout`). Answers once they stopped.
    StopCmd "stop" (Action) NamesArgs => Programs;
    /// Stops and starts programs again. Answers once their states settled.
    RestartCmd "restart" (Action) NamesArgs => Programs;
    /// Sends a signal to a program's main process.
    SignalCmd "signal" (Action) SignalArgs => Signaled;
    /// The last lines of a program's output (stdout and stderr, as its log file holds them).
    LogsCmd "logs" (Read) LogsArgs => LogTail;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_is_an_alias_of_one_name() {
        let a: NamesArgs = serde_json::from_str(r#"{"name":"api"}"#).unwrap();
        assert_eq!(a.all(), vec!["api".to_string()]);
        let a: NamesArgs = serde_json::from_str(r#"{"names":["a","b"],"name":"c"}"#).unwrap();
        assert_eq!(a.all(), vec!["a", "b", "c"]);
        assert!(serde_json::from_str::<NamesArgs>(r#"{"nme":"api"}"#).is_err());
    }

    #[test]
    fn states_serialize_as_their_names() {
        for s in [
            ProgramState::Ready,
            ProgramState::Backoff,
            ProgramState::Failed,
        ] {
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
        }
    }
}
