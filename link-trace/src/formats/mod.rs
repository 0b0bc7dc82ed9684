//! Documents for other tools: Elastic Common Schema (`ecs`) and OCSF
//! (`ocsf`), beside the native JSON of `output`.
//!
//! Each renderer appends exactly one JSON document and a newline per record.
//! Documents are built from borrowed serde structs (no `serde_json::Value`
//! trees): the event's strings are borrowed, and non-UTF-8 bytes are
//! rendered lossily with their exact base64 beside them under
//! `link_trace.*`, as the native format does. The standards' definitions
//! the renderers follow are vendored, in part, in `spec/`; `tests.rs`
//! checks every record kind against them.

#[cfg(test)]
mod conformance;
pub mod ecs;
pub mod ocsf;
#[cfg(test)]
mod tests;

use std::{borrow::Cow, fmt::Display};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde::{Serialize, Serializer};
use serde_json::value::RawValue;

use crate::event::{
    AlertRecord, FileInfo, LinkEvent, LossRecord, MismatchExplanation, PathField, Record,
    StatsRecord,
};

/// What the tracer calls itself in documents (ECS `agent.type`, OCSF
/// `metadata.product.name`).
pub const PRODUCT: &str = "link-trace";
pub const PRODUCT_VERSION: &str = env!("CARGO_PKG_VERSION");

/// The machine the documents describe, read once at start-up, with the
/// parts of documents that only depend on it rendered once. Records do not
/// carry it: `replay` describes the machine it runs on.
#[derive(Debug, Clone)]
pub struct HostInfo {
    hostname: String,
    /// `/etc/machine-id`, when there is one.
    machine_id: Option<String>,
    /// This boot's id (`/proc/sys/kernel/random/boot_id`).
    boot_id: Option<String>,
    /// `uname -r`.
    kernel_release: Option<String>,
    /// ECS `host` and OCSF `device`, the same in every document: rendered
    /// once, copied as they are (escaping them per document was a tenth
    /// of the rendering time).
    ecs_host: Box<RawValue>,
    ocsf_device: Box<RawValue>,
}

/// The architecture link-trace was built for (it traces its own kernel).
const ARCHITECTURE: &str = std::env::consts::ARCH;

impl HostInfo {
    pub fn new(
        hostname: String,
        machine_id: Option<String>,
        boot_id: Option<String>,
        kernel_release: Option<String>,
    ) -> Self {
        let mut host = Self {
            hostname,
            machine_id,
            boot_id,
            kernel_release,
            ecs_host: RawValue::NULL.to_owned(),
            ocsf_device: RawValue::NULL.to_owned(),
        };
        host.ecs_host = raw_json(&ecs::Host::new(&host));
        host.ocsf_device = raw_json(&ocsf::Device::new(&host));
        host
    }

    /// This machine's.
    pub fn read() -> Self {
        let first_line = |path: &str| {
            std::fs::read_to_string(path)
                .ok()
                .map(|text| text.trim().to_owned())
                .filter(|text| !text.is_empty())
        };
        Self::new(
            hostname()
                .or_else(|| first_line("/proc/sys/kernel/hostname"))
                .unwrap_or_else(|| "localhost".to_owned()),
            first_line("/etc/machine-id"),
            first_line("/proc/sys/kernel/random/boot_id"),
            first_line("/proc/sys/kernel/osrelease"),
        )
    }

    pub fn hostname(&self) -> &str {
        &self.hostname
    }

    pub fn kernel_release(&self) -> Option<&str> {
        self.kernel_release.as_deref()
    }
}

/// A document part rendered once. Plain structs always serialize.
fn raw_json(part: &impl Serialize) -> Box<RawValue> {
    serde_json::value::to_raw_value(part).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn hostname() -> Option<String> {
    let mut buffer = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates
    // within it or fails.
    let ret = unsafe { libc::gethostname(buffer.as_mut_ptr().cast(), buffer.len()) };
    if ret != 0 {
        return None;
    }
    let end = buffer.iter().position(|&b| b == 0)?;
    let name = String::from_utf8_lossy(&buffer[..end]).into_owned();
    (!name.is_empty()).then_some(name)
}

/// The document formats a record can be written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DocumentFormat {
    /// link-trace's own JSON lines (`--json`; schema/link-trace-event.schema.json).
    Native,
    /// Elastic Common Schema documents.
    Ecs,
    /// OCSF events (File System Activity, Detection Finding, ...).
    Ocsf,
}

/// Appends one document for `record` and a newline.
pub fn render(format: DocumentFormat, record: &Record, host: &HostInfo, out: &mut Vec<u8>) {
    match format {
        DocumentFormat::Native => crate::output::render(crate::output::Format::Json, record, out),
        DocumentFormat::Ecs => ecs::render(record, host, out),
        DocumentFormat::Ocsf => ocsf::render(record, host, out),
    }
}

/// Serializes one document as a line. Serializing these plain structs
/// into a Vec cannot fail (no I/O, string keys only).
fn write_line(document: &impl Serialize, out: &mut Vec<u8>) {
    let _ = serde_json::to_writer(&mut *out, document);
    out.push(b'\n');
}

