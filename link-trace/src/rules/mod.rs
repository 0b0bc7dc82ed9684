//! Detection rules: data (TOML) that turns events into alerts.
//!
//! A rule file holds `[[rule]]` tables and an optional top-level
//! `disable = ["id", ...]`. Built-in rules (`builtin.toml`, compiled into
//! the binary) come first, then `/etc/link-trace/rules.d/*.toml` in name
//! order, then each `--rules FILE` in order: a rule whose id is already
//! defined replaces it, and `disable` removes rules defined before. Any
//! error in any file loads nothing.
//!
//! A rule matches one event (stateless), or counts matching events per
//! group within a window of the events' own `boot_ns` (stateful: see
//! `state`). Every match is an `AlertRecord` in the output stream.
//!
//! A rule sees the syscalls its `syscalls` list names: link and linkat by
//! default; the context syscalls (unlink, unlinkat, rename, renameat,
//! renameat2) only when it names them, and the daemon captures those only
//! while a rule in force (or `--context-events`) asks for them.

pub mod compiled;
pub mod condition;
pub mod field;
pub mod screen;
pub mod state;

use std::{
    ops::Range,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};
use toml::Spanned;

use link_trace_common::SyscallId;

use self::{
    condition::{Condition, Located, RawCondition, located, parse_field},
    field::Field,
    screen::{Facts, Screens},
    state::{Cited, Window, WindowState},
};
use crate::event::{AlertRecord, LinkEvent, SCHEMA_VERSION};

/// A set of syscalls, one bit per `SyscallId`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyscallSet(u8);

impl SyscallSet {
    /// What a rule sees unless it says otherwise.
    pub const LINK: SyscallSet = SyscallSet(bit(SyscallId::Link) | bit(SyscallId::Linkat));
    pub const CONTEXT: SyscallSet = SyscallSet(
        bit(SyscallId::Unlink)
            | bit(SyscallId::Unlinkat)
            | bit(SyscallId::Rename)
            | bit(SyscallId::Renameat)
            | bit(SyscallId::Renameat2),
    );
    pub const EMPTY: SyscallSet = SyscallSet(0);

    pub fn of(id: SyscallId) -> SyscallSet {
        SyscallSet(bit(id))
    }

    /// The set holding the syscall named `name` (empty for an unknown name).
    pub fn of_name(name: &str) -> SyscallSet {
        SyscallId::from_name(name).map_or(Self::EMPTY, Self::of)
    }

    pub fn union(self, other: SyscallSet) -> SyscallSet {
        SyscallSet(self.0 | other.0)
    }

    pub fn intersection(self, other: SyscallSet) -> SyscallSet {
        SyscallSet(self.0 & other.0)
    }

    pub fn without(self, other: SyscallSet) -> SyscallSet {
        SyscallSet(self.0 & !other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn overlaps(self, other: SyscallSet) -> bool {
        self.0 & other.0 != 0
    }

    pub fn ids(self) -> impl Iterator<Item = SyscallId> {
        SyscallId::ALL
            .into_iter()
            .filter(move |id| self.0 & bit(*id) != 0)
    }

    /// "unlink, unlinkat, …" in SyscallId order.
    pub fn names(self) -> String {
        self.ids()
            .map(SyscallId::name)
            .collect::<Vec<_>>()
            .join(", ")
    }
}

const fn bit(id: SyscallId) -> u8 {
    1 << (id as u32)
}

/// The built-in rules, as shipped.
pub const BUILTIN_RULES: &str = include_str!("builtin.toml");
pub const BUILTIN_NAME: &str = "<built-in>";
/// Loaded after the built-in rules when present.
pub const RULES_DIR: &str = "/etc/link-trace/rules.d";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Low,
    Medium,
    High,
    Critical,
}

impl Severity {
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Low => "low",
            Severity::Medium => "medium",
            Severity::High => "high",
            Severity::Critical => "critical",
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    #[error("{file}:{line}:{column}: {message}")]
    Invalid {
        file: String,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("{file}: {source}")]
    Read {
        file: String,
        #[source]
        source: std::io::Error,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    #[serde(default)]
    rule: Vec<RawRule>,
    #[serde(default)]
    disable: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    id: Spanned<String>,
    title: String,
    #[serde(default)]
    description: String,
    severity: Severity,
    #[serde(default)]
    mitre: Vec<Spanned<String>>,
    #[serde(default)]
    tags: Vec<String>,
    message: Option<Spanned<String>>,
    condition: Spanned<RawCondition>,
    window_seconds: Option<Spanned<u64>>,
    threshold: Option<Spanned<u64>>,
    #[serde(default)]
    group_by: Vec<Spanned<String>>,
    distinct: Option<Spanned<String>>,
    then: Option<Spanned<RawCondition>>,
    /// The syscalls the rule sees; link and linkat when absent.
    syscalls: Option<Spanned<Vec<Spanned<String>>>>,
}

/// A piece of an alert message template.
#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Text(String),
    Field(Field),
}

/// One compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    pub id: String,
    pub title: String,
    pub description: String,
    pub severity: Severity,
    pub mitre: Vec<String>,
    pub tags: Vec<String>,
    /// Where it was defined: `<built-in>` or a file name.
    pub origin: String,
    message: Vec<Segment>,
    condition: Condition,
    window: Option<Window>,
    then: Option<Condition>,
    /// The syscalls whose records the rule is evaluated on.
    pub syscalls: SyscallSet,
}

