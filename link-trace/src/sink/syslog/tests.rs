use std::{
    net::{TcpListener, UdpSocket},
    os::unix::net::UnixDatagram,
};

use syslog_rfc5424::{SyslogMessage, parse_message};

use super::*;
use crate::{
    config::OutputFormat,
    event::{AlertRecord, LossCount, LossReason, LossRecord, StatsRecord, sample_event},
};

const AUTHPRIV: u8 = 10;

fn event(new: &'static [u8], ret: i64) -> Record {
    Record::Event(Box::new(sample_event(Some(b"/a"), Some(new), ret)))
}

fn alert(severity: Severity, rule_id: &str) -> Record {
    Record::Alert(Box::new(AlertRecord {
        schema_version: 1,
        time: "2026-11-21T23:02:11.120334571Z".into(),
        rule_id: rule_id.into(),
        title: "t".into(),
        severity,
        mitre: vec![],
        tags: vec![],
        message: "m".into(),
        event_seqs: vec![3, 12],
        context_seqs: vec![],
        syscall: "linkat",
        pid: 7301,
        uid: 1000,
        comm: "ln".into(),
        oldpath_resolved: None,
        newpath_resolved: None,
    }))
}

fn formatter(max: usize) -> Formatter {
    Formatter::new(AUTHPRIV, "host-1", "link-trace", max)
}

/// Formats one record and parses it back with a strict RFC 5424 parser.
fn round_trip(formatter: &mut Formatter, record: &Record) -> (String, SyslogMessage) {
    let mut out = Vec::new();
    formatter.format(OutputFormat::Json, record, &mut out);
    let text = String::from_utf8(out).expect("UTF-8 message");
    let parsed = parse_message(&text).unwrap_or_else(|e| panic!("not RFC 5424 ({e}): {text}"));
    (text, parsed)
}

fn param<'a>(message: &'a SyslogMessage, name: &str) -> Option<&'a str> {
    message.sd.find_tuple(SD_ID, name).map(String::as_str)
}

fn json_line(record: &Record) -> String {
    let mut line = Vec::new();
    crate::sink::render(OutputFormat::Json, record, &mut line);
    line.pop();
    String::from_utf8(line).unwrap()
}

#[test]
fn an_event_is_a_valid_rfc5424_message_with_its_json_as_msg() {
    let record = event(b"/b", 0);
    let (text, parsed) = round_trip(&mut formatter(DEFAULT_MAX_MESSAGE), &record);
    assert!(
        text.starts_with("<86>1 1970-01-01T00:00:00.000001Z host-1 link-trace "),
        "authpriv.info = 10*8+6, microseconds: {text}"
    );
    assert_eq!(parsed.facility as u8, AUTHPRIV);
    assert_eq!(parsed.severity as u8, 6);
    assert_eq!(parsed.version, 1);
    assert_eq!(parsed.timestamp, Some(0));
    assert_eq!(parsed.timestamp_nanos, Some(1_000));
    assert_eq!(parsed.hostname.as_deref(), Some("host-1"));
    assert_eq!(parsed.appname.as_deref(), Some("link-trace"));
    assert_eq!(
        parsed.procid,
        Some(syslog_rfc5424::message::ProcId::PID(
            std::process::id() as i32
        ))
    );
    assert_eq!(parsed.msgid.as_deref(), Some("event"));
    for (name, want) in [
        ("seq", Some("3")),
        ("syscall", Some("linkat")),
        ("pid", Some("7")),
        ("uid", Some("1000")),
        ("comm", Some("ln")),
        ("ret", Some("0")),
        ("errno", None),
        ("truncated", None),
    ] {
        assert_eq!(param(&parsed, name), want, "SD param {name}");
    }
    assert_eq!(parsed.msg, json_line(&record), "MSG is the JSON line");
    assert!(!text.ends_with('\n'));
}

