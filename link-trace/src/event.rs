//! The records link-trace emits, and their construction from kernel records.
//!
//! Path and comm bytes are arbitrary. A field such as `oldpath` holds the
//! exact bytes when they are valid UTF-8 (JSON escapes newlines and control
//! characters losslessly). Otherwise it holds a lossy rendering (invalid bytes
//! become U+FFFD) and `oldpath_b64` carries the exact bytes in standard base64.

use std::borrow::Cow;

use base64::{Engine as _, engine::general_purpose::STANDARD};
use link_trace_common::{
    BASE_SAME_AS_OLD, BaseInfo, CTX_AUDIT, CTX_CREDS, CTX_EXE, CTX_MNT_NS, CTX_PID_NS, CTX_PPID,
    LinkEventHeader, NEW_CHANGED_AT_EXIT, OLD_CHANGED_AT_EXIT, PATH_KEEP_MAX, PATH_TRUNCATED,
    PathArg, SEG_EXE, SEG_NEW_AT_EXIT, SEG_NEW_BASE, SEG_OLD_AT_EXIT, SEG_OLD_BASE, SyscallId,
    decode::{ContextRecord, LinkRecord},
};
#[cfg(test)]
use link_trace_common::{LinkRecordHeader, PATH_READ_FAILED, RECORD_LINK};
use serde::{Deserialize, Serialize};

use crate::{clock::WallClock, names, resolve};

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Event(Box<LinkEvent>),
    /// An unlink or rename call, captured for the rules (`kind: "context"`).
    Context(Box<ContextEvent>),
    // Boxed like the others, so a record is two words: stages move batches
    // of them, and loss and stats records are rare.
    Loss(Box<LossRecord>),
    Stats(Box<StatsRecord>),
    Alert(Box<AlertRecord>),
}

/// An unlink, unlinkat, rename, renameat or renameat2 call captured as
/// context for the stateful rules. In memory it is a `LinkEvent` (so rules
/// read it like any event) whose link-only parts are empty: no file facts,
/// exe, namespaces, cgroup, canonical paths or exit-time re-read. For
/// unlink and unlinkat, `oldpath` is the name removed and `newpath` is
/// absent. It serializes to the lean `kind: "context"` record.
#[derive(Debug, Clone, PartialEq)]
pub struct ContextEvent(pub LinkEvent);

impl Serialize for ContextEvent {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let e = &self.0;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("schema_version", &e.schema_version)?;
        map.serialize_entry("seq", &e.seq)?;
        map.serialize_entry("time", &e.time)?;
        map.serialize_entry("boot_ns", &e.boot_ns)?;
        map.serialize_entry("duration_ns", &e.duration_ns)?;
        map.serialize_entry("syscall", e.syscall)?;
        map.serialize_entry("olddirfd", &e.olddirfd)?;
        serialize_path_core(&mut map, &e.oldpath)?;
        if e.has_newpath() {
            map.serialize_entry("newdirfd", &e.newdirfd)?;
            serialize_path_core(&mut map, &e.newpath)?;
        }
        map.serialize_entry("flags", &e.flags)?;
        map.serialize_entry("flag_names", &e.flag_names)?;
        map.serialize_entry("ret", &e.ret)?;
        map.serialize_entry("success", &e.success)?;
        map.serialize_entry("errno", &e.errno)?;
        map.serialize_entry("pid", &e.pid)?;
        map.serialize_entry("tid", &e.tid)?;
        map.serialize_entry("uid", &e.uid)?;
        map.serialize_entry("gid", &e.gid)?;
        map.serialize_entry("comm", &e.comm)?;
        if let Some(b64) = &e.comm_b64 {
            map.serialize_entry("comm_b64", b64)?;
        }
        map.serialize_entry("euid", &e.process.euid)?;
        map.serialize_entry("egid", &e.process.egid)?;
        map.serialize_entry("fsuid", &e.process.fsuid)?;
        map.serialize_entry("fsgid", &e.process.fsgid)?;
        map.end()
    }
}