impl Rule {
    pub fn is_stateful(&self) -> bool {
        self.window.is_some()
    }

    /// "window 10s, threshold 3 by newpath_resolved" for listings.
    pub fn window_summary(&self) -> Option<String> {
        let w = self.window.as_ref()?;
        let mut text = format!("{} within {}s", w.threshold, w.window_ns / 1_000_000_000);
        if let Some(distinct) = w.distinct {
            text = format!("{text} distinct {}", field_name(distinct));
        }
        if !w.group_by.is_empty() {
            let names: Vec<String> = w.group_by.iter().map(|f| field_name(*f)).collect();
            text = format!("{text} per {}", names.join("+"));
        }
        if self.then.is_some() {
            text.push_str(", then a match of `then`");
        }
        Some(text)
    }

    /// "link, linkat, unlink, …" when the rule sees more (or other) syscalls
    /// than link and linkat, for listings.
    pub fn syscalls_summary(&self) -> Option<String> {
        (self.syscalls != SyscallSet::LINK).then(|| self.syscalls.names())
    }

    fn message(&self, e: &LinkEvent) -> String {
        let mut out = String::new();
        for segment in &self.message {
            match segment {
                Segment::Text(text) => out.push_str(text),
                Segment::Field(field) => field::render(field.get(e), &mut out),
            }
        }
        out
    }
}

fn field_name(field: Field) -> String {
    Field::names()
        .into_iter()
        .find(|n| Field::parse(n) == Some(field))
        .unwrap_or_default()
}

/// `{field}` placeholders; `{{` and `}}` are literal braces.
fn parse_template(template: &Spanned<String>) -> Result<Vec<Segment>, Located> {
    let mut segments = Vec::new();
    let mut text = String::new();
    let mut chars = template.get_ref().chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '{' if chars.peek() == Some(&'{') => {
                chars.next();
                text.push('{');
            }
            '}' if chars.peek() == Some(&'}') => {
                chars.next();
                text.push('}');
            }
            '{' => {
                let name: String = chars.by_ref().take_while(|&c| c != '}').collect();
                let named = Spanned::new(template.span(), name);
                let field = parse_field(&named)?;
                if !text.is_empty() {
                    segments.push(Segment::Text(std::mem::take(&mut text)));
                }
                segments.push(Segment::Field(field));
            }
            '}' => return located(template.span(), "unmatched `}` in message (write `}}`)"),
            c => text.push(c),
        }
    }
    if !text.is_empty() {
        segments.push(Segment::Text(text));
    }
    Ok(segments)
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// T1234 or T1234.567.
fn valid_mitre(id: &str) -> bool {
    let bytes = id.as_bytes();
    let digits = |s: &[u8]| s.iter().all(u8::is_ascii_digit);
    match bytes {
        [b'T', rest @ ..] if rest.len() == 4 => digits(rest),
        [b'T', rest @ ..] if rest.len() == 8 => {
            digits(&rest[..4]) && rest[4] == b'.' && digits(&rest[5..])
        }
        _ => false,
    }
}

