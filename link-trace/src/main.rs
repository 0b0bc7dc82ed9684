//! link-trace: an eBPF tracer for link(2) and linkat(2).

mod capture;
mod cli;
mod clock;
mod daemon;
mod event;
mod klog;
mod loader;
mod names;
mod output;
mod stats;

use std::process::ExitCode;

use clap::Parser as _;

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

/// An error and its causes on one line: "a: b: c".
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
