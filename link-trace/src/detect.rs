//! The detection stage: evaluates the rules in force on every event, on a
//! thread of its own between enrichment and output, and puts each alert in
//! the stream right after the event that raised it.
//!
//! New rule sets (SIGHUP) arrive on a channel the thread polls between
//! records, without a lock; window state carries over (see
//! `Engine::replace`).

use std::sync::mpsc as std_mpsc;

use tokio::sync::mpsc;

use crate::{
    event::Record,
    metrics::{Metrics, StageMetrics},
    pipeline::{MAX_BATCH, Records, close_and_count},
    rules::{Engine, RuleSet},
};

#[derive(Debug, Default, Clone, PartialEq)]
pub struct DetectSummary {
    pub events: u64,
    /// Context records (unlink, rename) judged.
    pub context: u64,
    pub alerts: u64,
    /// Window groups or entries dropped to bound memory.
    pub evictions: u64,
    /// Events not handed on because output was gone.
    pub undelivered: u64,
    /// Context records to be printed but not handed on because output was gone.
    pub context_undelivered: u64,
    pub alerts_undelivered: u64,
    /// Records left out on purpose (`--alerts-only`).
    pub suppressed: u64,
}

/// The stage's state, separate from the thread for tests and replay.
pub struct Detector {
    pub engine: Engine,
    alerts_only: bool,
    /// Whether context records go on to output (`--context-events`; replay
    /// passes on those of its input) or only feed the rules.
    print_context: bool,
    alerts: Vec<crate::event::AlertRecord>,
    pub summary: DetectSummary,
    /// Counts events and alerts for the metrics endpoint, when it is on.
    metrics: Option<StageMetrics>,
}

impl Detector {
    pub fn new(engine: Engine, alerts_only: bool) -> Self {
        Self {
            engine,
            alerts_only,
            print_context: true,
            alerts: Vec::new(),
            summary: DetectSummary::default(),
            metrics: None,
        }
    }

    /// Counts every event and alert into `metrics` as well.
    pub fn with_metrics(mut self, metrics: std::sync::Arc<Metrics>) -> Self {
        self.metrics = Some(StageMetrics::new(metrics, self.engine.rules()));
        self
    }

    /// Puts a new rule set in force (see `Engine::replace`).
    pub fn replace_rules(&mut self, rules: RuleSet) {
        self.engine.replace(rules);
        if let Some(metrics) = &mut self.metrics {
            metrics.rules_replaced(self.engine.rules());
        }
    }

    /// Context records feed the rules but reach the output only when asked.
    pub fn print_context(mut self, print: bool) -> Self {
        self.print_context = print;
        self
    }

    /// The records to emit for one input record, in order: the record
    /// itself (unless `--alerts-only` leaves it out, or it is a context
    /// record and those are not printed), then its alerts.
    pub fn process(&mut self, record: Record, mut emit: impl FnMut(Record) -> bool) -> bool {
        let undelivered_before = (self.summary.undelivered, self.summary.alerts_undelivered);
        match &record {
            Record::Event(event) => {
                self.summary.events += 1;
                self.engine.evaluate(event, &mut self.alerts);
                if let Some(metrics) = &self.metrics {
                    metrics.event(event);
                }
            }
            Record::Context(context) => {
                self.summary.context += 1;
                self.engine.evaluate(&context.0, &mut self.alerts);
            }
            _ => {}
        }
        let (is_event, is_context) = (record.is_event(), record.is_context());
        let keep = if self.alerts_only {
            matches!(record, Record::Alert(_))
        } else {
            !is_context || self.print_context
        };
        let mut delivered = true;
        if keep {
            delivered = emit(record);
            if !delivered {
                self.summary.undelivered += u64::from(is_event);
                self.summary.context_undelivered += u64::from(is_context);
            }
        } else if !is_context || self.print_context {
            // Left out by --alerts-only; context records nobody asked to
            // print are not "left out", they were never for output.
            self.summary.suppressed += 1;
        }
        let alerts = self.alerts.len() as u64;
        self.summary.alerts += alerts;
        for alert in self.alerts.drain(..) {
            if let Some(metrics) = &self.metrics {
                metrics.alert(&alert);
            }
            if delivered {
                delivered = emit(Record::Alert(Box::new(alert)));
                if !delivered {
                    self.summary.alerts_undelivered += 1;
                }
            } else {
                self.summary.alerts_undelivered += 1;
            }
        }
        self.summary.evictions = self.engine.evictions();
        if let Some(metrics) = &self.metrics
            && !delivered
        {
            metrics.undelivered(
                self.summary.undelivered - undelivered_before.0,
                self.summary.alerts_undelivered - undelivered_before.1,
            );
        }
        delivered
    }
}

