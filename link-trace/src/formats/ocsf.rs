//! OCSF 1.8.0 events, one per record.
//!
//! **Link events: File System Activity (class_uid 1001), activity_id 99
//! (Other) with activity_name "Link".** The class's activity enum has no
//! link: Create is "a request to create a new file", and a hard link creates
//! no file, only a new name for an existing one (the open OCSF issue
//! ocsf/ocsf-schema#1425 describes this gap; 1.8.0 has no link activity).
//! 99 Other is what the enum provides for an activity it does not list.
//! The two names map onto the class's own attributes the way Rename uses
//! them: `file` is "the file that is the target of the activity", the
//! existing file that gains a name (oldpath, with its facts), and
//! `file_result` is "the resulting file object when the activity was allowed
//! and successful", the new name (newpath, with the facts of a stat after
//! the call), present only when the call succeeded. The name a failed call
//! tried to create is in `unmapped.link_trace.newpath`, with everything else
//! link-trace knows but OCSF has no attribute for. Inode facts OCSF's file
//! object lacks (device, mode, setuid, setgid, gid, link count, where the
//! facts came from) are in the file's `xattributes`. Paths are the
//! kernel-resolved absolute paths when known, else the argument as passed.
//!
//! **Alerts: Detection Finding (2004)**, activity 1 Create, with the rule
//! in `finding_info.analytic`, MITRE ids in `finding_info.attacks` and the
//! triggering events' `seq` in `finding_info.related_events`.
//!
//! **Loss records: Application Error (6008)**, activity 1 General Error,
//! severity High: OCSF's class for a producer reporting its own trouble
//! (here, events it could not deliver). **Stats records: Base Event (0)**,
//! activity 99 Other ("Stats"), severity Informational. Both carry the
//! native record in `unmapped.link_trace`, so every loss stays counted in
//! an OCSF stream too.

use std::borrow::Cow;

use serde::Serialize;
use serde_json::value::RawValue;

use super::{
    AsText, Extras, HostInfo, LinkExtras, PRODUCT, PRODUCT_VERSION, PathParts, epoch_ms,
    errno_description, event_message, location, loss_message, mitre_parts, stats_message,
    write_line,
};
use crate::{
    event::{AlertRecord, FileInfo, LinkEvent, Record},
    formats::ecs::severity_number,
};

/// The OCSF schema version the events follow (`metadata.version`).
pub const OCSF_VERSION: &str = "1.8.0";

/// One class and activity: the classification attributes of an event.
#[derive(Debug, Serialize)]
struct Classification {
    class_uid: u32,
    class_name: &'static str,
    category_uid: u32,
    category_name: &'static str,
    activity_id: u32,
    activity_name: &'static str,
    /// class_uid * 100 + activity_id.
    type_uid: u32,
    type_name: &'static str,
}

/// A File System Activity (class 1001) classification; type_uid follows
/// from the class and the activity.
const fn file_system_activity(
    activity_id: u32,
    activity_name: &'static str,
    type_name: &'static str,
) -> Classification {
    Classification {
        class_uid: 1001,
        class_name: "File System Activity",
        category_uid: 1,
        category_name: "System Activity",
        activity_id,
        activity_name,
        type_uid: 1001 * 100 + activity_id,
        type_name,
    }
}

const FILE_LINK: Classification = file_system_activity(99, "Link", "File System Activity: Other");

/// Context records (`--context-events`): the class's own Delete and
/// Rename activities; `file` is the name removed or the old name,
/// `file_result` the new name of a rename.
const FILE_DELETE: Classification =
    file_system_activity(4, "Delete", "File System Activity: Delete");
const FILE_RENAME: Classification =
    file_system_activity(5, "Rename", "File System Activity: Rename");

const FINDING_CREATED: Classification = Classification {
    class_uid: 2004,
    class_name: "Detection Finding",
    category_uid: 2,
    category_name: "Findings",
    activity_id: 1,
    activity_name: "Create",
    type_uid: 2004 * 100 + 1,
    type_name: "Detection Finding: Create",
};

