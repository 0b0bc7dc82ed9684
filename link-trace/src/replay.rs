//! `link-trace replay FILE.jsonl`: the rules run over recorded events.
//!
//! Reads the JSON lines `link-trace --json` wrote, rebuilds each event and
//! context record (unlink, rename: recorded with `--context-events`), runs
//! it through the same detection stage as the daemon and prints the records
//! again with the alerts they raise. Windows are timed by the recorded
//! `boot_ns`, so a replay is deterministic. Alerts already in the input are
//! dropped (they are raised afresh); other records pass through.

use std::{
    borrow::Cow,
    io::{BufRead, Write},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use link_trace_common::SyscallId;
use serde_json::Value;

use crate::{
    detect::{DetectSummary, Detector},
    event::{
        ContextEvent, FileInfo, LinkEvent, MismatchExplanation, PathField, ProcessInfo, Record,
    },
    output::{Format, render},
    resolve,
};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum ReplayError {
    #[error("missing or mistyped field `{0}`")]
    Field(&'static str),
    #[error("`{field}`: unknown value {value:?}")]
    Unknown { field: &'static str, value: String },
    #[error("not JSON: {0}")]
    Json(String),
    #[error("not a link-trace record (kind {0:?})")]
    Kind(String),
}

type Result<T> = std::result::Result<T, ReplayError>;

fn field<'a>(v: &'a Value, name: &'static str) -> Result<&'a Value> {
    v.get(name).ok_or(ReplayError::Field(name))
}

fn u64_of(v: &Value, name: &'static str) -> Result<u64> {
    field(v, name)?.as_u64().ok_or(ReplayError::Field(name))
}

fn u32_of(v: &Value, name: &'static str) -> Result<u32> {
    u32::try_from(u64_of(v, name)?).map_err(|_| ReplayError::Field(name))
}

fn i64_of(v: &Value, name: &'static str) -> Result<i64> {
    field(v, name)?.as_i64().ok_or(ReplayError::Field(name))
}

fn i32_of(v: &Value, name: &'static str) -> Result<i32> {
    i32::try_from(i64_of(v, name)?).map_err(|_| ReplayError::Field(name))
}

fn bool_of(v: &Value, name: &'static str) -> Result<bool> {
    field(v, name)?.as_bool().ok_or(ReplayError::Field(name))
}

fn str_of<'a>(v: &'a Value, name: &'static str) -> Result<&'a str> {
    field(v, name)?.as_str().ok_or(ReplayError::Field(name))
}

/// A nullable field; absent (older recordings) counts as null.
fn opt<'a, T>(
    v: &'a Value,
    name: &'static str,
    get: impl Fn(&'a Value) -> Option<T>,
) -> Result<Option<T>> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(value) => get(value).map(Some).ok_or(ReplayError::Field(name)),
    }
}

fn opt_u32(v: &Value, name: &'static str) -> Result<Option<u32>> {
    opt(v, name, |x| x.as_u64().and_then(|n| u32::try_from(n).ok()))
}

fn opt_string(v: &Value, name: &'static str) -> Result<Option<String>> {
    opt(v, name, |x| x.as_str().map(str::to_owned))
}

fn opt_cow(v: &Value, name: &'static str) -> Result<Option<Cow<'static, str>>> {
    Ok(opt_string(v, name)?.map(Cow::Owned))
}

/// Exact bytes of a byte-string field: its `_b64` twin when present.
fn bytes_of(v: &Value, name: &'static str, b64: &'static str) -> Result<Option<Vec<u8>>> {
    if let Some(encoded) = opt(v, b64, Value::as_str)? {
        return STANDARD
            .decode(encoded)
            .map(Some)
            .map_err(|_| ReplayError::Field(b64));
    }
    Ok(opt(v, name, Value::as_str)?.map(|s| s.as_bytes().to_vec()))
}

/// One of a known set of static names.
fn known(
    field: &'static str,
    value: &str,
    names: impl IntoIterator<Item = &'static str>,
) -> Result<&'static str> {
    names
        .into_iter()
        .find(|n| *n == value)
        .ok_or_else(|| ReplayError::Unknown {
            field,
            value: value.to_owned(),
        })
}

fn resolution_errors() -> impl Iterator<Item = &'static str> {
    (1..=u8::MAX).filter_map(resolve::error_name)
}

