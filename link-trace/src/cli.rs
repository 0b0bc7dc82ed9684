//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use link_trace_common::{DEFAULT_RING_BYTES, FILTER_MAX_ENTRIES, TASK_COMM_LEN};

use crate::rules::{RULES_DIR, Sources};

/// Trace every link(2) and linkat(2) call on this host with eBPF, and raise
/// alerts from detection rules. Without a subcommand: trace.
#[derive(Debug, Parser)]
#[command(
    name = "link-trace",
    version,
    about,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Print one JSON object per line (see schema/link-trace-event.schema.json)
    /// instead of readable text.
    #[arg(long)]
    pub json: bool,

    /// Only calls from these processes (tgid); repeatable. Applied in the kernel.
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only calls by these real uids; repeatable. Applied in the kernel.
    #[arg(long = "uid", value_name = "UID")]
    pub uids: Vec<u32>,

    /// Only calls from tasks with this exact comm (at most 15 bytes, as the
    /// kernel keeps it); repeatable. Applied in the kernel.
    #[arg(long = "comm", value_name = "COMM", value_parser = parse_comm)]
    pub comms: Vec<[u8; TASK_COMM_LEN]>,

    /// Seconds between `stats` records (0: only the one at exit).
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub stats_interval: u64,

    /// Ring buffer size in bytes: a power of two, at least one page.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_RING_BYTES, value_parser = parse_ring_bytes)]
    pub ring_bytes: u32,

    /// Print only alerts (kind "alert"), no events, loss or stats records.
    #[arg(long)]
    pub alerts_only: bool,

    /// Also capture and print unlink, unlinkat, rename, renameat and
    /// renameat2 calls (kind "context"). Without it they are captured only
    /// when a rule in force needs them, and only the rules see them.
    #[arg(long)]
    pub context_events: bool,

    #[command(flatten)]
    pub rules: RuleArgs,
}

/// Which detection rules are in force.
#[derive(Debug, Clone, Args)]
pub struct RuleArgs {
    /// A rule file (TOML) loaded after the built-in rules and the rules
    /// directory; repeatable. Same ids replace earlier rules.
    #[arg(long = "rules", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Leave the built-in rules out.
    #[arg(long)]
    pub no_builtin_rules: bool,

    /// Directory whose *.toml files are loaded (in name order) after the
    /// built-in rules, when it exists.
    #[arg(long, value_name = "DIR", default_value = RULES_DIR)]
    pub rules_dir: PathBuf,
}

impl RuleArgs {
    pub fn sources(&self) -> Sources {
        Sources {
            builtin: !self.no_builtin_rules,
            rules_dir: Some(self.rules_dir.clone()),
            files: self.files.clone(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the rules in force, or check rule files.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
    /// Run the rules over events recorded with `link-trace --json` and print
    /// them with the alerts they raise. Needs no privileges.
    Replay {
        /// JSON lines as `link-trace --json` writes them; `-` for stdin.
        file: PathBuf,
        /// Print JSON lines instead of readable text.
        #[arg(long)]
        json: bool,
        /// Print only alerts.
        #[arg(long)]
        alerts_only: bool,
        #[command(flatten)]
        rules: RuleArgs,
    },
}

#[derive(Debug, Subcommand)]
pub enum RulesCommand {
    /// The rules in force: built-in, the rules directory, --rules files.
    List {
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Check rule files: each error with its line, nothing loaded.
    Check {
        #[arg(required = true, value_name = "FILE")]
        files: Vec<PathBuf>,
    },
}

impl Cli {
    pub fn validate(&self) -> Result<(), String> {
        for (name, len) in [
            ("--pid", self.pids.len()),
            ("--uid", self.uids.len()),
            ("--comm", self.comms.len()),
        ] {
            if len > FILTER_MAX_ENTRIES as usize {
                return Err(format!(
                    "at most {FILTER_MAX_ENTRIES} {name} values are supported, got {len}"
                ));
            }
        }
        Ok(())
    }
}

fn parse_comm(value: &str) -> Result<[u8; TASK_COMM_LEN], String> {
    let bytes = value.as_bytes();
    if bytes.is_empty() || bytes.len() >= TASK_COMM_LEN || bytes.contains(&0) {
        return Err(format!(
            "a comm is 1 to {} bytes without NUL, as the kernel stores it",
            TASK_COMM_LEN - 1
        ));
    }
    let mut comm = [0u8; TASK_COMM_LEN];
    comm[..bytes.len()].copy_from_slice(bytes);
    Ok(comm)
}

fn parse_ring_bytes(value: &str) -> Result<u32, String> {
    let bytes: u32 = value
        .parse()
        .map_err(|e| format!("not a byte count: {e}"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err("the ring size must be a power of two of at least 4096 bytes".into());
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comm_is_padded_and_bounded() {
        let comm = parse_comm("ln").unwrap();
        assert_eq!(&comm[..3], b"ln\0");
        assert!(parse_comm("").is_err());
        assert!(parse_comm("0123456789abcdef").is_err());
        assert!(parse_comm("0123456789abcde").is_ok());
    }

    #[test]
    fn no_subcommand_traces_and_subcommands_parse() {
        let cli = Cli::try_parse_from(["link-trace", "--json", "--pid", "5"]).unwrap();
        assert!(cli.command.is_none() && cli.json && cli.pids == [5]);
        assert!(!cli.rules.no_builtin_rules && cli.rules.files.is_empty());
        let cli = Cli::try_parse_from([
            "link-trace",
            "--rules",
            "a.toml",
            "--rules",
            "b.toml",
            "--alerts-only",
        ])
        .unwrap();
        assert_eq!(
            cli.rules.files,
            [PathBuf::from("a.toml"), PathBuf::from("b.toml")]
        );
        assert!(cli.alerts_only);
        assert!(!cli.context_events);
        let cli = Cli::try_parse_from(["link-trace", "--context-events"]).unwrap();
        assert!(cli.context_events);
        let cli = Cli::try_parse_from(["link-trace", "rules", "check", "x.toml"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Rules { command: RulesCommand::Check { files } }) if files.len() == 1
        ));
        let cli = Cli::try_parse_from([
            "link-trace",
            "replay",
            "r.jsonl",
            "--json",
            "--no-builtin-rules",
        ])
        .unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Replay { json: true, rules, .. }) if rules.no_builtin_rules
        ));
        assert!(Cli::try_parse_from(["link-trace", "--pid", "5", "replay", "r.jsonl"]).is_err());
        assert!(Cli::try_parse_from(["link-trace", "rules", "check"]).is_err());
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_bytes("65536"), Ok(65536));
        assert!(parse_ring_bytes("65535").is_err());
        assert!(parse_ring_bytes("2048").is_err());
        assert!(parse_ring_bytes("big").is_err());
    }
}
