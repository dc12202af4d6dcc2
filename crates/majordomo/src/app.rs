//! The application: the combined configuration (one field per top-level TOML key), the section
//! table the loader reads, the checks across sections, and the list of subsystems.
//!
//! Adding a subsystem = one new crate + its section field here + one `mount` line in
//! [`subsystems`]. Layers of the config, lowest first: the embedded default (`default.toml`,
//! which `majordomo config default` prints) < the instance's config file < environment
//! variables `MAJORDOMO_<SECTION>__<FIELD>` < command-line flags. Loading binds nothing; it
//! returns a complete [`Config`] or every problem found, each located.

use std::sync::Arc;

use majordomo_bus::{BusConfig, Router};
use majordomo_control::{ControlConfig, ControlSection};
use majordomo_core::lifecycle::Registry;
use majordomo_core::{Dur, PathsConfig, Problem, Root, Section};
use majordomo_discovery::{DiscoveryConfig, DiscoverySection};
use majordomo_guest::GuestConfig;
use majordomo_http::HttpConfig;
use majordomo_monitor::{CheckConfig, MonitorConfig, MonitorSection, NotifierConfig};
use majordomo_nats::NatsConfig;
use majordomo_pipeline::{PipelineConfig, PipelineSection, UploaderConfig};
use majordomo_scheduler::{SchedulerConfig, SchedulerSection, SharedJob};
use majordomo_supervisor::ProgramConfig;
use serde::{Deserialize, Serialize};

use crate::logging::{LogConfig, LogHandle};

/// The commented default configuration: embedded in the binary, printed by
/// `majordomo config default`, used when the instance has no config file.
pub const DEFAULT_TOML: &str = include_str!("default.toml");

/// The whole configuration of one instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub log: LogConfig,
    pub control: ControlConfig,
    pub paths: PathsConfig,
    /// `[[program]]`: the programs the supervisor runs.
    pub program: Vec<ProgramConfig>,
    pub bus: BusConfig,
    /// `[monitor]`: metrics collection and history.
    pub monitor: MonitorConfig,
    /// `[[check]]`: health checks (a file with any `[[check]]` replaces the default ones).
    pub check: Vec<CheckConfig>,
    /// `[[notifier]]`: where alerts are sent.
    pub notifier: Vec<NotifierConfig>,
    /// `[[pipeline]]`: drop folders whose files are converted, queued and uploaded.
    pub pipeline: Vec<PipelineConfig>,
    /// `[[uploader]]`: HTTP endpoints that pipelines upload to.
    pub uploader: Vec<UploaderConfig>,
    /// `[nats]`: the NATS bridge, remote control and the fleet.
    pub nats: NatsConfig,
    /// `[guest]`: the VM guest agent (QEMU Guest Agent protocol on virtio-serial).
    pub guest: GuestConfig,
    /// `[scheduler]`: daemon-wide settings of the jobs.
    pub scheduler: SchedulerConfig,
    /// `[[job]]`: scheduled jobs.
    pub job: Vec<SharedJob>,
    /// `[http]`: the REST API, dashboard, metrics and WebSocket.
    pub http: HttpConfig,
    /// `[discovery]`: LAN discovery over mDNS/DNS-SD.
    pub discovery: DiscoveryConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            daemon: DaemonConfig::default(),
            log: LogConfig::default(),
            control: ControlConfig::default(),
            paths: PathsConfig::default(),
            program: Vec::new(),
            bus: BusConfig::default(),
            monitor: MonitorConfig::default(),
            check: majordomo_monitor::default_checks(),
            notifier: Vec::new(),
            pipeline: Vec::new(),
            uploader: Vec::new(),
            nats: NatsConfig::default(),
            guest: GuestConfig::default(),
            scheduler: SchedulerConfig::default(),
            job: Vec::new(),
            http: HttpConfig::default(),
            discovery: DiscoveryConfig::default(),
        }
    }
}

impl Root for Config {
    const DEFAULT_TOML: &'static str = DEFAULT_TOML;
    const SECTIONS: &'static [&'static str] = &[
        "daemon",
        "log",
        "control",
        "paths",
        "program",
        "bus",
        "monitor",
        "check",
        "notifier",
        "pipeline",
        "uploader",
        "nats",
        "guest",
        "scheduler",
        "job",
        "http",
        "discovery",
    ];

    fn section(&mut self, name: &str, value: Section<'_>, problems: &mut Vec<Problem>) -> bool {
        match name {
            "daemon" => value.one(&mut self.daemon, problems),
            "log" => value.one(&mut self.log, problems),
            "control" => value.one(&mut self.control, problems),
            "paths" => value.one(&mut self.paths, problems),
            "program" => value.many(&mut self.program, problems),
            "bus" => value.one(&mut self.bus, problems),
            "monitor" => value.one(&mut self.monitor, problems),
            // Written checks replace the default ones.
            "check" => {
                self.check.clear();
                value.many(&mut self.check, problems)
            }
            "notifier" => value.many(&mut self.notifier, problems),
            "pipeline" => value.many(&mut self.pipeline, problems),
            "uploader" => value.many(&mut self.uploader, problems),
            "nats" => value.one(&mut self.nats, problems),
            "guest" => value.one(&mut self.guest, problems),
            "scheduler" => value.one(&mut self.scheduler, problems),
            "job" => value.many(&mut self.job, problems),
            "http" => value.one(&mut self.http, problems),
            "discovery" => value.one(&mut self.discovery, problems),
            _ => return false,
        }
        true
    }

    fn validate(&self, problems: &mut Vec<Problem>) {
        crate::logging::validate(&self.log, problems);
        majordomo_control::validate(&self.control, problems);
        majordomo_supervisor::validate(&self.program, problems);
        self.bus.validate(problems);
        majordomo_monitor::validate(&self.monitor, &self.check, &self.notifier, problems);
        majordomo_pipeline::validate(&self.pipeline, &self.uploader, problems);
        self.nats.validate(problems);
        majordomo_guest::validate(&self.guest, problems);
        majordomo_scheduler::validate(&self.scheduler, &self.job, problems);
        majordomo_http::validate(&self.http, problems);
        self.discovery.validate(problems);
        self.validate_across(problems);
        if !(1..=64).contains(&self.daemon.threads) {
            problems.push(Problem::at(
                "daemon.threads",
                format!("{} threads cannot run the daemon", self.daemon.threads),
                "use 1 (smallest) to 64; the default is 2",
            ));
        }
        if self.daemon.grace_period.get().is_zero() {
            problems.push(Problem::at(
                "daemon.grace_period",
                "a grace period of 0 gives nothing time to stop cleanly",
                "use a few seconds, e.g. \"10s\"",
            ));
        }
    }
}

