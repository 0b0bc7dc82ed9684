use std::sync::{
    Arc, Mutex,
    atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
};

use super::*;
use crate::{
    config::{OutputConfig, StdoutOutput},
    event::{AlertRecord, sample_event},
};

/// Collects delivered lines; fails while `failing` is set.
#[derive(Clone, Default)]
struct Memory {
    lines: Arc<Mutex<Vec<String>>>,
    failing: Arc<AtomicBool>,
    closed: Arc<AtomicBool>,
    gate: Arc<Mutex<()>>,
    /// Deliveries begun (counted before waiting at the gate).
    entered: Arc<AtomicUsize>,
    finished: Arc<AtomicBool>,
}

impl Transport for Memory {
    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError> {
        self.entered.fetch_add(1, SeqCst);
        let _held = self.gate.lock().unwrap();
        if self.closed.load(SeqCst) {
            return Err(SinkError::Closed(io::Error::other("gone")).into());
        }
        if self.failing.load(SeqCst) {
            // Half the batch got through before the failure.
            let half = batch.len() / 2;
            let mut lines = self.lines.lock().unwrap();
            for line in batch.records().take(half) {
                lines.push(String::from_utf8_lossy(line).into_owned());
            }
            return Err(DeliverError {
                delivered: half,
                error: SinkError::Failed(io::Error::other("down")),
            });
        }
        let mut lines = self.lines.lock().unwrap();
        for line in batch.records() {
            lines.push(String::from_utf8_lossy(line).into_owned());
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<(), SinkError> {
        self.finished.store(true, SeqCst);
        Ok(())
    }
}

fn config(queue: usize, alerts_only: bool) -> OutputConfig {
    OutputConfig::Stdout(StdoutOutput {
        format: OutputFormat::Json,
        queue,
        alerts_only,
    })
}

fn event() -> Record {
    Record::Event(Box::new(sample_event(Some(b"a"), Some(b"b"), 0)))
}

fn alert() -> Record {
    Record::Alert(Box::new(AlertRecord {
        schema_version: 1,
        time: String::new(),
        rule_id: "r".into(),
        title: "t".into(),
        severity: crate::rules::Severity::High,
        mitre: vec![],
        tags: vec![],
        message: "m".into(),
        event_seqs: vec![3],
        context_seqs: vec![],
        syscall: "linkat",
        pid: 1,
        uid: 0,
        comm: "ln".into(),
        oldpath_resolved: None,
        newpath_resolved: None,
    }))
}

fn run(sinks: Vec<Sink>, records: Vec<Record>) -> (OutputSummary, Arc<Registry>) {
    let (tx, rx) = mpsc::channel(1);
    tx.try_send(records).unwrap();
    drop(tx);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let registry = Arc::new(Registry::default());
    let summary = spawn_stage(sinks, rx, control_rx, registry.clone())
        .unwrap()
        .join()
        .unwrap();
    (summary, registry)
}

#[test]
fn every_sink_gets_every_record_in_order() {
    let (a, b) = (Memory::default(), Memory::default());
    let sinks = vec![
        start(config(64, false), Box::new(a.clone())),
        start(config(64, false), Box::new(b.clone())),
    ];
    let (summary, registry) = run(sinks, vec![event(), alert(), event()]);
    for memory in [&a, &b] {
        let lines = memory.lines.lock().unwrap();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("\"kind\":\"alert\"") && lines[2].ends_with('\n'));
    }
    let report = &summary.sinks[0].0;
    assert_eq!((report.delivered_records, report.delivered_events), (3, 2));
    assert_eq!(report.queue_depth, 0);
    assert_eq!(registry.current().len(), 2);
}

#[test]
fn a_stuck_sink_drops_and_counts_without_stalling_the_others() {
    let (stuck, healthy) = (Memory::default(), Memory::default());
    let gate = stuck.gate.clone();
    let held = gate.lock().unwrap();
    let sinks = vec![
        start(config(2, false), Box::new(stuck.clone())),
        start(config(64, false), Box::new(healthy.clone())),
    ];
    let (tx, rx) = mpsc::channel(64);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let stage = spawn_stage(sinks, rx, control_rx, Arc::new(Registry::default())).unwrap();
    for _ in 0..40 {
        tx.try_send(vec![event()]).unwrap();
    }
    // The healthy sink gets all 40 while the stuck one is still blocked.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while healthy.lines.lock().unwrap().len() < 40 {
        assert!(std::time::Instant::now() < deadline, "healthy sink stalled");
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(held);
    drop(tx);
    let summary = stage.join().unwrap();
    let stuck_report = &summary.sinks[0].0;
    assert!(stuck_report.dropped_queue_full_events > 0);
    assert_eq!(
        stuck_report.delivered_events + stuck_report.dropped_queue_full_events,
        40,
        "every record is delivered or counted"
    );
    assert_eq!(
        stuck.lines.lock().unwrap().len() as u64,
        stuck_report.delivered_records
    );
    assert_eq!(summary.sinks[1].0.delivered_events, 40);
}

#[test]
fn failures_count_what_did_not_get_through_and_the_sink_recovers() {
    let memory = Memory::default();
    memory.failing.store(true, SeqCst);
    let sink = start(config(64, false), Box::new(memory.clone()));
    let counters = sink.counters.clone();
    let (tx, rx) = mpsc::channel(64);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let stage = spawn_stage(vec![sink], rx, control_rx, Arc::new(Registry::default())).unwrap();
    for _ in 0..10 {
        tx.blocking_send(vec![event()]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.report().dropped_failed_records + counters.report().delivered_records < 10 {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(5));
    }
    memory.failing.store(false, SeqCst);
    for _ in 0..5 {
        tx.blocking_send(vec![event()]).unwrap();
    }
    drop(tx);
    let summary = stage.join().unwrap();
    let (report, error) = &summary.sinks[0];
    assert_eq!(report.delivered_events + report.dropped_failed_events, 15);
    assert_eq!(
        memory.lines.lock().unwrap().len() as u64,
        report.delivered_records
    );
    assert!(report.dropped_failed_events > 0 && !report.closed);
    assert_eq!(error.as_deref(), Some("down"));
}

#[test]
fn when_every_destination_is_gone_the_stage_stops_taking_records() {
    let memory = Memory::default();
    memory.closed.store(true, SeqCst);
    let (tx, rx) = mpsc::channel(64);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let stage = spawn_stage(
        vec![start(config(64, false), Box::new(memory))],
        rx,
        control_rx,
        Arc::new(Registry::default()),
    )
    .unwrap();
    tx.blocking_send(vec![event()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !tx.is_closed() {
        assert!(std::time::Instant::now() < deadline, "input never closed");
        let _ = tx.try_send(vec![event()]);
        std::thread::sleep(Duration::from_millis(5));
    }
    drop(tx);
    let summary = stage.join().unwrap();
    assert!(summary.any_closed());
    assert_eq!(summary.sinks[0].0.delivered_records, 0);
}

#[test]
fn alerts_only_sinks_get_only_alerts() {
    let memory = Memory::default();
    let (summary, _) = run(
        vec![start(config(64, true), Box::new(memory.clone()))],
        vec![event(), alert(), event()],
    );
    assert_eq!(memory.lines.lock().unwrap().len(), 1);
    assert_eq!(summary.sinks[0].0.delivered_records, 1);
}

#[test]
fn a_replace_keeps_unchanged_sinks_and_retires_the_rest() {
    let (kept, retired, added) = (Memory::default(), Memory::default(), Memory::default());
    let kept_config = config(64, false);
    let retired_config = config(65, false);
    let sinks = vec![
        start(kept_config.clone(), Box::new(kept.clone())),
        start(retired_config, Box::new(retired.clone())),
    ];
    let (tx, rx) = mpsc::channel(64);
    let (control_tx, control_rx) = mpsc::channel(1);
    let registry = Arc::new(Registry::default());
    let stage = spawn_stage(sinks, rx, control_rx, registry.clone()).unwrap();
    tx.blocking_send(vec![event()]).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while retired.lines.lock().unwrap().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "first event not delivered"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    control_tx
        .blocking_send(Control::Replace {
            keep: vec![kept_config],
            new: vec![start(config(66, false), Box::new(added.clone()))],
        })
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while registry.current().iter().all(|c| c.queue_capacity != 66) {
        assert!(std::time::Instant::now() < deadline, "replace not applied");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The retired sink stops while the stage runs on.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !retired.finished.load(SeqCst) {
        assert!(
            std::time::Instant::now() < deadline,
            "the retired sink did not stop"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(!kept.finished.load(SeqCst));
    tx.blocking_send(vec![event()]).unwrap();
    drop(tx);
    let summary = stage.join().unwrap();
    assert!(kept.finished.load(SeqCst) && added.finished.load(SeqCst));
    assert_eq!(kept.lines.lock().unwrap().len(), 2);
    assert_eq!(
        retired.lines.lock().unwrap().len(),
        1,
        "the retired sink finished its queue"
    );
    assert_eq!(added.lines.lock().unwrap().len(), 1);
    assert_eq!(summary.sinks.len(), 3);
}

/// Waits until `memory`'s sink is inside its `n`th delivery.
fn wait_entered(memory: &Memory, n: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while memory.entered.load(SeqCst) < n {
        assert!(std::time::Instant::now() < deadline, "no delivery began");
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[test]
fn a_batch_too_big_for_the_queue_is_cut_and_each_dropped_record_counted() {
    let memory = Memory::default();
    let held = memory.gate.lock().unwrap();
    let (tx, rx) = mpsc::channel(4);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let sink = start(config(4, false), Box::new(memory.clone()));
    let counters = sink.counters.clone();
    let stage = spawn_stage(vec![sink], rx, control_rx, Arc::new(Registry::default())).unwrap();
    // One record, in delivery (stuck at the gate): it still counts against
    // the queue's 4, so 3 of the next batch fit.
    tx.blocking_send(vec![event()]).unwrap();
    wait_entered(&memory, 1);
    // 7 events and 3 alerts: the first three (event, alert, event) fit.
    let batch: Vec<Record> = (0..10)
        .map(|i| if i % 3 == 1 { alert() } else { event() })
        .collect();
    tx.blocking_send(batch).unwrap();
    drop(tx);
    // The gate opens only once the stage has dispatched the batch (the queue
    // is full then), or the first delivery could end before and leave room.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.queue_depth.load(SeqCst) < 4 {
        assert!(
            std::time::Instant::now() < deadline,
            "the batch was never dispatched"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(held);
    let summary = stage.join().unwrap();
    let report = &summary.sinks[0].0;
    assert_eq!(
        (report.delivered_records, report.delivered_events),
        (4, 3),
        "the first record and the three that fitted"
    );
    assert_eq!(
        (
            report.dropped_queue_full_records,
            report.dropped_queue_full_events
        ),
        (7, 5),
        "exactly the records past the queue's room"
    );
    let lines = memory.lines.lock().unwrap();
    let kinds: Vec<bool> = lines
        .iter()
        .map(|l| l.contains("\"kind\":\"alert\""))
        .collect();
    assert_eq!(kinds, [false, false, true, false], "in order");
}

#[test]
fn a_stats_record_in_a_batch_counts_exactly_the_records_before_it() {
    let memory = Memory::default();
    let held = memory.gate.lock().unwrap();
    let stats = crate::stats::stats_record(
        &crate::stats::KernelStats::default(),
        crate::stats::Decoded::default(),
        0,
        Vec::new(),
        &crate::clock::WallClock::sample(),
    );
    let (tx, rx) = mpsc::channel(4);
    let (_control_tx, control_rx) = mpsc::channel(1);
    let sink = start(config(64, false), Box::new(memory.clone()));
    let counters = sink.counters.clone();
    let stage = spawn_stage(vec![sink], rx, control_rx, Arc::new(Registry::default())).unwrap();
    tx.blocking_send(vec![
        event(),
        alert(),
        Record::Stats(Box::new(stats)),
        event(),
    ])
    .unwrap();
    drop(tx);
    // Nothing is delivered while the gate is held: when the stats record
    // is dispatched, the two records before it are in the queue or in the
    // batch being written.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counters.queue_depth.load(SeqCst) < 4 {
        assert!(std::time::Instant::now() < deadline, "not all dispatched");
        std::thread::sleep(Duration::from_millis(2));
    }
    drop(held);
    stage.join().unwrap();
    let lines = memory.lines.lock().unwrap();
    assert_eq!(lines.len(), 4);
    let stats: serde_json::Value = serde_json::from_str(&lines[2]).unwrap();
    let sink = &stats["sinks"][0];
    assert_eq!(
        (
            sink["queue_depth"].as_u64(),
            sink["delivered_records"].as_u64(),
            sink["dropped_queue_full_records"].as_u64()
        ),
        (Some(2), Some(0), Some(0)),
        "{sink}"
    );
}