#[test]
fn a_failed_call_is_a_notice_with_its_errno() {
    let (_, parsed) = round_trip(&mut formatter(DEFAULT_MAX_MESSAGE), &event(b"/b", -17));
    assert_eq!(parsed.severity as u8, 5);
    assert_eq!(param(&parsed, "ret"), Some("-17"));
    assert_eq!(param(&parsed, "errno"), Some("EEXIST"));
}

#[test]
fn alert_severities_map_to_syslog_severities() {
    let mut f = formatter(DEFAULT_MAX_MESSAGE);
    for (severity, syslog) in [
        (Severity::Critical, 2),
        (Severity::High, 3),
        (Severity::Medium, 4),
        (Severity::Low, 5),
        (Severity::Info, 6),
    ] {
        let (text, parsed) = round_trip(&mut f, &alert(severity, "sensitive-credentials-link"));
        assert_eq!(parsed.severity as u8, syslog, "{severity:?}");
        assert!(text.starts_with(&format!("<{}>1 ", 80 + syslog)), "{text}");
        assert_eq!(parsed.msgid.as_deref(), Some("alert"));
        assert_eq!(param(&parsed, "rule"), Some("sensitive-credentials-link"));
        assert_eq!(param(&parsed, "severity"), Some(severity.name()));
        assert_eq!(param(&parsed, "seq"), Some("12"), "the completing event");
    }
}

#[test]
fn loss_and_stats_records_have_their_own_msgid_and_severity() {
    let mut f = formatter(DEFAULT_MAX_MESSAGE);
    let loss = Record::Loss(Box::new(LossRecord {
        schema_version: 1,
        time: "2026-11-21T23:02:11Z".into(),
        reason: LossReason::RingFull,
        count: 4,
        total: 9,
        record_kind: crate::event::RecordKind::Event,
    }));
    let (text, parsed) = round_trip(&mut f, &loss);
    assert_eq!(
        (parsed.severity as u8, parsed.msgid.as_deref()),
        (4, Some("loss"))
    );
    assert!(text.contains(" 2026-11-21T23:02:11Z "), "{text}");
    assert_eq!(param(&parsed, "reason"), Some("ring_full"));
    assert_eq!(param(&parsed, "count"), Some("4"));
    let stats = Record::Stats(Box::new(StatsRecord {
        schema_version: 1,
        time: "2026-11-21T23:02:11.5Z".into(),
        kernel_submitted: 10,
        events_decoded: 8,
        decode_errors: 0,
        losses: vec![LossCount {
            reason: LossReason::RingFull,
            total: 2,
            per_cpu: vec![2],
        }],
        context_submitted: 0,
        context_decoded: 0,
        context_losses: vec![],
        inflight_release_failed: 0,
        sinks: vec![],
    }));
    let (_, parsed) = round_trip(&mut f, &stats);
    assert_eq!(
        (parsed.severity as u8, parsed.msgid.as_deref()),
        (6, Some("stats"))
    );
    assert_eq!(parsed.timestamp_nanos, Some(500_000_000));
    assert_eq!(param(&parsed, "lost"), Some("2"));
}

