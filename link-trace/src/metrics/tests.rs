use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    os::unix::fs::FileExt,
    sync::{Arc, mpsc as std_mpsc},
};

use openmetrics_parser::{MetricNumber, OpenMetricsType, OpenMetricsValue};
use tokio::sync::mpsc;

use super::{
    http::{self, respond},
    *,
};
use crate::{
    config::{OutputConfig, OutputFormat, StdoutOutput},
    detect::{self, Detector, Reload},
    event::{Record, sample_event},
    rules::{Engine, RuleSet, parse_rules},
    sink::{self, Batch, DeliverError, Transport},
};

/// Every sample of a scrape: (family name, sorted labels) → value, after
/// the strict OpenMetrics parser accepted the whole text.
type Scrape = BTreeMap<(String, Vec<(String, String)>), f64>;

fn parse(text: &str) -> (Scrape, BTreeMap<String, OpenMetricsType>) {
    let exposition = openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("not valid OpenMetrics ({e:?}):\n{text}"));
    let mut samples = Scrape::new();
    let mut types = BTreeMap::new();
    for (name, family) in &exposition.families {
        types.insert(name.clone(), family.family_type);
        for sample in family.iter_samples() {
            let mut labels: Vec<(String, String)> = sample
                .get_labelset()
                .expect("labels")
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            labels.sort();
            let value = match &sample.value {
                OpenMetricsValue::Counter(c) => c.value,
                OpenMetricsValue::Gauge(g) => *g,
                other => panic!("unexpected value type in {name}: {other:?}"),
            };
            let value = match value {
                MetricNumber::Int(i) => i as f64,
                MetricNumber::Float(f) => f,
            };
            assert!(
                samples.insert((name.clone(), labels), value).is_none(),
                "duplicate series in {name}"
            );
        }
    }
    (samples, types)
}

fn get(scrape: &Scrape, family: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut labels: Vec<(String, String)> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    scrape.get(&(family.to_string(), labels)).copied()
}

fn no_kernel() -> KernelReader {
    Box::new(|| Err("no kernel in unit tests".into()))
}

fn kernel_with(values: &[(Stat, [u64; 2])]) -> KernelReader {
    let mut per_cpu = vec![[0u64; link_trace_common::STATS_ENTRIES as usize]; 2];
    for (stat, by_cpu) in values {
        for (cpu, value) in by_cpu.iter().enumerate() {
            per_cpu[cpu][*stat as usize] = *value;
        }
    }
    Box::new(move || {
        Ok(KernelStats {
            per_cpu: per_cpu.clone(),
        })
    })
}

fn scrape(exporter: Exporter) -> (Scrape, BTreeMap<String, OpenMetricsType>, String) {
    let text = encode(&registry(exporter)).expect("encode");
    let (samples, types) = parse(&text);
    (samples, types, text)
}

const RULES: &str = r#"
[[rule]]
id = "root"
title = "by root"
severity = "low"
condition = { field = "uid", eq = 0 }

[[rule]]
id = "never"
title = "never"
severity = "critical"
condition = { field = "uid", eq = 4242 }
"#;

fn rule_set(text: &str) -> RuleSet {
    let mut set = RuleSet::default();
    set.merge("t", parse_rules("t", text).unwrap());
    set
}

fn event(ret: i64) -> Record {
    Record::Event(Box::new(sample_event(Some(b"a"), Some(b"b"), ret)))
}

