//! `majordomo fleet ls|call|status`: every instance on a NATS server, from anywhere.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use majordomo_client::{Client, ClientError, ConnectOptions};
use majordomo_core::exit;
use majordomo_nats::fleet::{self, FleetConnect};
use majordomo_proto::nats::{NatsStatus, NatsStatusCmd};
use majordomo_proto::{ErrorCode, NoArgs};
use serde_json::{Map, Value};

#[derive(Debug, Subcommand)]
pub enum FleetCmd {
    /// List the live instances on a NATS server: node, instance, version, uptime, roles,
    /// firing alerts.
    Ls {
        #[command(flatten)]
        nats: NatsArgs,
        /// Only instances with this role ([nats] roles); repeat for several (all must match).
        #[arg(long = "role", value_name = "ROLE")]
        roles: Vec<String>,
        /// How long to collect answers.
        #[arg(long, default_value = "1s", value_parser = parse_duration)]
        wait: Duration,
    },
    /// Run an allowed command on one instance: `fleet call host1/default status`,
    /// `fleet call host1/default ps '{"name":"api"}'` or `... ps name=api`.
    Call {
        #[command(flatten)]
        nats: NatsArgs,
        /// NODE/INSTANCE, as `fleet ls` shows them.
        target: String,
        /// The command (`status`, `ps`, `alerts`, ...; see the instance's [nats] allow).
        cmd: String,
        /// Arguments: one JSON object, or KEY=VALUE pairs (VALUE read as JSON when it is).
        args: Vec<String>,
        #[arg(long, default_value = "10s", value_parser = parse_duration)]
        timeout: Duration,
    },
    /// This instance's NATS bridge: connection, counters, dropped exports.
    Status,
}

/// Where NATS is.
#[derive(Debug, Args)]
pub struct NatsArgs {
    /// NATS server URL (user:password@ or token@ in it are used, never printed).
    #[arg(long = "nats", env = "MAJORDOMO_NATS", value_name = "URL")]
    pub url: Option<String>,
    /// Credentials file (JWT + NKey seed) for the NATS server.
    #[arg(long, env = "MAJORDOMO_NATS_CREDS", value_name = "FILE")]
    pub creds: Option<PathBuf>,
    /// CA certificate (PEM) of the NATS server's TLS certificate.
    #[arg(long, env = "MAJORDOMO_NATS_CA", value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e}; write e.g. 500ms, 2s, 1m"))
}

async fn connect(a: &NatsArgs) -> Result<majordomo_nats::async_nats::Client, u8> {
    let Some(url) = &a.url else {
        eprintln!(
            "majordomo: no NATS server given; pass --nats nats://host:4222 or set MAJORDOMO_NATS"
        );
        return Err(exit::USAGE);
    };
    fleet::connect(&FleetConnect {
        url: url.clone(),
        creds: a.creds.clone(),
        tls_ca: a.tls_ca.clone(),
    })
    .await
    .map_err(|e| {
        eprintln!("majordomo: {e}");
        exit::UNAVAILABLE
    })
}

fn parse_args(args: &[String]) -> Result<Map<String, Value>, String> {
    if let [one] = args
        && one.trim_start().starts_with('{')
    {
        return match serde_json::from_str::<Value>(one) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("the arguments must be a JSON object".into()),
            Err(e) => Err(format!("the arguments are not JSON: {e}")),
        };
    }
    let mut m = Map::new();
    for a in args {
        let Some((k, v)) = a.split_once('=') else {
            return Err(format!(
                "{a:?}: write KEY=VALUE, or one JSON object like '{{\"name\":\"api\"}}'"
            ));
        };
        let v = serde_json::from_str(v).unwrap_or_else(|_| Value::String(v.to_string()));
        m.insert(k.to_string(), v);
    }
    Ok(m)
}