#[test]
fn sd_values_escape_quote_backslash_and_bracket() {
    let hostile = "a\"b\\c]d [x=\"y\"]";
    let mut f = formatter(DEFAULT_MAX_MESSAGE);
    let (text, parsed) = round_trip(&mut f, &alert(Severity::High, hostile));
    assert!(text.contains(r#"rule="a\"b\\c\]d [x=\"y\"\]""#), "{text}");
    assert_eq!(param(&parsed, "rule"), Some(hostile), "parses back exactly");
    // A long value is cut at a character boundary; MSG keeps it whole.
    let long = "é".repeat(100);
    let (_, parsed) = round_trip(&mut f, &alert(Severity::High, &long));
    let cut = param(&parsed, "rule").unwrap();
    assert!(cut.len() <= SD_VALUE_MAX && long.starts_with(cut) && !cut.is_empty());
    assert!(parsed.msg.contains(&long));
}

#[test]
fn header_fields_are_printable_ascii_or_nil() {
    let mut f = Formatter::new(AUTHPRIV, "", "x y", DEFAULT_MAX_MESSAGE);
    let (text, parsed) = round_trip(&mut f, &event(b"/b", 0));
    assert_eq!(parsed.hostname, None, "empty hostname is NILVALUE: {text}");
    assert_eq!(parsed.appname.as_deref(), Some("x_y"));
    let mut out = Vec::new();
    for (time, want) in [
        (
            "2026-11-21T22:15:01.386513266Z",
            "2026-11-21T22:15:01.386513Z",
        ),
        ("2026-11-21T22:15:01.3Z", "2026-11-21T22:15:01.3Z"),
        ("2026-11-21T22:15:01Z", "2026-11-21T22:15:01Z"),
        ("2026-11-21T22:15:01.Z", "-"),
        ("2026-11-21 22:15:01Z", "-"),
        ("", "-"),
    ] {
        out.clear();
        push_timestamp(time, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), want, "{time:?}");
    }
    assert!(valid_app_name("link-trace") && !valid_app_name("") && !valid_app_name("a b"));
    assert!(!valid_app_name(&"x".repeat(49)));
    assert_eq!(facility_code("local7"), Some(23));
    assert_eq!(facility_code("nope"), None);
}

#[test]
fn an_oversized_message_is_cut_at_a_character_boundary_and_marked() {
    // 3000 bytes of two-byte characters in the new path.
    let path: &'static [u8] = Box::leak(format!("/{}", "é".repeat(1500)).into_bytes().into());
    let record = event(path, 0);
    let full = json_line(&record);
    for max in [MIN_MAX_MESSAGE, MIN_MAX_MESSAGE + 1, 4000] {
        let mut f = formatter(max);
        let mut out = Vec::new();
        assert_eq!(
            f.format(OutputFormat::Json, &record, &mut out),
            Rendered::Truncated
        );
        assert!(
            out.len() <= max && out.len() >= max - 1,
            "{} > {max}",
            out.len()
        );
        let text = String::from_utf8(out).expect("cut on a character boundary");
        let parsed = parse_message(&text).expect("still RFC 5424");
        assert_eq!(param(&parsed, "truncated"), Some(&*full.len().to_string()));
        assert!(full.starts_with(&parsed.msg) && parsed.msg.len() < full.len());
    }
    let mut out = Vec::new();
    assert_eq!(
        formatter(DEFAULT_MAX_MESSAGE).format(OutputFormat::Json, &record, &mut out),
        Rendered::Whole
    );
}

#[test]
fn text_format_goes_in_msg_without_the_newline() {
    let record = event(b"/b", 0);
    let mut out = Vec::new();
    formatter(DEFAULT_MAX_MESSAGE).format(OutputFormat::Text, &record, &mut out);
    let parsed = parse_message(String::from_utf8(out).unwrap()).unwrap();
    let mut line = Vec::new();
    crate::sink::render(OutputFormat::Text, &record, &mut line);
    assert_eq!(format!("{}\n", parsed.msg).as_bytes(), &line[..]);
}

#[test]
fn backoff_doubles_from_100ms_to_30s_with_jitter() {
    let mut backoff = Backoff::new();
    assert!(backoff.due());
    let mut previous_max = Duration::ZERO;
    for failure in 1..=12u32 {
        let before = Instant::now();
        backoff.failed();
        let delay = backoff.next_attempt - before;
        let full = (BACKOFF_MIN * 2u32.pow(failure - 1)).min(BACKOFF_MAX);
        assert!(
            delay >= full / 2 && delay <= full + Duration::from_millis(5),
            "failure {failure}: {delay:?} not in [{:?}, {full:?}]",
            full / 2
        );
        assert!(full >= previous_max);
        previous_max = full;
        assert!(!backoff.due());
    }
    assert_eq!(previous_max, BACKOFF_MAX);
    backoff.succeeded();
    backoff.failed();
    assert!(backoff.next_attempt - Instant::now() <= BACKOFF_MIN);
}

fn config(transport: SyslogTransport, address: &str) -> SyslogOutput {
    SyslogOutput {
        transport,
        address: address.into(),
        format: OutputFormat::Json,
        queue: 16,
        alerts_only: false,
        facility: "local3".into(),
        app_name: "lt-unit".into(),
        max_message_bytes: DEFAULT_MAX_MESSAGE,
    }
}

/// A batch as the sink thread builds it: each record rendered by the transport.
fn batch(sink: &mut Syslog, records: &[Record]) -> Batch {
    let mut batch = Batch::default();
    for record in records {
        sink.render(OutputFormat::Json, record, &mut batch.bytes);
        batch.ends.push(batch.bytes.len());
        batch.is_event.push(record.is_event());
    }
    batch
}

/// Renders events `from..from + count` into a batch and delivers it.
fn send(sink: &mut Syslog, from: u64, count: u64) -> Result<(), DeliverError> {
    let batch = batch(sink, &events(from, count));
    sink.deliver(&batch)
}

fn seqs(records: impl IntoIterator<Item = Vec<u8>>) -> Vec<String> {
    records
        .into_iter()
        .map(|m| {
            let parsed = parse_message(String::from_utf8(m).unwrap()).unwrap();
            assert_eq!(parsed.facility as u8, 19, "local3");
            param(&parsed, "seq").unwrap().to_owned()
        })
        .collect()
}

fn events(from: u64, count: u64) -> Vec<Record> {
    (from..from + count)
        .map(|seq| {
            let mut e = sample_event(Some(b"/a"), Some(b"/b"), 0);
            e.seq = seq;
            Record::Event(Box::new(e))
        })
        .collect()
}

fn wait_for_backoff() {
    std::thread::sleep(BACKOFF_MIN + Duration::from_millis(20));
}

#[test]
fn tcp_frames_by_octet_count_and_reconnects_after_the_server_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let mut sink = Syslog::open(&config(SyslogTransport::Tcp, &addr.to_string())).unwrap();
    let (mut server, _) = listener.accept().unwrap();
    let sent = batch(&mut sink, &events(1, 3));
    sink.deliver(&sent).expect("delivered");
    sink.finish().unwrap();
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut server, &mut received).unwrap();
    assert_eq!(received, sent.bytes, "exactly the frames, then FIN");
    // Parse the octet-counted frames back.
    let mut frames = Vec::new();
    let mut rest = &received[..];
    while !rest.is_empty() {
        let space = rest.iter().position(|&b| b == b' ').unwrap();
        let len: usize = std::str::from_utf8(&rest[..space])
            .unwrap()
            .parse()
            .unwrap();
        frames.push(rest[space + 1..space + 1 + len].to_vec());
        rest = &rest[space + 1 + len..];
    }
    assert_eq!(seqs(frames), ["1", "2", "3"]);

    // The server goes away: the closed connection is noticed before the
    // write, the reconnect is refused, nothing is counted delivered.
    let mut sink = Syslog::open(&config(SyslogTransport::Tcp, &addr.to_string())).unwrap();
    let (server, _) = listener.accept().unwrap();
    drop((server, listener));
    let error = send(&mut sink, 4, 2).unwrap_err();
    assert_eq!(error.delivered, 0);
    assert!(matches!(error.error, SinkError::Failed(_)));
    // While backing off, records are dropped at once without a connect.
    let error = send(&mut sink, 6, 1).unwrap_err();
    assert_eq!(error.delivered, 0);
    // The server comes back on the same port; idle() reconnects when due.
    let listener = TcpListener::bind(addr).unwrap();
    wait_for_backoff();
    sink.idle();
    let (mut server, _) = listener.accept().unwrap();
    send(&mut sink, 7, 2).expect("after reconnect");
    sink.finish().unwrap();
    let mut received = Vec::new();
    std::io::Read::read_to_end(&mut server, &mut received).unwrap();
    assert!(String::from_utf8_lossy(&received).contains("seq=\"8\""));
}

