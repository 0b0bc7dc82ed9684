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
    output::Format,
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

/// `link-trace replay FILE`: alerts from recorded events.
pub fn replay(
    file: &Path,
    json: bool,
    alerts_only: bool,
    args: &RuleArgs,
    out: &mut impl Write,
) -> std::io::Result<bool> {
    let Some(set) = load_rules(args) else {
        return Ok(false);
    };
    let detector = Detector::new(Engine::new(set), alerts_only);
    let format = if json { Format::Json } else { Format::Text };
    let name = file.display().to_string();
    let summary = if name == "-" {
        replay::replay(std::io::stdin().lock(), "<stdin>", detector, format, out)?
    } else {
        let input = match std::fs::File::open(file) {
            Ok(input) => input,
            Err(e) => {
                eprintln!("link-trace: error: {name}: {e}");
                return Ok(false);
            }
        };
        replay::replay(BufReader::new(input), &name, detector, format, out)?
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
