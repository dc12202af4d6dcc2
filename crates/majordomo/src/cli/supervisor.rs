//! The supervisor's CLI verbs: `ps`, `start`, `stop`, `restart`, `signal`, `logs`, each a typed
//! call of `majordomo_proto::supervisor` (`logs` reads the file `ps` names).

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::time::Duration;

use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_proto::supervisor::{
    self as sv, ProgramRow, ProgramState, Programs, PsCmd, RestartCmd, SignalCmd, StartCmd, StopCmd,
};
use serde::Serialize;

/// The supervisor's verbs (flattened into the top-level commands: `majordomo ps`, ...).
#[derive(Debug, clap::Subcommand)]
pub enum ProgramsCmd {
    /// List the supervised programs: state, pid, uptime, restarts, last exit, CPU, memory.
    Ps(PsArgs),
    /// Start programs (after their dependencies are ready); clears a `failed` state.
    Start(NamesArgs),
    /// Stop programs (stop signal to their process group, SIGKILL after stop_timeout).
    Stop(NamesArgs),
    /// Stop and start programs again.
    Restart(NamesArgs),
    /// Send a signal to a program's main process, e.g. `majordomo signal api HUP`.
    Signal(SignalArgs),
    /// Print a program's output (stdout and stderr); `-f` to follow it.
    Logs(LogsArgs),
}

#[derive(Debug, clap::Args)]
pub struct PsArgs {
    /// Only these programs (default: all).
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct NamesArgs {
    /// Program names.
    #[arg(required = true)]
    pub names: Vec<String>,
}

#[derive(Debug, clap::Args)]
pub struct SignalArgs {
    /// The program.
    pub name: String,
    /// A signal name: HUP, USR1, TERM, ... (with or without SIG).
    pub signal: String,
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// The program.
    pub name: String,
    /// Keep printing what the program writes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// How many of the last lines to print first.
    #[arg(short = 'n', long, default_value_t = 50)]
    pub lines: usize,
}

/// Runs one supervisor verb against the instance at `conn` and prints the result (JSON with
/// `json`). Exit code: 0, or 1 when a program ended up `failed`; errors go back to the CLI's
/// common error printing.
pub async fn run(cmd: &ProgramsCmd, conn: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    let mut client = Client::connect(conn).await?;
    match cmd {
        ProgramsCmd::Ps(a) => {
            let reply = client
                .call_cmd::<PsCmd>(&sv::NamesArgs::new(a.names.clone()))
                .await?;
            show(&reply, json, |r| print_table(&r.programs));
            Ok(exit::OK)
        }
        ProgramsCmd::Start(a) => act::<StartCmd>(&mut client, a, json).await,
        ProgramsCmd::Stop(a) => act::<StopCmd>(&mut client, a, json).await,
        ProgramsCmd::Restart(a) => act::<RestartCmd>(&mut client, a, json).await,
        ProgramsCmd::Signal(a) => {
            let args = sv::SignalArgs {
                name: a.name.clone(),
                signal: a.signal.clone(),
            };
            let reply = client.call_cmd::<SignalCmd>(&args).await?;
            show(&reply, json, |r| {
                let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
                outln!("sent SIG{} to {} (pid {pid})", r.signal, r.name);
            });
            Ok(exit::OK)
        }
        ProgramsCmd::Logs(a) => logs(&mut client, a).await,
    }
}

/// Prints a reply as JSON or as text.
fn show<T: Serialize>(reply: &T, json: bool, text: impl FnOnce(&T)) {
    if json {
        match serde_json::to_string(reply) {
            Ok(line) => outln!("{line}"),
            Err(e) => eprintln!("majordomo: cannot print the reply as JSON: {e}"),
        }
    } else {
        text(reply);
    }
}

/// `majordomo start|stop|restart NAME...`: prints the programs' states once they settled.
/// Exits 1 when a program ended up `failed`.
async fn act<K>(client: &mut Client, a: &NamesArgs, json: bool) -> Result<u8, ClientError>
where
    K: majordomo_proto::Cmd<Args = sv::NamesArgs, Reply = Programs>,
{
    let reply = client
        .call_cmd::<K>(&sv::NamesArgs::new(a.names.clone()))
        .await?;
    show(&reply, json, |r| print_table(&r.programs));
    let failed = reply
        .programs
        .iter()
        .any(|r| r.state == ProgramState::Failed);
    Ok(if failed { exit::FAILURE } else { exit::OK })
}

/// `majordomo logs NAME [-f] [-n N]`: reads the program's output file directly.
async fn logs(client: &mut Client, a: &LogsArgs) -> Result<u8, ClientError> {
    let reply = client
        .call_cmd::<PsCmd>(&sv::NamesArgs::new(vec![a.name.clone()]))
        .await?;
    let Some(path) = reply.programs.first().map(|r| PathBuf::from(&r.log_file)) else {
        return Err(ClientError::Protocol(format!(
            "ps did not answer with program {:?}",
            a.name
        )));
    };
    let mut out = std::io::stdout().lock();
    let tail = majordomo_supervisor::output::last_lines(&path, a.lines);
    let _ = out.write_all(&tail);
    let _ = out.flush();
    if !a.follow {
        return Ok(exit::OK);
    }
    let mut pos = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    loop {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let len = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            Err(_) => continue,
        };
        if len < pos {
            // Rotated: the current file is a new one.
            pos = 0;
        }
        if len == pos {
            continue;
        }
        if let Ok(mut f) = std::fs::File::open(&path)
            && f.seek(SeekFrom::Start(pos)).is_ok()
        {
            let mut buf = Vec::new();
            if f.take(len - pos).read_to_end(&mut buf).is_ok() {
                pos += buf.len() as u64;
                if out.write_all(&buf).and_then(|_| out.flush()).is_err() {
                    return Ok(exit::OK);
                }
            }
        }
    }
}