/// A detection rule matched: see `rules`. Raised right after the event that
/// completed the match, in the same stream.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct AlertRecord {
    pub schema_version: u32,
    /// The triggering event's time.
    pub time: String,
    pub rule_id: String,
    pub title: String,
    pub severity: crate::rules::Severity,
    /// MITRE ATT&CK technique ids.
    pub mitre: Vec<String>,
    pub tags: Vec<String>,
    pub message: String,
    /// The events that triggered the alert, oldest first; the last one
    /// completed the match.
    pub event_seqs: Vec<u64>,
    /// `seq` of the context records (unlink, rename) among the triggers,
    /// oldest first; empty when only link events triggered it.
    pub context_seqs: Vec<u64>,
    /// The syscall of the record that completed the match: the last of
    /// `event_seqs` for link and linkat, else the last of `context_seqs`.
    pub syscall: &'static str,
    /// The last triggering event's caller and paths, for convenience.
    pub pid: u32,
    pub uid: u32,
    pub comm: String,
    pub oldpath_resolved: Option<String>,
    pub newpath_resolved: Option<String>,
}

impl Record {
    pub fn is_event(&self) -> bool {
        matches!(self, Record::Event(_))
    }

    pub fn is_context(&self) -> bool {
        matches!(self, Record::Context(_))
    }
}

/// Events and context records that will never be delivered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Undelivered {
    pub events: u64,
    pub context: u64,
}

impl Undelivered {
    pub fn count(&mut self, record: &Record) {
        self.events += u64::from(record.is_event());
        self.context += u64::from(record.is_context());
    }

    pub fn add(&mut self, other: Undelivered) {
        self.events += other.events;
        self.context += other.context;
    }
}