const LOSS_ERROR: Classification = Classification {
    class_uid: 6008,
    class_name: "Application Error",
    category_uid: 6,
    category_name: "Application Activity",
    activity_id: 1,
    activity_name: "General Error",
    type_uid: 6008 * 100 + 1,
    type_name: "Application Error: General Error",
};

const STATS_EVENT: Classification = Classification {
    class_uid: 0,
    class_name: "Base Event",
    category_uid: 0,
    category_name: "Uncategorized",
    activity_id: 99,
    activity_name: "Stats",
    type_uid: 99,
    type_name: "Base Event: Other",
};

/// Appends one OCSF event for `record` and a newline.
pub fn render(record: &Record, host: &HostInfo, out: &mut Vec<u8>) {
    match record {
        Record::Event(event) => write_line(&link_event(event, host), out),
        Record::Alert(alert) => write_line(&finding(alert, host), out),
        Record::Context(context) => {
            let e = &context.0;
            let mut event = link_event(e, host);
            if !e.has_newpath() {
                event.class = &FILE_DELETE;
                event.file_result = None;
            } else {
                event.class = &FILE_RENAME;
            }
            write_line(&event, out);
        }
        Record::Loss(loss) => write_line(
            &Event::plain(
                &LOSS_ERROR,
                &loss.time,
                Severity::HIGH,
                loss_message(loss),
                host,
                Extras::Loss(loss),
            ),
            out,
        ),
        Record::Stats(stats) => write_line(
            &Event::plain(
                &STATS_EVENT,
                &stats.time,
                Severity::INFORMATIONAL,
                stats_message(stats),
                host,
                Extras::Stats(stats),
            ),
            out,
        ),
    }
}

#[derive(Debug, Clone, Copy)]
struct Severity {
    id: u8,
    caption: &'static str,
}

impl Severity {
    const INFORMATIONAL: Severity = Severity {
        id: 1,
        caption: "Informational",
    };
    const HIGH: Severity = Severity {
        id: 4,
        caption: "High",
    };

    fn of_rule(severity: crate::rules::Severity) -> Self {
        let id = severity_number(severity);
        let caption = match id {
            1 => "Informational",
            2 => "Low",
            3 => "Medium",
            4 => "High",
            _ => "Critical",
        };
        Self { id, caption }
    }
}

#[derive(Debug, Serialize)]
struct Event<'a> {
    #[serde(flatten)]
    class: &'static Classification,
    /// Milliseconds since the epoch.
    time: i64,
    /// The time is UTC.
    timezone_offset: i32,
    severity_id: u8,
    severity: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_id: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    /// The errno name of a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<&'a str>,
    /// strerror(3) of a failed call.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_detail: Option<&'static str>,
    message: Cow<'a, str>,
    metadata: Metadata<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    actor: Option<Actor<'a>>,
    /// `Device`, rendered once per HostInfo.
    device: &'a RawValue,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_result: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_alert: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    finding_info: Option<FindingInfo<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidences: Option<[Evidence<'a>; 1]>,
    unmapped: Unmapped<'a>,
}

#[derive(Debug, Serialize)]
struct Unmapped<'a> {
    link_trace: Extras<'a>,
}

#[derive(Debug, Serialize)]
struct Metadata<'a> {
    version: &'static str,
    product: Product,
    /// The record's time as written, with nanoseconds.
    original_time: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    sequence: Option<u64>,
    profiles: &'static [&'static str],
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    extensions: &'static [Extension],
}

#[derive(Debug, Serialize)]
struct Product {
    name: &'static str,
    vendor_name: &'static str,
    version: &'static str,
}

const PRODUCT_OBJECT: Product = Product {
    name: PRODUCT,
    vendor_name: PRODUCT,
    version: PRODUCT_VERSION,
};

#[derive(Debug, Serialize)]
struct Extension {
    name: &'static str,
    uid: &'static str,
    version: &'static str,
}