impl Config {
    /// After a load: what the parse freed goes back to the OS (large configs). The jobs, which
    /// the parse left scattered among its garbage (a page holding one of them stays resident),
    /// are first copied together into fresh memory.
    pub fn release_parse_garbage(&mut self) {
        majordomo_platform::release_free_heap();
        majordomo_scheduler::config::rehome(&mut self.job);
        majordomo_platform::release_free_heap();
    }

    /// References from one section into another.
    fn validate_across(&self, problems: &mut Vec<Problem>) {
        // A "program NAME not running" check must name a declared program.
        for (i, check) in self.check.iter().enumerate() {
            if let Some(name) = &check.program
                && !self.program.iter().any(|p| &p.name == name)
            {
                let known: Vec<&str> = self.program.iter().map(|p| p.name.as_str()).collect();
                problems.push(Problem::at(
                    format!("check[{i}].program"),
                    format!("no [[program]] named {name:?}"),
                    if known.is_empty() {
                        "declare it in a [[program]] table, or remove this check".to_string()
                    } else {
                        format!("declared programs: {}", known.join(", "))
                    },
                ));
            }
            // A job check must name a declared job.
            if let Some(name) = &check.job
                && !self.job.iter().any(|j| &j.name == name)
            {
                let known: Vec<&str> = self.job.iter().map(|j| j.name.as_str()).collect();
                problems.push(Problem::at(
                    format!("check[{i}].job"),
                    format!("no [[job]] named {name:?}"),
                    if known.is_empty() {
                        "declare it in a [[job]] table, or remove this check".to_string()
                    } else {
                        format!("declared jobs: {}", known.join(", "))
                    },
                ));
            }
        }
    }
}

/// `[daemon]`: the process as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DaemonConfig {
    /// How long a shutdown may take before the remaining work is abandoned.
    pub grace_period: Dur,
    /// Reload automatically when the config file changes.
    pub watch_config: bool,
    /// Quiet time after the last change to the config file before it is reloaded.
    pub watch_debounce: Dur,
    /// Threads running the daemon's tasks, read at start: 1 runs everything on one thread
    /// (with one malloc arena), the smallest footprint, e.g. an instance that only runs the
    /// guest agent. Blocking work has its own short-lived threads either way.
    pub threads: usize,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            grace_period: Dur::secs(10),
            watch_config: true,
            watch_debounce: Dur::millis(300),
            threads: 2,
        }
    }
}

/// The subsystems, in start order, each with the function that takes its section out of the
/// whole config.
pub fn subsystems(registry: &mut Registry<Config>, log: Arc<LogHandle>, router: Arc<Router>) {
    let router_nats = router.clone();
    registry
        .mount(crate::logging::Log(log), |c| c.log.clone())
        .mount(majordomo_bus::Bus::new(router.clone()), |c| c.bus.clone())
        .mount(majordomo_control::Control::new(router.clone()), |c| {
            ControlSection {
                control: c.control.clone(),
                socket: c.paths.socket.clone(),
            }
        })
        .mount(crate::watch::ConfigWatch, |c| c.daemon.clone())
        .mount(majordomo_supervisor::Supervisor, |c| c.program.clone())
        .mount(majordomo_monitor::Monitor::new(), |c| MonitorSection {
            monitor: c.monitor.clone(),
            check: c.check.clone(),
        })
        .mount(majordomo_monitor::Notify, |c| c.notifier.clone())
        .mount(majordomo_pipeline::Pipeline, |c| PipelineSection {
            pipeline: c.pipeline.clone(),
            uploader: c.uploader.clone(),
        })
        .mount(majordomo_nats::Nats::new(router_nats), |c| c.nats.clone())
        .mount(majordomo_guest::Guest::new(router.clone()), |c| {
            c.guest.clone()
        })
        .mount(majordomo_scheduler::Scheduler::new(router.clone()), |c| {
            SchedulerSection {
                scheduler: c.scheduler.clone(),
                job: c.job.clone(),
            }
        })
        .mount(majordomo_http::Http::new(router), |c| c.http.clone())
        .mount(majordomo_discovery::Discovery, |c| DiscoverySection {
            discovery: c.discovery.clone(),
            http_port: c
                .http
                .enabled
                .then(|| c.http.listen.first())
                .flatten()
                .and_then(|a| a.rsplit_once(':').and_then(|(_, p)| p.parse().ok())),
            nats_node: c.nats.node.clone(),
        });
}

#[cfg(test)]
#[path = "app_tests.rs"]
mod tests;
