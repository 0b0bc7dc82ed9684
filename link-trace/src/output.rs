//! link-trace's own renderings of a record: JSON lines and readable text.
//! The sinks (`sink`) deliver them.

use std::io::Write;

use crate::event::{AlertRecord, LinkEvent, Record, RecordKind};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

pub fn render(format: Format, record: &Record, line: &mut Vec<u8>) {
    match format {
        // Events, the bulk of the stream, are written by hand (see
        // event_json: same bytes, several times faster).
        Format::Json => match record {
            Record::Event(event) => crate::event_json::write_event(event, line),
            // Serializing plain structs into a Vec cannot fail.
            _ => {
                let _ = serde_json::to_writer(&mut *line, record);
            }
        },
        Format::Text => match record {
            Record::Event(event) => text_event(event, line),
            Record::Context(context) => text_context(&context.0, line),
            Record::Stats(stats) => {
                let lost: u64 = stats.losses.iter().map(|l| l.total).sum();
                let _ = write!(
                    line,
                    "{} STATS submitted={} decoded={} lost={lost} decode_errors={}",
                    stats.time, stats.kernel_submitted, stats.events_decoded, stats.decode_errors
                );
            }
            Record::Loss(loss) => {
                let what = match loss.record_kind {
                    RecordKind::Event => "event(s)",
                    RecordKind::Context => "context record(s)",
                };
                let _ = write!(
                    line,
                    "{} LOST {} {what}: {:?} (total {})",
                    loss.time, loss.count, loss.reason, loss.total
                );
            }
            Record::Alert(alert) => text_alert(alert, line),
        },
    }
    line.push(b'\n');
}

fn text_event(e: &LinkEvent, line: &mut Vec<u8>) {
    let _ = write!(line, "{} #{} ", e.time, e.seq);
    text_call(e, line);
}

/// `TIME ctx#SEQ unlinkat … path=AT_FDCWD:"x" = 0`: context records are
/// numbered apart from events, hence the prefix.
fn text_context(e: &LinkEvent, line: &mut Vec<u8>) {
    let _ = write!(line, "{} ctx#{} ", e.time, e.seq);
    text_call(e, line);
}

fn text_call(e: &LinkEvent, line: &mut Vec<u8>) {
    let _ = write!(
        line,
        "{} pid={} tid={} uid={} gid={} comm=",
        e.syscall, e.pid, e.tid, e.uid, e.gid
    );
    escaped(e.comm.as_bytes(), line);
    // unlink's one path is the name it removes: "path=", not "old=".
    let old_label = if e.has_newpath() { "old" } else { "path" };
    let _ = write!(
        line,
        " {old_label}={}:",
        crate::names::dirfd_label(e.olddirfd)
    );
    path_text(
        &e.oldpath.bytes,
        e.oldpath.truncated,
        e.oldpath.error.as_deref(),
        line,
    );
    if e.has_newpath() {
        let _ = write!(line, " new={}:", crate::names::dirfd_label(e.newdirfd));
        path_text(
            &e.newpath.bytes,
            e.newpath.truncated,
            e.newpath.error.as_deref(),
            line,
        );
    }
    if e.flags != 0 {
        let _ = write!(line, " flags={}", e.flag_names.join("|"));
    }
    match &e.errno {
        None => line.extend_from_slice(b" = 0"),
        Some(errno) => {
            let _ = write!(line, " = {} {errno}", e.ret);
        }
    }
}

fn text_alert(a: &AlertRecord, line: &mut Vec<u8>) {
    let seqs: Vec<String> = a
        .event_seqs
        .iter()
        .map(|s| format!("#{s}"))
        .chain(a.context_seqs.iter().map(|s| format!("ctx#{s}")))
        .collect();
    let _ = write!(
        line,
        "{} ALERT {} [{}] {} mitre={} events={} pid={} uid={} comm=",
        a.time,
        a.severity.name().to_ascii_uppercase(),
        a.rule_id,
        a.title,
        a.mitre.join(","),
        seqs.join(","),
        a.pid,
        a.uid,
    );
    escaped(a.comm.as_bytes(), line);
    line.extend_from_slice(b": ");
    // The message carries paths: escape it like them, without the quotes.
    let start = line.len();
    escaped(a.message.as_bytes(), line);
    line.remove(start);
    line.pop();
}

fn path_text(bytes: &Option<Vec<u8>>, truncated: bool, error: Option<&str>, line: &mut Vec<u8>) {
    match bytes {
        Some(bytes) => escaped(bytes, line),
        None => {
            let _ = write!(line, "<unreadable: {}>", error.unwrap_or("?"));
        }
    }
    if truncated {
        line.extend_from_slice(b"<truncated>");
    }
}

