//! The subsystem: opens every `[[pipeline]]` of the section, starts their stages, registers the
//! `queue.*` commands, and runs until stopped. A changed section restarts it (the queue is on
//! disk, so a restart loses nothing).

use std::collections::BTreeMap;
use std::sync::Arc;

use majordomo_core::{BoxFuture, Change, Ctx, Subsystem};

use crate::config::PipelineSection;
use crate::pipe::{self, Pipes};
use crate::store::Syncer;
use crate::upload::Uploader;

/// The drop-folder pipelines. Runs while at least one `[[pipeline]]` is configured.
pub struct Pipeline;

impl Subsystem for Pipeline {
    type Config = PipelineSection;

    fn name(&self) -> &'static str {
        "pipeline"
    }

    fn enabled(&self, config: &PipelineSection) -> bool {
        !config.pipeline.is_empty()
    }

    fn change(&self, old: &PipelineSection, new: &PipelineSection) -> Change {
        // Restarting is always safe (the queue is on disk), and simple to reason about. A moved
        // state folder restarts every subsystem (the registry sees to that).
        if old == new {
            Change::None
        } else {
            Change::Restart
        }
    }

    fn run(&self, ctx: Ctx<PipelineSection>) -> BoxFuture {
        Box::pin(run(ctx))
    }
}

async fn run(ctx: Ctx<PipelineSection>) -> Result<(), String> {
    let cfg = ctx.config.borrow().clone();
    let state_dir = ctx.state_dir().to_path_buf();
    let mut uploaders = BTreeMap::new();
    for u in &cfg.uploader {
        uploaders.insert(u.name.clone(), Arc::new(Uploader::new(u)?));
    }
    let syncer = Syncer::spawn(&ctx.tracker);
    let mut pipes = BTreeMap::new();
    let mut receivers = Vec::new();
    for p in &cfg.pipeline {
        let (pipe, rx) = pipe::open(p, &state_dir, &uploaders, &syncer, &ctx.hub)?;
        receivers.push((pipe.clone(), rx));
        pipes.insert(p.name.clone(), pipe);
    }
    let pipes: Pipes = Arc::new(pipes);
    for (pipe, rx) in receivers {
        pipe::start(&ctx, pipe, rx).await?;
    }
    crate::commands::register(&ctx, pipes.clone());
    ctx.ready();
    let names: Vec<&str> = pipes.keys().map(|s| s.as_str()).collect();
    ctx.detail(format!("pipelines: {}", names.join(", ")));
    ctx.token.cancelled().await;
    Ok(())
}