/// Periodic totals (and one at exit): what the kernel handed over, what the
/// daemon decoded, and every loss reason per CPU, for link events and, in
/// the `context_*` fields, for context records (unlink, rename).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct StatsRecord {
    pub schema_version: u32,
    pub time: String,
    /// Link event records the kernel put in the ring buffer since start.
    pub kernel_submitted: u64,
    pub events_decoded: u64,
    pub decode_errors: u64,
    pub losses: Vec<LossCount>,
    /// Each output in service: what it delivered and what it dropped.
    #[serde(default)]
    pub sinks: Vec<crate::sink::SinkReport>,
    /// The same for context records; absent in recordings of older versions.
    #[serde(default)]
    pub context_submitted: u64,
    #[serde(default)]
    pub context_decoded: u64,
    #[serde(default)]
    pub context_losses: Vec<LossCount>,
    /// In-flight slots an exiting thread failed to free (not a loss: the
    /// LRU reclaims them); absent in recordings of older versions.
    #[serde(default)]
    pub inflight_release_failed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LossCount {
    pub reason: LossReason,
    pub total: u64,
    /// Indexed by CPU id.
    pub per_cpu: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LinkEvent {
    pub schema_version: u32,
    pub seq: u64,
    /// Syscall entry, wall clock (RFC 3339, UTC, nanoseconds).
    pub time: String,
    /// Syscall entry, CLOCK_BOOTTIME nanoseconds.
    pub boot_ns: u64,
    /// Entry to exit.
    pub duration_ns: u64,
    pub syscall: &'static str,
    pub olddirfd: i32,
    #[serde(flatten)]
    pub oldpath: PathField<Old>,
    pub newdirfd: i32,
    #[serde(flatten)]
    pub newpath: PathField<New>,
    pub flags: u32,
    pub flag_names: Vec<Cow<'static, str>>,
    pub ret: i64,
    pub success: bool,
    pub errno: Option<Cow<'static, str>>,
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_b64: Option<String>,
    /// A path argument read again at exit differed from entry (TOCTOU).
    pub args_changed: bool,
    #[serde(flatten)]
    pub process: ProcessInfo,
    /// The file being linked; null when it could not be determined.
    pub file: Option<FileInfo>,
    /// Why `file` is null.
    pub file_error: Option<Cow<'static, str>>,
    /// The new name after a successful call (from a later stat).
    pub new_file: Option<FileInfo>,
    /// Why `new_file` is null after a successful call: the stat's error, or
    /// that the caller had unlinked the new name before the daemon got to
    /// it (see `enrich::unlinked_new_names`), so no stat could have seen this link.
    pub new_file_error: Option<Cow<'static, str>>,
    /// The new name's inode is not the observed source's; null when
    /// either is unknown.
    pub inode_mismatch: Option<bool>,
    /// The rename that explains `inode_mismatch`: the caller's own process
    /// put another file at the source path after the call and before the
    /// daemon's stat (see `enrich::hold`); null otherwise. Boxed: it is
    /// rare, and without its 88 bytes an event (1000 bytes) is a small
    /// allocation for glibc, whose large ones (1 KiB and up) consolidate the
    /// fast bins first (malloc_consolidate: 4% of the daemon's perf samples
    /// under a pair load; gone once boxed).
    pub inode_mismatch_explained_by: Option<Box<MismatchExplanation>>,
    /// CLOCK_BOOTTIME right after the daemon's stat of the source, set only
    /// where that stat found a mismatch: a rename that began later cannot
    /// have caused it. Internal: the verdict waits for it.
    #[serde(skip)]
    pub source_stat_ns: Option<u64>,
}

/// A rename (context record) that explains an event's `inode_mismatch`.
#[derive(Debug, Clone, PartialEq)]
pub struct MismatchExplanation {
    /// The context record's `seq`.
    pub seq: u64,
    pub pid: u32,
    pub tid: u32,
    pub syscall: &'static str,
    pub boot_ns: u64,
    pub oldpath_resolved: Option<Vec<u8>>,
    pub newpath_resolved: Option<Vec<u8>>,
}

impl MismatchExplanation {
    /// What a rename context record says about itself.
    pub fn of(rename: &LinkEvent) -> Self {
        Self {
            seq: rename.seq,
            pid: rename.pid,
            tid: rename.tid,
            syscall: rename.syscall,
            boot_ns: rename.boot_ns,
            oldpath_resolved: rename.oldpath.resolved.clone(),
            newpath_resolved: rename.newpath.resolved.clone(),
        }
    }
}

impl Serialize for MismatchExplanation {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("seq", &self.seq)?;
        map.serialize_entry("pid", &self.pid)?;
        map.serialize_entry("tid", &self.tid)?;
        map.serialize_entry("syscall", self.syscall)?;
        map.serialize_entry("boot_ns", &self.boot_ns)?;
        serialize_bytes(
            &mut map,
            "oldpath_resolved",
            "oldpath_resolved_b64",
            self.oldpath_resolved.as_deref(),
        )?;
        serialize_bytes(
            &mut map,
            "newpath_resolved",
            "newpath_resolved_b64",
            self.newpath_resolved.as_deref(),
        )?;
        map.end()
    }
}

/// The caller, from its task_struct at syscall exit (kernel), plus what the
/// daemon derives from it (cgroup path, container id).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct ProcessInfo {
    pub ppid: Option<u32>,
    pub euid: Option<u32>,
    pub egid: Option<u32>,
    pub fsuid: Option<u32>,
    pub fsgid: Option<u32>,
    /// Login (audit) uid; null when unset or without CONFIG_AUDIT.
    pub auid: Option<u32>,
    /// Audit session id; null when unset or without CONFIG_AUDIT.
    pub sessionid: Option<u32>,
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe_b64: Option<String>,
    pub cgroup_id: u64,
    pub cgroup_path: Option<String>,
    pub container_id: Option<String>,
    pub mnt_ns: Option<u32>,
    pub pid_ns: Option<u32>,
}

/// Facts about one file and where they came from.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileInfo {
    /// "kernel": read from the inode at call time; "stat": a later stat by
    /// the daemon (the file may have changed in between).
    pub facts_from: &'static str,
    /// "major:minor".
    pub dev: String,
    pub ino: u64,
    #[serde(rename = "type")]
    pub file_type: &'static str,
    /// st_mode, type bits included.
    pub mode: u32,
    /// Permission bits in octal, e.g. "4755".
    pub permissions: String,
    pub setuid: bool,
    pub setgid: bool,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
}

