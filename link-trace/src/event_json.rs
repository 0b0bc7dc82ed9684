//! The JSON line of a link event (`kind: "event"`), written by hand.
//!
//! Why not serde: this is the hottest record, and serde_json goes through a
//! map serializer for the `#[serde(flatten)]` path and process fields, and
//! `encode_bytes` copies every path into a fresh String before escaping it.
//! Here the fields are written in one pass straight into the output buffer,
//! and a string without anything to escape (nearly every path) is checked
//! in word-sized chunks and copied whole. The output is byte-for-byte what
//! `serde_json::to_vec(&Record::Event(..))` writes (field order, escaping,
//! numbers); tests in this module check it over hostile inputs. Strings that
//! do need escaping go through serde_json's own escaper, so those bytes
//! cannot drift from it. Other record kinds keep serde.

use base64::{Engine as _, engine::general_purpose::STANDARD};

use crate::event::{FileInfo, LinkEvent, MismatchExplanation, PathField, PathPrefix};

/// `,"name":` for a literal name, copied in one piece of known length
/// (inlined, no call to memcpy).
macro_rules! key {
    ($out:expr, $name:literal) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}

/// Appends `e` as `{"kind":"event",...}` (no newline).
pub fn write_event(e: &LinkEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"kind\":\"event\",\"schema_version\":");
    uint(out, u64::from(e.schema_version));
    key!(out, "seq");
    uint(out, e.seq);
    key!(out, "time");
    string(out, &e.time);
    key!(out, "boot_ns");
    uint(out, e.boot_ns);
    key!(out, "duration_ns");
    uint(out, e.duration_ns);
    key!(out, "syscall");
    string(out, e.syscall);
    key!(out, "olddirfd");
    int(out, i64::from(e.olddirfd));
    path(out, &e.oldpath);
    key!(out, "newdirfd");
    int(out, i64::from(e.newdirfd));
    path(out, &e.newpath);
    key!(out, "flags");
    uint(out, u64::from(e.flags));
    key!(out, "flag_names");
    out.push(b'[');
    for (index, name) in e.flag_names.iter().enumerate() {
        if index > 0 {
            out.push(b',');
        }
        string(out, name);
    }
    out.push(b']');
    key!(out, "ret");
    int(out, e.ret);
    key!(out, "success");
    boolean(out, e.success);
    key!(out, "errno");
    opt_string(out, e.errno.as_deref());
    key!(out, "pid");
    uint(out, u64::from(e.pid));
    key!(out, "tid");
    uint(out, u64::from(e.tid));
    key!(out, "uid");
    uint(out, u64::from(e.uid));
    key!(out, "gid");
    uint(out, u64::from(e.gid));
    key!(out, "comm");
    string(out, &e.comm);
    if let Some(b64) = &e.comm_b64 {
        key!(out, "comm_b64");
        string(out, b64);
    }
    key!(out, "args_changed");
    boolean(out, e.args_changed);
    let p = &e.process;
    key!(out, "ppid");
    opt_uint(out, p.ppid);
    key!(out, "euid");
    opt_uint(out, p.euid);
    key!(out, "egid");
    opt_uint(out, p.egid);
    key!(out, "fsuid");
    opt_uint(out, p.fsuid);
    key!(out, "fsgid");
    opt_uint(out, p.fsgid);
    key!(out, "auid");
    opt_uint(out, p.auid);
    key!(out, "sessionid");
    opt_uint(out, p.sessionid);
    key!(out, "exe");
    opt_string(out, p.exe.as_deref());
    if let Some(b64) = &p.exe_b64 {
        key!(out, "exe_b64");
        string(out, b64);
    }
    key!(out, "cgroup_id");
    uint(out, p.cgroup_id);
    key!(out, "cgroup_path");
    opt_string(out, p.cgroup_path.as_deref());
    key!(out, "container_id");
    opt_string(out, p.container_id.as_deref());
    key!(out, "mnt_ns");
    opt_uint(out, p.mnt_ns);
    key!(out, "pid_ns");
    opt_uint(out, p.pid_ns);
    key!(out, "file");
    file(out, e.file.as_ref());
    key!(out, "file_error");
    opt_string(out, e.file_error.as_deref());
    key!(out, "new_file");
    file(out, e.new_file.as_ref());
    key!(out, "new_file_error");
    opt_string(out, e.new_file_error.as_deref());
    key!(out, "inode_mismatch");
    match e.inode_mismatch {
        Some(b) => boolean(out, b),
        None => null(out),
    }
    key!(out, "inode_mismatch_explained_by");
    match &e.inode_mismatch_explained_by {
        Some(why) => explanation(out, why),
        None => null(out),
    }
    out.push(b'}');
}