fn compile_window(raw: &RawRule, rule_span: Range<usize>) -> Result<Option<Window>, Located> {
    let stateful = raw.window_seconds.is_some()
        || raw.threshold.is_some()
        || !raw.group_by.is_empty()
        || raw.distinct.is_some()
        || raw.then.is_some();
    if !stateful {
        return Ok(None);
    }
    let (Some(seconds), Some(threshold)) = (&raw.window_seconds, &raw.threshold) else {
        return located(
            rule_span,
            "a stateful rule (window_seconds, threshold, group_by, distinct, then) needs both window_seconds and threshold",
        );
    };
    if *seconds.get_ref() == 0 || *seconds.get_ref() > 86_400 {
        return located(seconds.span(), "window_seconds must be 1 to 86400");
    }
    let max = state::MAX_ENTRIES as u64;
    if *threshold.get_ref() == 0 || *threshold.get_ref() > max {
        return located(threshold.span(), format!("threshold must be 1 to {max}"));
    }
    let group_by = raw
        .group_by
        .iter()
        .map(parse_field)
        .collect::<Result<Vec<_>, _>>()?;
    let distinct = raw.distinct.as_ref().map(parse_field).transpose()?;
    Ok(Some(Window {
        window_ns: seconds.get_ref() * 1_000_000_000,
        threshold: *threshold.get_ref() as usize,
        group_by,
        distinct,
    }))
}

fn compile_syscalls(raw: &RawRule) -> Result<SyscallSet, Located> {
    let Some(list) = &raw.syscalls else {
        return Ok(SyscallSet::LINK);
    };
    if list.get_ref().is_empty() {
        return located(list.span(), "syscalls must name at least one syscall");
    }
    let mut set = SyscallSet::EMPTY;
    for name in list.get_ref() {
        match SyscallId::from_name(name.get_ref()) {
            Some(id) => set = set.union(SyscallSet::of(id)),
            None => {
                let known: Vec<&str> = SyscallId::ALL.iter().map(|id| id.name()).collect();
                return located(
                    name.span(),
                    format!(
                        "unknown syscall `{}`; link-trace captures {}",
                        name.get_ref(),
                        known.join(", ")
                    ),
                );
            }
        }
    }
    Ok(set)
}

fn compile_rule(raw: &RawRule, origin: &str) -> Result<Rule, Located> {
    let id = raw.id.get_ref();
    if !valid_id(id) {
        return located(
            raw.id.span(),
            format!("rule id `{id}` must be letters, digits, '-', '_' or '.'"),
        );
    }
    for technique in &raw.mitre {
        if !valid_mitre(technique.get_ref()) {
            return located(
                technique.span(),
                format!(
                    "`{}` is not a MITRE ATT&CK technique id (T1234 or T1234.567)",
                    technique.get_ref()
                ),
            );
        }
    }
    let message = match &raw.message {
        Some(template) => parse_template(template)?,
        None => vec![Segment::Text(raw.title.clone())],
    };
    Ok(Rule {
        id: id.clone(),
        title: raw.title.clone(),
        description: raw.description.clone(),
        severity: raw.severity,
        mitre: raw.mitre.iter().map(|m| m.get_ref().clone()).collect(),
        tags: raw.tags.clone(),
        origin: origin.to_owned(),
        message,
        condition: Condition::compile(&raw.condition)?,
        window: compile_window(raw, raw.id.span())?,
        then: raw.then.as_ref().map(Condition::compile).transpose()?,
        syscalls: compile_syscalls(raw)?,
    })
}

/// One rule file, compiled.
#[derive(Debug, Clone)]
pub struct RuleFile {
    pub rules: Vec<Rule>,
    pub disable: Vec<String>,
}

/// 1-based line and column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

fn invalid(name: &str, text: &str, span: Range<usize>, message: &str) -> RuleError {
    let (line, column) = line_column(text, span.start);
    RuleError::Invalid {
        file: name.to_owned(),
        line,
        column,
        message: message.to_owned(),
    }
}

/// Parses and compiles one file; `name` is used in errors.
pub fn parse_rules(name: &str, text: &str) -> Result<RuleFile, RuleError> {
    let raw: RawFile = toml::from_str(text)
        .map_err(|e| invalid(name, text, e.span().unwrap_or(0..0), e.message().trim_end()))?;
    let mut rules: Vec<Rule> = Vec::with_capacity(raw.rule.len());
    for raw_rule in &raw.rule {
        if rules.iter().any(|r| &r.id == raw_rule.id.get_ref()) {
            return Err(invalid(
                name,
                text,
                raw_rule.id.span(),
                &format!(
                    "rule id `{}` is defined twice in this file",
                    raw_rule.id.get_ref()
                ),
            ));
        }
        rules.push(
            compile_rule(raw_rule, name).map_err(|e| invalid(name, text, e.span, &e.message))?,
        );
    }
    Ok(RuleFile {
        rules,
        disable: raw.disable.into_iter().map(Spanned::into_inner).collect(),
    })
}

