//! Elastic Common Schema (ECS 9.4.0) documents, one per record.
//!
//! A link event is `event.kind: event`, `event.category: [file]`,
//! `event.type: [creation]`: the call creates a name. For a hard link
//! `file.path` is that new name (the link being created) and
//! `file.target_path` the existing file it is a new name for, the same
//! roles ECS gives a symlink's path and target. `file.*` facts (inode,
//! device, owner, mode, type) describe the new name after a successful call;
//! the source's facts are `link_trace.file`. Alerts are `event.kind: alert`
//! with `rule.*` and `threat.*`; loss and stats records are
//! `event.kind: metric`. Everything else link-trace knows goes under
//! `link_trace.*` (custom fields, outside ECS's names, as ECS allows).
//! `event.dataset` values use `_` because ECS forbids `-` in a dataset.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    ARCHITECTURE, AsText, Extras, HostInfo, LinkExtras, PRODUCT, PRODUCT_VERSION, PathParts,
    errno_description, event_message, location, loss_message, mitre_parts, stats_message,
    write_line,
};
use crate::{
    event::{AlertRecord, FileInfo, LinkEvent, Record},
    rules::Severity,
};

/// The ECS version the documents follow (`ecs.version`).
pub const ECS_VERSION: &str = "9.4.0";

const MODULE: &str = "link_trace";

/// Appends one ECS document for `record` and a newline.
pub fn render(record: &Record, host: &HostInfo, out: &mut Vec<u8>) {
    match record {
        Record::Event(event) => write_line(&link_document(event, host), out),
        Record::Alert(alert) => write_line(&alert_document(alert, host), out),
        Record::Context(context) => write_line(&context_document(&context.0, host), out),
        Record::Loss(loss) => write_line(
            &metric_document(
                &loss.time,
                "link_trace.loss",
                loss_message(loss),
                host,
                Extras::Loss(loss),
            ),
            out,
        ),
        Record::Stats(stats) => write_line(
            &metric_document(
                &stats.time,
                "link_trace.stats",
                stats_message(stats),
                host,
                Extras::Stats(stats),
            ),
            out,
        ),
    }
}

#[derive(Debug, Serialize)]
struct Document<'a> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    ecs: Ecs,
    message: Cow<'a, str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    tags: &'a [String],
    event: Event<'a>,
    agent: Agent,
    /// `Host`, rendered once per HostInfo.
    host: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<Error<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<Container<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<Rule<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    threat: Option<Threat<'a>>,
    link_trace: Extras<'a>,
}

#[derive(Debug, Serialize)]
struct Ecs {
    version: &'static str,
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    kind: &'static str,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    category: &'static [&'static str],
    #[serde(rename = "type", skip_serializing_if = "<[_]>::is_empty")]
    event_type: &'static [&'static str],
    #[serde(skip_serializing_if = "Option::is_none")]
    action: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    /// Nanoseconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    duration: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    severity: Option<u8>,
    module: &'static str,
    dataset: &'static str,
}

#[derive(Debug, Serialize)]
struct Agent {
    #[serde(rename = "type")]
    agent_type: &'static str,
    version: &'static str,
}

const AGENT: Agent = Agent {
    agent_type: PRODUCT,
    version: PRODUCT_VERSION,
};

#[derive(Debug, Serialize)]
pub(super) struct Host<'a> {
    hostname: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot: Option<Boot<'a>>,
    os: Os<'a>,
    architecture: &'static str,
}

#[derive(Debug, Serialize)]
struct Boot<'a> {
    id: &'a str,
}

#[derive(Debug, Serialize)]
struct Os<'a> {
    #[serde(rename = "type")]
    os_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel: Option<&'a str>,
}

impl<'a> Host<'a> {
    pub(super) fn new(host: &'a HostInfo) -> Self {
        Self {
            hostname: &host.hostname,
            name: &host.hostname,
            id: host.machine_id.as_deref(),
            boot: host.boot_id.as_deref().map(|id| Boot { id }),
            os: Os {
                os_type: "linux",
                kernel: host.kernel_release.as_deref(),
            },
            architecture: ARCHITECTURE,
        }
    }
}

/// `{ "id": "1000" }`: user, group and process user ids are keywords.
#[derive(Debug, Serialize)]
struct Id {
    id: AsText<u32>,
}