/// A rule set to put in force for events after `after_seq` and context
/// records after `after_context_seq`: what the daemon had already captured
/// when it was told to reload is judged by the rules that were in force
/// when it happened.
pub struct Reload {
    pub after_seq: u64,
    pub after_context_seq: u64,
    pub rules: RuleSet,
}

impl Reload {
    /// Whether `record` was captured after the reload.
    fn applies_to(&self, record: &Record) -> bool {
        match record {
            Record::Event(event) => event.seq > self.after_seq,
            Record::Context(context) => context.0.seq > self.after_context_seq,
            _ => false,
        }
    }
}

/// Runs the stage until its input closes or output goes away. Records
/// arrive and leave in batches (see pipeline.rs); each record is judged in
/// order, with the rule set its capture time calls for.
pub fn spawn(
    mut rx: mpsc::Receiver<Records>,
    tx: mpsc::Sender<Records>,
    mut detector: Detector,
    reloads: std_mpsc::Receiver<Reload>,
) -> std::io::Result<std::thread::JoinHandle<DetectSummary>> {
    std::thread::Builder::new()
        .name("link-trace-detect".into())
        .spawn(move || {
            let mut pending = std::collections::VecDeque::new();
            let mut out = Records::new();
            'input: while let Some(records) = rx.blocking_recv() {
                pending.extend(reloads.try_iter());
                let mut records = records.into_iter();
                while let Some(record) = records.next() {
                    while let Some(reload) =
                        pending.pop_front_if(|r: &mut Reload| r.applies_to(&record))
                    {
                        detector.replace_rules(reload.rules);
                    }
                    detector.process(record, |r| {
                        out.push(r);
                        true
                    });
                    // A batch ends at a record boundary, so an event and its
                    // alerts travel together.
                    let last = records.as_slice().is_empty();
                    if (last || out.len() >= MAX_BATCH)
                        && !out.is_empty()
                        && let Err(refused) = tx.blocking_send(std::mem::take(&mut out))
                    {
                        // Output is gone: count what it refused, what this
                        // batch still holds and everything still queued, then
                        // stop.
                        detector.count_undelivered(&refused.0);
                        let mut queued = close_and_count(&mut rx);
                        queued.count_all(records.as_slice());
                        detector.summary.undelivered += queued.events;
                        detector.summary.context_undelivered += queued.context;
                        if let Some(metrics) = &detector.metrics {
                            metrics.undelivered(queued.events, 0);
                        }
                        break 'input;
                    }
                }
            }
            detector.summary
        })
}