/// The linux extension brings the `linux/linux_users` profile (process
/// euid, egid, auid, group).
const LINUX_EXTENSION: [Extension; 1] = [Extension {
    name: "linux",
    uid: "1",
    version: OCSF_VERSION,
}];

/// Profiles in use: `host` for `device`, `linux/linux_users` for the
/// caller's credentials, `container` for `process.container`.
const PROFILES_HOST: &[&str] = &["host"];
const PROFILES_CALLER: &[&str] = &["host", "linux/linux_users"];
const PROFILES_CALLER_IN_CONTAINER: &[&str] = &["container", "host", "linux/linux_users"];

impl<'a> Metadata<'a> {
    fn new(
        original_time: &'a str,
        sequence: Option<u64>,
        profiles: &'static [&'static str],
    ) -> Self {
        Self {
            version: OCSF_VERSION,
            product: PRODUCT_OBJECT,
            original_time,
            sequence,
            profiles,
            extensions: if profiles.contains(&"linux/linux_users") {
                &LINUX_EXTENSION
            } else {
                &[]
            },
        }
    }
}

#[derive(Debug, Serialize)]
pub(super) struct Device<'a> {
    hostname: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    device_type: &'static str,
    /// The machine id.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    boot_uid: Option<&'a str>,
    os: Os<'a>,
}

#[derive(Debug, Serialize)]
struct Os<'a> {
    name: &'static str,
    type_id: u16,
    #[serde(rename = "type")]
    os_type: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    kernel_release: Option<&'a str>,
}

impl<'a> Device<'a> {
    pub(super) fn new(host: &'a HostInfo) -> Self {
        Self {
            hostname: &host.hostname,
            type_id: 0,
            device_type: "Unknown",
            uid: host.machine_id.as_deref(),
            boot_uid: host.boot_id.as_deref(),
            os: Os {
                name: "Linux",
                type_id: 200,
                os_type: "Linux",
                kernel_release: host.kernel_release.as_deref(),
            },
        }
    }
}

#[derive(Debug, Serialize)]
struct Actor<'a> {
    process: Process<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<User>,
}

#[derive(Debug, Serialize)]
struct User {
    uid: AsText<u32>,
}

#[derive(Debug, Serialize)]
struct Pid {
    pid: u32,
}

#[derive(Debug, Serialize)]
struct ContainerRef<'a> {
    uid: &'a str,
}

#[derive(Debug, Serialize)]
struct Process<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    tid: Option<u32>,
    /// The thread's comm.
    name: &'a str,
    /// The executable.
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_process: Option<Pid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    euid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    egid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auid: Option<u32>,
    /// The real gid.
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<GroupRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    container: Option<ContainerRef<'a>>,
}

#[derive(Debug, Serialize)]
struct GroupRef {
    uid: AsText<u32>,
}

#[derive(Debug, Serialize)]
struct File<'a> {
    /// Required by OCSF; empty when the path argument could not be read.
    name: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    path: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent_folder: Option<Cow<'a, str>>,
    type_id: u8,
    #[serde(rename = "type")]
    file_type: &'static str,
    /// The inode number.
    #[serde(skip_serializing_if = "Option::is_none")]
    uid: Option<AsText<u64>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    owner: Option<User>,
    #[serde(skip_serializing_if = "Option::is_none")]
    xattributes: Option<XAttributes<'a>>,
}

/// The inode facts OCSF's file object has no attribute for, as extended
/// attributes; `hard_link_count` is the name OCSF's dictionary suggests.
#[derive(Debug, Serialize)]
struct XAttributes<'a> {
    device: &'a str,
    mode: u32,
    permissions: &'a str,
    setuid: bool,
    setgid: bool,
    gid: u32,
    hard_link_count: u32,
    facts_from: &'static str,
}

impl<'a> File<'a> {
    fn at(path: Option<Cow<'a, str>>) -> Self {
        let (type_id, file_type) = UNKNOWN_TYPE;
        let parts = PathParts::of(path.as_ref());
        Self {
            name: parts.name.unwrap_or_default(),
            path,
            parent_folder: parts.directory,
            type_id,
            file_type,
            uid: None,
            owner: None,
            xattributes: None,
        }
    }