fn explanation(out: &mut Vec<u8>, why: &MismatchExplanation) {
    out.extend_from_slice(b"{\"seq\":");
    uint(out, why.seq);
    key!(out, "pid");
    uint(out, u64::from(why.pid));
    key!(out, "tid");
    uint(out, u64::from(why.tid));
    key!(out, "syscall");
    string(out, why.syscall);
    key!(out, "boot_ns");
    uint(out, why.boot_ns);
    bytes_field(
        out,
        "oldpath_resolved",
        "oldpath_resolved_b64",
        why.oldpath_resolved.as_deref(),
    );
    bytes_field(
        out,
        "newpath_resolved",
        "newpath_resolved_b64",
        why.newpath_resolved.as_deref(),
    );
    out.push(b'}');
}

/// `,"name":`
#[inline(always)]
fn key(out: &mut Vec<u8>, name: &[u8]) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name);
    out.extend_from_slice(b"\":");
}

fn null(out: &mut Vec<u8>) {
    out.extend_from_slice(b"null");
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

fn uint(out: &mut Vec<u8>, value: u64) {
    if value < 10 {
        out.push(b'0' + value as u8);
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn int(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn opt_uint(out: &mut Vec<u8>, value: Option<u32>) {
    match value {
        Some(v) => uint(out, u64::from(v)),
        None => null(out),
    }
}

fn opt_string(out: &mut Vec<u8>, value: Option<&str>) {
    match value {
        Some(s) => string(out, s),
        None => null(out),
    }
}

/// Whether any byte of `bytes` must be escaped in a JSON string (a control
/// character, `"` or `\`). No early exit: the loop over 16-byte chunks
/// compiles to vector compares, faster than stopping at the first hit on
/// the short strings seen here.
fn needs_escape(bytes: &[u8]) -> bool {
    let flag = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\');
    let mut chunks = bytes.chunks_exact(16);
    let mut found = false;
    for chunk in &mut chunks {
        found |= chunk.iter().fold(false, |any, &b| any | flag(b));
        if found {
            return true;
        }
    }
    let rest = chunks.remainder();
    // The rest (most short strings are nothing but): two overlapping
    // words when there are 8 bytes or more, instead of a byte loop.
    match (rest.first_chunk::<8>(), rest.last_chunk::<8>()) {
        (Some(first), Some(last)) => word_needs_escape(*first) | word_needs_escape(*last),
        _ => rest.iter().fold(false, |any, &b| any | flag(b)),
    }
}

/// Whether one of 8 bytes is a control character, `"` or `\`: the
/// classic exact SWAR tests for a byte below 0x20 and for a zero byte
/// (after xor with the byte looked for).
fn word_needs_escape(bytes: [u8; 8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);
    let x = u64::from_ne_bytes(bytes);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH != 0;
    below(x, 0x20)
        | below(x ^ (ONES * u64::from(b'"')), 1)
        | below(x ^ (ONES * u64::from(b'\\')), 1)
}

/// A JSON string, escaped exactly as serde_json does.
fn string(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value.as_bytes()) {
        // Rare: let serde_json's escaper write it. Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
        return;
    }
    out.reserve(value.len() + 2);
    out.push(b'"');
    out.extend_from_slice(value.as_bytes());
    out.push(b'"');
}

/// `,"name":"text"` for path bytes (null when absent), plus
/// `,"name_b64":"..."` with the exact bytes when they are not UTF-8: what
/// `event::encode_bytes` gives serde.
fn bytes_field(out: &mut Vec<u8>, name: &str, b64_name: &str, bytes: Option<&[u8]>) {
    key(out, name.as_bytes());
    let Some(bytes) = bytes else {
        null(out);
        return;
    };
    match std::str::from_utf8(bytes) {
        Ok(text) => string(out, text),
        Err(_) => {
            string(out, &String::from_utf8_lossy(bytes));
            key(out, b64_name.as_bytes());
            // Base64 is plain ASCII: nothing to escape.
            out.push(b'"');
            let start = out.len();
            let len = base64::encoded_len(bytes.len(), true).unwrap_or(0);
            out.resize(start + len, 0);
            // The slice is exactly the encoded length, so this cannot fail.
            let written = STANDARD.encode_slice(bytes, &mut out[start..]).unwrap_or(0);
            out.truncate(start + written);
            out.push(b'"');
        }
    }
}

fn path<P: PathPrefix>(out: &mut Vec<u8>, p: &PathField<P>) {
    let n = &P::NAMES;
    bytes_field(out, n.path, n.b64, p.bytes.as_deref());
    key(out, n.truncated.as_bytes());
    boolean(out, p.truncated);
    key(out, n.error.as_bytes());
    opt_string(out, p.error.as_deref());
    bytes_field(out, n.resolved, n.resolved_b64, p.resolved.as_deref());
    key(out, n.resolution.as_bytes());
    string(out, p.resolution);
    key(out, n.resolution_error.as_bytes());
    opt_string(out, p.resolution_error);
    bytes_field(out, n.at_exit, n.at_exit_b64, p.at_exit.as_deref());
    bytes_field(out, n.canonical, n.canonical_b64, p.canonical.as_deref());
}

fn file(out: &mut Vec<u8>, f: Option<&FileInfo>) {
    let Some(f) = f else {
        null(out);
        return;
    };
    out.extend_from_slice(b"{\"facts_from\":");
    string(out, f.facts_from);
    key!(out, "dev");
    string(out, &f.dev);
    key!(out, "ino");
    uint(out, f.ino);
    key!(out, "type");
    string(out, f.file_type);
    key!(out, "mode");
    uint(out, u64::from(f.mode));
    key!(out, "permissions");
    string(out, &f.permissions);
    key!(out, "setuid");
    boolean(out, f.setuid);
    key!(out, "setgid");
    boolean(out, f.setgid);
    key!(out, "uid");
    uint(out, u64::from(f.uid));
    key!(out, "gid");
    uint(out, u64::from(f.gid));
    key!(out, "nlink");
    uint(out, u64::from(f.nlink));
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use super::*;
    use crate::event::{FileInfo, Record, sample_event};

    fn assert_same_as_serde(event: LinkEvent) {
        let mut ours = Vec::new();
        write_event(&event, &mut ours);
        let serde = serde_json::to_vec(&Record::Event(Box::new(event))).unwrap();
        assert!(
            ours == serde,
            "hand-written JSON differs from serde_json:\n ours: {}\nserde: {}",
            String::from_utf8_lossy(&ours),
            String::from_utf8_lossy(&serde)
        );
    }

    /// Bytes that stress escaping: controls, quotes, backslashes, DEL,
    /// U+2028/U+2029, multi-byte characters, invalid UTF-8, NUL.
    const HOSTILE: &[&[u8]] = &[
        b"",
        b"/",
        b"/plain/ascii/path.txt",
        b"\"",
        b"\\",
        b"\x00",
        b"\x1f\x7f",
        b"\n\r\t\x08\x0c",
        "\u{2028}\u{2029}".as_bytes(),
        "é😀/ü".as_bytes(),
        b"\xff\xfe",
        b"\xc3",
        b"/tmp/a\nb\x1b[31m\"q\\",
        b"/0123456789abcdef/0123456789abcdef\"",
        b"/0123456789abcdef/0123456789abcde\x01",
    ];

    fn hostile_bytes(rng: &mut fastrand::Rng) -> Vec<u8> {
        let mut bytes = Vec::new();
        for _ in 0..rng.usize(0..6) {
            bytes.extend_from_slice(HOSTILE[rng.usize(..HOSTILE.len())]);
            if rng.bool() {
                bytes.push(rng.u8(..));
            }
        }
        bytes
    }

    fn text(rng: &mut fastrand::Rng) -> String {
        String::from_utf8_lossy(&hostile_bytes(rng)).into_owned()
    }

    fn maybe<T>(rng: &mut fastrand::Rng, make: impl FnOnce(&mut fastrand::Rng) -> T) -> Option<T> {
        rng.bool().then(|| make(rng))
    }

    fn file_info(rng: &mut fastrand::Rng) -> FileInfo {
        FileInfo::new(
            if rng.bool() { "kernel" } else { "stat" },
            format!("{}:{}", rng.u32(..), rng.u32(..)),
            rng.u64(..),
            rng.u32(..),
            rng.u32(..),
            rng.u32(..),
            rng.u32(..),
        )
    }

    fn random_event(rng: &mut fastrand::Rng) -> LinkEvent {
        let mut e = sample_event(Some(b"/a"), Some(b"/b"), 0);
        e.seq = rng.u64(..);
        e.time = text(rng);
        e.boot_ns = rng.u64(..);
        e.duration_ns = rng.u64(..);
        e.olddirfd = rng.i32(..);
        e.newdirfd = rng.i32(..);
        for path in [&mut e.oldpath.bytes, &mut e.newpath.bytes] {
            *path = maybe(rng, hostile_bytes);
        }
        e.oldpath.truncated = rng.bool();
        e.oldpath.error = maybe(rng, |r| Cow::Owned(text(r)));
        e.newpath.error = maybe(rng, |_| Cow::Borrowed("EFAULT"));
        e.oldpath.resolved = maybe(rng, hostile_bytes);
        e.newpath.resolved = maybe(rng, hostile_bytes);
        e.oldpath.resolution_error = maybe(rng, |_| "too_long");
        e.oldpath.at_exit = maybe(rng, hostile_bytes);
        e.newpath.at_exit = maybe(rng, hostile_bytes);
        e.oldpath.canonical = maybe(rng, hostile_bytes);
        e.newpath.canonical = maybe(rng, hostile_bytes);
        e.flags = rng.u32(..);
        e.flag_names = (0..rng.usize(0..3))
            .map(|_| Cow::Owned(text(rng)))
            .collect();
        e.ret = rng.i64(..);
        e.success = rng.bool();
        e.errno = maybe(rng, |r| Cow::Owned(text(r)));
        (e.pid, e.tid, e.uid, e.gid) = (rng.u32(..), rng.u32(..), rng.u32(..), rng.u32(..));
        e.comm = text(rng);
        e.comm_b64 = maybe(rng, text);
        e.args_changed = rng.bool();
        let p = &mut e.process;
        for id in [
            &mut p.ppid,
            &mut p.euid,
            &mut p.egid,
            &mut p.fsuid,
            &mut p.fsgid,
            &mut p.auid,
            &mut p.sessionid,
            &mut p.mnt_ns,
            &mut p.pid_ns,
        ] {
            *id = maybe(rng, |r| r.u32(..));
        }
        p.exe = maybe(rng, text);
        p.exe_b64 = maybe(rng, text);
        p.cgroup_id = rng.u64(..);
        p.cgroup_path = maybe(rng, text);
        p.container_id = maybe(rng, text);
        e.file = maybe(rng, file_info);
        e.file_error = maybe(rng, |r| Cow::Owned(text(r)));
        e.new_file = maybe(rng, file_info);
        e.new_file_error = maybe(rng, |r| Cow::Owned(text(r)));
        e.inode_mismatch = maybe(rng, |r| r.bool());
        e.inode_mismatch_explained_by = maybe(rng, |r| {
            Box::new(MismatchExplanation {
                seq: r.u64(..),
                pid: r.u32(..),
                tid: r.u32(..),
                syscall: ["rename", "renameat", "renameat2"][r.usize(..3)],
                boot_ns: r.u64(..),
                oldpath_resolved: maybe(r, hostile_bytes),
                newpath_resolved: maybe(r, hostile_bytes),
            })
        });
        e
    }

    #[test]
    fn random_hostile_events_match_serde_json_byte_for_byte() {
        let mut rng = fastrand::Rng::with_seed(0x11ab);
        for _ in 0..5_000 {
            assert_same_as_serde(random_event(&mut rng));
        }
    }

    #[test]
    fn every_single_byte_and_long_paths_match_serde_json() {
        for byte in 0u8..=255 {
            let path: &'static [u8] = vec![b'/', byte, b'x'].leak();
            let mut e = sample_event(Some(path), Some(path), -1);
            e.oldpath.resolved = Some(path.to_vec());
            e.comm = String::from_utf8_lossy(path).into_owned();
            assert_same_as_serde(e);
        }
        // 4 KiB paths (PATH_MAX), plain and with a hostile byte at the end.
        let long: &'static [u8] = "/d".repeat(2048).into_bytes().leak();
        let mut hostile = long.to_vec();
        hostile[4095] = 0xff;
        let hostile: &'static [u8] = hostile.leak();
        let mut e = sample_event(Some(long), Some(hostile), 0);
        e.oldpath.truncated = true;
        e.newpath.canonical = Some(hostile.to_vec());
        assert_same_as_serde(e);
        // Unreadable paths, nothing optional set.
        assert_same_as_serde(sample_event(None, None, -14));
    }

    #[test]
    fn needs_escape_finds_every_escaped_byte_at_every_position() {
        for len in 0..40 {
            assert!(!needs_escape(&vec![b'a'; len]));
            for at in 0..len {
                for bad in [0u8, 0x1f, b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert!(needs_escape(&bytes), "len {len} at {at} byte {bad}");
                }
            }
        }
        // Every byte value at every position, among fillers that make
        // borrows across bytes (0x00 aside, which is escaped itself).
        for len in 1..34 {
            for filler in [b'a', 0xff, 0x80, 0x20, 0x21, 0x5d] {
                for at in 0..len {
                    for byte in 0..=255u8 {
                        let mut bytes = vec![filler; len];
                        bytes[at] = byte;
                        let expected = byte < 0x20 || byte == b'"' || byte == b'\\';
                        assert_eq!(needs_escape(&bytes), expected, "{bytes:?}");
                    }
                }
            }
        }
    }
}
