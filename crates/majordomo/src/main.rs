//! The `majordomo` binary: everything lives in the library; this only hands over.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // First, while the process is single-threaded: take the service manager's variables out of
    // the environment, so no child ever inherits them.
    let notifier = majordomo_platform::take_service_env();
    majordomo::cli::main(notifier)
}
