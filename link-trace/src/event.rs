//! The records link-trace emits, and their construction from kernel records.
//!
//! Path and comm bytes are arbitrary. A field such as `oldpath` holds the
//! exact bytes when they are valid UTF-8 (JSON escapes newlines and control
//! characters losslessly). Otherwise it holds a lossy rendering (invalid bytes
//! become U+FFFD) and `oldpath_b64` carries the exact bytes in standard base64.

use std::borrow::Cow;

use base64::{Engine as _, engine::general_purpose::STANDARD};
#[cfg(test)]
use link_trace_common::{LinkEventHeader, PATH_READ_FAILED, PathArg, RECORD_LINK};
use link_trace_common::{PATH_TRUNCATED, SyscallId, decode::LinkRecord};
use serde::Serialize;

use crate::{clock::WallClock, names};

/// Bumped whenever a field changes meaning or disappears.
pub const SCHEMA_VERSION: u32 = 1;

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Record {
    Event(Box<LinkEvent>),
    Loss(LossRecord),
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
}

/// Field names of one path argument; `Old` and `New` give the prefixes.
pub trait PathPrefix {
    const PATH: &'static str;
    const B64: &'static str;
    const TRUNCATED: &'static str;
    const ERROR: &'static str;
}
#[derive(Debug, Clone, PartialEq)]
pub struct Old;
#[derive(Debug, Clone, PartialEq)]
pub struct New;
impl PathPrefix for Old {
    const PATH: &'static str = "oldpath";
    const B64: &'static str = "oldpath_b64";
    const TRUNCATED: &'static str = "oldpath_truncated";
    const ERROR: &'static str = "oldpath_error";
}
impl PathPrefix for New {
    const PATH: &'static str = "newpath";
    const B64: &'static str = "newpath_b64";
    const TRUNCATED: &'static str = "newpath_truncated";
    const ERROR: &'static str = "newpath_error";
}

/// One path argument as captured: its bytes (None when unreadable), whether
/// it was cut at PATH_MAX, and the read error.
#[derive(Debug, Clone, PartialEq)]
pub struct PathField<P> {
    pub bytes: Option<Vec<u8>>,
    pub truncated: bool,
    pub error: Option<Cow<'static, str>>,
    prefix: std::marker::PhantomData<P>,
}

impl<P> PathField<P> {
    pub fn new(bytes: Option<&[u8]>, truncated: bool, error: Option<Cow<'static, str>>) -> Self {
        Self {
            bytes: bytes.map(<[u8]>::to_vec),
            truncated,
            error,
            prefix: std::marker::PhantomData,
        }
    }
}

impl<P: PathPrefix> Serialize for PathField<P> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let encoded = self.bytes.as_deref().map(encode_bytes);
        let extra = encoded.as_ref().is_some_and(|e| e.b64.is_some());
        let mut map = serializer.serialize_map(Some(3 + usize::from(extra)))?;
        map.serialize_entry(P::PATH, &encoded.as_ref().map(|e| &e.text))?;
        if let Some(b64) = encoded.as_ref().and_then(|e| e.b64.as_ref()) {
            map.serialize_entry(P::B64, b64)?;
        }
        map.serialize_entry(P::TRUNCATED, &self.truncated)?;
        map.serialize_entry(P::ERROR, &self.error)?;
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
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
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

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LossRecord {
    pub schema_version: u32,
    pub time: String,
    pub reason: LossReason,
    /// Events lost for this reason since the previous loss record.
    pub count: u64,
    /// Events lost for this reason since the tracer started.
    pub total: u64,
}

fn trim_nul(comm: &[u8]) -> &[u8] {
    let end = comm.iter().position(|&b| b == 0).unwrap_or(comm.len());
    &comm[..end]
}

fn read_error_name(read_error: i32) -> Option<Cow<'static, str>> {
    (read_error < 0).then(|| names::errno_name(-read_error))
}

impl LinkEvent {
    pub fn from_record(record: &LinkRecord<'_>, seq: u64, clock: &WallClock) -> Self {
        let h = &record.header;
        let success = h.ret == 0;
        let comm = encode_bytes(trim_nul(&h.comm));
        Self {
            schema_version: SCHEMA_VERSION,
            seq,
            time: clock.rfc3339(h.enter_boot_ns),
            boot_ns: h.enter_boot_ns,
            duration_ns: h.exit_boot_ns.saturating_sub(h.enter_boot_ns),
            syscall: match record.syscall {
                SyscallId::Link => "link",
                SyscallId::Linkat => "linkat",
            },
            olddirfd: h.olddirfd,
            oldpath: PathField::new(
                record.old_path,
                h.old.flags & PATH_TRUNCATED != 0,
                read_error_name(h.old.read_error),
            ),
            newdirfd: h.newdirfd,
            newpath: PathField::new(
                record.new_path,
                h.new.flags & PATH_TRUNCATED != 0,
                read_error_name(h.new.read_error),
            ),
            flags: h.flags,
            flag_names: names::flag_names(h.flags),
            ret: h.ret,
            success,
            errno: (h.ret < 0).then(|| names::errno_name(h.ret.unsigned_abs() as i32)),
            pid: h.tgid,
            tid: h.tid,
            uid: h.uid,
            gid: h.gid,
            comm: comm.text,
            comm_b64: comm.b64,
        }
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
    let record = LinkRecord {
        header,
        syscall: SyscallId::Linkat,
        old_path: old,
        new_path: new,
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