/// A number written as a string (ECS ids are keywords, OCSF uids strings),
/// without allocating one.
#[derive(Debug, Clone, Copy)]
struct AsText<T>(T);

impl<T: Display> Serialize for AsText<T> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Bytes as text (borrowed when they are UTF-8, else each invalid sequence
/// becomes U+FFFD) and, when they are not UTF-8, their exact base64. The
/// bytes are validated once.
fn text_and_b64(bytes: &[u8]) -> (Cow<'_, str>, Option<String>) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (Cow::Borrowed(text), None),
        Err(_) => (
            Cow::Owned(String::from_utf8_lossy(bytes).into_owned()),
            Some(STANDARD.encode(bytes)),
        ),
    }
}

fn text(bytes: &[u8]) -> Cow<'_, str> {
    String::from_utf8_lossy(bytes)
}

/// Where a path argument points, as text: its absolute resolution when
/// there is one, else the argument as passed (relative, or unresolved).
fn location<P>(field: &PathField<P>) -> Option<Cow<'_, str>> {
    field
        .resolved
        .as_deref()
        .or(field.bytes.as_deref())
        .map(text)
}

/// A path's last component and the directory holding it, sharing the
/// path's text when it is borrowed.
struct PathParts<'a> {
    name: Option<Cow<'a, str>>,
    directory: Option<Cow<'a, str>>,
}

impl<'a> PathParts<'a> {
    fn of(path: Option<&Cow<'a, str>>) -> Self {
        match path {
            None => Self {
                name: None,
                directory: None,
            },
            Some(Cow::Borrowed(path)) => Self {
                name: file_name(path).map(Cow::Borrowed),
                directory: parent_directory(path).map(Cow::Borrowed),
            },
            Some(Cow::Owned(path)) => Self {
                name: file_name(path).map(|n| Cow::Owned(n.to_owned())),
                directory: parent_directory(path).map(|d| Cow::Owned(d.to_owned())),
            },
        }
    }
}

/// The last component of a path ("b" of "/a/b"), None when empty.
fn file_name(path: &str) -> Option<&str> {
    let trimmed = trim_trailing_slashes(path);
    let name = trimmed.rsplit_once('/').map_or(trimmed, |(_, name)| name);
    (!name.is_empty()).then_some(name)
}

/// The directory holding the last component ("/a" of "/a/b", "/" of "/b"),
/// None for a bare name or "/".
fn parent_directory(path: &str) -> Option<&str> {
    let (directory, name) = trim_trailing_slashes(path).rsplit_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some(if directory.is_empty() { "/" } else { directory })
}

fn trim_trailing_slashes(path: &str) -> &str {
    let trimmed = path.trim_end_matches('/');
    if trimmed.is_empty() && !path.is_empty() {
        "/"
    } else {
        trimmed
    }
}

/// strerror(3) of a failed call's `ret` (-errno), e.g. "File exists".
fn errno_description(ret: i64) -> Option<&'static str> {
    let errno = i32::try_from(ret.checked_neg()?).ok()?;
    (errno > 0).then(|| nix::errno::Errno::from_raw(errno).desc())
}

