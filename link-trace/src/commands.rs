//! The subcommands that need no tracer: `rules list`, `rules check` and
//! `replay`. Each returns whether it succeeded; errors go to stderr as one
//! `link-trace: error: …` line each.

use std::{
    io::{BufReader, Write},
    path::Path,
};

use crate::{
    cli::RuleArgs,
    detect::Detector,
    event::Record,
    formats::{self, DocumentFormat, HostInfo},
    output::{self, Format},
    replay,
    rules::{BUILTIN_NAME, Engine, RuleSet, load_file},
};

/// Loads the rules `args` name, printing warnings; None after an error.
pub fn load_rules(args: &RuleArgs) -> Option<RuleSet> {
    match args.sources().load() {
        Ok(set) => {
            for warning in &set.warnings {
                eprintln!("link-trace: warning: {warning}");
            }
            Some(set)
        }
        Err(e) => {
            eprintln!("link-trace: error: {}", crate::error_chain(&e));
            None
        }
    }
}

/// `link-trace rules list`: one line per rule in force.
pub fn rules_list(args: &RuleArgs, out: &mut impl Write) -> std::io::Result<bool> {
    let Some(set) = load_rules(args) else {
        return Ok(false);
    };
    writeln!(
        out,
        "{:<28} {:<8} {:<20} {:<12} TITLE",
        "ID", "SEVERITY", "MITRE", "ORIGIN"
    )?;
    for rule in &set.rules {
        let origin = if rule.origin == BUILTIN_NAME {
            "built-in".to_owned()
        } else {
            rule.origin.clone()
        };
        write!(
            out,
            "{:<28} {:<8} {:<20} {:<12} {}",
            rule.id,
            rule.severity.name(),
            rule.mitre.join(","),
            origin,
            rule.title
        )?;
        if let Some(window) = rule.window_summary() {
            write!(out, " [{window}]")?;
        }
        if let Some(syscalls) = rule.syscalls_summary() {
            write!(out, " [syscalls: {syscalls}]")?;
        }
        writeln!(out)?;
    }
    writeln!(out, "{} rules in force", set.rules.len())?;
    Ok(true)
}

/// `link-trace rules check FILE...`: every file is compiled on its own;
/// an error names file, line and column.
pub fn rules_check(files: &[impl AsRef<Path>], out: &mut impl Write) -> std::io::Result<bool> {
    let mut ok = true;
    for path in files {
        let path = path.as_ref();
        match load_file(path) {
            Ok(file) => {
                let count = file.rules.len();
                let mut set = RuleSet::builtin().unwrap_or_default();
                set.merge(&path.display().to_string(), file);
                for warning in &set.warnings {
                    eprintln!("link-trace: warning: {warning}");
                }
                writeln!(out, "{}: {count} rules OK", path.display())?;
            }
            Err(e) => {
                ok = false;
                eprintln!("link-trace: error: {}", crate::error_chain(&e));
            }
        }
    }
    Ok(ok)
}

/// `link-trace replay FILE`: alerts from recorded events, written as text,
/// native JSON (`--json`) or a document `format`.
pub fn replay(
    file: &Path,
    json: bool,
    format: Option<DocumentFormat>,
    alerts_only: bool,
    args: &RuleArgs,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let Some(set) = load_rules(args) else {
        return Ok(false);
    };
    let detector = Detector::new(Engine::new(set), alerts_only);
    // The recording does not say which host it came from: documents
    // describe the machine replaying it.
    let host = format.map(|_| HostInfo::read());
    let mut render = |record: &Record, line: &mut Vec<u8>| match (format, &host) {
        (Some(format), Some(host)) => formats::render(format, record, host, line),
        _ if json => output::render(Format::Json, record, line),
        _ => output::render(Format::Text, record, line),
    };
    let name = file.display().to_string();
    let summary = if name == "-" {
        replay::replay_with(
            std::io::stdin().lock(),
            "<stdin>",
            detector,
            &mut render,
            out,
        )?
    } else {
        let input = match std::fs::File::open(file) {
            Ok(input) => input,
            Err(e) => {
                eprintln!("link-trace: error: {name}: {e}");
                return Ok(false);
            }
        };
        replay::replay_with(BufReader::new(input), &name, detector, &mut render, out)?
    };
    eprintln!(
        "link-trace: replayed {} events from {} lines: {} alerts, {} lines skipped, {} window evictions",
        summary.detect.events,
        summary.lines,
        summary.detect.alerts,
        summary.bad_lines,
        summary.detect.evictions
    );
    Ok(summary.bad_lines == 0)
}

/// `link-trace config check FILE`: parses the file, loads the rules it
/// names and prints the settings it gives; every error with its line.
pub fn config_check(file: &Path, out: &mut impl Write) -> std::io::Result<bool> {
    use clap::Parser as _;

    use crate::config::{FileConfig, Settings};

    let config = match FileConfig::load(file) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("link-trace: error: {e}");
            return Ok(false);
        }
    };
    let Ok(no_flags) = crate::cli::Cli::try_parse_from(["link-trace"]) else {
        return Ok(false);
    };
    let settings = Settings::merge(Some(file.to_path_buf()), config, &no_flags);
    if let Err(e) = settings.check_limits() {
        eprintln!("link-trace: error: {e}");
        return Ok(false);
    }
    if let Some(addr) = settings.metrics_listen
        && let Err(e) = crate::metrics::http::check_address(addr, settings.metrics_allow_remote)
    {
        eprintln!("link-trace: error: {}: {e}", file.display());
        return Ok(false);
    }
    let Some(rules) = load_rules(&settings.rules) else {
        return Ok(false);
    };
    writeln!(out, "{}: ok", file.display())?;
    writeln!(
        out,
        "filters: pid {:?} uid {:?} comm {:?}",
        settings.pids,
        settings.uids,
        settings
            .comms
            .iter()
            .map(|c| String::from_utf8_lossy(crate::event::trim_nul(c)).into_owned())
            .collect::<Vec<_>>()
    )?;
    writeln!(
        out,
        "ring_bytes {}, stats_interval {} s, alerts_only {}, metrics {}",
        settings.ring_bytes,
        settings.stats_interval,
        settings.alerts_only,
        settings
            .metrics_listen
            .map(|a| format!("http://{a}/metrics"))
            .unwrap_or_else(|| "off".into())
    )?;
    writeln!(out, "rules: {} in force", rules.rules.len())?;
    for output in &settings.outputs {
        let common = output.common();
        writeln!(
            out,
            "output {}: format {}, queue {}{}",
            output.name(),
            common.format,
            common.queue,
            if common.alerts_only {
                ", alerts only"
            } else {
                ""
            }
        )?;
    }
    Ok(true)
}