fn fmt_bytes(b: u64) -> String {
    const U: [&str; 4] = ["B", "KB", "MB", "GB"];
    let mut v = b as f64;
    let mut i = 0;
    while v >= 1000.0 && i < U.len() - 1 {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 {
        format!("{b}B")
    } else {
        format!("{v:.1}{}", U[i])
    }
}

fn fmt_uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..60 => format!("{s}s"),
        60..3600 => format!("{}m{}s", s / 60, s % 60),
        3600..86400 => format!("{}h{}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d{}h", s / 86400, (s % 86400) / 3600),
    }
}

fn print_table(rows: &[ProgramRow]) {
    if rows.is_empty() {
        outln!("no programs configured (add [[program]] entries to the config)");
        return;
    }
    outln!(
        "{:<16} {:<9} {:>8} {:>8} {:>8} {:<11} {:>8} {:>8}  DETAIL",
        "NAME",
        "STATE",
        "PID",
        "UPTIME",
        "RESTARTS",
        "LAST EXIT",
        "CPU",
        "RSS"
    );
    let dash = || "-".to_string();
    for r in rows {
        let pid = r.pid.map(|p| p.to_string()).unwrap_or_else(dash);
        let up = r.uptime_s.map(fmt_uptime).unwrap_or_else(dash);
        let last = match (r.last_exit_code, r.last_signal) {
            (Some(c), _) => format!("code {c}"),
            (_, Some(s)) => format!("signal {s}"),
            _ => dash(),
        };
        let cpu = r.cpu_s.map(|c| format!("{c:.2}s")).unwrap_or_else(dash);
        let rss = r.rss_bytes.map(fmt_bytes).unwrap_or_else(dash);
        outln!(
            "{:<16} {:<9} {:>8} {:>8} {:>8} {:<11} {:>8} {:>8}  {}",
            r.name,
            r.state.as_str(),
            pid,
            up,
            r.restarts,
            last,
            cpu,
            rss,
            r.detail.as_deref().unwrap_or("")
        );
    }
}