/// Where rules come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub builtin: bool,
    /// Read after the built-in rules, `*.toml` in name order, if it exists.
    pub rules_dir: Option<PathBuf>,
    /// `--rules FILE`, in order.
    pub files: Vec<PathBuf>,
}

/// The rules in force, in order, with what loading them had to say.
#[derive(Debug, Clone, Default)]
pub struct RuleSet {
    pub rules: Vec<Rule>,
    pub files: Vec<PathBuf>,
    pub warnings: Vec<String>,
}

impl RuleSet {
    /// Adds a file's rules: same ids replace, `disable` removes.
    pub fn merge(&mut self, name: &str, file: RuleFile) {
        for rule in file.rules {
            match self.rules.iter_mut().find(|r| r.id == rule.id) {
                Some(slot) => *slot = rule,
                None => self.rules.push(rule),
            }
        }
        for id in file.disable {
            let before = self.rules.len();
            self.rules.retain(|r| r.id != id);
            if self.rules.len() == before {
                self.warnings
                    .push(format!("{name}: disable: no rule `{id}` is defined before"));
            }
        }
    }

    pub fn builtin() -> Result<RuleSet, RuleError> {
        let mut set = RuleSet::default();
        set.merge(BUILTIN_NAME, parse_rules(BUILTIN_NAME, BUILTIN_RULES)?);
        Ok(set)
    }

    /// The context syscalls (unlink, rename) some rule in force sees: what
    /// the daemon must capture for them.
    pub fn context_syscalls(&self) -> SyscallSet {
        self.rules
            .iter()
            .fold(SyscallSet::EMPTY, |set, rule| set.union(rule.syscalls))
            .intersection(SyscallSet::CONTEXT)
    }

    /// The ids of the rules that see any of `syscalls`.
    pub fn rules_seeing(&self, syscalls: SyscallSet) -> Vec<&str> {
        self.rules
            .iter()
            .filter(|rule| rule.syscalls.overlaps(syscalls))
            .map(|rule| rule.id.as_str())
            .collect()
    }
}

fn read_file(path: &Path) -> Result<String, RuleError> {
    std::fs::read_to_string(path).map_err(|source| RuleError::Read {
        file: path.display().to_string(),
        source,
    })
}

/// Parses one file from disk.
pub fn load_file(path: &Path) -> Result<RuleFile, RuleError> {
    parse_rules(&path.display().to_string(), &read_file(path)?)
}

impl Sources {
    /// The rule files, in load order.
    pub fn paths(&self) -> Result<Vec<PathBuf>, RuleError> {
        let mut paths = Vec::new();
        if let Some(dir) = &self.rules_dir
            && dir.is_dir()
        {
            let entries = std::fs::read_dir(dir).map_err(|source| RuleError::Read {
                file: dir.display().to_string(),
                source,
            })?;
            let mut found: Vec<PathBuf> = entries
                .filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "toml"))
                .collect();
            found.sort();
            paths.extend(found);
        }
        paths.extend(self.files.iter().cloned());
        Ok(paths)
    }

    /// Everything, or the first error and nothing.
    pub fn load(&self) -> Result<RuleSet, RuleError> {
        let mut set = if self.builtin {
            RuleSet::builtin()?
        } else {
            RuleSet::default()
        };
        for path in self.paths()? {
            let file = load_file(&path)?;
            set.merge(&path.display().to_string(), file);
            set.files.push(path);
        }
        Ok(set)
    }
}

/// Evaluates the rules in force on each event and keeps their windows.
pub struct Engine {
    rules: Vec<Rule>,
    states: Vec<WindowState>,
    /// The patterns of the rules' glob tests, screened once per event.
    screens: Screens,
    /// Each rule's condition and `then`, compiled for evaluation.
    compiled: Vec<(compiled::Test, Option<compiled::Test>)>,
    /// Evaluate with `Condition::eval` instead (the reference the tests
    /// compare the compiled conditions with).
    #[cfg(test)]
    reference: bool,
    pub alerts_raised: u64,
    /// Evictions of rules since replaced.
    evictions_before: u64,
}