impl Detector {
    /// Counts records this stage emitted that output refused (it has
    /// stopped): events, printed context records and alerts.
    fn count_undelivered(&mut self, refused: &[Record]) {
        let mut events = 0;
        let mut alerts = 0;
        for record in refused {
            match record {
                Record::Event(_) => events += 1,
                Record::Context(_) => self.summary.context_undelivered += 1,
                Record::Alert(_) => alerts += 1,
                _ => {}
            }
        }
        self.summary.undelivered += events;
        self.summary.alerts_undelivered += alerts;
        if let Some(metrics) = &self.metrics {
            metrics.undelivered(events, alerts);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::sample_event,
        rules::{RuleSet, tests::engine_of as engine},
    };

    const RULE: &str = r#"
[[rule]]
id = "pid7"
title = "pid 7"
severity = "low"
condition = { field = "pid", eq = 7 }
"#;

    fn event() -> Record {
        Record::Event(Box::new(sample_event(Some(b"a"), Some(b"b"), 0)))
    }

    #[test]
    fn alerts_follow_their_event() {
        let mut d = Detector::new(engine(RULE), false);
        let mut out = Vec::new();
        assert!(d.process(event(), |r| {
            out.push(r);
            true
        }));
        assert!(matches!(out[..], [Record::Event(_), Record::Alert(_)]));
        assert_eq!((d.summary.events, d.summary.alerts), (1, 1));
    }

    #[test]
    fn alerts_only_drops_everything_else() {
        let mut d = Detector::new(engine(RULE), true);
        let mut out = Vec::new();
        d.process(event(), |r| {
            out.push(r);
            true
        });
        assert!(matches!(out[..], [Record::Alert(_)]));
        assert_eq!(d.summary.suppressed, 1);
    }

    #[test]
    fn context_records_feed_the_rules_but_print_only_when_asked() {
        let rule = r#"
[[rule]]
id = "gone"
title = "Removed"
severity = "low"
syscalls = ["unlinkat"]
condition = { field = "success", eq = true }
"#;
        let context = || {
            let mut e = sample_event(Some(b"/tmp/x"), None, 0);
            e.syscall = "unlinkat";
            e.seq = 5;
            Record::Context(Box::new(crate::event::ContextEvent(e)))
        };
        for (print, kinds) in [(false, vec!["alert"]), (true, vec!["context", "alert"])] {
            let mut d = Detector::new(engine(rule), false).print_context(print);
            let mut out = Vec::new();
            d.process(context(), |r| {
                out.push(r);
                true
            });
            let got: Vec<&str> = out
                .iter()
                .map(|r| match r {
                    Record::Context(_) => "context",
                    Record::Alert(a) => {
                        assert_eq!(
                            (a.event_seqs.len(), a.context_seqs.as_slice()),
                            (0, &[5][..])
                        );
                        assert_eq!(a.syscall, "unlinkat");
                        "alert"
                    }
                    _ => "other",
                })
                .collect();
            assert_eq!(got, kinds, "print_context {print}");
            assert_eq!((d.summary.context, d.summary.suppressed), (1, 0));
        }
    }

    /// Runs the stage with RULE in force (and `reloads` queued) over
    /// `input`; returns its summary and what it handed on, or nothing when
    /// `output_open` is false (output gone before the first batch).
    fn run_stage(
        input: Vec<Records>,
        reloads: Vec<Reload>,
        output_open: bool,
    ) -> (DetectSummary, Vec<Records>) {
        let (tx, rx) = mpsc::channel(input.len().max(1));
        let (out_tx, mut out_rx) = mpsc::channel(256);
        let (reload_tx, reload_rx) = std_mpsc::channel();
        for reload in reloads {
            reload_tx.send(reload).unwrap();
        }
        for batch in input {
            tx.try_send(batch).unwrap();
        }
        drop(tx);
        if !output_open {
            out_rx.close();
        }
        let handle = spawn(rx, out_tx, Detector::new(engine(RULE), false), reload_rx).unwrap();
        let summary = handle.join().unwrap();
        let mut out = Vec::new();
        while let Ok(batch) = out_rx.try_recv() {
            out.push(batch);
        }
        (summary, out)
    }

    #[test]
    fn a_closed_output_counts_the_undelivered() {
        // The first batch is judged and refused; the second is still queued.
        let (summary, _) = run_stage(vec![vec![event(), event()], vec![event()]], vec![], false);
        assert_eq!(summary.undelivered, 3);
        assert_eq!((summary.alerts, summary.alerts_undelivered), (2, 2));
    }

    /// A reload to no rules at all, for events after `after_seq`.
    fn empty_rules_after(after_seq: u64) -> Reload {
        Reload {
            after_seq,
            after_context_seq: 0,
            rules: RuleSet::default(),
        }
    }

    fn event_seq(seq: u64) -> Record {
        let mut e = sample_event(Some(b"a"), Some(b"b"), 0);
        e.seq = seq;
        Record::Event(Box::new(e))
    }

    #[test]
    fn a_reload_takes_effect_inside_a_batch_at_its_sequence_number() {
        let input = vec![(3..=6).map(event_seq).collect()];
        let (summary, out) = run_stage(input, vec![empty_rules_after(4)], true);
        assert_eq!(summary.alerts, 2, "seqs 3 and 4 under the old rules");
        let kinds: Vec<String> = out
            .iter()
            .flatten()
            .map(|r| match r {
                Record::Event(e) => format!("#{}", e.seq),
                Record::Alert(a) => format!("alert{:?}", a.event_seqs),
                _ => "other".into(),
            })
            .collect();
        assert_eq!(kinds, ["#3", "alert[3]", "#4", "alert[4]", "#5", "#6"]);
    }

    #[test]
    fn output_batches_are_bounded_and_keep_alerts_with_their_event() {
        let count = MAX_BATCH as u64 + 10;
        let (_, batches) = run_stage(vec![(1..=count).map(event_seq).collect()], vec![], true);
        assert!(batches.len() > 1, "split into several batches");
        let mut expected_seq = 1;
        for batch in &batches {
            assert!(batch.len() <= MAX_BATCH + 1, "{} records", batch.len());
            for pair in batch.chunks(2) {
                match pair {
                    [Record::Event(e), Record::Alert(a)] => {
                        assert_eq!(
                            (e.seq, &a.event_seqs[..]),
                            (expected_seq, &[expected_seq][..])
                        );
                    }
                    _ => panic!("an event and its alert were split across batches"),
                }
                expected_seq += 1;
            }
        }
        assert_eq!(
            expected_seq,
            count + 1,
            "every event came out once, in order"
        );
    }

    #[test]
    fn reloaded_rules_apply_to_later_events() {
        let (summary, out) = run_stage(vec![vec![event()]], vec![empty_rules_after(0)], true);
        assert_eq!(summary.alerts, 0, "the empty rule set was in force");
        assert!(matches!(out.concat()[..], [Record::Event(_)]));
    }

    #[test]
    fn a_reload_waits_for_the_events_captured_before_it() {
        // sample events carry seq 3: a reload after seq 3 must not judge it.
        let (summary, _) = run_stage(vec![vec![event()]], vec![empty_rules_after(3)], true);
        assert_eq!(summary.alerts, 1, "the old rules judged the earlier event");
    }
}
