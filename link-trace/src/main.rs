//! The `link-trace` command.

use std::process::ExitCode;

use clap::Parser as _;
use link_trace::{
    cli::{self, Command, ConfigCommand, RulesCommand},
    commands, daemon, doctor, error_chain,
};

fn main() -> ExitCode {
    let mut cli = cli::Cli::parse();
    let Some(command) = cli.command.take() else {
        // The output thread takes stdout: it must not be locked here.
        return trace(cli);
    };
    let mut stdout = std::io::stdout().lock();
    let done = match command {
        Command::Rules {
            command: RulesCommand::List { rules },
        } => commands::rules_list(&rules, &mut stdout),
        Command::Rules {
            command: RulesCommand::Check { files },
        } => commands::rules_check(&files, &mut stdout),
        Command::Config {
            command: ConfigCommand::Check { file },
        } => commands::config_check(&file, &mut stdout),
        Command::Replay {
            file,
            json,
            format,
            alerts_only,
            rules,
        } => commands::replay(&file, json, format, alerts_only, &rules, &mut stdout),
        Command::Doctor { json } => doctor::main(json, &mut stdout),
    };
    match done {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("link-trace: error: output failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn trace(cli: cli::Cli) -> ExitCode {
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