/// Field names of one path argument; `Old` and `New` give the prefixes.
pub trait PathPrefix {
    const NAMES: PathNames;
}

pub struct PathNames {
    pub(crate) path: &'static str,
    pub(crate) b64: &'static str,
    pub(crate) truncated: &'static str,
    pub(crate) error: &'static str,
    pub(crate) resolved: &'static str,
    pub(crate) resolved_b64: &'static str,
    pub(crate) resolution: &'static str,
    pub(crate) resolution_error: &'static str,
    pub(crate) at_exit: &'static str,
    pub(crate) at_exit_b64: &'static str,
    pub(crate) canonical: &'static str,
    pub(crate) canonical_b64: &'static str,
}

macro_rules! path_names {
    ($p:literal) => {
        PathNames {
            path: $p,
            b64: concat!($p, "_b64"),
            truncated: concat!($p, "_truncated"),
            error: concat!($p, "_error"),
            resolved: concat!($p, "_resolved"),
            resolved_b64: concat!($p, "_resolved_b64"),
            resolution: concat!($p, "_resolution"),
            resolution_error: concat!($p, "_resolution_error"),
            at_exit: concat!($p, "_at_exit"),
            at_exit_b64: concat!($p, "_at_exit_b64"),
            canonical: concat!($p, "_canonical"),
            canonical_b64: concat!($p, "_canonical_b64"),
        }
    };
}

#[derive(Debug, Clone, PartialEq)]
pub struct Old;
#[derive(Debug, Clone, PartialEq)]
pub struct New;
impl PathPrefix for Old {
    const NAMES: PathNames = path_names!("oldpath");
}
impl PathPrefix for New {
    const NAMES: PathNames = path_names!("newpath");
}

/// One path argument as captured: its bytes at entry (None when
/// unreadable), whether it was cut at PATH_MAX, the read error, its
/// resolution to an absolute path, and its value at exit if that differed.
#[derive(Debug, Clone, PartialEq)]
pub struct PathField<P> {
    pub bytes: Option<Vec<u8>>,
    pub truncated: bool,
    pub error: Option<Cow<'static, str>>,
    pub resolved: Option<Vec<u8>>,
    /// How `resolved` was made: absolute, cwd, dirfd, chroot, fd, none.
    pub resolution: &'static str,
    /// Why it could not be resolved.
    pub resolution_error: Option<&'static str>,
    pub at_exit: Option<Vec<u8>>,
    /// `resolved` with symlinks in its directories followed, by a later
    /// look-up in the daemon (null when that failed).
    pub canonical: Option<Vec<u8>>,
    prefix: std::marker::PhantomData<P>,
}

impl<P> PathField<P> {
    pub fn new(bytes: Option<&[u8]>, truncated: bool, error: Option<Cow<'static, str>>) -> Self {
        Self {
            bytes: bytes.map(<[u8]>::to_vec),
            truncated,
            error,
            resolved: None,
            resolution: "none",
            resolution_error: None,
            at_exit: None,
            canonical: None,
            prefix: std::marker::PhantomData,
        }
    }
}

fn serialize_bytes<M: serde::ser::SerializeMap>(
    map: &mut M,
    name: &'static str,
    b64_name: &'static str,
    bytes: Option<&[u8]>,
) -> Result<(), M::Error> {
    let encoded = bytes.map(encode_bytes);
    map.serialize_entry(name, &encoded.as_ref().map(|e| &e.text))?;
    if let Some(b64) = encoded.as_ref().and_then(|e| e.b64.as_ref()) {
        map.serialize_entry(b64_name, b64)?;
    }
    Ok(())
}

/// The fields a path has in both events and context records: the argument,
/// its truncation and read error, and its resolution.
fn serialize_path_core<M: serde::ser::SerializeMap, P: PathPrefix>(
    map: &mut M,
    path: &PathField<P>,
) -> Result<(), M::Error> {
    let n = &P::NAMES;
    serialize_bytes(map, n.path, n.b64, path.bytes.as_deref())?;
    map.serialize_entry(n.truncated, &path.truncated)?;
    map.serialize_entry(n.error, &path.error)?;
    serialize_bytes(map, n.resolved, n.resolved_b64, path.resolved.as_deref())?;
    map.serialize_entry(n.resolution, path.resolution)?;
    map.serialize_entry(n.resolution_error, &path.resolution_error)
}