    fn with_facts(mut self, facts: Option<&'a FileInfo>) -> Self {
        let Some(facts) = facts else { return self };
        (self.type_id, self.file_type) = file_type(facts.file_type);
        self.uid = Some(AsText(facts.ino));
        self.owner = Some(User {
            uid: AsText(facts.uid),
        });
        self.xattributes = Some(XAttributes {
            device: &facts.dev,
            mode: facts.mode,
            permissions: &facts.permissions,
            setuid: facts.setuid,
            setgid: facts.setgid,
            gid: facts.gid,
            hard_link_count: facts.nlink,
            facts_from: facts.facts_from,
        });
        self
    }
}

const UNKNOWN_TYPE: (u8, &str) = (0, "Unknown");

/// OCSF's file type_id and its caption.
fn file_type(native: &str) -> (u8, &'static str) {
    match native {
        "regular" => (1, "Regular File"),
        "directory" => (2, "Folder"),
        "char_device" => (3, "Character Device"),
        "block_device" => (4, "Block Device"),
        "socket" => (5, "Local Socket"),
        "fifo" => (6, "Named Pipe"),
        "symlink" => (7, "Symbolic Link"),
        _ => UNKNOWN_TYPE,
    }
}

#[derive(Debug, Serialize)]
struct FindingInfo<'a> {
    uid: String,
    title: &'a str,
    analytic: Analytic<'a>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    attacks: Vec<Attack<'a>>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    types: &'a [String],
    related_events: Vec<RelatedEvent>,
}

#[derive(Debug, Serialize)]
struct Analytic<'a> {
    uid: &'a str,
    name: &'a str,
    type_id: u8,
    #[serde(rename = "type")]
    analytic_type: &'static str,
}

#[derive(Debug, Serialize)]
struct Attack<'a> {
    technique: Uid<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sub_technique: Option<Uid<'a>>,
}

#[derive(Debug, Serialize)]
struct Uid<'a> {
    uid: &'a str,
}

/// A triggering event, by its link-trace `seq`.
#[derive(Debug, Serialize)]
struct RelatedEvent {
    uid: AsText<u64>,
    type_uid: u32,
    type_name: &'static str,
}

#[derive(Debug, Serialize)]
struct Evidence<'a> {
    actor: Actor<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
}

fn link_event<'a>(e: &'a LinkEvent, host: &'a HostInfo) -> Event<'a> {
    let p = &e.process;
    let executable = p.exe.as_deref().map(|exe| {
        let mut file = File::at(Some(Cow::Borrowed(exe)));
        // Only regular files can be executed.
        (file.type_id, file.file_type) = file_type("regular");
        file
    });
    let container = p.container_id.as_deref().map(|uid| ContainerRef { uid });
    let profiles = if container.is_some() {
        PROFILES_CALLER_IN_CONTAINER
    } else {
        PROFILES_CALLER
    };
    let (old, new) = (location(&e.oldpath), location(&e.newpath));
    let message = event_message(e, old.as_deref(), new.as_deref());
    let (status_id, status) = if e.success {
        (1, "Success")
    } else {
        (2, "Failure")
    };
    Event {
        class: &FILE_LINK,
        time: epoch_ms(&e.time).unwrap_or(0),
        timezone_offset: 0,
        severity_id: Severity::INFORMATIONAL.id,
        severity: Severity::INFORMATIONAL.caption,
        status_id: Some(status_id),
        status: Some(status),
        status_code: e.errno.as_deref(),
        status_detail: errno_description(e.ret),
        message: Cow::Owned(message),
        metadata: Metadata::new(&e.time, Some(e.seq), profiles),
        actor: Some(Actor {
            process: Process {
                pid: e.pid,
                tid: Some(e.tid),
                name: &e.comm,
                file: executable,
                parent_process: p.ppid.map(|pid| Pid { pid }),
                euid: p.euid,
                egid: p.egid,
                auid: p.auid,
                group: Some(GroupRef { uid: AsText(e.gid) }),
                container,
            },
            user: Some(User { uid: AsText(e.uid) }),
        }),
        device: &host.ocsf_device,
        file: Some(File::at(old).with_facts(e.file.as_ref())),
        file_result: e
            .success
            .then(|| File::at(new).with_facts(e.new_file.as_ref())),
        is_alert: None,
        finding_info: None,
        evidences: None,
        unmapped: Unmapped {
            // file and file_result hold every fact of both files.
            link_trace: Extras::Link(Box::new(LinkExtras::without_file_facts(e))),
        },
    }
}

