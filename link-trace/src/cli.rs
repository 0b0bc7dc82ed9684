//! Command-line interface.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use link_trace_common::TASK_COMM_LEN;

use crate::{
    config::{DEFAULT_CONFIG, OutputConfig},
    rules::{RULES_DIR, Sources},
};

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

    /// Configuration file (TOML); every key is also a flag, and flags win.
    /// Without it, /etc/link-trace/config.toml is read when it exists.
    #[arg(long, value_name = "PATH")]
    pub config: Option<PathBuf>,

    /// Where records go; repeatable, each with its own queue. Replaces the
    /// file's outputs. TYPE[:TARGET][,KEY=VALUE]...: `stdout`,
    /// `file:PATH`, `unix:PATH`, `syslog+udp:HOST:PORT`,
    /// `syslog+tcp:HOST:PORT`, `syslog+unix:PATH`; keys as in the file
    /// (format, queue, alerts_only, max_bytes, keep, fsync, mode, …).
    /// Default: stdout.
    #[arg(long = "output", value_name = "SPEC", value_parser = OutputConfig::parse_flag)]
    pub outputs: Vec<OutputConfig>,

    /// Serve Prometheus metrics at http://ADDR/metrics (a loopback address,
    /// such as 127.0.0.1:9464, unless --metrics-allow-remote).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<std::net::SocketAddr>,

    /// Let --metrics-listen take an address other hosts can reach. The
    /// endpoint has no authentication: firewall it.
    #[arg(long)]
    pub metrics_allow_remote: bool,

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

    /// Seconds between `stats` records (0: only the one at exit) [default: 60].
    #[arg(long, value_name = "SECONDS")]
    pub stats_interval: Option<u64>,

    /// Run the daemon's threads this much ahead of ordinary processes
    /// (nice -N, like auditd's priority_boost), so a flood of links cannot
    /// starve the consumer and fill the ring; 0 leaves the priority alone
    /// [default: 5].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u8).range(0..=20))]
    pub priority_boost: Option<u8>,

    /// Ring buffer size in bytes: a power of two, at least one page
    /// [default: 8 MiB].
    #[arg(long, value_name = "BYTES", value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,

    /// Print only alerts (kind "alert"), no events, loss or stats records.
    #[arg(long)]
    pub alerts_only: bool,

    /// Keep every capability after attach instead of dropping all but
    /// CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE (for debugging).
    #[arg(long)]
    pub keep_capabilities: bool,

    /// Also capture and print unlink, unlinkat, rename, renameat and
    /// renameat2 calls (kind "context"). Without it they are captured only
    /// when a rule in force needs them, and only the rules see them.
    #[arg(long)]
    pub context_events: bool,

    #[command(flatten)]
    pub rules: RuleArgs,
}

/// Which detection rules are in force.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct RuleArgs {
    /// A rule file (TOML) loaded after the built-in rules and the rules
    /// directory; repeatable. Same ids replace earlier rules.
    #[arg(long = "rules", value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Leave the built-in rules out.
    #[arg(long)]
    pub no_builtin_rules: bool,

    /// Directory whose *.toml files are loaded (in name order) after the
    /// built-in rules, when it exists [default: /etc/link-trace/rules.d].
    #[arg(long, value_name = "DIR")]
    pub rules_dir: Option<PathBuf>,
}

impl RuleArgs {
    pub fn sources(&self) -> Sources {
        Sources {
            builtin: !self.no_builtin_rules,
            rules_dir: Some(
                self.rules_dir
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(RULES_DIR)),
            ),
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
    /// Check the configuration file.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run the rules over events recorded with `link-trace --json` and print
    /// them with the alerts they raise. Needs no privileges.
    Replay {
        /// JSON lines as `link-trace --json` writes them; `-` for stdin.
        file: PathBuf,
        /// Print JSON lines instead of readable text (the same as
        /// `--format native`).
        #[arg(long)]
        json: bool,
        /// Print one document per line in this format: link-trace's own JSON
        /// (`native`), Elastic Common Schema (`ecs`) or OCSF (`ocsf`).
        #[arg(long, value_name = "FORMAT", conflicts_with = "json")]
        format: Option<crate::formats::DocumentFormat>,
        /// Print only alerts.
        #[arg(long)]
        alerts_only: bool,
        #[command(flatten)]
        rules: RuleArgs,
    },
    /// Check what will and won't work on this host (kernel, BTF, tracefs,
    /// privileges, BPF features probed with real bpf(2) calls). Exit status
    /// 0 when capture will work, 1 when it won't.
    Doctor {
        /// Print one JSON object instead of the readable report.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check a configuration file (default /etc/link-trace/config.toml):
    /// every error with its line; prints the settings it gives.
    Check {
        #[arg(value_name = "FILE", default_value = DEFAULT_CONFIG)]
        file: PathBuf,
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

pub(crate) fn parse_comm(value: &str) -> Result<[u8; TASK_COMM_LEN], String> {
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

pub(crate) fn parse_ring_bytes(value: &str) -> Result<u32, String> {
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
            Some(Command::Replay { json: true, format: None, rules, .. }) if rules.no_builtin_rules
        ));
        let cli =
            Cli::try_parse_from(["link-trace", "replay", "r.jsonl", "--format", "ocsf"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Replay {
                json: false,
                format: Some(crate::formats::DocumentFormat::Ocsf),
                ..
            })
        ));
        assert!(
            Cli::try_parse_from(["link-trace", "replay", "r.jsonl", "--format", "xml"]).is_err()
        );
        assert!(
            Cli::try_parse_from([
                "link-trace",
                "replay",
                "r.jsonl",
                "--json",
                "--format",
                "ecs"
            ])
            .is_err()
        );
        assert!(Cli::try_parse_from(["link-trace", "--pid", "5", "replay", "r.jsonl"]).is_err());
        assert!(Cli::try_parse_from(["link-trace", "rules", "check"]).is_err());
        let cli = Cli::try_parse_from(["link-trace", "doctor", "--json"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Doctor { json: true })));
    }

    #[test]
    fn ring_size_must_be_a_power_of_two() {
        assert_eq!(parse_ring_bytes("65536"), Ok(65536));
        assert!(parse_ring_bytes("65535").is_err());
        assert!(parse_ring_bytes("2048").is_err());
        assert!(parse_ring_bytes("big").is_err());
    }
}