impl Engine {
    pub fn new(mut set: RuleSet) -> Self {
        let states = set.rules.iter().map(|_| WindowState::default()).collect();
        let screens = Screens::build(&mut set.rules);
        Self {
            compiled: compile_rules(&set.rules, &screens),
            rules: set.rules,
            states,
            screens,
            #[cfg(test)]
            reference: false,
            alerts_raised: 0,
            evictions_before: 0,
        }
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Puts a new rule set in force. A stateful rule whose id and window
    /// parameters are unchanged keeps its window state.
    pub fn replace(&mut self, mut set: RuleSet) {
        self.screens = Screens::build(&mut set.rules);
        self.compiled = compile_rules(&set.rules, &self.screens);
        let mut old: Vec<(Rule, WindowState)> = std::mem::take(&mut self.rules)
            .into_iter()
            .zip(std::mem::take(&mut self.states))
            .collect();
        self.states = set
            .rules
            .iter()
            .map(|rule| {
                let kept = old
                    .iter()
                    .position(|(o, _)| o.id == rule.id && o.window == rule.window);
                match kept {
                    Some(index) => old.swap_remove(index).1,
                    None => WindowState::default(),
                }
            })
            .collect();
        self.evictions_before += old.iter().map(|(_, s)| s.evictions).sum::<u64>();
        self.rules = set.rules;
    }

    /// Window groups and events evicted to bound memory, since start.
    pub fn evictions(&self) -> u64 {
        self.evictions_before + self.states.iter().map(|s| s.evictions).sum::<u64>()
    }

    /// Appends to `alerts` every alert this event (or context record)
    /// raises, in rule order; only rules that see its syscall judge it.
    pub fn evaluate(&mut self, e: &LinkEvent, alerts: &mut Vec<AlertRecord>) {
        let before = alerts.len();
        let syscall = SyscallSet::of_name(e.syscall);
        let mut facts = Facts::new(e, Some(&self.screens));
        #[cfg(test)]
        let reference = self.reference;
        #[cfg(not(test))]
        let reference = false;
        let judge = |compiled: &compiled::Test, written: &Condition, facts: &mut Facts| {
            if reference {
                written.eval(facts)
            } else {
                compiled(facts)
            }
        };
        let rules = self.rules.iter().zip(&self.compiled);
        for (index, ((rule, (condition, then)), state)) in
            rules.zip(self.states.iter_mut()).enumerate()
        {
            if !rule.syscalls.overlaps(syscall) {
                continue;
            }
            let holds = |facts: &mut Facts| {
                facts.may_hold(index) && judge(condition, &rule.condition, facts)
            };
            let seqs = match &rule.window {
                None => holds(&mut facts).then(|| vec![Cited::of(e)]),
                Some(window) => {
                    let then = rule
                        .then
                        .as_ref()
                        .zip(then.as_ref())
                        .filter(|(written, then)| judge(then, written, &mut facts))
                        .and_then(|_| state.then(window, e));
                    then.or_else(|| {
                        holds(&mut facts)
                            .then(|| state.count(window, rule.then.is_some(), e))
                            .flatten()
                    })
                }
            };
            if let Some(seqs) = seqs {
                alerts.push(alert(rule, e, seqs));
            }
        }
        self.alerts_raised += (alerts.len() - before) as u64;
    }
}

/// Each rule's condition and `then`, compiled (after `Screens::build`).
fn compile_rules(
    rules: &[Rule],
    screens: &Screens,
) -> Vec<(compiled::Test, Option<compiled::Test>)> {
    rules
        .iter()
        .map(|rule| {
            let then = rule.then.as_ref().map(|t| compiled::compile(t, screens));
            (compiled::compile(&rule.condition, screens), then)
        })
        .collect()
}

fn lossy(bytes: Option<&[u8]>) -> Option<String> {
    bytes.map(|b| String::from_utf8_lossy(b).into_owned())
}

fn alert(rule: &Rule, e: &LinkEvent, cited: Vec<Cited>) -> AlertRecord {
    let (context, events): (Vec<Cited>, Vec<Cited>) = cited.into_iter().partition(|c| c.context);
    AlertRecord {
        schema_version: SCHEMA_VERSION,
        time: e.time.clone(),
        rule_id: rule.id.clone(),
        title: rule.title.clone(),
        severity: rule.severity,
        mitre: rule.mitre.clone(),
        tags: rule.tags.clone(),
        message: rule.message(e),
        event_seqs: events.into_iter().map(|c| c.seq).collect(),
        context_seqs: context.into_iter().map(|c| c.seq).collect(),
        syscall: e.syscall,
        pid: e.pid,
        uid: e.uid,
        comm: e.comm.clone(),
        oldpath_resolved: lossy(e.oldpath.resolved.as_deref()),
        newpath_resolved: lossy(e.newpath.resolved.as_deref()),
    }
}

#[cfg(test)]
pub(crate) mod tests;