impl<P: PathPrefix> Serialize for PathField<P> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let n = &P::NAMES;
        let mut map = serializer.serialize_map(None)?;
        serialize_path_core(&mut map, self)?;
        serialize_bytes(&mut map, n.at_exit, n.at_exit_b64, self.at_exit.as_deref())?;
        serialize_bytes(
            &mut map,
            n.canonical,
            n.canonical_b64,
            self.canonical.as_deref(),
        )?;
        map.end()
    }
}

/// Bytes as JSON-safe text plus, when they are not UTF-8, their exact base64.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedBytes {
    pub text: String,
    pub b64: Option<String>,
}

pub fn encode_bytes(bytes: &[u8]) -> EncodedBytes {
    match std::str::from_utf8(bytes) {
        Ok(text) => EncodedBytes {
            text: text.to_owned(),
            b64: None,
        },
        Err(_) => EncodedBytes {
            text: String::from_utf8_lossy(bytes).into_owned(),
            b64: Some(STANDARD.encode(bytes)),
        },
    }
}

/// Why events were not delivered, as reported in `loss` records.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LossReason {
    /// The kernel found the ring buffer full.
    RingFull,
    /// The kernel's in-flight map refused a call's entry.
    InflightInsertFailed,
    /// A call's exit came without its entry (evicted, or begun before attach).
    ExitWithoutEnter,
    /// The kernel's per-CPU scratch buffer was unavailable.
    ScratchUnavailable,
    /// The kernel could not read a tracepoint argument.
    ArgReadFailed,
    /// A record from the kernel could not be decoded.
    DecodeError,
}

/// Which records a loss is of.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordKind {
    /// Link events (`kind: "event"`).
    #[default]
    Event,
    /// Context records (`kind: "context"`: unlink, rename).
    Context,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LossRecord {
    pub schema_version: u32,
    pub time: String,
    pub reason: LossReason,
    /// Absent in recordings of older versions, which had link events only.
    #[serde(default)]
    pub record_kind: RecordKind,
    /// Events lost for this reason since the previous loss record.
    pub count: u64,
    /// Events lost for this reason since the tracer started.
    pub total: u64,
}

/// A kernel comm (or any NUL-padded name) without its padding.
pub(crate) fn trim_nul(comm: &[u8]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

fn read_error_name(read_error: i32) -> Option<Cow<'static, str>> {
    (read_error < 0).then(|| names::errno_name(-read_error))
}

/// "major:minor" of a kernel-encoded dev_t (major << 20 | minor).
pub fn kernel_dev(dev: u32) -> String {
    format!("{}:{}", dev >> 20, dev & 0xf_ffff)
}

pub fn file_type_name(mode: u32) -> &'static str {
    match mode & libc::S_IFMT {
        libc::S_IFREG => "regular",
        libc::S_IFDIR => "directory",
        libc::S_IFLNK => "symlink",
        libc::S_IFCHR => "char_device",
        libc::S_IFBLK => "block_device",
        libc::S_IFIFO => "fifo",
        libc::S_IFSOCK => "socket",
        _ => "unknown",
    }
}

impl FileInfo {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        facts_from: &'static str,
        dev: String,
        ino: u64,
        mode: u32,
        uid: u32,
        gid: u32,
        nlink: u32,
    ) -> Self {
        Self {
            facts_from,
            dev,
            ino,
            file_type: file_type_name(mode),
            mode,
            permissions: format!("{:04o}", mode & 0o7777),
            setuid: mode & libc::S_ISUID != 0,
            setgid: mode & libc::S_ISGID != 0,
            uid,
            gid,
            nlink,
        }
    }
}