pub async fn run(cmd: &FleetCmd, opts: &ConnectOptions, json: bool) -> Result<u8, ClientError> {
    match cmd {
        FleetCmd::Status => {
            let mut client = Client::connect(opts).await?;
            let s: NatsStatus = client.call_cmd::<NatsStatusCmd>(&NoArgs {}).await?;
            if json {
                println!("{}", serde_json::to_string(&s).unwrap_or_default());
            } else {
                print_status(&s);
            }
            Ok(exit::OK)
        }
        FleetCmd::Ls { nats, roles, wait } => {
            let client = match connect(nats).await {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            let members = match fleet::ls(&client, roles, *wait).await {
                Ok(m) => m,
                Err(e) => {
                    eprintln!("majordomo: {e}");
                    return Ok(exit::UNAVAILABLE);
                }
            };
            if json {
                println!("{}", serde_json::to_string(&members).unwrap_or_default());
                return Ok(exit::OK);
            }
            if members.is_empty() {
                println!("no instance answered within {wait:?}");
                return Ok(exit::OK);
            }
            println!(
                "{:<20} {:<16} {:<10} {:<14} {:<16} ALERTS",
                "NODE", "INSTANCE", "VERSION", "UPTIME", "ROLES"
            );
            for m in &members {
                let roles = if m.roles.is_empty() {
                    "-".to_string()
                } else {
                    m.roles.join(",")
                };
                let alerts = if m.firing == 0 {
                    "-".to_string()
                } else {
                    format!("{} firing: {}", m.firing, m.alerts.join(", "))
                };
                println!(
                    "{:<20} {:<16} {:<10} {:<14} {:<16} {alerts}",
                    m.node,
                    m.instance,
                    m.version,
                    humantime::format_duration(Duration::from_secs(m.uptime_s)).to_string(),
                    roles
                );
            }
            Ok(exit::OK)
        }
        FleetCmd::Call {
            nats,
            target,
            cmd,
            args,
            timeout,
        } => {
            let Some((node, instance)) = target.split_once('/') else {
                eprintln!(
                    "majordomo: {target:?}: write NODE/INSTANCE, as `majordomo fleet ls` shows them"
                );
                return Ok(exit::USAGE);
            };
            let args = match parse_args(args) {
                Ok(a) => a,
                Err(e) => {
                    eprintln!("majordomo: {e}");
                    return Ok(exit::USAGE);
                }
            };
            let client = match connect(nats).await {
                Ok(c) => c,
                Err(code) => return Ok(code),
            };
            match fleet::call(&client, node, instance, cmd, args, *timeout).await {
                Ok(v) => {
                    if json {
                        println!("{v}");
                    } else {
                        println!("{v:#}");
                    }
                    Ok(exit::OK)
                }
                Err(e) => {
                    eprintln!("majordomo: {target}: {} ({})", e.message, e.code.as_str());
                    Ok(match e.code {
                        ErrorCode::Forbidden => exit::NOPERM,
                        ErrorCode::NotFound | ErrorCode::Timeout => exit::UNAVAILABLE,
                        _ => exit::FAILURE,
                    })
                }
            }
        }
    }
}

fn print_status(s: &NatsStatus) {
    if !s.enabled {
        println!(
            "NATS off: {}",
            s.reason.as_deref().unwrap_or("[nats] servers is empty")
        );
        return;
    }
    println!(
        "NATS {} ({})",
        if s.connected {
            "connected"
        } else {
            "disconnected"
        },
        s.server.as_deref().unwrap_or("-")
    );
    println!("  node/instance  {}/{}", s.node, s.instance);
    println!("  prefix         {}", s.prefix);
    if !s.ctl_subject.is_empty() {
        println!("  control        {}", s.ctl_subject);
    }
    if let Some(stream) = &s.stream {
        println!("  stream         {stream} (durable export)");
    }
    if !s.consumers.is_empty() {
        println!(
            "  consumers      {} (durable import; {} redeliveries skipped)",
            s.consumers.join(", "),
            s.redelivered
        );
    }
    println!(
        "  exported {}  imported {}  requests out {} in {}  echo suppressed {}",
        s.exported, s.imported, s.requests_out, s.requests_in, s.echo_suppressed
    );
    println!(
        "  buffered {}  dropped {}  unconfirmed {}  import overflows {}  connects {}",
        s.buffered, s.dropped, s.unconfirmed, s.import_overflows, s.connects
    );
    if let Some(e) = &s.last_error {
        println!("  last error     {e}");
    }
}