#[test]
fn events_are_counted_by_syscall_and_result() {
    let metrics = Arc::new(Metrics::new());
    for _ in 0..3 {
        metrics.count_event("linkat", 0);
    }
    metrics.count_event("link", 0);
    metrics.count_event("linkat", -i64::from(libc::EEXIST));
    metrics.count_event("linkat", -i64::from(libc::EEXIST));
    metrics.count_event("link", -i64::from(libc::ENOENT));
    // Not errno values link-trace has names for: "other".
    metrics.count_event("linkat", -4000);
    metrics.count_event("linkat", 5);
    // A syscall without a label of its own.
    metrics.count_event("renameat2", 0);
    let (s, types, _) = scrape(Exporter {
        metrics,
        kernel: no_kernel(),
        sinks: Arc::default(),
        ring: None,
    });
    let events = |syscall, result| {
        get(
            &s,
            "link_trace_events",
            &[("syscall", syscall), ("result", result)],
        )
    };
    assert_eq!(events("linkat", "ok"), Some(3.0));
    assert_eq!(events("link", "ok"), Some(1.0));
    assert_eq!(events("linkat", "EEXIST"), Some(2.0));
    assert_eq!(events("link", "ENOENT"), Some(1.0));
    assert_eq!(events("linkat", "other"), Some(2.0));
    assert_eq!(events("other", "ok"), Some(1.0));
    // Results never seen have no series; "ok" of each traced syscall does.
    assert_eq!(events("link", "EEXIST"), None);
    let event_series = s.keys().filter(|(f, _)| f == "link_trace_events").count();
    assert_eq!(event_series, 6);
    assert_eq!(types["link_trace_events"], OpenMetricsType::Counter);
}

#[test]
fn a_fresh_daemon_shows_every_family() {
    let metrics = Arc::new(Metrics::new());
    metrics.install_rules(&rule_set(RULES).rules);
    let (s, types, text) = scrape(Exporter {
        metrics,
        kernel: kernel_with(&[]),
        sinks: Arc::default(),
        ring: None,
    });
    for (family, kind) in [
        ("link_trace_events", OpenMetricsType::Counter),
        ("link_trace_alerts", OpenMetricsType::Counter),
        ("link_trace_events_lost", OpenMetricsType::Counter),
        ("link_trace_alerts_undelivered", OpenMetricsType::Counter),
        ("link_trace_kernel_submitted", OpenMetricsType::Counter),
        ("link_trace_events_decoded", OpenMetricsType::Counter),
        ("link_trace_rules", OpenMetricsType::Gauge),
        ("link_trace_uptime_seconds", OpenMetricsType::Gauge),
    ] {
        assert_eq!(types.get(family), Some(&kind), "{family} in\n{text}");
    }
    assert_eq!(
        get(
            &s,
            "link_trace_events",
            &[("syscall", "linkat"), ("result", "ok")]
        ),
        Some(0.0)
    );
    assert_eq!(get(&s, "link_trace_rules", &[]), Some(2.0));
    assert_eq!(
        get(
            &s,
            "link_trace_alerts",
            &[("rule_id", "never"), ("severity", "critical")]
        ),
        Some(0.0)
    );
    let uptime = get(&s, "link_trace_uptime_seconds", &[]).unwrap();
    assert!((0.0..60.0).contains(&uptime), "uptime {uptime}");
    assert!(text.contains("# HELP link_trace_events Events seen by the detection stage"));
    assert!(text.contains("\nlink_trace_events_total{syscall=\"linkat\",result=\"ok\"} 0\n"));
    assert!(text.ends_with("# EOF\n"));
}

#[test]
fn losses_add_up_cpus_and_every_reason_is_there() {
    let metrics = Arc::new(Metrics::new());
    metrics.observe_capture(40, 2, 1);
    metrics.add_undelivered(3, 1);
    let (s, _, _) = scrape(Exporter {
        metrics,
        kernel: kernel_with(&[
            (Stat::Submitted, [30, 12]),
            (Stat::RingFull, [5, 2]),
            (Stat::ExitWithoutEnter, [0, 1]),
        ]),
        sinks: Arc::default(),
        ring: None,
    });
    let lost = |reason| get(&s, "link_trace_events_lost", &[("reason", reason)]);
    assert_eq!(lost("ring_full"), Some(7.0));
    assert_eq!(lost("exit_without_enter"), Some(1.0));
    assert_eq!(lost("inflight_insert_failed"), Some(0.0));
    assert_eq!(lost("scratch_unavailable"), Some(0.0));
    assert_eq!(lost("arg_read_failed"), Some(0.0));
    assert_eq!(lost("decode_error"), Some(2.0));
    assert_eq!(
        lost("undelivered"),
        Some(4.0),
        "capture's 1 and detection's 3"
    );
    assert_eq!(get(&s, "link_trace_alerts_undelivered", &[]), Some(1.0));
    assert_eq!(get(&s, "link_trace_kernel_submitted", &[]), Some(42.0));
    assert_eq!(get(&s, "link_trace_events_decoded", &[]), Some(40.0));
    // Context records' losses sit in their own block of the kernel's counters.
    assert_eq!(
        get(&s, "link_trace_context_lost", &[("reason", "ring_full")]),
        Some(0.0)
    );
}