#[test]
fn udp_sends_one_datagram_per_message_and_counts_a_closed_port() {
    let server = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = server.local_addr().unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut sink = Syslog::open(&config(SyslogTransport::Udp, &addr.to_string())).unwrap();
    let receive = |server: &UdpSocket, n: usize| {
        (0..n)
            .map(|_| {
                let mut buf = vec![0u8; 70000];
                let len = server.recv(&mut buf).unwrap();
                buf.truncate(len);
                buf
            })
            .collect::<Vec<_>>()
    };
    send(&mut sink, 1, 2).unwrap();
    assert_eq!(seqs(receive(&server, 2)), ["1", "2"]);

    // The port closes. The next datagram goes out and draws an ICMP port
    // unreachable, which the kernel reports on the send after it: that one
    // is counted, the first is lost without a trace (UDP has no acks).
    drop(server);
    send(&mut sink, 3, 1).expect("accepted by the kernel, lost");
    std::thread::sleep(Duration::from_millis(20));
    let error = send(&mut sink, 4, 2).unwrap_err();
    assert_eq!(error.delivered, 0);
    // The retry's first message waits for the ICMP error: still closed, so
    // it is counted too, not lost.
    wait_for_backoff();
    let error = send(&mut sink, 6, 1).unwrap_err();
    assert_eq!(error.delivered, 0, "the probe's refusal is seen");

    let server = UdpSocket::bind(addr).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    std::thread::sleep(BACKOFF_MIN * 2 + Duration::from_millis(20));
    send(&mut sink, 7, 3).expect("the port is open again");
    assert_eq!(seqs(receive(&server, 3)), ["7", "8", "9"]);
}