/// Quoted, with control characters and invalid UTF-8 escaped (`\n`, `\xff`),
/// so one event stays one line and the bytes can be told apart.
fn escaped(bytes: &[u8], line: &mut Vec<u8>) {
    line.push(b'"');
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '"' || c == '\\' {
                let _ = write!(line, "{}", c.escape_default());
            } else {
                let _ = write!(line, "{c}");
            }
        }
        for b in chunk.invalid() {
            let _ = write!(line, "\\x{b:02x}");
        }
    }
    line.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_escapes_hostile_bytes_on_one_line() {
        let mut line = Vec::new();
        escaped(b"a\nb\xff\"\\\x1b\xc3\xa9", &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "\"a\\nb\\xff\\\"\\\\\\u{1b}\u{e9}\""
        );
    }

    fn event() -> Record {
        Record::Event(Box::new(crate::event::sample_event(
            Some(b"/a"),
            Some(b"/b\xff"),
            -17,
        )))
    }

    #[test]
    fn alert_text_is_one_escaped_line() {
        let alert = crate::event::AlertRecord {
            schema_version: 1,
            time: "2026-01-01T00:00:00.000000000Z".into(),
            rule_id: "setuid-link".into(),
            title: "Setuid file linked".into(),
            severity: crate::rules::Severity::High,
            mitre: vec!["T1548.001".into()],
            tags: vec![],
            message: "linked /a -> /b\nc".into(),
            event_seqs: vec![4, 9],
            context_seqs: vec![2],
            syscall: "linkat",
            pid: 7,
            uid: 1000,
            comm: "ln".into(),
            oldpath_resolved: Some("/a".into()),
            newpath_resolved: None,
        };
        let mut line = Vec::new();
        render(Format::Text, &Record::Alert(Box::new(alert)), &mut line);
        assert_eq!(
            String::from_utf8(line).unwrap(),
            "2026-01-01T00:00:00.000000000Z ALERT HIGH [setuid-link] Setuid file linked mitre=T1548.001 events=#4,#9,ctx#2 pid=7 uid=1000 comm=\"ln\": linked /a -> /b\\nc\n"
        );
    }

    #[test]
    fn context_records_read_as_their_syscall_with_their_own_numbering() {
        let mut unlink = crate::event::sample_event(Some(b"x\n"), None, -1);
        unlink.syscall = "unlinkat";
        unlink.flags = 0x200;
        unlink.flag_names = vec!["AT_REMOVEDIR".into()];
        let mut line = Vec::new();
        let record = Record::Context(Box::new(crate::event::ContextEvent(unlink)));
        render(Format::Text, &record, &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.ends_with(
                " ctx#3 unlinkat pid=7 tid=8 uid=1000 gid=100 comm=\"ln\" path=AT_FDCWD:\"x\\n\" flags=AT_REMOVEDIR = -1 EPERM\n"
            ),
            "{line}"
        );
        let mut json = Vec::new();
        render(Format::Json, &record, &mut json);
        let value: serde_json::Value = serde_json::from_slice(&json).unwrap();
        assert_eq!(
            (value["kind"].as_str(), value["seq"].as_u64()),
            (Some("context"), Some(3))
        );
    }

    #[test]
    fn json_is_what_serde_json_writes() {
        let mut hostile: Vec<u8> = (0u8..=255).collect();
        hostile.extend_from_slice("\u{2028}é😀\"\\/".as_bytes());
        let valid: &'static [u8] = String::from_utf8_lossy(&hostile)
            .into_owned()
            .leak()
            .as_bytes();
        let hostile: &'static [u8] = hostile.leak();
        let cases: [(&'static [u8], &'static [u8]); 3] =
            [(hostile, valid), (valid, hostile), (b"/a", b"\n")];
        for (old, new) in cases {
            let record = Record::Event(Box::new(crate::event::sample_event(
                Some(old),
                Some(new),
                -1,
            )));
            let mut line = Vec::new();
            render(Format::Json, &record, &mut line);
            let mut expected = serde_json::to_vec(&record).unwrap();
            expected.push(b'\n');
            assert_eq!(
                String::from_utf8_lossy(&line),
                String::from_utf8_lossy(&expected)
            );
        }
    }

    #[test]
    fn text_line_reads_well() {
        let mut line = Vec::new();
        render(Format::Text, &event(), &mut line);
        let line = String::from_utf8(line).unwrap();
        assert!(
            line.ends_with(
                "linkat pid=7 tid=8 uid=1000 gid=100 comm=\"ln\" old=AT_FDCWD:\"/a\" new=5:\"/b\\xff\" flags=AT_SYMLINK_FOLLOW|AT_EMPTY_PATH = -17 EEXIST\n"
            ),
            "{line}"
        );
    }
}