#[test]
fn context_losses_have_their_own_family() {
    let context_ring_full: Stat = Stat::RingFull;
    let index = crate::stats::index(crate::event::RecordKind::Context, context_ring_full);
    let mut per_cpu = vec![[0u64; link_trace_common::STATS_ENTRIES as usize]; 2];
    per_cpu[1][index] = 3;
    let (s, _, _) = scrape(Exporter {
        metrics: Arc::new(Metrics::new()),
        kernel: Box::new(move || {
            Ok(KernelStats {
                per_cpu: per_cpu.clone(),
            })
        }),
        sinks: Arc::default(),
        ring: None,
    });
    assert_eq!(
        get(&s, "link_trace_context_lost", &[("reason", "ring_full")]),
        Some(3.0)
    );
    assert_eq!(
        get(&s, "link_trace_events_lost", &[("reason", "ring_full")]),
        Some(0.0),
        "a context loss is not a link event loss"
    );
}

#[test]
fn kernel_counters_that_cannot_be_read_leave_the_rest() {
    let (s, types, _) = scrape(Exporter {
        metrics: Arc::new(Metrics::new()),
        kernel: no_kernel(),
        sinks: Arc::default(),
        ring: None,
    });
    assert!(!types.contains_key("link_trace_kernel_submitted"));
    assert_eq!(
        get(&s, "link_trace_events_lost", &[("reason", "ring_full")]),
        None
    );
    assert_eq!(
        get(&s, "link_trace_events_lost", &[("reason", "decode_error")]),
        Some(0.0)
    );
}

#[test]
fn loss_reason_names_are_the_loss_record_names() {
    for (_, reason) in KERNEL_LOSSES
        .into_iter()
        .chain([(Stat::Submitted, LossReason::DecodeError)])
    {
        assert_eq!(
            serde_json::to_value(reason).unwrap(),
            loss_reason_name(reason)
        );
    }
}

/// Delivers everything, or fails everything while `fail` is set.
struct Accept {
    fail: bool,
}

impl Transport for Accept {
    fn deliver(&mut self, _batch: &Batch) -> Result<(), DeliverError> {
        if self.fail {
            return Err(sink::SinkError::Failed(std::io::Error::other("down")).into());
        }
        Ok(())
    }
}

fn stdout_config(format: OutputFormat, queue: usize) -> OutputConfig {
    OutputConfig::Stdout(StdoutOutput {
        format,
        queue,
        alerts_only: false,
    })
}