fn path_field<P>(
    raw: Option<&[u8]>,
    arg: &PathArg,
    base: &BaseInfo,
    base_segment: &[u8],
    at_exit_segment: Option<&[u8]>,
) -> PathField<P> {
    let mut field = PathField::new(
        raw,
        arg.flags & PATH_TRUNCATED != 0,
        read_error_name(arg.read_error),
    );
    let resolution = resolve::resolve(base, raw, base_segment);
    field.resolved = resolution.path;
    field.resolution = resolution.how;
    field.resolution_error = resolution.error;
    field.at_exit = at_exit_segment.map(<[u8]>::to_vec);
    field
}

/// The bases as the decoder should trust them: a walk longer than a segment
/// holds leaves garbage, reported as too_long. Also which segment holds the
/// new path's base (the old one's when the kernel found them equal).
fn checked_bases(
    walked_len: &[u16],
    old: &BaseInfo,
    new: &BaseInfo,
) -> (BaseInfo, BaseInfo, usize) {
    let too_long = |base: &BaseInfo, index: usize| {
        let mut base = *base;
        if walked_len
            .get(index)
            .is_some_and(|&len| len as usize > PATH_KEEP_MAX)
        {
            base.error = link_trace_common::RESOLVE_TOO_LONG;
        }
        base
    };
    let new_base_index = if new.flags & BASE_SAME_AS_OLD != 0 {
        SEG_OLD_BASE
    } else {
        SEG_NEW_BASE
    };
    (
        too_long(old, SEG_OLD_BASE),
        too_long(new, new_base_index),
        new_base_index,
    )
}

impl LinkEvent {
    /// What every captured call has: time, syscall, arguments, result and
    /// caller; process context and file facts empty. Inlined so that the
    /// event is built where the caller keeps it, not built and then copied
    /// (it is about 1 KiB).
    #[inline(always)]
    fn from_call(
        h: &LinkEventHeader,
        syscall: SyscallId,
        seq: u64,
        clock: &WallClock,
        oldpath: PathField<Old>,
        newpath: PathField<New>,
    ) -> Self {
        let comm = encode_bytes(trim_nul(&h.comm));
        Self {
            schema_version: SCHEMA_VERSION,
            seq,
            time: clock.rfc3339(h.enter_boot_ns),
            boot_ns: h.enter_boot_ns,
            duration_ns: h.exit_boot_ns.saturating_sub(h.enter_boot_ns),
            syscall: syscall.name(),
            olddirfd: h.olddirfd,
            oldpath,
            newdirfd: h.newdirfd,
            newpath,
            flags: h.flags,
            flag_names: names::flag_names_of(syscall, h.flags),
            ret: h.ret,
            success: h.ret == 0,
            errno: (h.ret < 0).then(|| names::errno_name(h.ret.unsigned_abs() as i32)),
            pid: h.tgid,
            tid: h.tid,
            uid: h.uid,
            gid: h.gid,
            comm: comm.text,
            comm_b64: comm.b64,
            args_changed: false,
            process: ProcessInfo::default(),
            file: None,
            file_error: None,
            new_file: None,
            new_file_error: None,
            inode_mismatch: None,
            inode_mismatch_explained_by: None,
            source_stat_ns: None,
        }
    }

