//! The syslog output against a real rsyslogd that each test starts with a
//! configuration of its own: imudp and imtcp on free loopback ports, imuxsock
//! on a socket in the test's directory (not the system's /dev/log), and every
//! message written as one JSON object of its RFC 5424 fields to a file.
//!
//! Each test makes its link calls from threads with a comm of its own and
//! traces only that comm, so the sink's counters count its events alone.
//! The server is stopped (SIGTERM) and started again on the same port or
//! socket mid-test: every event is then either received by rsyslog or
//! counted as dropped by the sink, except over UDP, where the one datagram
//! sent into the closed port before the kernel reports it is lost uncounted.

use std::{
    net::{TcpListener, TcpStream, UdpSocket},
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{Run, TestDir, Tracer, linkat, my_pid, privileged};

const RSYSLOGD: &str = "/usr/sbin/rsyslogd";
const SD_ID: &str = "link-trace@32473";
const AUTHPRIV: u64 = 10;
const WAIT: Duration = Duration::from_secs(20);

/// A private rsyslogd.
struct Rsyslog {
    dir: TestDir,
    udp_port: u16,
    tcp_port: u16,
    socket: PathBuf,
    output: PathBuf,
    child: Option<Child>,
}

impl Rsyslog {
    fn start(name: &str) -> Rsyslog {
        assert!(
            Path::new(RSYSLOGD).exists(),
            "{RSYSLOGD} is missing: `cargo xtask setup` installs rsyslog"
        );
        let dir = TestDir::new("/tmp", &format!("rsyslog-{name}"));
        let udp_port = UdpSocket::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free UDP port")
            .port();
        let tcp_port = TcpListener::bind("127.0.0.1:0")
            .and_then(|s| s.local_addr())
            .expect("free TCP port")
            .port();
        let socket = dir.join("log.sock");
        let output = dir.join("received.jsonl");
        let conf = format!(
            r#"global(workDirectory="{dir}" maxMessageSize="64k")
module(load="imuxsock" SysSock.Use="off")
module(load="imudp")
module(load="imtcp")
input(type="imuxsock" Socket="{socket}" UseSpecialParser="off" ParseHostname="on" IgnoreTimestamp="off" RateLimit.Interval="0")
input(type="imudp" address="127.0.0.1" port="{udp_port}")
input(type="imtcp" address="127.0.0.1" port="{tcp_port}")
template(name="fields" type="list" option.jsonf="on") {{
  property(outname="input" name="inputname" format="jsonf")
  property(outname="pri" name="pri" format="jsonf")
  property(outname="time" name="timereported" dateFormat="rfc3339" format="jsonf")
  property(outname="hostname" name="hostname" format="jsonf")
  property(outname="app_name" name="app-name" format="jsonf")
  property(outname="procid" name="procid" format="jsonf")
  property(outname="msgid" name="msgid" format="jsonf")
  property(outname="sd" name="structured-data" format="jsonf")
  property(outname="msg" name="msg" format="jsonf")
}}
action(type="omfile" file="{output}" template="fields")
"#,
            dir = dir.path.display(),
            socket = socket.display(),
            output = output.display(),
        );
        std::fs::write(dir.join("rsyslog.conf"), conf).expect("write rsyslog.conf");
        let mut server = Rsyslog {
            dir,
            udp_port,
            tcp_port,
            socket,
            output,
            child: None,
        };
        server.run();
        server
    }

    /// Starts rsyslogd and waits until each of its inputs has passed a
    /// probe message through to the output file.
    fn run(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("rsyslogd.log"))
            .expect("rsyslogd log");
        let child = Command::new(RSYSLOGD)
            .arg("-n")
            .arg("-f")
            .arg(self.dir.join("rsyslog.conf"))
            .arg("-i")
            .arg(self.dir.join("rsyslogd.pid"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("start rsyslogd");
        self.child = Some(child);
        static PROBE: AtomicU64 = AtomicU64::new(0);
        let deadline = Instant::now() + WAIT;
        for input in ["imudp", "imtcp", "imuxsock"] {
            let token = format!("probe-{}", PROBE.fetch_add(1, Ordering::Relaxed));
            let message = format!("<14>1 - - lt-probe - - - {token}");
            loop {
                assert!(
                    Instant::now() < deadline,
                    "rsyslogd's {input} did not pass a probe within {WAIT:?}; its log: {}",
                    std::fs::read_to_string(self.dir.join("rsyslogd.log")).unwrap_or_default()
                );
                let _ = match input {
                    "imudp" => UdpSocket::bind("127.0.0.1:0")
                        .and_then(|s| s.send_to(message.as_bytes(), ("127.0.0.1", self.udp_port)))
                        .map(drop),
                    "imtcp" => {
                        TcpStream::connect(("127.0.0.1", self.tcp_port)).and_then(|mut s| {
                            std::io::Write::write_all(
                                &mut s,
                                format!("{} {message}", message.len()).as_bytes(),
                            )
                        })
                    }
                    _ => UnixDatagram::unbound()
                        .and_then(|s| s.send_to(message.as_bytes(), &self.socket))
                        .map(drop),
                };
                std::thread::sleep(Duration::from_millis(100));
                if self
                    .messages("lt-probe")
                    .iter()
                    .any(|m| m["msg"] == token.as_str() && m["input"] == input)
                {
                    break;
                }
            }
        }
    }

    /// SIGTERM, and waits for the exit.
    fn stop(&mut self) {
        let mut child = self.child.take().expect("rsyslogd running");
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let status = child.wait().expect("wait for rsyslogd");
        assert!(status.success(), "rsyslogd exited with {status}");
    }

    /// Every message received from `app_name`, in order. rsyslog may be
    /// writing the last line as we read: only whole lines count.
    fn messages(&self, app_name: &str) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.output).unwrap_or_default();
        let whole = text.rfind('\n').map_or("", |end| &text[..end]);
        whole
            .lines()
            .map(|line| {
                serde_json::from_str::<Value>(line)
                    .unwrap_or_else(|e| panic!("rsyslog output is not JSON ({e}): {line}"))
            })
            .filter(|m| m["app_name"] == app_name)
            .collect()
    }

    /// Waits until `done` holds for the messages from `app_name`.
    fn wait_for(&self, app_name: &str, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + WAIT;
        loop {
            let messages = self.messages(app_name);
            if done(&messages) {
                return messages;
            }
            assert!(
                Instant::now() < deadline,
                "rsyslog did not receive {what} within {WAIT:?}; received: {messages:#?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// link(2) calls made from a thread named `comm`, which the tracer filters on.
struct Linker {
    comm: &'static str,
    calls: u64,
}

impl Linker {
    fn link(&mut self, old: &Path, new: &Path) -> Result<(), i32> {
        let (old, new) = (old.to_path_buf(), new.to_path_buf());
        self.calls += 1;
        std::thread::Builder::new()
            .name(self.comm.into())
            .spawn(move || linkat(libc::AT_FDCWD, &old, libc::AT_FDCWD, &new, 0))
            .expect("spawn linker thread")
            .join()
            .expect("linker thread")
    }
}

fn events_received(messages: &[Value]) -> Vec<Value> {
    messages
        .iter()
        .filter(|m| m["msgid"] == "event")
        .map(|m| {
            serde_json::from_str::<Value>(m["msg"].as_str().expect("msg"))
                .unwrap_or_else(|e| panic!("MSG is not the event's JSON ({e}): {m:#}"))
        })
        .collect()
}

fn received_newpath(messages: &[Value], newpath: &Path) -> bool {
    events_received(messages)
        .iter()
        .any(|e| e["newpath"] == newpath.to_str().expect("UTF-8 path"))
}

/// The exit summary's counts for one output: (delivered, dropped queue
/// full, dropped failed) events.
fn summary_counts(run: &Run, output: &str) -> (u64, u64, u64) {
    let prefix = format!("link-trace: output {output}: ");
    let line = run
        .stderr
        .iter()
        .filter_map(|l| l.strip_prefix(&prefix))
        .find(|l| l.contains(" events delivered, "))
        .unwrap_or_else(|| panic!("no summary for {output} in {:#?}", run.stderr));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .take(3)
        .map(|n| n.parse().expect("count"))
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

/// The RFC 5424 fields rsyslog parsed, checked against the record that
/// went to stdout: PRI, timestamp (to the microsecond), hostname, app,
/// procid, msgid, the structured data exactly, and MSG == the JSON record.
/// Who sent the messages and how: the same for every message of a test.
struct Origin<'a> {
    app: &'a str,
    tracer_pid: u32,
    input: &'a str,
}

fn expect_message(
    message: &Value,
    record: &Value,
    severity: u64,
    msgid: &str,
    sd: &str,
    origin: &Origin<'_>,
) {
    let Origin {
        app,
        tracer_pid,
        input,
    } = origin;
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("hostname");
    for (field, want) in [
        ("input", input.to_string()),
        ("pri", (AUTHPRIV * 8 + severity).to_string()),
        ("hostname", hostname.trim_end().to_string()),
        ("app_name", app.to_string()),
        ("procid", tracer_pid.to_string()),
        ("msgid", msgid.to_string()),
        ("sd", sd.to_string()),
    ] {
        assert_eq!(message[field], want.as_str(), "{field} of {message:#}");
    }
    let sent = chrono::DateTime::parse_from_rfc3339(record["time"].as_str().expect("time"))
        .expect("record time");
    let stamped = chrono::DateTime::parse_from_rfc3339(message["time"].as_str().expect("time"))
        .unwrap_or_else(|e| panic!("timereported {message:#}: {e}"));
    assert_eq!(
        stamped.timestamp_micros(),
        sent.timestamp_micros(),
        "TIMESTAMP is the record's, to the microsecond: {message:#}"
    );
    let msg: Value =
        serde_json::from_str(message["msg"].as_str().expect("msg")).expect("MSG is JSON");
    assert_eq!(&msg, record, "MSG is the record as JSON");
}

fn event_sd(event: &Value) -> String {
    let mut sd = format!(
        "[{SD_ID} seq=\"{}\" syscall=\"{}\" pid=\"{}\" uid=\"{}\" comm=\"{}\" ret=\"{}\"",
        event["seq"],
        event["syscall"].as_str().unwrap(),
        event["pid"],
        event["uid"],
        event["comm"].as_str().unwrap(),
        event["ret"]
    );
    if let Some(errno) = event["errno"].as_str() {
        sd.push_str(&format!(" errno=\"{errno}\""));
    }
    sd.push(']');
    sd
}

/// One transport end to end: events and an alert field by field, then the
/// server stops and comes back, with every event accounted for.
fn end_to_end(transport: &str, comm: &'static str) {
    let mut rsyslog = Rsyslog::start(transport);
    let (output, input) = match transport {
        "udp" => (
            format!("syslog+udp:127.0.0.1:{}", rsyslog.udp_port),
            "imudp",
        ),
        "tcp" => (
            format!("syslog+tcp:127.0.0.1:{}", rsyslog.tcp_port),
            "imtcp",
        ),
        _ => (
            format!("syslog+unix:{}", rsyslog.socket.display()),
            "imuxsock",
        ),
    };
    let app = format!("lt-{transport}-{}", std::process::id());
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout",
        "--output",
        &format!("{output},app_name={app}"),
    ]);
    let origin = Origin {
        app: &app,
        tracer_pid: tracer.pid(),
        input,
    };
    let dir = TestDir::new("/tmp", &format!("syslog-{transport}"));
    let src = dir.file("src");
    let mut linker = Linker { comm, calls: 0 };

    // 1. A success, and a failure on /etc/shadow that raises a critical alert.
    linker.link(&src, &dir.join("first")).expect("link");
    assert_eq!(
        linker.link(Path::new("/etc/shadow"), Path::new("/etc/shadow")),
        Err(libc::EEXIST)
    );
    rsyslog.wait_for(&app, "two events and an alert", |m| {
        events_received(m).len() == 2 && m.iter().any(|m| m["msgid"] == "alert")
    });

    // 2. The server stops: these are dropped and counted.
    rsyslog.stop();
    let down: Vec<PathBuf> = (0..4).map(|i| dir.join(&format!("down-{i}"))).collect();
    for path in &down {
        linker
            .link(&src, path)
            .expect("link while the server is down");
        std::thread::sleep(Duration::from_millis(100));
    }

    // 3. It comes back on the same port or socket: after the sink has
    // reconnected (the first link that arrives), every link arrives.
    rsyslog.run();
    let mut reconnected = false;
    for attempt in 0..40 {
        let path = dir.join(&format!("up-{attempt}"));
        linker.link(&src, &path).expect("link after restart");
        let deadline = Instant::now() + Duration::from_millis(500);
        while Instant::now() < deadline && !received_newpath(&rsyslog.messages(&app), &path) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if received_newpath(&rsyslog.messages(&app), &path) {
            reconnected = true;
            break;
        }
    }
    assert!(reconnected, "no event arrived after the server came back");
    let after: Vec<PathBuf> = (0..3).map(|i| dir.join(&format!("after-{i}"))).collect();
    for path in &after {
        linker.link(&src, path).expect("link after reconnect");
    }
    rsyslog.wait_for(&app, "every link made after the reconnect", |m| {
        after.iter().all(|p| received_newpath(m, p))
    });

    let run = tracer.stop();
    run.assert_clean_exit();
    // The final stats record follows the events through the same output.
    let messages = rsyslog.wait_for(&app, "the final stats record", |m| {
        m.iter().any(|m| m["msgid"] == "stats")
    });

    // Field by field, against what went to stdout.
    let sent: Vec<&Value> = run.events().collect();
    assert_eq!(sent.len() as u64, linker.calls, "stdout has every call");
    let by_newpath = |path: &str| {
        let found: Vec<&Value> = messages
            .iter()
            .filter(|m| m["msgid"] == "event")
            .filter(|m| {
                serde_json::from_str::<Value>(m["msg"].as_str().unwrap()).unwrap()["newpath"]
                    == path
            })
            .collect();
        assert_eq!(found.len(), 1, "one message for {path}: {messages:#?}");
        found[0]
    };
    let first = run.event_for(&dir.join("first"));
    expect_message(
        by_newpath(dir.join("first").to_str().unwrap()),
        first,
        6,
        "event",
        &event_sd(first),
        &origin,
    );
    let shadow = run
        .events()
        .find(|e| e["newpath"] == "/etc/shadow")
        .expect("the /etc/shadow event");
    expect_message(
        by_newpath("/etc/shadow"),
        shadow,
        5,
        "event",
        &event_sd(shadow),
        &origin,
    );
    let alert = run
        .alerts_of(shadow)
        .into_iter()
        .find(|a| a["rule_id"] == "sensitive-credentials-link")
        .expect("a sensitive-credentials-link alert");
    let alert_message = messages
        .iter()
        .find(|m| m["msgid"] == "alert")
        .expect("the alert message");
    let alert_sd = format!(
        "[{SD_ID} rule=\"sensitive-credentials-link\" severity=\"critical\" seq=\"{}\" pid=\"{}\" uid=\"{}\"]",
        shadow["seq"], shadow["pid"], shadow["uid"]
    );
    expect_message(alert_message, alert, 2, "alert", &alert_sd, &origin);
    let stats = messages.iter().find(|m| m["msgid"] == "stats").unwrap();
    assert_eq!(
        stats["pri"],
        (AUTHPRIV * 8 + 6).to_string().as_str(),
        "{stats:#}"
    );

    // Every event is received or counted; none twice.
    let received = events_received(&messages);
    let mut seqs: Vec<u64> = received
        .iter()
        .map(|e| e["seq"].as_u64().unwrap())
        .collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), received.len(), "an event was received twice");
    let (delivered, dropped_queue_full, dropped_failed) = summary_counts(&run, &output);
    let received = received.len() as u64;
    for path in &down {
        assert!(
            !received_newpath(&messages, path),
            "{} arrived while the server was down",
            path.display()
        );
    }
    // Over UDP the first datagram into the closed port is accepted by the
    // kernel and lost; its ICMP error makes the next send fail, and from
    // then on (the retry waits for the ICMP error) every loss is counted.
    let lost_uncounted = u64::from(transport == "udp");
    eprintln!(
        "{output}: {} calls; {received} received, {delivered} delivered, {dropped_failed} dropped (output failed), {lost_uncounted} lost uncounted",
        linker.calls
    );
    assert_eq!(dropped_queue_full, 0);
    assert_eq!(
        delivered,
        received + lost_uncounted,
        "delivered = received{}; stderr: {:#?}",
        if transport == "udp" {
            " + the one datagram lost into the closed port"
        } else {
            ""
        },
        run.stderr
    );
    assert!(
        dropped_failed >= down.len() as u64 - lost_uncounted,
        "the links made while the server was down are counted: {dropped_failed}"
    );
    assert_eq!(
        received + dropped_failed + lost_uncounted,
        linker.calls,
        "every event is received or counted"
    );
}

#[test]
fn syslog_udp_end_to_end_and_across_a_server_restart() {
    if !privileged("syslog_udp_end_to_end_and_across_a_server_restart") {
        return;
    }
    end_to_end("udp", "lt-sl-udp");
}

#[test]
fn syslog_tcp_end_to_end_and_across_a_server_restart() {
    if !privileged("syslog_tcp_end_to_end_and_across_a_server_restart") {
        return;
    }
    end_to_end("tcp", "lt-sl-tcp");
}

#[test]
fn syslog_unix_end_to_end_and_across_a_server_restart() {
    if !privileged("syslog_unix_end_to_end_and_across_a_server_restart") {
        return;
    }
    end_to_end("unix", "lt-sl-unix");
}