fn finding<'a>(a: &'a AlertRecord, host: &'a HostInfo) -> Event<'a> {
    let severity = Severity::of_rule(a.severity);
    let attacks = a
        .mitre
        .iter()
        .map(|id| {
            let (technique, sub) = mitre_parts(id);
            Attack {
                technique: Uid { uid: technique },
                sub_technique: sub.map(|uid| Uid { uid }),
            }
        })
        .collect();
    let last_seq = a.event_seqs.last().copied().unwrap_or(0);
    Event {
        class: &FINDING_CREATED,
        time: epoch_ms(&a.time).unwrap_or(0),
        timezone_offset: 0,
        severity_id: severity.id,
        severity: severity.caption,
        // A finding's status is its review state: new.
        status_id: Some(1),
        status: Some("New"),
        status_code: None,
        status_detail: None,
        message: Cow::Borrowed(&a.message),
        metadata: Metadata::new(&a.time, None, PROFILES_HOST),
        actor: None,
        device: &host.ocsf_device,
        file: None,
        file_result: None,
        is_alert: Some(true),
        finding_info: Some(FindingInfo {
            // The rule and the event that completed the match, at its time:
            // unique per host, and the same when a recording is replayed.
            uid: format!("{}:{}:{}", a.rule_id, last_seq, a.time),
            title: &a.title,
            analytic: Analytic {
                uid: &a.rule_id,
                name: &a.title,
                type_id: 1,
                analytic_type: "Rule",
            },
            attacks,
            types: &a.tags,
            related_events: a
                .event_seqs
                .iter()
                .map(|&seq| RelatedEvent {
                    uid: AsText(seq),
                    type_uid: FILE_LINK.type_uid,
                    type_name: FILE_LINK.type_name,
                })
                .collect(),
        }),
        evidences: Some([Evidence {
            actor: Actor {
                process: Process {
                    pid: a.pid,
                    tid: None,
                    name: &a.comm,
                    file: None,
                    parent_process: None,
                    euid: None,
                    egid: None,
                    auid: None,
                    group: None,
                    container: None,
                },
                user: Some(User { uid: AsText(a.uid) }),
            },
            // The file that gained a name, as `file` of the link event.
            file: a
                .oldpath_resolved
                .as_deref()
                .map(|path| File::at(Some(Cow::Borrowed(path)))),
        }]),
        unmapped: Unmapped {
            link_trace: Extras::Alert(a),
        },
    }
}

impl<'a> Event<'a> {
    /// An event of `class` with no actor or file: loss and stats records.
    fn plain(
        class: &'static Classification,
        time: &'a str,
        severity: Severity,
        message: String,
        host: &'a HostInfo,
        extras: Extras<'a>,
    ) -> Self {
        Self {
            class,
            time: epoch_ms(time).unwrap_or(0),
            timezone_offset: 0,
            severity_id: severity.id,
            severity: severity.caption,
            status_id: None,
            status: None,
            status_code: None,
            status_detail: None,
            message: Cow::Owned(message),
            metadata: Metadata::new(time, None, PROFILES_HOST),
            actor: None,
            device: &host.ocsf_device,
            file: None,
            file_result: None,
            is_alert: None,
            finding_info: None,
            evidences: None,
            unmapped: Unmapped { link_trace: extras },
        }
    }
}