    pub fn from_record(record: &LinkRecord<'_>, seq: u64, clock: &WallClock) -> Self {
        let full = &record.header;
        let h = &full.call;
        let seg = &record.segments;
        let fits = |index: usize| full.walked_len[index] as usize <= PATH_KEEP_MAX;
        let (old_base, new_base, new_base_index) =
            checked_bases(&full.walked_len, &full.old_base, &full.new_base);
        let changed = |bit: u32| full.toctou & bit != 0;
        let p = &full.process;
        let has = |bit: u32| p.valid & bit != 0;
        let mut exe = (has(CTX_EXE) && fits(SEG_EXE)).then(|| encode_bytes(seg[SEG_EXE]));
        let audit = |value: u32| (has(CTX_AUDIT) && value != u32::MAX).then_some(value);
        let file = (full.file.valid == 1).then(|| {
            let f = &full.file;
            FileInfo::new(
                "kernel",
                kernel_dev(f.dev),
                f.ino,
                f.mode,
                f.uid,
                f.gid,
                f.nlink,
            )
        });
        let mut event = Self::from_call(
            h,
            record.syscall,
            seq,
            clock,
            path_field(
                record.old_path,
                &h.old,
                &old_base,
                seg[SEG_OLD_BASE],
                changed(OLD_CHANGED_AT_EXIT).then_some(seg[SEG_OLD_AT_EXIT]),
            ),
            path_field(
                record.new_path,
                &h.new,
                &new_base,
                seg[new_base_index],
                changed(NEW_CHANGED_AT_EXIT).then_some(seg[SEG_NEW_AT_EXIT]),
            ),
        );
        event.args_changed = changed(OLD_CHANGED_AT_EXIT | NEW_CHANGED_AT_EXIT);
        event.process = ProcessInfo {
            ppid: has(CTX_PPID).then_some(p.ppid),
            euid: has(CTX_CREDS).then_some(p.euid),
            egid: has(CTX_CREDS).then_some(p.egid),
            fsuid: has(CTX_CREDS).then_some(p.fsuid),
            fsgid: has(CTX_CREDS).then_some(p.fsgid),
            auid: audit(p.auid),
            sessionid: audit(p.sessionid),
            exe_b64: exe.as_mut().and_then(|e| e.b64.take()),
            exe: exe.map(|e| e.text),
            cgroup_id: p.cgroup_id,
            cgroup_path: None,
            container_id: None,
            mnt_ns: has(CTX_MNT_NS).then_some(p.mnt_ns),
            pid_ns: has(CTX_PID_NS).then_some(p.pid_ns),
        };
        event.file = file;
        event
    }

    /// An unlink or rename record: paths, bases and credentials only.
    pub fn from_context_record(record: &ContextRecord<'_>, seq: u64, clock: &WallClock) -> Self {
        let full = &record.header;
        let h = &full.call;
        let seg = &record.segments;
        let (old_base, new_base, new_base_index) =
            checked_bases(&full.walked_len, &full.old_base, &full.new_base);
        let newpath = if record.syscall.has_new_path() {
            path_field(
                record.new_path,
                &h.new,
                &new_base,
                seg[new_base_index],
                None,
            )
        } else {
            PathField::new(None, false, None)
        };
        let oldpath = path_field(record.old_path, &h.old, &old_base, seg[SEG_OLD_BASE], None);
        let mut event = Self::from_call(h, record.syscall, seq, clock, oldpath, newpath);
        if full.creds_valid == 1 {
            let p = &mut event.process;
            (p.euid, p.egid, p.fsuid, p.fsgid) = (
                Some(full.euid),
                Some(full.egid),
                Some(full.fsuid),
                Some(full.fsgid),
            );
        }
        event
    }

    /// A context record (unlink, rename), not a link event.
    pub fn is_context(&self) -> bool {
        !matches!(self.syscall, "link" | "linkat")
    }

    /// Whether the call takes a new name (link and rename; unlink does not).
    pub fn has_newpath(&self) -> bool {
        !matches!(self.syscall, "unlink" | "unlinkat")
    }

    /// Syscall exit, CLOCK_BOOTTIME nanoseconds.
    pub fn exit_ns(&self) -> u64 {
        self.boot_ns.saturating_add(self.duration_ns)
    }
}

