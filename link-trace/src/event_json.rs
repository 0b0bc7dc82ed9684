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

use crate::event::{FileInfo, LinkEvent, MismatchExplanation, PathField};

/// `,"name":` for a literal name, copied in one piece of known length
/// (inlined, no call to memcpy).
macro_rules! key {
    ($out:expr, $name:expr) => {
        $out.extend_from_slice(concat!(",\"", $name, "\":").as_bytes())
    };
}

/// `,"name":null` or `,"name":` and the value `write` writes: a null
/// field costs one literal copy instead of two.
macro_rules! nullable {
    ($out:expr, $name:expr, $value:expr, $write:expr) => {
        match $value {
            Some(v) => {
                key!($out, $name);
                $write($out, v)
            }
            None => $out.extend_from_slice(concat!(",\"", $name, "\":null").as_bytes()),
        }
    };
}

/// `,"name":true` or `,"name":false`, one literal copy.
macro_rules! flag {
    ($out:expr, $name:expr, $value:expr) => {
        $out.extend_from_slice(if $value {
            concat!(",\"", $name, "\":true").as_bytes()
        } else {
            concat!(",\"", $name, "\":false").as_bytes()
        })
    };
}

/// The fields of one path argument (`PathField`) with `$p` ("oldpath" or
/// "newpath") as prefix. A macro rather than a function generic over the
/// prefix so that every key is a literal; the common tail (no error, not
/// truncated, nothing at exit, no canonical form) is one literal each.
macro_rules! path {
    ($out:expr, $field:expr, $p:literal) => {{
        let (out, f): (&mut Vec<u8>, &PathField<_>) = ($out, $field);
        bytes_field(
            out,
            concat!(",\"", $p, "\":"),
            concat!(",\"", $p, "_b64\":"),
            f.bytes.as_deref(),
        );
        match (f.truncated, f.error.as_deref()) {
            (false, None) => out.extend_from_slice(
                concat!(",\"", $p, "_truncated\":false,\"", $p, "_error\":null").as_bytes(),
            ),
            (truncated, error) => {
                flag!(out, concat!($p, "_truncated"), truncated);
                nullable!(out, concat!($p, "_error"), error, string);
            }
        }
        bytes_field(
            out,
            concat!(",\"", $p, "_resolved\":"),
            concat!(",\"", $p, "_resolved_b64\":"),
            f.resolved.as_deref(),
        );
        key!(out, concat!($p, "_resolution"));
        string(out, f.resolution);
        match (f.resolution_error, &f.at_exit, &f.canonical) {
            (None, None, None) => out.extend_from_slice(
                concat!(
                    ",\"",
                    $p,
                    "_resolution_error\":null,\"",
                    $p,
                    "_at_exit\":null,\"",
                    $p,
                    "_canonical\":null"
                )
                .as_bytes(),
            ),
            (error, at_exit, canonical) => {
                nullable!(out, concat!($p, "_resolution_error"), error, string);
                bytes_field(
                    out,
                    concat!(",\"", $p, "_at_exit\":"),
                    concat!(",\"", $p, "_at_exit_b64\":"),
                    at_exit.as_deref(),
                );
                bytes_field(
                    out,
                    concat!(",\"", $p, "_canonical\":"),
                    concat!(",\"", $p, "_canonical_b64\":"),
                    canonical.as_deref(),
                );
            }
        }
    }};
}