#[test]
fn sinks_report_depth_capacity_deliveries_and_drops() {
    // Two outputs named "stdout": the second is labelled "stdout#2".
    let sinks = vec![
        sink::start(
            stdout_config(OutputFormat::Json, 64),
            Box::new(Accept { fail: false }),
        ),
        sink::start(
            stdout_config(OutputFormat::Text, 8),
            Box::new(Accept { fail: true }),
        ),
    ];
    let (tx, rx) = mpsc::channel(8);
    tx.try_send(vec![event(0), event(-17), alert_record()])
        .unwrap();
    drop(tx);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let sink_registry = Arc::new(sink::Registry::default());
    sink::spawn_stage(sinks, rx, control_rx, sink_registry.clone())
        .unwrap()
        .join()
        .unwrap();
    let (s, _, _) = scrape(Exporter {
        metrics: Arc::new(Metrics::new()),
        kernel: no_kernel(),
        sinks: sink_registry,
        ring: None,
    });
    let first = [("sink", "stdout")];
    let second = [("sink", "stdout#2")];
    assert_eq!(
        get(&s, "link_trace_sink_queue_capacity", &first),
        Some(64.0)
    );
    assert_eq!(
        get(&s, "link_trace_sink_queue_capacity", &second),
        Some(8.0)
    );
    assert_eq!(get(&s, "link_trace_sink_queue_depth", &first), Some(0.0));
    assert_eq!(
        get(&s, "link_trace_sink_records_delivered", &first),
        Some(3.0)
    );
    assert_eq!(
        get(&s, "link_trace_sink_events_delivered", &first),
        Some(2.0)
    );
    assert_eq!(
        get(&s, "link_trace_sink_records_delivered", &second),
        Some(0.0)
    );
    let dropped = |family, sink, reason| get(&s, family, &[("sink", sink), ("reason", reason)]);
    assert_eq!(
        dropped("link_trace_sink_records_dropped", "stdout#2", "failed"),
        Some(3.0)
    );
    assert_eq!(
        dropped("link_trace_sink_events_dropped", "stdout#2", "failed"),
        Some(2.0)
    );
    assert_eq!(
        dropped("link_trace_sink_events_dropped", "stdout#2", "queue_full"),
        Some(0.0)
    );
    assert_eq!(
        dropped("link_trace_sink_records_dropped", "stdout", "failed"),
        Some(0.0)
    );
    assert_eq!(get(&s, "link_trace_sink_up", &first), Some(1.0));
    assert_eq!(
        get(&s, "link_trace_sink_up", &second),
        Some(1.0),
        "failed is not gone"
    );
}

fn alert_record() -> Record {
    let Record::Event(e) = event(0) else {
        unreachable!()
    };
    let mut alerts = Vec::new();
    let mut engine = Engine::new(rule_set(RULES));
    let mut e = *e;
    e.uid = 0;
    engine.evaluate(&e, &mut alerts);
    Record::Alert(Box::new(alerts.remove(0)))
}

#[test]
fn the_detection_stage_counts_events_alerts_and_undelivered() {
    let metrics = Arc::new(Metrics::new());
    let mut detector =
        Detector::new(Engine::new(rule_set(RULES)), true).with_metrics(metrics.clone());
    let mut by_root = sample_event(Some(b"a"), Some(b"b"), -i64::from(libc::EPERM));
    by_root.uid = 0;
    // --alerts-only: the events are not emitted, but they are counted.
    for record in [event(0), Record::Event(Box::new(by_root.clone())), event(0)] {
        assert!(detector.process(record, |_| true));
    }
    // Output gone: the alert of this event is undelivered.
    assert!(!detector.process(Record::Event(Box::new(by_root)), |_| false));
    let exporter = || Exporter {
        metrics: metrics.clone(),
        kernel: no_kernel(),
        sinks: Arc::default(),
        ring: None,
    };
    let (s, _, _) = scrape(exporter());
    assert_eq!(
        get(
            &s,
            "link_trace_events",
            &[("syscall", "linkat"), ("result", "ok")]
        ),
        Some(2.0)
    );
    assert_eq!(
        get(
            &s,
            "link_trace_events",
            &[("syscall", "linkat"), ("result", "EPERM")]
        ),
        Some(2.0)
    );
    let root = [("rule_id", "root"), ("severity", "low")];
    assert_eq!(get(&s, "link_trace_alerts", &root), Some(2.0));
    assert_eq!(get(&s, "link_trace_alerts_undelivered", &[]), Some(1.0));
    // The suppressed event is not undelivered; --alerts-only left it out.
    assert_eq!(
        get(&s, "link_trace_events_lost", &[("reason", "undelivered")]),
        Some(0.0)
    );

    // A reload keeps the count of a rule it keeps and adds the new rule.
    detector.replace_rules(rule_set(&RULES.replace("\"never\"", "\"renamed\"")));
    let mut by_root = sample_event(Some(b"a"), Some(b"b"), 0);
    by_root.uid = 0;
    assert!(detector.process(Record::Event(Box::new(by_root)), |_| true));
    let (s, _, _) = scrape(exporter());
    assert_eq!(get(&s, "link_trace_alerts", &root), Some(3.0));
    assert_eq!(
        get(
            &s,
            "link_trace_alerts",
            &[("rule_id", "renamed"), ("severity", "critical")]
        ),
        Some(0.0)
    );
}

