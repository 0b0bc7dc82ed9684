//! Writes records to stdout on a thread of its own, so a slow terminal or
//! pipe never blocks the capture loop directly (the bounded channel in
//! between applies back-pressure, and the kernel counts what it cannot hold).

use std::io::{self, Write};

use tokio::sync::mpsc;

use crate::event::{AlertRecord, LinkEvent, Record, RecordKind, close_and_count};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Text,
}

#[derive(Debug, Default)]
pub struct OutputSummary {
    pub events_written: u64,
    /// Events received but not written because the sink failed.
    pub events_undelivered: u64,
    /// The same for context records (printed with --context-events).
    pub context_written: u64,
    pub context_undelivered: u64,
    pub error: Option<io::Error>,
}

pub fn spawn(format: Format, rx: mpsc::Receiver<Record>) -> std::thread::JoinHandle<OutputSummary> {
    std::thread::Builder::new()
        .name("link-trace-output".into())
        .spawn(move || write_all(format, rx, io::stdout().lock()))
        .unwrap_or_else(|e| {
            // Without a thread there is no output; report it through the summary.
            std::thread::spawn(move || OutputSummary {
                error: Some(e),
                ..Default::default()
            })
        })
}

/// Lines are gathered in a batch and written with one `write_all` when the
/// batch is large or the queue runs dry, so an event counts as written only
/// once the sink took its whole batch. When the sink fails, every event of
/// the failed batch and every event still queued counts as undelivered (a
/// batch the sink took in part is counted whole: delivery is not confirmed).
fn write_all(
    format: Format,
    mut rx: mpsc::Receiver<Record>,
    mut sink: impl Write,
) -> OutputSummary {
    let mut summary = OutputSummary::default();
    let mut batch = Batch::default();
    loop {
        let record = match rx.try_recv() {
            Ok(record) => Some(record),
            Err(_) => {
                // Queue empty: deliver what we have before waiting.
                if let Err(e) = batch.write_to(&mut sink, &mut summary) {
                    summary.error = Some(e);
                    break;
                }
                rx.blocking_recv()
            }
        };
        let Some(record) = record else { break };
        batch.push(format, &record);
        if batch.bytes.len() >= BATCH_BYTES
            && let Err(e) = batch.write_to(&mut sink, &mut summary)
        {
            summary.error = Some(e);
            break;
        }
    }
    if summary.error.is_some() {
        summary.events_undelivered += batch.events;
        summary.context_undelivered += batch.context;
        // Stop taking records and count what is still queued.
        let queued = close_and_count(&mut rx);
        summary.events_undelivered += queued.events;
        summary.context_undelivered += queued.context;
    }
    summary
}

const BATCH_BYTES: usize = 64 * 1024;

#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    events: u64,
    context: u64,
}

impl Batch {
    fn push(&mut self, format: Format, record: &Record) {
        render(format, record, &mut self.bytes);
        self.events += u64::from(record.is_event());
        self.context += u64::from(record.is_context());
    }

    /// On success the batch's events count as written; on failure they stay
    /// in the batch for the caller to count as undelivered.
    fn write_to(&mut self, sink: &mut impl Write, summary: &mut OutputSummary) -> io::Result<()> {
        if self.bytes.is_empty() {
            return Ok(());
        }
        sink.write_all(&self.bytes)?;
        sink.flush()?;
        summary.events_written += self.events;
        summary.context_written += self.context;
        self.bytes.clear();
        self.events = 0;
        self.context = 0;
        Ok(())
    }
}

pub fn render(format: Format, record: &Record, line: &mut Vec<u8>) {
    match format {
        Format::Json => {
            // Serializing plain structs into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *line, record);
        }
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

    struct DeadSink;
    impl Write for DeadSink {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
        fn flush(&mut self) -> io::Result<()> {
            Err(io::Error::from(io::ErrorKind::BrokenPipe))
        }
    }

    fn event() -> Record {
        Record::Event(Box::new(crate::event::sample_event(
            Some(b"/a"),
            Some(b"/b\xff"),
            -17,
        )))
    }

    #[test]
    fn dead_sink_counts_every_undelivered_event() {
        let (tx, rx) = mpsc::channel(8);
        for _ in 0..3 {
            tx.try_send(event()).unwrap();
        }
        drop(tx);
        let summary = write_all(Format::Json, rx, DeadSink);
        assert_eq!(
            summary.error.map(|e| e.kind()),
            Some(io::ErrorKind::BrokenPipe)
        );
        assert_eq!((summary.events_written, summary.events_undelivered), (0, 3));
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