/// Appends `e` as `{"kind":"event",...}` (no newline).
pub fn write_event(e: &LinkEvent, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"kind\":\"event\",\"schema_version\":");
    uint(out, e.schema_version);
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
    int(out, e.olddirfd);
    path!(out, &e.oldpath, "oldpath");
    key!(out, "newdirfd");
    int(out, e.newdirfd);
    path!(out, &e.newpath, "newpath");
    key!(out, "flags");
    uint(out, e.flags);
    if e.flag_names.is_empty() {
        out.extend_from_slice(b",\"flag_names\":[]");
    } else {
        key!(out, "flag_names");
        out.push(b'[');
        for (index, name) in e.flag_names.iter().enumerate() {
            if index > 0 {
                out.push(b',');
            }
            string(out, name);
        }
        out.push(b']');
    }
    key!(out, "ret");
    int(out, e.ret);
    flag!(out, "success", e.success);
    nullable!(out, "errno", e.errno.as_deref(), string);
    key!(out, "pid");
    uint(out, e.pid);
    key!(out, "tid");
    uint(out, e.tid);
    key!(out, "uid");
    uint(out, e.uid);
    key!(out, "gid");
    uint(out, e.gid);
    key!(out, "comm");
    string(out, &e.comm);
    if let Some(b64) = &e.comm_b64 {
        key!(out, "comm_b64");
        string(out, b64);
    }
    flag!(out, "args_changed", e.args_changed);
    let p = &e.process;
    nullable!(out, "ppid", p.ppid, uint);
    nullable!(out, "euid", p.euid, uint);
    nullable!(out, "egid", p.egid, uint);
    nullable!(out, "fsuid", p.fsuid, uint);
    nullable!(out, "fsgid", p.fsgid, uint);
    nullable!(out, "auid", p.auid, uint);
    nullable!(out, "sessionid", p.sessionid, uint);
    nullable!(out, "exe", p.exe.as_deref(), string);
    if let Some(b64) = &p.exe_b64 {
        key!(out, "exe_b64");
        string(out, b64);
    }
    key!(out, "cgroup_id");
    uint(out, p.cgroup_id);
    nullable!(out, "cgroup_path", p.cgroup_path.as_deref(), string);
    nullable!(out, "container_id", p.container_id.as_deref(), string);
    nullable!(out, "mnt_ns", p.mnt_ns, uint);
    nullable!(out, "pid_ns", p.pid_ns, uint);
    nullable!(out, "file", e.file.as_ref(), file);
    nullable!(out, "file_error", e.file_error.as_deref(), string);
    nullable!(out, "new_file", e.new_file.as_ref(), file);
    nullable!(out, "new_file_error", e.new_file_error.as_deref(), string);
    nullable!(out, "inode_mismatch", e.inode_mismatch, boolean);
    nullable!(
        out,
        "inode_mismatch_explained_by",
        e.inode_mismatch_explained_by.as_ref(),
        explanation
    );
    out.push(b'}');
}

fn explanation(out: &mut Vec<u8>, why: &MismatchExplanation) {
    out.extend_from_slice(b"{\"seq\":");
    uint(out, why.seq);
    key!(out, "pid");
    uint(out, why.pid);
    key!(out, "tid");
    uint(out, why.tid);
    key!(out, "syscall");
    string(out, why.syscall);
    key!(out, "boot_ns");
    uint(out, why.boot_ns);
    bytes_field(
        out,
        ",\"oldpath_resolved\":",
        ",\"oldpath_resolved_b64\":",
        why.oldpath_resolved.as_deref(),
    );
    bytes_field(
        out,
        ",\"newpath_resolved\":",
        ",\"newpath_resolved_b64\":",
        why.newpath_resolved.as_deref(),
    );
    out.push(b'}');
}

fn boolean(out: &mut Vec<u8>, value: bool) {
    out.extend_from_slice(if value { b"true" } else { b"false" });
}

