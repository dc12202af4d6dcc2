//! What a pipeline tells the hub, logged here with the words the daemon has always used for
//! them (the hub itself does not log).

use majordomo_core::hub::Event;

/// Logs a pipeline event. Other kinds are not the pipeline's to log.
pub(crate) fn log(event: &Event) {
    match event {
        Event::FileQueued { pipeline, id, file } => {
            tracing::debug!(%pipeline, %id, %file, "file queued")
        }
        Event::FileUploaded {
            pipeline,
            id,
            file,
            attempts,
            upload_ms,
            age_ms,
        } => {
            tracing::debug!(%pipeline, %id, %file, attempts, upload_ms, age_ms, "file uploaded")
        }
        Event::UploadRetry {
            pipeline,
            id,
            file,
            attempt,
            reason,
            delay_ms,
        } => {
            tracing::warn!(%pipeline, %id, %file, attempt, delay_ms, "upload failed, will retry: {reason}")
        }
        Event::FileDeadLettered {
            pipeline,
            id,
            file,
            reason,
        } => tracing::error!(%pipeline, %id, %file, "dead-lettered: {reason}"),
        Event::FileFailed {
            pipeline,
            file,
            reason,
        } => tracing::error!(%pipeline, %file, "failed: {reason}"),
        Event::PipelineRescan {
            pipeline,
            reason,
            found,
        } => tracing::debug!(%pipeline, %reason, found, "rescan"),
        Event::PipelineBackpressure {
            pipeline,
            paused,
            reason,
        } => {
            if *paused {
                tracing::warn!(%pipeline, "paused taking files: {reason}")
            } else {
                tracing::info!(%pipeline, "taking files again: {reason}")
            }
        }
        _ => {}
    }
}
