//! Prometheus metrics. What every event passes through is counted where it
//! passes, with one relaxed atomic add (the detection stage sees every event
//! and every alert, even under `--alerts-only`); everything else (kernel
//! counters, sink queues, ring buffer fill) is read when a scrape asks for
//! it, so the hot path never takes a lock for metrics. `http` serves the
//! result on a loopback address in the OpenMetrics text format, encoded by
//! `prometheus-client`.

pub mod http;

use std::{
    collections::{BTreeMap, HashMap},
    io,
    os::fd::{AsFd, AsRawFd},
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
    },
    time::Instant,
};

use link_trace_common::Stat;
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, MetricEncoder, NoLabelSet},
    metrics::MetricType,
    registry::{Registry as PromRegistry, Unit},
};

use crate::{
    event::{AlertRecord, LinkEvent, LossReason},
    names,
    rules::{Rule, Severity},
    sink::Registry,
    stats::{KERNEL_LOSSES, KernelStats},
};

/// Syscalls with a label of their own in `link_trace_events_total`; any
/// other name an event carries is counted as `other`. A stage that starts
/// emitting events of a new syscall adds its name here.
pub const SYSCALLS: [&str; 2] = ["link", "linkat"];
const SYSCALL_SLOTS: usize = SYSCALLS.len() + 1;
/// Result slots: 0 is success, 1..ERRNO_SLOTS an errno value (the range
/// names.rs has names for), the last one anything else.
const ERRNO_SLOTS: usize = 256;
const RESULT_OTHER: usize = ERRNO_SLOTS;
const RESULT_SLOTS: usize = ERRNO_SLOTS + 1;

/// The counters the pipeline updates. Shared as `Arc<Metrics>`; created
/// whether or not the endpoint is on, updated only when it is.
#[derive(Debug)]
pub struct Metrics {
    started: Instant,
    /// `SYSCALL_SLOTS` × `RESULT_SLOTS` event counts (16 KiB).
    events: Box<[AtomicU64]>,
    /// One counter per (rule id, severity) ever in force, so a counter
    /// survives a reload that keeps its rule. Locked only when a rule set
    /// is installed and when scraped; the detection stage keeps its own
    /// `AlertCounters` for counting.
    alerts: Mutex<BTreeMap<(String, Severity), Arc<AtomicU64>>>,
    rules_in_force: AtomicU64,
    /// Mirrored from the capture loop's decoder after each drain.
    events_decoded: AtomicU64,
    decode_errors: AtomicU64,
    capture_undelivered: AtomicU64,
    /// Events and alerts the detection stage could not hand on.
    detect_undelivered: AtomicU64,
    alerts_undelivered: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        Metrics {
            started: Instant::now(),
            events: (0..SYSCALL_SLOTS * RESULT_SLOTS)
                .map(|_| AtomicU64::new(0))
                .collect(),
            alerts: Mutex::new(BTreeMap::new()),
            rules_in_force: AtomicU64::new(0),
            events_decoded: AtomicU64::new(0),
            decode_errors: AtomicU64::new(0),
            capture_undelivered: AtomicU64::new(0),
            detect_undelivered: AtomicU64::new(0),
            alerts_undelivered: AtomicU64::new(0),
        }
    }

    /// Counts one event by syscall and result (`ret`: 0 or -errno).
    pub fn count_event(&self, syscall: &str, ret: i64) {
        let syscall = SYSCALLS
            .iter()
            .position(|s| *s == syscall)
            .unwrap_or(SYSCALLS.len());
        let result = match ret {
            0 => 0,
            r if r < 0 && r > -(ERRNO_SLOTS as i64) => r.unsigned_abs() as usize,
            _ => RESULT_OTHER,
        };
        self.events[syscall * RESULT_SLOTS + result].fetch_add(1, Relaxed);
    }

    /// The rules now in force: the gauge, and a counter for each rule
    /// (kept from earlier sets when the id and severity are the same).
    pub fn install_rules(&self, rules: &[Rule]) {
        self.rules_in_force.store(rules.len() as u64, Relaxed);
        self.alert_counters(rules);
    }

    /// The counter of each rule, created at zero when new.
    pub fn alert_counters(&self, rules: &[Rule]) -> AlertCounters {
        let Ok(mut all) = self.alerts.lock() else {
            // Poisoned only if a scrape panicked; counting goes on unexported.
            return AlertCounters::default();
        };
        let by_id = rules
            .iter()
            .map(|rule| {
                let counter = all
                    .entry((rule.id.clone(), rule.severity))
                    .or_default()
                    .clone();
                (rule.id.clone(), counter)
            })
            .collect();
        AlertCounters { by_id }
    }

    /// The capture loop's running totals.
    pub fn observe_capture(&self, decoded: u64, decode_errors: u64, undelivered: u64) {
        self.events_decoded.store(decoded, Relaxed);
        self.decode_errors.store(decode_errors, Relaxed);
        self.capture_undelivered.store(undelivered, Relaxed);
    }

    pub fn add_undelivered(&self, events: u64, alerts: u64) {
        self.detect_undelivered.fetch_add(events, Relaxed);
        self.alerts_undelivered.fetch_add(alerts, Relaxed);
    }
}

