//! The metrics endpoint of the real tracer, scraped with a plain TCP
//! client: counters must rise by exactly the calls this test makes (the
//! tracer sees only this process and one thread name of this test's own),
//! and a non-loopback or busy address must stop the start.

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use openmetrics_parser::{MetricNumber, OpenMetricsValue};

use crate::harness::{TestDir, Tracer, binary, check, cstr, linkat, my_pid, privileged};

const AT_FDCWD: i32 = libc::AT_FDCWD;
/// The thread that makes this test's calls, and the tracer's --comm filter.
const CALLER: &str = "lt-metrics-test";

/// An address on loopback with a port nobody listens on right now.
fn free_address() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a probe port");
    probe.local_addr().expect("probe address")
}

/// One HTTP request; (status line, headers, body).
fn request(addr: SocketAddr, method: &str, path: &str) -> (String, String, String) {
    let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/openmetrics-text\r\n\r\n"
    )
    .expect("send the request");
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .expect("read the answer to its end");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {answer:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// (family, sorted labels) → value of every sample in one scrape, parsed
/// by a strict OpenMetrics parser.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn scrape(addr: SocketAddr) -> Samples {
    let (status, headers, body) = request(addr, "GET", "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "scrape status; body {body}");
    assert!(
        headers.contains("Content-Type: application/openmetrics-text; version=1.0.0"),
        "content type in {headers}"
    );
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(&body)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{body}"));
    let mut samples = Samples::new();
    for (name, family) in &exposition.families {
        for sample in family.iter_samples() {
            let mut labels: Vec<(String, String)> = sample
                .get_labelset()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let number = match &sample.value {
                OpenMetricsValue::Counter(c) => c.value,
                OpenMetricsValue::Gauge(g) => *g,
                other => panic!("{name}: neither counter nor gauge: {other:?}"),
            };
            let value = match number {
                MetricNumber::Int(i) => i as f64,
                MetricNumber::Float(f) => f,
            };
            samples.insert((name.clone(), labels), value);
        }
    }
    samples
}

fn value(samples: &Samples, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    samples.get(&(family.to_owned(), labels)).copied()
}

/// Sum over every series of a family.
fn total(samples: &Samples, family: &str) -> f64 {
    samples
        .iter()
        .filter(|((f, _), _)| f == family)
        .map(|(_, v)| v)
        .sum()
}

/// Scrapes until `done` holds (at most 10 s); the last scrape.
fn scrape_until(addr: SocketAddr, what: &str, done: impl Fn(&Samples) -> bool) -> Samples {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let samples = scrape(addr);
        if done(&samples) {
            return samples;
        }
        assert!(
            Instant::now() < deadline,
            "waited 10 s for {what}; last scrape: {samples:#?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn link(old: &Path, new: &Path) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings; link(2) proper.
    check(unsafe { libc::link(old.as_ptr(), new.as_ptr()) })
}

#[test]
fn metrics_rise_by_exactly_the_calls_made() {
    if !privileged("metrics_rise_by_exactly_the_calls_made") {
        return;
    }
    let dir = TestDir::new("/tmp", "metrics");
    let src = dir.file("src");
    let taken = dir.file("taken");
    let addr = free_address();
    let tracer = Tracer::start(&[
        "--pid",
        &my_pid(),
        "--comm",
        CALLER,
        "--metrics-listen",
        &addr.to_string(),
    ]);
    let rules_line = tracer
        .wait_for_stderr("detection rules in force", Duration::from_secs(10))
        .expect("the rules line on stderr");
    let rules_in_force: f64 = rules_line
        .trim_start_matches("link-trace: ")
        .split(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("a rule count in {rules_line:?}"));
    let before = scrape(addr);

    // Every call from one thread named CALLER, the only one the tracer sees.
    let cron_dir = PathBuf::from(format!(
        "/etc/cron.d/link-trace-test-{}",
        std::process::id()
    ));
    let (src_c, dir_c, taken_c) = (src.clone(), dir.path.clone(), taken.clone());
    let results = std::thread::Builder::new()
        .name(CALLER.into())
        .spawn(move || {
            let mut results = Vec::new();
            for name in ["ok-1", "ok-2", "ok-3"] {
                results.push(linkat(AT_FDCWD, &src_c, AT_FDCWD, &dir_c.join(name), 0));
            }
            results.push(link(&src_c, &dir_c.join("ok-link")));
            for _ in 0..2 {
                results.push(linkat(AT_FDCWD, &src_c, AT_FDCWD, &taken_c, 0));
            }
            // sensitive-cron-link alerts on the attempt; the directory does
            // not exist, so nothing is created.
            results.push(linkat(AT_FDCWD, &src_c, AT_FDCWD, &cron_dir.join("job"), 0));
            results
        })
        .expect("spawn the calling thread")
        .join()
        .expect("the calling thread");
    assert_eq!(
        results,
        [
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err(libc::EEXIST),
            Err(libc::EEXIST),
            Err(libc::ENOENT)
        ],
        "the calls themselves"
    );

    // Wait until the stdout output has written all seven events.
    let after = scrape_until(addr, "7 events delivered to stdout", |s| {
        value(s, "link_trace_sink_events_delivered", &[("sink", "stdout")]) == Some(7.0)
    });
    let rose = |family: &str, labels: &[(&str, &str)]| {
        value(&after, family, labels).unwrap_or(0.0) - value(&before, family, labels).unwrap_or(0.0)
    };
    let events = "link_trace_events";
    assert_eq!(
        rose(events, &[("syscall", "linkat"), ("result", "ok")]),
        3.0
    );
    assert_eq!(rose(events, &[("syscall", "link"), ("result", "ok")]), 1.0);
    assert_eq!(
        rose(events, &[("syscall", "linkat"), ("result", "EEXIST")]),
        2.0
    );
    assert_eq!(
        rose(events, &[("syscall", "linkat"), ("result", "ENOENT")]),
        1.0
    );
    assert_eq!(
        total(&after, events) - total(&before, events),
        7.0,
        "{after:#?}"
    );
    let alerts = "link_trace_alerts";
    assert_eq!(
        rose(
            alerts,
            &[("rule_id", "sensitive-cron-link"), ("severity", "high")]
        ),
        1.0
    );
    assert_eq!(
        total(&after, alerts) - total(&before, alerts),
        1.0,
        "{after:#?}"
    );
    assert_eq!(rose("link_trace_kernel_submitted", &[]), 7.0);
    assert_eq!(rose("link_trace_events_decoded", &[]), 7.0);
    for reason in [
        "ring_full",
        "inflight_insert_failed",
        "exit_without_enter",
        "scratch_unavailable",
        "arg_read_failed",
        "decode_error",
        "undelivered",
    ] {
        assert_eq!(
            value(&after, "link_trace_events_lost", &[("reason", reason)]),
            Some(0.0),
            "loss reason {reason}"
        );
    }
    let stdout = [("sink", "stdout")];
    assert_eq!(
        value(&after, "link_trace_sink_queue_capacity", &stdout),
        Some(4096.0)
    );
    let depth = value(&after, "link_trace_sink_queue_depth", &stdout).expect("queue depth");
    assert!((0.0..=4096.0).contains(&depth), "queue depth {depth}");
    assert_eq!(value(&after, "link_trace_sink_up", &stdout), Some(1.0));
    for reason in ["queue_full", "failed"] {
        assert_eq!(
            value(
                &after,
                "link_trace_sink_events_dropped",
                &[("sink", "stdout"), ("reason", reason)]
            ),
            Some(0.0)
        );
    }
    // The ring: default size; everything produced was consumed (the tracer
    // has delivered it), which proves both position pages are read.
    let size = value(&after, "link_trace_ring_buffer_size_bytes", &[]).expect("ring size");
    assert_eq!(size, 8.0 * 1024.0 * 1024.0);
    let used = value(&after, "link_trace_ring_buffer_used_bytes", &[]).expect("ring used");
    let fill = value(&after, "link_trace_ring_buffer_fill_ratio", &[]).expect("ring fill");
    assert!((0.0..=size).contains(&used) && (0.0..=1.0).contains(&fill));
    assert_eq!((used, fill), (0.0, 0.0), "nothing left in the ring");
    let produced = rose("link_trace_ring_buffer_produced_bytes", &[]);
    let record_min = (link_trace_common::RECORD_HEADER_SIZE + 8) as f64;
    assert!(
        produced >= 7.0 * record_min && produced <= 7.0 * 64.0 * 1024.0,
        "7 records took {produced} ring bytes"
    );
    assert_eq!(value(&after, "link_trace_rules", &[]), Some(rules_in_force));
    assert!(value(&after, "link_trace_uptime_seconds", &[]).expect("uptime") > 0.0);

    let (status, _, _) = request(addr, "GET", "/");
    assert_eq!(status, "HTTP/1.1 404 Not Found");
    let (status, headers, _) = request(addr, "POST", "/metrics");
    assert_eq!(status, "HTTP/1.1 405 Method Not Allowed");
    assert!(headers.contains("Allow: GET, HEAD"), "{headers}");

    let run = tracer.stop();
    run.assert_clean_exit();
    // The stream agrees with the counters.
    assert_eq!(run.events().count(), 7, "{:#?}", run.records);
    let alerts: Vec<_> = run.alerts().collect();
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(alerts[0]["rule_id"], "sensitive-cron-link");
}

/// Runs the tracer expecting it to refuse to start; its stderr.
fn refused(args: &[&str]) -> String {
    let output = Command::new(binary())
        .args(args)
        .output()
        .expect("run link-trace");
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    assert_eq!(
        output.status.code(),
        Some(1),
        "exit status; stderr: {stderr}"
    );
    assert!(
        !stderr.contains("link-trace: tracing"),
        "it must stop before attaching: {stderr}"
    );
    stderr
}

#[test]
fn metrics_address_must_be_loopback_and_free() {
    if !privileged("metrics_address_must_be_loopback_and_free") {
        return;
    }
    let port = free_address().port().to_string();
    let stderr = refused(&["--metrics-listen", &format!("0.0.0.0:{port}")]);
    assert!(
        stderr.contains("not a loopback address") && stderr.contains("--metrics-allow-remote"),
        "{stderr}"
    );
    let stderr = refused(&["--metrics-listen", &format!("[::]:{port}")]);
    assert!(stderr.contains("not a loopback address"), "{stderr}");

    let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a port");
    let addr = busy.local_addr().expect("its address").to_string();
    let stderr = refused(&["--metrics-listen", &addr]);
    assert!(
        stderr.contains(&format!("cannot serve metrics on {addr}"))
            && stderr.contains("Address already in use"),
        "{stderr}"
    );
}