fn id(value: Option<u32>) -> Option<Id> {
    value.map(|v| Id { id: AsText(v) })
}

#[derive(Debug, Serialize)]
struct Pid {
    pid: u32,
}

#[derive(Debug, Serialize)]
struct ThreadId {
    id: u32,
}

#[derive(Debug, Serialize)]
struct Process<'a> {
    pid: u32,
    /// The thread's comm.
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<ThreadId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Pid>,
    /// Effective uid.
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    real_user: Option<Id>,
    /// Effective gid.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    real_group: Option<Id>,
}

#[derive(Debug, Serialize)]
struct User {
    /// Real uid.
    id: AsText<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    effective: Option<Id>,
}

#[derive(Debug, Default, Serialize)]
struct File<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    directory: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    target_path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    inode: Option<AsText<u64>>,
    /// "major:minor".
    #[serde(skip_serializing_if = "Option::is_none")]
    device: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<AsText<u32>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gid: Option<AsText<u32>>,
    /// Permission bits in octal, e.g. "0644".
    #[serde(skip_serializing_if = "Option::is_none")]
    mode: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    file_type: Option<&'static str>,
}

impl<'a> File<'a> {
    /// `path` and its name and directory; `target` as `target_path`.
    fn at(path: Option<Cow<'a, str>>, target: Option<Cow<'a, str>>) -> Self {
        let parts = PathParts::of(path.as_ref());
        Self {
            path,
            name: parts.name,
            directory: parts.directory,
            target_path: target,
            ..Self::default()
        }
    }

    fn with_facts(mut self, facts: &'a FileInfo) -> Self {
        self.inode = Some(AsText(facts.ino));
        self.device = Some(&facts.dev);
        self.uid = Some(AsText(facts.uid));
        self.gid = Some(AsText(facts.gid));
        self.mode = Some(&facts.permissions);
        self.file_type = Some(file_type(facts.file_type));
        self
    }

    fn is_empty(&self) -> bool {
        self.path.is_none() && self.target_path.is_none() && self.inode.is_none()
    }
}

/// ECS names the common types `file`, `dir` and `symlink`; the others keep
/// link-trace's names.
fn file_type(native: &'static str) -> &'static str {
    match native {
        "regular" => "file",
        "directory" => "dir",
        other => other,
    }
}

#[derive(Debug, Serialize)]
struct Error<'a> {
    /// The errno name, e.g. "EEXIST".
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct Container<'a> {
    id: &'a str,
}

#[derive(Debug, Serialize)]
struct Rule<'a> {
    id: &'a str,
    name: &'a str,
    ruleset: &'static str,
}

#[derive(Debug, Serialize)]
struct Threat<'a> {
    framework: &'static str,
    technique: Technique<'a>,
}

#[derive(Debug, Serialize)]
struct Technique<'a> {
    id: Vec<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subtechnique: Option<SubTechnique<'a>>,
}

#[derive(Debug, Serialize)]
struct SubTechnique<'a> {
    id: Vec<&'a str>,
}

fn link_document<'a>(e: &'a LinkEvent, host: &'a HostInfo) -> Document<'a> {
    let p = &e.process;
    let (old, new) = (location(&e.oldpath), location(&e.newpath));
    let message = event_message(e, old.as_deref(), new.as_deref());
    let mut file = File::at(new, old);
    if let Some(facts) = &e.new_file {
        file = file.with_facts(facts);
    }
    Document {
        timestamp: &e.time,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        message: Cow::Owned(message),
        tags: &[],
        event: Event {
            kind: "event",
            category: &["file"],
            event_type: &["creation"],
            action: Some(e.syscall),
            outcome: Some(if e.success { "success" } else { "failure" }),
            sequence: Some(e.seq),
            duration: Some(e.duration_ns),
            severity: None,
            module: MODULE,
            dataset: "link_trace.link",
        },
        agent: AGENT,
        host: &host.ecs_host,
        process: Some(Process {
            pid: e.pid,
            name: &e.comm,
            executable: p.exe.as_deref().map(Cow::Borrowed),
            thread: Some(ThreadId { id: e.tid }),
            parent: p.ppid.map(|pid| Pid { pid }),
            user: id(p.euid),
            real_user: id(Some(e.uid)),
            group: id(p.egid),
            real_group: id(Some(e.gid)),
        }),
        user: Some(User {
            id: AsText(e.uid),
            effective: id(p.euid),
        }),
        group: id(Some(e.gid)),
        file: (!file.is_empty()).then_some(file),
        error: e.errno.as_deref().map(|code| Error {
            code,
            message: errno_description(e.ret),
        }),
        container: p.container_id.as_deref().map(|id| Container { id }),
        rule: None,
        threat: None,
        link_trace: Extras::Link(Box::new(LinkExtras::new(e))),
    }
}