#[test]
fn unix_reconnects_when_the_socket_file_is_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("log.sock");
    let server = UnixDatagram::bind(&path).unwrap();
    let mut sink = Syslog::open(&config(SyslogTransport::Unix, path.to_str().unwrap())).unwrap();
    let receive = |server: &UnixDatagram, n: usize| {
        (0..n)
            .map(|_| {
                let mut buf = vec![0u8; 70000];
                let len = server.recv(&mut buf).unwrap();
                buf.truncate(len);
                buf
            })
            .collect::<Vec<_>>()
    };
    send(&mut sink, 1, 2).unwrap();
    assert_eq!(seqs(receive(&server, 2)), ["1", "2"]);

    // A restarted server: a new socket at the same path. Nothing is lost.
    drop(server);
    std::fs::remove_file(&path).unwrap();
    let server = UnixDatagram::bind(&path).unwrap();
    send(&mut sink, 3, 2).expect("reconnected at once");
    assert_eq!(seqs(receive(&server, 2)), ["3", "4"]);

    // No server: counted, then the socket comes back and idle() reconnects.
    drop(server);
    std::fs::remove_file(&path).unwrap();
    let error = send(&mut sink, 5, 2).unwrap_err();
    assert_eq!(error.delivered, 0);
    let server = UnixDatagram::bind(&path).unwrap();
    wait_for_backoff();
    sink.idle();
    assert!(matches!(
        sink.link,
        Link::Unix {
            socket: Some(_),
            ..
        }
    ));
    send(&mut sink, 7, 1).unwrap();
    assert_eq!(seqs(receive(&server, 1)), ["7"]);
}

#[test]
fn bad_addresses_are_open_errors_but_an_absent_server_is_not() {
    assert!(Syslog::open(&config(SyslogTransport::Udp, "no-port")).is_err());
    assert!(Syslog::open(&config(SyslogTransport::Tcp, "256.1.1.1:514")).is_err());
    let closed = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    assert!(Syslog::open(&config(SyslogTransport::Tcp, &addr.to_string())).is_ok());
    assert!(Syslog::open(&config(SyslogTransport::Unix, "/nonexistent/log.sock")).is_ok());
}