/// Alert counters by rule id for the rule set in force, held by the
/// detection stage: counting an alert is a hash look-up and an atomic add.
#[derive(Debug, Default)]
pub struct AlertCounters {
    by_id: HashMap<String, Arc<AtomicU64>>,
}

/// What the detection stage counts, with the counters of its rule set.
#[derive(Debug)]
pub struct StageMetrics {
    metrics: Arc<Metrics>,
    alerts: AlertCounters,
}

impl StageMetrics {
    pub fn new(metrics: Arc<Metrics>, rules: &[Rule]) -> Self {
        let alerts = metrics.alert_counters(rules);
        StageMetrics { metrics, alerts }
    }

    pub fn rules_replaced(&mut self, rules: &[Rule]) {
        self.alerts = self.metrics.alert_counters(rules);
    }

    pub fn event(&self, event: &LinkEvent) {
        self.metrics.count_event(event.syscall, event.ret);
    }

    pub fn alert(&self, alert: &AlertRecord) {
        if let Some(counter) = self.alerts.by_id.get(&alert.rule_id) {
            counter.fetch_add(1, Relaxed);
        }
    }

    pub fn undelivered(&self, events: u64, alerts: u64) {
        self.metrics.add_undelivered(events, alerts);
    }
}

/// How full the kernel's ring buffer is, read from its two position pages:
/// the kernel's `producer_pos` and the daemon's `consumer_pos`, mapped
/// read-only. Their difference is what `bpf_ringbuf_query(BPF_RB_AVAIL_DATA)`
/// returns in the kernel: bytes reserved by the programs and not yet
/// consumed, record headers included. Two loads per scrape, exact at that
/// instant, and nothing added to the kernel programs or the drain loop.
#[derive(Debug)]
pub struct RingFill {
    /// Raw (pointer-only) because the kernel writes the positions under us.
    mapping: memmap2::MmapRaw,
    page: usize,
    size: u64,
}

impl RingFill {
    /// Maps the position pages of a BPF ring buffer map (its fd) of `size`
    /// data bytes. The mapping keeps the map alive on its own.
    pub fn map(ring: impl AsFd, size: u32) -> io::Result<RingFill> {
        let page = page_size();
        // The map's first two pages (consumer_pos, producer_pos), shared and
        // read-only, which the kernel allows for a ring buffer map.
        let mapping = memmap2::MmapOptions::new()
            .len(2 * page)
            .map_raw_read_only(ring.as_fd().as_raw_fd())?;
        Ok(RingFill {
            mapping,
            page,
            size: u64::from(size),
        })
    }

    fn position(&self, page: usize) -> u64 {
        // SAFETY: page 0 and 1 are inside the mapping, page-aligned, and
        // start with the kernel's `unsigned long` position, which its writer
        // updates with release stores; an acquire load pairs with them.
        let position = unsafe {
            AtomicUsize::from_ptr(
                self.mapping
                    .as_ptr()
                    .byte_add(page * self.page)
                    .cast_mut()
                    .cast(),
            )
        }
        .load(std::sync::atomic::Ordering::Acquire);
        position as u64
    }