#[cfg(test)]
pub(crate) fn sample_event(
    old: Option<&'static [u8]>,
    new: Option<&'static [u8]>,
    ret: i64,
) -> LinkEvent {
    let header = LinkEventHeader {
        record_type: RECORD_LINK,
        enter_boot_ns: 1_000,
        exit_boot_ns: 1_250,
        ret,
        tgid: 7,
        tid: 8,
        uid: 1000,
        gid: 100,
        syscall: SyscallId::Linkat as u32,
        flags: 0x1400,
        olddirfd: -100,
        newdirfd: 5,
        old: PathArg {
            len: old.map_or(0, |o| o.len() as u16),
            flags: if old.is_none() { PATH_READ_FAILED } else { 0 },
            read_error: if old.is_none() { -14 } else { 0 },
        },
        new: PathArg {
            len: new.map_or(0, |n| n.len() as u16),
            flags: 0,
            read_error: 0,
        },
        comm: *b"ln\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
        ..Default::default()
    };
    let mut full = LinkRecordHeader {
        call: header,
        ..Default::default()
    };
    full.seg_len[0] = header.old.len;
    full.seg_len[1] = header.new.len;
    full.old_base.kind = link_trace_common::BASE_ABSOLUTE;
    full.new_base.kind = link_trace_common::BASE_DIRFD;
    let mut segments: [&[u8]; link_trace_common::SEG_COUNT] = [&[]; link_trace_common::SEG_COUNT];
    segments[0] = old.unwrap_or_default();
    segments[1] = new.unwrap_or_default();
    segments[SEG_NEW_BASE] = b"/base";
    let record = LinkRecord {
        header: full,
        syscall: SyscallId::Linkat,
        old_path: old,
        new_path: new,
        segments,
    };
    LinkEvent::from_record(&record, 3, &WallClock::with_offset(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(event: LinkEvent) -> serde_json::Value {
        let line = serde_json::to_string(&Record::Event(Box::new(event))).unwrap();
        assert!(!line.contains('\n'), "one event must be one line: {line}");
        serde_json::from_str(&line).unwrap()
    }

    /// glibc serves requests of up to 1000 bytes from its small bins; a larger
    /// event would make the capture thread's Box of every event run
    /// malloc_consolidate again (see `inode_mismatch_explained_by`).
    #[test]
    fn an_event_stays_a_small_allocation_for_glibc() {
        let size = std::mem::size_of::<LinkEvent>();
        assert!(size <= 1000, "LinkEvent is {size} bytes");
    }

    #[test]
    fn utf8_paths_are_exact_and_hostile_bytes_are_preserved() {
        let v = json(sample_event(
            Some(b"/tmp/a\nb\x1b[31m\"q\\"),
            Some(b"/tmp/\xff\xfe\n"),
            0,
        ));
        assert_eq!(v["kind"], "event");
        assert_eq!(v["oldpath"], "/tmp/a\nb\x1b[31m\"q\\");
        assert!(v.get("oldpath_b64").is_none());
        assert_eq!(v["newpath"], "/tmp/\u{fffd}\u{fffd}\n");
        let exact = STANDARD.decode(v["newpath_b64"].as_str().unwrap()).unwrap();
        assert_eq!(exact, b"/tmp/\xff\xfe\n");
    }

    #[test]
    fn fields_are_decoded() {
        let v = json(sample_event(Some(b"a"), Some(b"b"), -17));
        assert_eq!(v["seq"], 3);
        assert_eq!(v["syscall"], "linkat");
        assert_eq!(v["duration_ns"], 250);
        assert_eq!(v["time"], "1970-01-01T00:00:00.000001000Z");
        assert_eq!(v["flags"], 0x1400);
        assert_eq!(
            v["flag_names"],
            serde_json::json!(["AT_SYMLINK_FOLLOW", "AT_EMPTY_PATH"])
        );
        assert_eq!(v["success"], false);
        assert_eq!(v["errno"], "EEXIST");
        assert_eq!(v["ret"], -17);
        assert_eq!(v["olddirfd"], -100);
        assert_eq!(v["newdirfd"], 5);
        assert_eq!(v["comm"], "ln");
        assert_eq!((v["pid"].clone(), v["tid"].clone()), (7.into(), 8.into()));
        assert_eq!(
            (v["uid"].clone(), v["gid"].clone()),
            (1000.into(), 100.into())
        );
    }

    #[test]
    fn unreadable_path_is_null_with_its_error() {
        let v = json(sample_event(None, Some(b"b"), -14));
        assert_eq!(v["oldpath"], serde_json::Value::Null);
        assert_eq!(v["oldpath_error"], "EFAULT");
        assert_eq!(v["oldpath_truncated"], false);
        assert_eq!(v["newpath_error"], serde_json::Value::Null);
        assert_eq!(v["success"], false);
    }

    #[test]
    fn success_has_no_errno() {
        let v = json(sample_event(Some(b"a"), Some(b"b"), 0));
        assert_eq!(v["success"], true);
        assert_eq!(v["errno"], serde_json::Value::Null);
    }
}
