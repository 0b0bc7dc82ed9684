//! The `link-trace` command.

use std::process::ExitCode;

use clap::Parser as _;
use link_trace::{cli, daemon, error_chain};

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    if let Err(message) = cli.validate() {
        eprintln!("link-trace: error: {message}");
        return ExitCode::from(2);
    }
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(anyhow::Error::from)
        .and_then(|runtime| runtime.block_on(daemon::run(cli)));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("link-trace: error: {}", error_chain(&*e));
            ExitCode::FAILURE
        }
    }
}