    /// (bytes waiting, bytes ever produced).
    pub fn read(&self) -> (u64, u64) {
        // Consumer first: it never passes the producer, so a producer read
        // after it gives a difference that is never negative.
        let consumer = self.position(0);
        let producer = self.position(1);
        (producer.wrapping_sub(consumer).min(self.size), producer)
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).unwrap_or(4096)
}

/// Reads the kernel's per-CPU counters at scrape time.
pub type KernelReader = Box<dyn Fn() -> Result<KernelStats, String> + Send + Sync>;

/// Everything a scrape reads, as a `prometheus-client` collector.
pub struct Exporter {
    pub metrics: Arc<Metrics>,
    pub kernel: KernelReader,
    pub sinks: Arc<Registry>,
    pub ring: Option<RingFill>,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter").finish_non_exhaustive()
    }
}

/// The registry a scrape encodes: metric names get the `link_trace_` prefix.
pub fn registry(exporter: Exporter) -> PromRegistry {
    let mut registry = PromRegistry::with_prefix("link_trace");
    registry.register_collector(Box::new(exporter));
    registry
}

/// One scrape's text: the OpenMetrics exposition, `# EOF` included.
pub fn encode(registry: &PromRegistry) -> Result<String, std::fmt::Error> {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry)?;
    Ok(text)
}

/// The name of a loss reason as in `loss` records.
pub fn loss_reason_name(reason: LossReason) -> &'static str {
    match reason {
        LossReason::RingFull => "ring_full",
        LossReason::InflightInsertFailed => "inflight_insert_failed",
        LossReason::ExitWithoutEnter => "exit_without_enter",
        LossReason::ScratchUnavailable => "scratch_unavailable",
        LossReason::ArgReadFailed => "arg_read_failed",
        LossReason::DecodeError => "decode_error",
    }
}

type Labels = Vec<(&'static str, String)>;

/// One labelled metric family: its name (without the prefix and `_total`),
/// help and samples, written through the encoder. A family without samples
/// (no rules, no outputs) is left out: strict OpenMetrics parsers refuse a
/// descriptor followed by another family's.
fn family<V: Sample>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    samples: Vec<(Labels, V)>,
) -> Result<(), std::fmt::Error> {
    if samples.is_empty() {
        return Ok(());
    }
    let mut metric = encoder.encode_descriptor(name, help, None, kind)?;
    for (labels, value) in samples {
        value.encode(&mut metric.encode_family(&labels)?, kind)?;
    }
    Ok(())
}

/// One metric without labels.
fn single<V: Sample>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    kind: MetricType,
    value: V,
) -> Result<(), std::fmt::Error> {
    value.encode(
        &mut encoder.encode_descriptor(name, help, unit, kind)?,
        kind,
    )
}

/// A value written as a counter or a gauge.
trait Sample {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error>;
}

impl Sample for u64 {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(self, None),
            _ => encoder.encode_gauge(self),
        }
    }
}

impl Sample for f64 {
    fn encode(&self, encoder: &mut MetricEncoder, kind: MetricType) -> Result<(), std::fmt::Error> {
        match kind {
            MetricType::Counter => encoder.encode_counter::<NoLabelSet, _, u64>(self, None),
            _ => encoder.encode_gauge(self),
        }
    }
}

impl Exporter {
    /// `link_trace_events_total` samples: every non-zero (syscall, result),
    /// plus `ok` of each traced syscall so the family is there from start.
    fn event_samples(&self) -> Vec<(Labels, u64)> {
        let mut samples = Vec::new();
        for syscall in 0..SYSCALL_SLOTS {
            let name = SYSCALLS.get(syscall).copied().unwrap_or("other");
            let row = &self.metrics.events[syscall * RESULT_SLOTS..][..RESULT_SLOTS];
            // Errno values without a name share "other" with the rest.
            let mut by_result: BTreeMap<&'static str, u64> = BTreeMap::new();
            for (result, count) in row.iter().enumerate() {
                let count = count.load(Relaxed);
                let label = match result {
                    0 => "ok",
                    RESULT_OTHER => "other",
                    code => match names::errno_name(code as i32) {
                        std::borrow::Cow::Borrowed(name) => name,
                        std::borrow::Cow::Owned(_) => "other",
                    },
                };
                if count > 0 || (result == 0 && syscall < SYSCALLS.len()) {
                    *by_result.entry(label).or_default() += count;
                }
            }
            for (result, count) in by_result {
                samples.push((
                    vec![
                        ("syscall", name.to_string()),
                        ("result", result.to_string()),
                    ],
                    count,
                ));
            }
        }
        samples
    }