#[test]
fn events_still_queued_when_output_goes_count_as_undelivered() {
    let metrics = Arc::new(Metrics::new());
    let (tx, rx) = mpsc::channel(8);
    let (out_tx, out_rx) = mpsc::channel(1);
    drop(out_rx);
    let (_reload_tx, reload_rx) = std_mpsc::channel::<Reload>();
    tx.try_send(vec![event(0), event(0), event(0)]).unwrap();
    drop(tx);
    let detector =
        Detector::new(Engine::new(RuleSet::default()), false).with_metrics(metrics.clone());
    let summary = detect::spawn(rx, out_tx, detector, reload_rx)
        .unwrap()
        .join()
        .unwrap();
    assert_eq!(summary.undelivered, 3);
    assert_eq!(metrics.detect_undelivered.load(Relaxed), 3);
}

#[test]
fn ring_fill_reads_the_position_pages() {
    let page = page_size();
    let file = tempfile::tempfile().unwrap();
    file.set_len(2 * page as u64).unwrap();
    let set = |consumer: u64, producer: u64| {
        file.write_all_at(&consumer.to_ne_bytes(), 0).unwrap();
        file.write_all_at(&producer.to_ne_bytes(), page as u64)
            .unwrap();
    };
    set(1000, 1504);
    let ring = RingFill::map(&file, 4096).unwrap();
    assert_eq!(ring.read(), (504, 1504));
    // The mapping is shared: later writes show.
    set(1504, 1504);
    assert_eq!(ring.read(), (0, 1504));
    // Positions only grow, modulo the word: across a wrap the difference holds.
    set(u64::MAX - 7, 24);
    assert_eq!(ring.read(), (32, 24));
    let (s, _, _) = scrape(Exporter {
        metrics: Arc::new(Metrics::new()),
        kernel: no_kernel(),
        sinks: Arc::default(),
        ring: Some(ring),
    });
    assert_eq!(
        get(&s, "link_trace_ring_buffer_used_bytes", &[]),
        Some(32.0)
    );
    assert_eq!(
        get(&s, "link_trace_ring_buffer_size_bytes", &[]),
        Some(4096.0)
    );
    assert_eq!(
        get(&s, "link_trace_ring_buffer_fill_ratio", &[]),
        Some(32.0 / 4096.0)
    );
    assert_eq!(
        get(&s, "link_trace_ring_buffer_produced_bytes", &[]),
        Some(24.0)
    );
}

fn scrape_ok() -> Result<String, std::fmt::Error> {
    Ok("# EOF\n".into())
}