/// An unsigned number (u32 stays u32: itoa is cheaper on it than on u64).
#[inline]
fn uint<T: itoa::Integer + Into<u64> + Copy>(out: &mut Vec<u8>, value: T) {
    let wide: u64 = value.into();
    if wide < 10 {
        out.push(b'0' + wide as u8);
        return;
    }
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

fn int<T: itoa::Integer>(out: &mut Vec<u8>, value: T) {
    out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
}

const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
const HIGH: u64 = u64::from_ne_bytes([0x80; 8]);

/// Nonzero when one of 8 bytes is a control character, `"` or `\`
/// (`also` adds bits to test, e.g. HIGH for non-ASCII): the classic exact
/// SWAR tests for a byte below 0x20 and for a zero byte (after xor with the
/// byte looked for). Exact as a whole, though not per bit.
#[inline(always)]
fn word_flags(bytes: [u8; 8], also: u64) -> u64 {
    let x = u64::from_ne_bytes(bytes);
    let below = |x: u64, n: u8| x.wrapping_sub(ONES * u64::from(n)) & !x & HIGH;
    below(x, 0x20)
        | below(x ^ (ONES * u64::from(b'"')), 1)
        | below(x ^ (ONES * u64::from(b'\\')), 1)
        | (x & also)
}

/// Whether some byte of `bytes` must be escaped (or, with `also` = HIGH,
/// is not ASCII). 16-byte chunks folded without an early exit inside a
/// chunk (the fold compiles to vector compares), then the rest as two
/// overlapping words when there are 8 bytes or more, else byte by byte.
#[inline(always)]
fn any_flagged(bytes: &[u8], also: u64) -> bool {
    let flag = |b: u8| (b < 0x20) | (b == b'"') | (b == b'\\') | (u64::from(b) & also != 0);
    let mut chunks = bytes.chunks_exact(16);
    for chunk in &mut chunks {
        if chunk.iter().fold(false, |any, &b| any | flag(b)) {
            return true;
        }
    }
    let rest = chunks.remainder();
    match (rest.first_chunk::<8>(), rest.last_chunk::<8>()) {
        (Some(first), Some(last)) => (word_flags(*first, also) | word_flags(*last, also)) != 0,
        _ => rest.iter().fold(false, |any, &b| any | flag(b)),
    }
}

/// Whether any byte of `bytes` must be escaped in a JSON string (a control
/// character, `"` or `\`).
fn needs_escape(bytes: &[u8]) -> bool {
    any_flagged(bytes, 0)
}

/// Whether `bytes` can be written as they are between quotes: all ASCII
/// (so valid UTF-8, no lossy rendering, no base64) and nothing to escape.
/// One pass instead of a UTF-8 check and then an escape check.
fn plain_ascii(bytes: &[u8]) -> bool {
    !any_flagged(bytes, HIGH)
}

/// `"bytes"`, known to need no escaping.
#[inline(always)]
fn quoted(out: &mut Vec<u8>, bytes: &[u8]) {
    out.reserve(bytes.len() + 2);
    out.push(b'"');
    out.extend_from_slice(bytes);
    out.push(b'"');
}

/// A JSON string, escaped exactly as serde_json does.
fn string(out: &mut Vec<u8>, value: &str) {
    if needs_escape(value.as_bytes()) {
        // Rare: let serde_json's escaper write it. Writing to a Vec cannot fail.
        let _ = serde_json::to_writer(&mut *out, value);
        return;
    }
    quoted(out, value.as_bytes());
}

/// `key` (`,"name":`) and the text of path bytes (null when absent), plus
/// `b64_key` and the exact bytes in base64 when they are not UTF-8: what
/// `event::encode_bytes` gives serde.
fn bytes_field(out: &mut Vec<u8>, key: &str, b64_key: &str, bytes: Option<&[u8]>) {
    out.extend_from_slice(key.as_bytes());
    let Some(bytes) = bytes else {
        out.extend_from_slice(b"null");
        return;
    };
    if plain_ascii(bytes) {
        quoted(out, bytes);
        return;
    }
    match std::str::from_utf8(bytes) {
        Ok(text) => string(out, text),
        Err(_) => {
            string(out, &String::from_utf8_lossy(bytes));
            out.extend_from_slice(b64_key.as_bytes());
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

fn file(out: &mut Vec<u8>, f: &FileInfo) {
    out.extend_from_slice(b"{\"facts_from\":");
    string(out, f.facts_from);
    key!(out, "dev");
    string(out, &f.dev);
    key!(out, "ino");
    uint(out, f.ino);
    key!(out, "type");
    string(out, f.file_type);
    key!(out, "mode");
    uint(out, f.mode);
    key!(out, "permissions");
    string(out, &f.permissions);
    flag!(out, "setuid", f.setuid);
    flag!(out, "setgid", f.setgid);
    key!(out, "uid");
    uint(out, f.uid);
    key!(out, "gid");
    uint(out, f.gid);
    key!(out, "nlink");
    uint(out, f.nlink);
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
    fn escape_and_ascii_checks_find_every_byte_at_every_position() {
        for len in 0..40 {
            assert!(!needs_escape(&vec![b'a'; len]));
            assert!(plain_ascii(&vec![b'a'; len]));
            for at in 0..len {
                for bad in [0u8, 0x1f, b'"', b'\\'] {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = bad;
                    assert!(needs_escape(&bytes), "len {len} at {at} byte {bad}");
                    assert!(!plain_ascii(&bytes), "len {len} at {at} byte {bad}");
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
                        let plain = bytes
                            .iter()
                            .all(|&b| (0x20..0x80).contains(&b) && b != b'"' && b != b'\\');
                        assert_eq!(plain_ascii(&bytes), plain, "{bytes:?}");
                    }
                }
            }
        }
    }
}