macro_rules! path_field {
    ($v:expr, $p:literal) => {{
        let v = $v;
        let mut field = PathField::new(
            bytes_of(v, $p, concat!($p, "_b64"))?.as_deref(),
            bool_of(v, concat!($p, "_truncated"))?,
            opt_cow(v, concat!($p, "_error"))?,
        );
        field.resolved = bytes_of(v, concat!($p, "_resolved"), concat!($p, "_resolved_b64"))?;
        field.resolution = match opt(v, concat!($p, "_resolution"), Value::as_str)? {
            None => "none",
            Some(how) => known(
                concat!($p, "_resolution"),
                how,
                (0..=u8::MAX).map(resolve::resolution_name),
            )?,
        };
        field.resolution_error = opt(v, concat!($p, "_resolution_error"), Value::as_str)?
            .map(|e| known(concat!($p, "_resolution_error"), e, resolution_errors()))
            .transpose()?;
        field.at_exit = bytes_of(v, concat!($p, "_at_exit"), concat!($p, "_at_exit_b64"))?;
        field.canonical = bytes_of(v, concat!($p, "_canonical"), concat!($p, "_canonical_b64"))?;
        field
    }};
}

fn file_of(v: &Value, name: &'static str) -> Result<Option<FileInfo>> {
    let Some(f) = v.get(name).filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    let facts_from = known("facts_from", str_of(f, "facts_from")?, ["kernel", "stat"])?;
    Ok(Some(FileInfo::new(
        facts_from,
        str_of(f, "dev")?.to_owned(),
        u64_of(f, "ino")?,
        u32_of(f, "mode")?,
        u32_of(f, "uid")?,
        u32_of(f, "gid")?,
        u32_of(f, "nlink")?,
    )))
}

/// Rebuilds an event from its JSON form; the inverse of serializing one.
pub fn event_from_json(v: &Value) -> Result<LinkEvent> {
    call_from_json(
        v,
        SyscallId::ALL
            .into_iter()
            .filter(|id| !id.is_context())
            .map(SyscallId::name),
    )
}

/// Rebuilds a context record (unlink, rename) from its lean JSON form; the
/// fields it does not carry stay empty, as they are in the live record.
pub fn context_from_json(v: &Value) -> Result<LinkEvent> {
    call_from_json(
        v,
        SyscallId::ALL
            .into_iter()
            .filter(|id| id.is_context())
            .map(SyscallId::name),
    )
}

/// An event or context record whose syscall is one of `syscalls`; absent
/// nullable fields count as null, and unlink has no new path.
fn call_from_json(
    v: &Value,
    syscalls: impl IntoIterator<Item = &'static str>,
) -> Result<LinkEvent> {
    let syscall = known("syscall", str_of(v, "syscall")?, syscalls)?;
    let has_new = SyscallId::from_name(syscall).is_some_and(SyscallId::has_new_path);
    let flag_names = field(v, "flag_names")?
        .as_array()
        .ok_or(ReplayError::Field("flag_names"))?
        .iter()
        .map(|n| n.as_str().map(|s| Cow::Owned(s.to_owned())))
        .collect::<Option<Vec<_>>>()
        .ok_or(ReplayError::Field("flag_names"))?;
    Ok(LinkEvent {
        schema_version: u32_of(v, "schema_version")?,
        seq: u64_of(v, "seq")?,
        time: str_of(v, "time")?.to_owned(),
        boot_ns: u64_of(v, "boot_ns")?,
        duration_ns: u64_of(v, "duration_ns")?,
        syscall,
        olddirfd: i32_of(v, "olddirfd")?,
        oldpath: path_field!(v, "oldpath"),
        newdirfd: if has_new { i32_of(v, "newdirfd")? } else { 0 },
        newpath: if has_new {
            path_field!(v, "newpath")
        } else {
            PathField::new(None, false, None)
        },
        flags: u32_of(v, "flags")?,
        flag_names,
        ret: i64_of(v, "ret")?,
        success: bool_of(v, "success")?,
        errno: opt_cow(v, "errno")?,
        pid: u32_of(v, "pid")?,
        tid: u32_of(v, "tid")?,
        uid: u32_of(v, "uid")?,
        gid: u32_of(v, "gid")?,
        comm: str_of(v, "comm")?.to_owned(),
        comm_b64: opt_string(v, "comm_b64")?,
        args_changed: opt(v, "args_changed", Value::as_bool)?.unwrap_or(false),
        process: ProcessInfo {
            ppid: opt_u32(v, "ppid")?,
            euid: opt_u32(v, "euid")?,
            egid: opt_u32(v, "egid")?,
            fsuid: opt_u32(v, "fsuid")?,
            fsgid: opt_u32(v, "fsgid")?,
            auid: opt_u32(v, "auid")?,
            sessionid: opt_u32(v, "sessionid")?,
            exe: opt_string(v, "exe")?,
            exe_b64: opt_string(v, "exe_b64")?,
            cgroup_id: opt(v, "cgroup_id", Value::as_u64)?.unwrap_or(0),
            cgroup_path: opt_string(v, "cgroup_path")?,
            container_id: opt_string(v, "container_id")?,
            mnt_ns: opt_u32(v, "mnt_ns")?,
            pid_ns: opt_u32(v, "pid_ns")?,
        },
        file: file_of(v, "file")?,
        file_error: opt_cow(v, "file_error")?,
        new_file: file_of(v, "new_file")?,
        new_file_error: opt_cow(v, "new_file_error")?,
        inode_mismatch: opt(v, "inode_mismatch", Value::as_bool)?,
        inode_mismatch_explained_by: explanation_of(v)?,
        source_stat_ns: None,
    })
}