/// Milliseconds since the epoch of a record's RFC 3339 time; None if the
/// string is not one (only possible for a hand-edited replay input).
fn epoch_ms(time: &str) -> Option<i64> {
    chrono::DateTime::parse_from_rfc3339(time)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// One line for people: "ln (pid 7, uid 1000) linkat /a -> /b: EEXIST",
/// from the event and its paths' `location`s.
fn event_message(e: &LinkEvent, old: Option<&str>, new: Option<&str>) -> String {
    use std::fmt::Write as _;
    const UNREADABLE: &str = "<unreadable>";
    let (old, new) = (old.unwrap_or(UNREADABLE), new.unwrap_or(UNREADABLE));
    let mut message = String::with_capacity(48 + e.comm.len() + old.len() + new.len());
    let _ = write!(
        message,
        "{} (pid {}, uid {}) {} {old} -> {new}: {}",
        e.comm,
        e.pid,
        e.uid,
        e.syscall,
        e.errno.as_deref().unwrap_or("ok")
    );
    message
}

/// A MITRE ATT&CK id split into its technique and, for "T1003.008", the
/// sub-technique: ("T1003", Some("T1003.008")).
fn mitre_parts(id: &str) -> (&str, Option<&str>) {
    match id.split_once('.') {
        Some((technique, _)) => (technique, Some(id)),
        None => (id, None),
    }
}

/// Everything link-trace knows about a call that the standard's fields do
/// not hold: ECS `link_trace.*`, OCSF `unmapped.link_trace.*`.
#[derive(Debug, Serialize)]
#[serde(untagged)]
enum Extras<'a> {
    Link(Box<LinkExtras<'a>>),
    Alert(&'a AlertRecord),
    Loss(&'a LossRecord),
    Stats(&'a StatsRecord),
}

#[derive(Debug, Serialize)]
struct LinkExtras<'a> {
    schema_version: u32,
    seq: u64,
    boot_ns: u64,
    duration_ns: u64,
    syscall: &'static str,
    flags: u32,
    flag_names: &'a [Cow<'static, str>],
    ret: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    errno: Option<&'a str>,
    /// A path argument read again at exit differed from entry (TOCTOU).
    args_changed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    inode_mismatch: Option<bool>,
    /// The caller's own rename that explains `inode_mismatch`.
    #[serde(skip_serializing_if = "Option::is_none")]
    inode_mismatch_explained_by: Option<&'a MismatchExplanation>,
    oldpath: PathExtras<'a>,
    newpath: PathExtras<'a>,
    /// The source file's facts (native `file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<&'a FileInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file_error: Option<&'a str>,
    /// The new name's facts after a successful call (native `new_file`).
    #[serde(skip_serializing_if = "Option::is_none")]
    new_file: Option<&'a FileInfo>,
    #[serde(skip_serializing_if = "Option::is_none")]
    new_file_error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_b64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    exe_b64: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fsuid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fsgid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    auid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sessionid: Option<u32>,
    cgroup_id: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    cgroup_path: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mnt_ns: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pid_ns: Option<u32>,
}

/// One path argument, as the native `oldpath*` / `newpath*` fields hold it.
#[derive(Debug, Serialize)]
struct PathExtras<'a> {
    dirfd: i32,
    /// The argument as passed; absent when it could not be read (`error`).
    #[serde(skip_serializing_if = "Option::is_none")]
    arg: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    arg_b64: Option<String>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolved_b64: Option<String>,
    resolution: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    resolution_error: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_exit: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    at_exit_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical: Option<Cow<'a, str>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    canonical_b64: Option<String>,
}

impl<'a> PathExtras<'a> {
    fn new<P>(dirfd: i32, field: &'a PathField<P>) -> Self {
        let split = |bytes: &'a Option<Vec<u8>>| match bytes.as_deref().map(text_and_b64) {
            Some((text, b64)) => (Some(text), b64),
            None => (None, None),
        };
        let (arg, arg_b64) = split(&field.bytes);
        let (resolved, resolved_b64) = split(&field.resolved);
        let (at_exit, at_exit_b64) = split(&field.at_exit);
        let (canonical, canonical_b64) = split(&field.canonical);
        Self {
            dirfd,
            arg,
            arg_b64,
            truncated: field.truncated,
            error: field.error.as_deref(),
            resolved,
            resolved_b64,
            resolution: field.resolution,
            resolution_error: field.resolution_error,
            at_exit,
            at_exit_b64,
            canonical,
            canonical_b64,
        }
    }
}

impl<'a> LinkExtras<'a> {
    /// Everything, the source's and the new name's facts included.
    fn new(e: &'a LinkEvent) -> Self {
        let p = &e.process;
        Self {
            schema_version: e.schema_version,
            seq: e.seq,
            boot_ns: e.boot_ns,
            duration_ns: e.duration_ns,
            syscall: e.syscall,
            flags: e.flags,
            flag_names: &e.flag_names,
            ret: e.ret,
            errno: e.errno.as_deref(),
            args_changed: e.args_changed,
            inode_mismatch: e.inode_mismatch,
            inode_mismatch_explained_by: e.inode_mismatch_explained_by.as_deref(),
            oldpath: PathExtras::new(e.olddirfd, &e.oldpath),
            newpath: PathExtras::new(e.newdirfd, &e.newpath),
            file: e.file.as_ref(),
            file_error: e.file_error.as_deref(),
            new_file: e.new_file.as_ref(),
            new_file_error: e.new_file_error.as_deref(),
            comm_b64: e.comm_b64.as_deref(),
            exe_b64: p.exe_b64.as_deref(),
            fsuid: p.fsuid,
            fsgid: p.fsgid,
            auid: p.auid,
            sessionid: p.sessionid,
            cgroup_id: p.cgroup_id,
            cgroup_path: p.cgroup_path.as_deref(),
            mnt_ns: p.mnt_ns,
            pid_ns: p.pid_ns,
        }
    }

    /// Without the two files' facts, for a format whose own file objects
    /// hold all of them.
    fn without_file_facts(e: &'a LinkEvent) -> Self {
        Self {
            file: None,
            new_file: None,
            ..Self::new(e)
        }
    }
}

/// A loss record in one sentence.
fn loss_message(loss: &LossRecord) -> String {
    format!(
        "{} event(s) not delivered: {} ({} since start)",
        loss.count,
        // The reason's wire name, e.g. ring_full.
        serde_json::to_string(&loss.reason)
            .unwrap_or_default()
            .trim_matches('"'),
        loss.total
    )
}

/// A stats record in one sentence.
fn stats_message(stats: &StatsRecord) -> String {
    let lost: u64 = stats.losses.iter().map(|l| l.total).sum();
    format!(
        "{} records submitted by the kernel, {} events decoded, {} lost, {} decode errors",
        stats.kernel_submitted, stats.events_decoded, lost, stats.decode_errors
    )
}