/// An unlink or rename (`--context-events`): `file.path` is the name
/// removed (unlink) or the new name (rename, event.type change); the old
/// name of a rename is in `link_trace.oldpath`.
fn context_document<'a>(e: &'a LinkEvent, host: &'a HostInfo) -> Document<'a> {
    let mut document = link_document(e, host);
    let unlink = !e.has_newpath();
    document.event.event_type = if unlink { &["deletion"] } else { &["change"] };
    document.event.dataset = "link_trace.context";
    let path = if unlink {
        location(&e.oldpath)
    } else {
        location(&e.newpath)
    };
    let file = File::at(path, None);
    document.file = (!file.is_empty()).then_some(file);
    document
}

/// The rule severity as a number, 1 (info) to 5 (critical), the scale of
/// OCSF's severity_id so both formats agree.
pub(crate) fn severity_number(severity: Severity) -> u8 {
    match severity {
        Severity::Info => 1,
        Severity::Low => 2,
        Severity::Medium => 3,
        Severity::High => 4,
        Severity::Critical => 5,
    }
}

fn alert_document<'a>(a: &'a AlertRecord, host: &'a HostInfo) -> Document<'a> {
    let mut techniques: Vec<&str> = Vec::new();
    let mut subtechniques: Vec<&str> = Vec::new();
    for id in &a.mitre {
        let (technique, sub) = mitre_parts(id);
        if !techniques.contains(&technique) {
            techniques.push(technique);
        }
        subtechniques.extend(sub);
    }
    let file = File::at(
        a.newpath_resolved.as_deref().map(Cow::Borrowed),
        a.oldpath_resolved.as_deref().map(Cow::Borrowed),
    );
    Document {
        timestamp: &a.time,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        message: Cow::Borrowed(&a.message),
        tags: &a.tags,
        event: Event {
            kind: "alert",
            category: &["file", "intrusion_detection"],
            event_type: &["info"],
            action: None,
            outcome: None,
            sequence: None,
            duration: None,
            severity: Some(severity_number(a.severity)),
            module: MODULE,
            dataset: "link_trace.alert",
        },
        agent: AGENT,
        host: &host.ecs_host,
        process: Some(Process {
            pid: a.pid,
            name: &a.comm,
            executable: None,
            thread: None,
            parent: None,
            user: None,
            real_user: id(Some(a.uid)),
            group: None,
            real_group: None,
        }),
        user: Some(User {
            id: AsText(a.uid),
            effective: None,
        }),
        group: None,
        file: (!file.is_empty()).then_some(file),
        error: None,
        container: None,
        rule: Some(Rule {
            id: &a.rule_id,
            name: &a.title,
            ruleset: PRODUCT,
        }),
        threat: (!techniques.is_empty()).then(|| Threat {
            framework: "MITRE ATT&CK",
            technique: Technique {
                id: techniques,
                subtechnique: (!subtechniques.is_empty())
                    .then_some(SubTechnique { id: subtechniques }),
            },
        }),
        link_trace: Extras::Alert(a),
    }
}

fn metric_document<'a>(
    time: &'a str,
    dataset: &'static str,
    message: String,
    host: &'a HostInfo,
    extras: Extras<'a>,
) -> Document<'a> {
    Document {
        timestamp: time,
        ecs: Ecs {
            version: ECS_VERSION,
        },
        message: Cow::Owned(message),
        tags: &[],
        event: Event {
            kind: "metric",
            category: &[],
            event_type: &[],
            action: None,
            outcome: None,
            sequence: None,
            duration: None,
            severity: None,
            module: MODULE,
            dataset,
        },
        agent: AGENT,
        host: &host.ecs_host,
        process: None,
        user: None,
        group: None,
        file: None,
        error: None,
        container: None,
        rule: None,
        threat: None,
        link_trace: extras,
    }
}