/// The rename that explained a mismatch; absent in older recordings.
fn explanation_of(v: &Value) -> Result<Option<Box<MismatchExplanation>>> {
    const NAME: &str = "inode_mismatch_explained_by";
    let Some(why) = v.get(NAME).filter(|w| !w.is_null()) else {
        return Ok(None);
    };
    let syscall = known(
        NAME,
        str_of(why, "syscall")?,
        SyscallId::ALL
            .into_iter()
            .filter(|id| id.is_context() && id.has_new_path())
            .map(SyscallId::name),
    )?;
    Ok(Some(Box::new(MismatchExplanation {
        seq: u64_of(why, "seq")?,
        pid: u32_of(why, "pid")?,
        tid: u32_of(why, "tid")?,
        syscall,
        boot_ns: u64_of(why, "boot_ns")?,
        oldpath_resolved: bytes_of(why, "oldpath_resolved", "oldpath_resolved_b64")?,
        newpath_resolved: bytes_of(why, "newpath_resolved", "newpath_resolved_b64")?,
    })))
}

fn from_value<T: serde::de::DeserializeOwned>(v: Value) -> Result<T> {
    serde_json::from_value(v).map_err(|e| ReplayError::Json(e.to_string()))
}

/// One input line as a record to replay; None for an alert (raised afresh).
pub fn record_from_line(line: &str) -> Result<Option<Record>> {
    let v: Value = serde_json::from_str(line).map_err(|e| ReplayError::Json(e.to_string()))?;
    let kind = v.get("kind").and_then(Value::as_str).unwrap_or_default();
    Ok(Some(match kind {
        "event" => Record::Event(Box::new(event_from_json(&v)?)),
        "context" => Record::Context(Box::new(ContextEvent(context_from_json(&v)?))),
        "loss" => Record::Loss(from_value(v)?),
        "stats" => Record::Stats(from_value(v)?),
        "alert" => return Ok(None),
        other => return Err(ReplayError::Kind(other.to_owned())),
    }))
}

#[derive(Debug, Default)]
pub struct ReplaySummary {
    pub lines: u64,
    pub bad_lines: u64,
    pub detect: DetectSummary,
}

/// Replays `input` (named `name` in messages) through `detector` and
/// writes what it emits to `out`. A line that is not a record is reported
/// on stderr, counted and skipped.
pub fn replay(
    input: impl BufRead,
    name: &str,
    detector: Detector,
    format: Format,
    out: &mut impl Write,
) -> std::io::Result<ReplaySummary> {
    replay_with(
        input,
        name,
        detector,
        &mut |record, line| render(format, record, line),
        out,
    )
}

/// `replay` with each record written by `render` (one line, newline
/// included), e.g. as an ECS or OCSF document.
pub fn replay_with(
    input: impl BufRead,
    name: &str,
    mut detector: Detector,
    render: &mut dyn FnMut(&Record, &mut Vec<u8>),
    out: &mut impl Write,
) -> std::io::Result<ReplaySummary> {
    let mut summary = ReplaySummary::default();
    let mut buffer = Vec::new();
    let mut failed: Option<std::io::Error> = None;
    for (index, line) in input.lines().enumerate() {
        let line = line?;
        summary.lines += 1;
        if line.trim().is_empty() {
            continue;
        }
        let record = match record_from_line(&line) {
            Ok(Some(record)) => record,
            Ok(None) => continue,
            Err(e) => {
                summary.bad_lines += 1;
                eprintln!("link-trace: {name}:{}: skipped: {e}", index + 1);
                continue;
            }
        };
        detector.process(record, |r| {
            buffer.clear();
            render(&r, &mut buffer);
            match out.write_all(&buffer) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed.take() {
            return Err(e);
        }
    }
    out.flush()?;
    summary.detect = detector.summary;
    Ok(summary)
}

#[cfg(test)]
mod tests;