#[test]
fn http_answers_get_and_head_for_metrics_only() {
    let ok = respond(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", scrape_ok).unwrap();
    assert_eq!((ok.status, ok.content_type), (200, http::CONTENT_TYPE));
    let bytes = String::from_utf8(ok.to_bytes()).unwrap();
    assert!(bytes.starts_with("HTTP/1.1 200 OK\r\n"), "{bytes}");
    assert!(bytes.contains("\r\nContent-Length: 6\r\n") && bytes.ends_with("\r\n\r\n# EOF\n"));
    let with_query = respond(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n", scrape_ok).unwrap();
    assert_eq!(with_query.status, 200);
    let head = respond(b"HEAD /metrics HTTP/1.1\r\n\r\n", scrape_ok).unwrap();
    let bytes = String::from_utf8(head.to_bytes()).unwrap();
    assert!(
        bytes.contains("Content-Length: 6\r\n") && bytes.ends_with("\r\n\r\n"),
        "{bytes}"
    );

    let not_found = respond(b"GET / HTTP/1.1\r\n\r\n", || panic!("no scrape for /")).unwrap();
    assert_eq!(not_found.status, 404);
    let post = respond(b"POST /metrics HTTP/1.1\r\n\r\n", || panic!("no scrape")).unwrap();
    assert_eq!((post.status, post.allow), (405, Some("GET, HEAD")));
    assert!(
        String::from_utf8(post.to_bytes())
            .unwrap()
            .contains("\r\nAllow: GET, HEAD\r\n")
    );
    let bad = respond(b"\x01\x02 nonsense\r\n\r\n", || panic!("no scrape")).unwrap();
    assert_eq!(bad.status, 400);
    let failed = respond(b"GET /metrics HTTP/1.1\r\n\r\n", || Err(std::fmt::Error)).unwrap();
    assert_eq!(failed.status, 500);
}

#[test]
fn http_waits_for_a_whole_head_and_bounds_it() {
    assert_eq!(respond(b"GET /metrics HTTP/1.1\r\nHost:", scrape_ok), None);
    let mut huge = b"GET /metrics HTTP/1.1\r\nX-Filler: ".to_vec();
    huge.resize(http::MAX_REQUEST_BYTES, b'a');
    assert_eq!(respond(&huge, scrape_ok).unwrap().status, 431);
    let mut many = b"GET /metrics HTTP/1.1\r\n".to_vec();
    for i in 0..40 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(respond(&many, scrape_ok).unwrap().status, 431);
}

#[test]
fn only_loopback_addresses_unless_allowed() {
    for addr in [
        "127.0.0.1:9464",
        "127.3.2.1:1",
        "[::1]:9464",
        "[::ffff:127.0.0.1]:9464",
    ] {
        assert!(
            http::check_address(addr.parse().unwrap(), false).is_ok(),
            "{addr}"
        );
    }
    for addr in ["0.0.0.0:9464", "10.1.2.3:9464", "[::]:9464"] {
        let e = http::check_address(addr.parse().unwrap(), false).unwrap_err();
        assert!(e.to_string().contains("--metrics-allow-remote"), "{e}");
        assert!(http::check_address(addr.parse().unwrap(), true).is_ok());
    }
}

/// A real listener on an ephemeral loopback port: a client that sends
/// nothing does not hold up another one's scrape.
#[test]
fn a_silent_client_does_not_block_a_scrape() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let metrics = Arc::new(Metrics::new());
    metrics.count_event("link", 0);
    let registry = Arc::new(registry(Exporter {
        metrics,
        kernel: no_kernel(),
        sinks: Arc::default(),
        ring: None,
    }));
    let listener = runtime
        .block_on(http::bind("127.0.0.1:0".parse().unwrap(), false))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let _guard = runtime.enter();
    http::spawn(listener, registry);
    // The server runs on its own thread here; the clients are plain std ones.
    std::thread::spawn(move || runtime.block_on(std::future::pending::<()>()));

    let _silent = std::net::TcpStream::connect(addr).unwrap();
    let mut client = std::net::TcpStream::connect(addr).unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    client.read_to_string(&mut answer).unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("head and body");
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains(http::CONTENT_TYPE), "{head}");
    let (s, _) = parse(body);
    assert_eq!(
        get(
            &s,
            "link_trace_events",
            &[("syscall", "link"), ("result", "ok")]
        ),
        Some(1.0)
    );

    let mut other = std::net::TcpStream::connect(addr).unwrap();
    other.write_all(b"GET /nope HTTP/1.1\r\n\r\n").unwrap();
    let mut answer = String::new();
    other.read_to_string(&mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 404 Not Found"), "{answer}");
}

#[test]
fn a_port_in_use_is_an_error() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let e = runtime.block_on(http::bind(addr, false)).unwrap_err();
    assert!(e.to_string().contains(&addr.to_string()), "{e}");
}