    fn alert_samples(&self) -> Vec<(Labels, u64)> {
        let Ok(alerts) = self.metrics.alerts.lock() else {
            return Vec::new();
        };
        alerts
            .iter()
            .map(|((rule_id, severity), count)| {
                (
                    vec![
                        ("rule_id", rule_id.clone()),
                        ("severity", severity.name().to_string()),
                    ],
                    count.load(Relaxed),
                )
            })
            .collect()
    }

    fn loss_samples(&self, kernel: Option<&KernelStats>) -> Vec<(Labels, u64)> {
        let m = &self.metrics;
        let mut samples = Vec::new();
        if let Some(kernel) = kernel {
            let totals = kernel.totals();
            for (stat, reason) in KERNEL_LOSSES {
                samples.push((
                    vec![("reason", loss_reason_name(reason).to_string())],
                    totals[stat as usize],
                ));
            }
        }
        samples.push((
            vec![("reason", "decode_error".to_string())],
            m.decode_errors.load(Relaxed),
        ));
        samples.push((
            vec![("reason", "undelivered".to_string())],
            m.capture_undelivered.load(Relaxed) + m.detect_undelivered.load(Relaxed),
        ));
        samples
    }

    fn encode_sinks(&self, encoder: &mut DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let reports: Vec<_> = self.sinks.current().iter().map(|c| c.report()).collect();
        // Two outputs may share a name (two stdout outputs in different
        // formats): later ones get "#2", "#3" so every series is unique.
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let names: Vec<String> = reports
            .iter()
            .map(|r| {
                let n = seen.entry(r.name.as_str()).or_default();
                *n += 1;
                if *n == 1 {
                    r.name.clone()
                } else {
                    format!("{}#{n}", r.name)
                }
            })
            .collect();
        let by_sink = |value: &dyn Fn(&crate::sink::SinkReport) -> u64| -> Vec<(Labels, u64)> {
            reports
                .iter()
                .zip(&names)
                .map(|(r, name)| (vec![("sink", name.clone())], value(r)))
                .collect()
        };
        let by_sink_reason = |full: &dyn Fn(&crate::sink::SinkReport) -> u64,
                              failed: &dyn Fn(&crate::sink::SinkReport) -> u64|
         -> Vec<(Labels, u64)> {
            reports
                .iter()
                .zip(&names)
                .flat_map(|(r, name)| {
                    [("queue_full", full(r)), ("failed", failed(r))].map(|(reason, n)| {
                        (
                            vec![("sink", name.clone()), ("reason", reason.to_string())],
                            n,
                        )
                    })
                })
                .collect()
        };
        family(
            encoder,
            "sink_queue_depth",
            "Records handed to the output and not yet delivered or dropped: in its queue or in the batch it is writing.",
            MetricType::Gauge,
            by_sink(&|r| r.queue_depth),
        )?;
        family(
            encoder,
            "sink_queue_capacity",
            "Records the output's queue holds before it drops.",
            MetricType::Gauge,
            by_sink(&|r| r.queue_capacity),
        )?;
        family(
            encoder,
            "sink_records_delivered",
            "Records (events, alerts, loss and stats records) the output delivered.",
            MetricType::Counter,
            by_sink(&|r| r.delivered_records),
        )?;
        family(
            encoder,
            "sink_events_delivered",
            "Events the output delivered.",
            MetricType::Counter,
            by_sink(&|r| r.delivered_events),
        )?;
        family(
            encoder,
            "sink_records_dropped",
            "Records the output dropped, by reason: queue_full (its queue was full), failed (its destination failed).",
            MetricType::Counter,
            by_sink_reason(&|r| r.dropped_queue_full_records, &|r| {
                r.dropped_failed_records
            }),
        )?;
        family(
            encoder,
            "sink_events_dropped",
            "Events the output dropped, by reason: queue_full (its queue was full), failed (its destination failed).",
            MetricType::Counter,
            by_sink_reason(&|r| r.dropped_queue_full_events, &|r| {
                r.dropped_failed_events
            }),
        )?;
        family(
            encoder,
            "sink_up",
            "1 while the output's destination is there, 0 once it is gone for good.",
            MetricType::Gauge,
            by_sink(&|r| u64::from(!r.closed)),
        )
    }
}

impl Collector for Exporter {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let kernel = match (self.kernel)() {
            Ok(kernel) => Some(kernel),
            Err(e) => {
                eprintln!("link-trace: warning: metrics: cannot read kernel counters: {e}");
                None
            }
        };
        let encoder = &mut encoder;
        family(
            encoder,
            "events",
            "Events seen by the detection stage, by syscall and result (ok, or the errno name; other for an errno without a name).",
            MetricType::Counter,
            self.event_samples(),
        )?;
        family(
            encoder,
            "alerts",
            "Alerts raised, by rule and severity.",
            MetricType::Counter,
            self.alert_samples(),
        )?;
        family(
            encoder,
            "events_lost",
            "Events that could not be delivered, by reason: the kernel's (as in loss records), decode_error, undelivered (a later stage had stopped).",
            MetricType::Counter,
            self.loss_samples(kernel.as_ref()),
        )?;
        if let Some(kernel) = &kernel {
            family(
                encoder,
                "context_lost",
                "Context records (unlink, rename) the kernel could not deliver, by reason (as in loss records with record_kind context).",
                MetricType::Counter,
                context_loss_samples(kernel),
            )?;
        }
        single(
            encoder,
            "alerts_undelivered",
            "Alerts raised that could not be handed to the outputs.",
            None,
            MetricType::Counter,
            m.alerts_undelivered.load(Relaxed),
        )?;
        if let Some(kernel) = &kernel {
            single(
                encoder,
                "kernel_submitted",
                "Records the kernel programs put in the ring buffer.",
                None,
                MetricType::Counter,
                kernel.totals()[Stat::Submitted as usize],
            )?;
        }
        single(
            encoder,
            "events_decoded",
            "Records taken from the ring buffer and decoded into events.",
            None,
            MetricType::Counter,
            m.events_decoded.load(Relaxed),
        )?;
        self.encode_sinks(encoder)?;
        if let Some(ring) = &self.ring {
            let (used, produced) = ring.read();
            single(
                encoder,
                "ring_buffer_used",
                "Bytes in the kernel ring buffer not yet consumed by link-trace (8-byte record headers included), as BPF_RB_AVAIL_DATA reports them.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                used,
            )?;
            single(
                encoder,
                "ring_buffer_size",
                "Data bytes of the kernel ring buffer.",
                Some(&Unit::Bytes),
                MetricType::Gauge,
                ring.size(),
            )?;
            single(
                encoder,
                "ring_buffer_fill",
                "link_trace_ring_buffer_used_bytes / link_trace_ring_buffer_size_bytes.",
                Some(&Unit::Other("ratio".into())),
                MetricType::Gauge,
                used as f64 / ring.size().max(1) as f64,
            )?;
            single(
                encoder,
                "ring_buffer_produced",
                "Bytes the kernel programs have reserved in the ring buffer since it was created (its producer position).",
                Some(&Unit::Bytes),
                MetricType::Counter,
                produced,
            )?;
        }
        single(
            encoder,
            "rules",
            "Detection rules in force.",
            None,
            MetricType::Gauge,
            m.rules_in_force.load(Relaxed),
        )?;
        single(
            encoder,
            "uptime",
            "Seconds since link-trace started.",
            Some(&Unit::Seconds),
            MetricType::Gauge,
            m.started.elapsed().as_secs_f64(),
        )
    }
}

/// The kernel's loss counters of context records, by reason.
fn context_loss_samples(kernel: &KernelStats) -> Vec<(Labels, u64)> {
    let totals = kernel.totals();
    KERNEL_LOSSES
        .iter()
        .map(|(stat, reason)| {
            (
                vec![("reason", loss_reason_name(*reason).to_string())],
                totals[crate::stats::index(crate::event::RecordKind::Context, *stat)],
            )
        })
        .collect()
}

#[cfg(test)]
mod tests;
