//! Outputs. The output stage hands every record to each sink's own bounded
//! queue without waiting: a sink that is slow or dead fills its queue and
//! then drops (and counts) its own records, while capture and the other
//! sinks go on. Each sink renders and delivers on a thread of its own.
//!
//! Records are shared between sinks as `Arc<Record>`, so five sinks cost one
//! copy of an event, and the queues hold pointers, not rendered bytes. They
//! arrive and are queued in batches (one per batch of the stage before), so
//! a sink thread wakes once per batch and writes it with one write(2); each
//! queue's bound is still counted in records.

pub mod file;
pub mod stdout;
pub mod syslog;
pub mod unix;

use std::{
    io,
    sync::{
        Arc, Mutex, OnceLock,
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        mpsc::{self as std_mpsc, RecvTimeoutError},
    },
    thread::JoinHandle,
    time::Duration,
};

use serde::Serialize;
use tokio::sync::mpsc;

use crate::{
    config::{OutputConfig, OutputFormat},
    event::Record,
    formats::{self, HostInfo},
    output::{self, Format},
    pipeline::Records,
};

/// Bytes rendered before a batch is delivered even if more records wait.
const BATCH_BYTES: usize = 64 * 1024;
/// How often an idle sink gets a chance to reconnect, accept or flush.
const IDLE_TICK: Duration = Duration::from_millis(500);

#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// The destination failed; later batches are tried again (a file on a
    /// full disk, a syslog server that went away and may come back).
    #[error("{0}")]
    Failed(io::Error),
    /// The destination is gone for good (stdout closed): the sink stops.
    #[error("closed: {0}")]
    Closed(io::Error),
}

/// A batch that was not delivered whole.
#[derive(Debug)]
pub struct DeliverError {
    /// Records at the start of the batch that did reach the destination.
    pub delivered: usize,
    pub error: SinkError,
}

impl From<SinkError> for DeliverError {
    fn from(error: SinkError) -> Self {
        DeliverError {
            delivered: 0,
            error,
        }
    }
}

/// Rendered records: each a complete line ending in `\n`, unless the
/// transport renders its own messages (`Transport::render`, e.g. syslog).
#[derive(Debug, Default)]
pub struct Batch {
    pub bytes: Vec<u8>,
    /// End offset (exclusive) of each record in `bytes`.
    pub ends: Vec<usize>,
    /// Whether each record is an event (the rest: alerts, loss, stats).
    pub is_event: Vec<bool>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each record's line, newline included.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.bytes[start..end])
    }

    fn clear(&mut self) {
        self.bytes.clear();
        self.ends.clear();
        self.is_event.clear();
    }

    fn events_in(&self, range: std::ops::Range<usize>) -> u64 {
        self.is_event[range].iter().map(|&e| u64::from(e)).sum()
    }
}

/// Whether a record went into its batch whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rendered {
    Whole,
    /// Cut to fit the destination's size limit (and marked as cut).
    Truncated,
}

/// Where a sink's bytes go.
pub trait Transport: Send {
    /// Appends one record to the batch's bytes: by default the output
    /// format's line; a transport with a message format of its own (syslog)
    /// overrides it.
    fn render(&mut self, format: OutputFormat, record: &Record, out: &mut Vec<u8>) -> Rendered {
        render(format, record, out);
        Rendered::Whole
    }
    /// Delivers a whole batch, or says how much of it got through.
    fn deliver(&mut self, batch: &Batch) -> Result<(), DeliverError>;
    /// Called when the queue has been idle for a while: reconnect, accept
    /// subscribers, flush.
    fn idle(&mut self) {}
    /// Called once at exit, after the last batch.
    fn finish(&mut self) -> Result<(), SinkError> {
        Ok(())
    }
    /// A socket output's subscriber counters, reported with the sink's.
    fn subscriber_counters(&self) -> Option<Arc<unix::SubscriberCounters>> {
        None
    }
}

/// Renders one record in an output format, newline included.
pub fn render(format: OutputFormat, record: &Record, out: &mut Vec<u8>) {
    match format {
        OutputFormat::Json => output::render(Format::Json, record, out),
        OutputFormat::Text => output::render(Format::Text, record, out),
        OutputFormat::Ecs => formats::ecs::render(record, host(), out),
        OutputFormat::Ocsf => formats::ocsf::render(record, host(), out),
    }
}

/// This machine, as ECS and OCSF documents describe it: read once.
fn host() -> &'static HostInfo {
    static HOST: OnceLock<HostInfo> = OnceLock::new();
    HOST.get_or_init(HostInfo::read)
}

/// What happened to the records handed to one sink; read by stats records,
/// metrics and the exit summary while the sink runs.
#[derive(Debug, Default)]
pub struct SinkCounters {
    pub name: String,
    /// Records handed to the sink and not yet delivered or dropped: in its
    /// queue, or in the batch it is writing. Bounded by `queue_capacity`.
    pub queue_depth: AtomicU64,
    pub queue_capacity: u64,
    pub delivered: Count,
    /// Dropped because the queue was full (the sink is slower than capture).
    pub dropped_queue_full: Count,
    /// Dropped because the destination failed.
    pub dropped_failed: Count,
    /// Cut to the destination's size limit (syslog `max_message_bytes`);
    /// also counted as delivered or dropped.
    pub truncated: Count,
    /// The destination is gone for good.
    pub closed: AtomicBool,
    /// The last failure, for the exit summary.
    pub last_error: Mutex<Option<String>>,
    /// A socket output's subscribers.
    pub subscribers: Option<Arc<unix::SubscriberCounters>>,
}

/// Records and, among them, events.
#[derive(Debug, Default)]
pub struct Count {
    pub records: AtomicU64,
    pub events: AtomicU64,
}

impl Count {
    fn add(&self, records: u64, events: u64) {
        self.records.fetch_add(records, Relaxed);
        self.events.fetch_add(events, Relaxed);
    }
}

/// A snapshot of one sink's counters, as reported in `stats` records.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct SinkReport {
    pub name: String,
    pub queue_depth: u64,
    pub queue_capacity: u64,
    pub delivered_records: u64,
    pub delivered_events: u64,
    pub dropped_queue_full_records: u64,
    pub dropped_queue_full_events: u64,
    pub dropped_failed_records: u64,
    pub dropped_failed_events: u64,
    #[serde(default)]
    pub truncated_records: u64,
    #[serde(default)]
    pub truncated_events: u64,
    pub closed: bool,
    /// Socket outputs only: their subscribers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribers: Option<unix::SubscriberReport>,
}

impl SinkCounters {
    pub fn report(&self) -> SinkReport {
        SinkReport {
            name: self.name.clone(),
            queue_depth: self.queue_depth.load(Relaxed),
            queue_capacity: self.queue_capacity,
            delivered_records: self.delivered.records.load(Relaxed),
            delivered_events: self.delivered.events.load(Relaxed),
            dropped_queue_full_records: self.dropped_queue_full.records.load(Relaxed),
            dropped_queue_full_events: self.dropped_queue_full.events.load(Relaxed),
            dropped_failed_records: self.dropped_failed.records.load(Relaxed),
            dropped_failed_events: self.dropped_failed.events.load(Relaxed),
            truncated_records: self.truncated.records.load(Relaxed),
            truncated_events: self.truncated.events.load(Relaxed),
            closed: self.closed.load(Relaxed),
            subscribers: self.subscribers.as_ref().map(|s| s.report()),
        }
    }

    fn note_error(&self, error: &SinkError) {
        if let Ok(mut last) = self.last_error.lock() {
            *last = Some(error.to_string());
        }
    }
}

/// The sinks in service, for metrics. Written only when sinks are
/// (re)configured, never per record.
#[derive(Debug, Default)]
pub struct Registry {
    sinks: Mutex<Vec<Arc<SinkCounters>>>,
}

impl Registry {
    /// Counters of the sinks in service now.
    pub fn current(&self) -> Vec<Arc<SinkCounters>> {
        self.sinks.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn set_current(&self, current: Vec<Arc<SinkCounters>>) {
        if let Ok(mut sinks) = self.sinks.lock() {
            *sinks = current;
        }
    }
}

/// A running sink: its queue, counters and thread.
pub struct Sink {
    pub config: OutputConfig,
    /// `config`'s alerts_only, read for every record.
    alerts_only: bool,
    counters: Arc<SinkCounters>,
    /// Unbounded as a channel: `dispatch` bounds it by `counters.queue_depth`
    /// (in records, against `queue_capacity`), which only it raises.
    queue: std_mpsc::Sender<Vec<Arc<Record>>>,
    thread: JoinHandle<()>,
}

/// An output whose destination is open (a file created, a socket bound)
/// and whose thread is not started yet: the daemon opens outputs before it
/// attaches, so a bad one is a start-up error, and starts their threads
/// only after dropping capabilities, which threads inherit.
pub struct Opened {
    config: OutputConfig,
    transport: Box<dyn Transport>,
}

impl Opened {
    pub fn start(self) -> Sink {
        start(self.config, self.transport)
    }
}

/// Opens the destination. Errors name the output.
pub fn open(config: &OutputConfig) -> Result<Opened, OpenError> {
    fn boxed(transport: impl Transport + 'static) -> Box<dyn Transport> {
        Box::new(transport)
    }
    let transport = match config {
        OutputConfig::Stdout(_) => Ok(boxed(stdout::Stdout::new())),
        OutputConfig::File(file) => file::FileSink::open(file).map(boxed),
        OutputConfig::Unix(unix) => unix::UnixSink::open(unix).map(boxed),
        OutputConfig::Syslog(syslog) => syslog::Syslog::open(syslog).map(boxed),
    }
    .map_err(|error| OpenError {
        name: config.name(),
        error,
    })?;
    Ok(Opened {
        config: config.clone(),
        transport,
    })
}

#[derive(Debug, thiserror::Error)]
#[error("output {name}: {error}")]
pub struct OpenError {
    pub name: String,
    pub error: io::Error,
}

/// Starts a sink on any transport (tests use in-memory ones).
pub fn start(config: OutputConfig, transport: Box<dyn Transport>) -> Sink {
    let common = config.common();
    let counters = Arc::new(SinkCounters {
        name: config.name(),
        queue_capacity: common.queue as u64,
        subscribers: transport.subscriber_counters(),
        ..Default::default()
    });
    let (queue, rx) = std_mpsc::channel();
    let thread_counters = counters.clone();
    let thread = std::thread::Builder::new()
        .name("link-trace-sink".into())
        .spawn(move || run_sink(common.format, transport, rx, &thread_counters));
    let thread = thread.unwrap_or_else(|e| {
        // No thread: the queue's receiver is gone, so every record
        // handed to this sink is counted as failed.
        let counters = counters.clone();
        std::thread::spawn(move || {
            counters.note_error(&SinkError::Failed(e));
        })
    });
    Sink {
        config,
        alerts_only: common.alerts_only,
        counters,
        queue,
        thread,
    }
}

fn run_sink(
    format: OutputFormat,
    mut transport: Box<dyn Transport>,
    rx: std_mpsc::Receiver<Vec<Arc<Record>>>,
    counters: &SinkCounters,
) {
    let mut batch = Batch::default();
    // Records taken from the queue and not rendered yet.
    let mut taken = Vec::new().into_iter();
    let mut open = true;
    loop {
        if taken.as_slice().is_empty() {
            if !open {
                break;
            }
            // Block for the first records, then take what is queued, up to
            // a batch.
            match rx.recv_timeout(IDLE_TICK) {
                Ok(records) => taken = records.into_iter(),
                Err(RecvTimeoutError::Timeout) => {
                    if !counters.closed.load(Relaxed) {
                        transport.idle();
                    }
                    continue;
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        while batch.bytes.len() < BATCH_BYTES {
            if let Some(record) = taken.next() {
                push(&mut batch, &mut *transport, format, &record, counters);
                continue;
            }
            match rx.try_recv() {
                Ok(records) => taken = records.into_iter(),
                Err(std_mpsc::TryRecvError::Empty) => break,
                Err(std_mpsc::TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        deliver(&mut *transport, &batch, counters);
        batch.clear();
    }
    if !counters.closed.load(Relaxed)
        && let Err(e) = transport.finish()
    {
        counters.note_error(&e);
    }
}

fn push(
    batch: &mut Batch,
    transport: &mut dyn Transport,
    format: OutputFormat,
    record: &Record,
    counters: &SinkCounters,
) {
    if transport.render(format, record, &mut batch.bytes) == Rendered::Truncated {
        counters.truncated.add(1, u64::from(record.is_event()));
    }
    batch.ends.push(batch.bytes.len());
    batch.is_event.push(record.is_event());
}

/// Delivers a batch and counts each record as delivered or failed; only
/// then are they off the queue's depth, so a reader of the counters never
/// misses a record in between.
fn deliver(transport: &mut dyn Transport, batch: &Batch, counters: &SinkCounters) {
    if batch.is_empty() {
        return;
    }
    deliver_and_count(transport, batch, counters);
    counters.queue_depth.fetch_sub(batch.len() as u64, Relaxed);
}

fn deliver_and_count(transport: &mut dyn Transport, batch: &Batch, counters: &SinkCounters) {
    let all = batch.len();
    if counters.closed.load(Relaxed) {
        counters
            .dropped_failed
            .add(all as u64, batch.events_in(0..all));
        return;
    }
    match transport.deliver(batch) {
        Ok(()) => counters.delivered.add(all as u64, batch.events_in(0..all)),
        Err(DeliverError { delivered, error }) => {
            let delivered = delivered.min(all);
            counters
                .delivered
                .add(delivered as u64, batch.events_in(0..delivered));
            counters
                .dropped_failed
                .add((all - delivered) as u64, batch.events_in(delivered..all));
            if matches!(error, SinkError::Closed(_)) {
                counters.closed.store(true, Relaxed);
            }
            counters.note_error(&error);
        }
    }
}

/// The output stage's instructions besides records.
pub enum Control {
    /// Put this set of sinks in service. Sinks of the old set whose
    /// configuration is unchanged stay as they are (a socket's subscribers
    /// stay connected); the others finish their queues and stop.
    Replace {
        keep: Vec<OutputConfig>,
        new: Vec<Sink>,
    },
}

/// What the output stage reports at exit.
#[derive(Debug, Default)]
pub struct OutputSummary {
    pub sinks: Vec<(SinkReport, Option<String>)>,
}

impl OutputSummary {
    /// Some sink's destination went away for good.
    pub fn any_closed(&self) -> bool {
        self.sinks.iter().any(|(report, _)| report.closed)
    }
}

/// Starts the output stage with its first set of sinks. It stops when its
/// input closes, or when every sink's destination is gone for good (then it
/// closes its input, so the stages before it stop and count).
pub fn spawn_stage(
    sinks: Vec<Sink>,
    input: mpsc::Receiver<Records>,
    control: mpsc::Receiver<Control>,
    registry: Arc<Registry>,
) -> io::Result<JoinHandle<OutputSummary>> {
    std::thread::Builder::new()
        .name("link-trace-output".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().build();
            match runtime {
                Ok(runtime) => runtime.block_on(fan_out(sinks, input, control, registry)),
                Err(e) => {
                    eprintln!("link-trace: error: output stage: {e}");
                    OutputSummary::default()
                }
            }
        })
}

async fn fan_out(
    mut sinks: Vec<Sink>,
    mut input: mpsc::Receiver<Records>,
    mut control: mpsc::Receiver<Control>,
    registry: Arc<Registry>,
) -> OutputSummary {
    registry.set_current(sinks.iter().map(|s| s.counters.clone()).collect());
    let mut retired = Vec::new();
    let mut control_open = true;
    loop {
        tokio::select! {
            biased;
            command = control.recv(), if control_open => match command {
                Some(Control::Replace { keep, new }) => {
                    let (kept, gone): (Vec<Sink>, Vec<Sink>) =
                        sinks.into_iter().partition(|s| keep.contains(&s.config));
                    // Closing a retired sink's queue lets it drain and stop
                    // now (a removed socket stops listening), not at exit.
                    retired.extend(gone.into_iter().map(|sink| {
                        drop(sink.queue);
                        (sink.counters, sink.thread)
                    }));
                    sinks = kept;
                    sinks.extend(new);
                    registry.set_current(sinks.iter().map(|s| s.counters.clone()).collect());
                }
                None => control_open = false,
            },
            records = input.recv() => {
                let Some(records) = records else { break };
                dispatch_batch(&sinks, records);
                // Take what else is queued without going back to select.
                while let Ok(records) = input.try_recv() {
                    dispatch_batch(&sinks, records);
                }
                if !sinks.is_empty() && sinks.iter().all(|s| s.counters.closed.load(Relaxed)) {
                    input.close();
                }
            }
        }
    }
    // Sinks drain their queues once their senders are gone.
    let mut summary = OutputSummary::default();
    let stopping = sinks.into_iter().map(|sink| {
        drop(sink.queue);
        (sink.counters, sink.thread)
    });
    for (counters, thread) in stopping.collect::<Vec<_>>().into_iter().chain(retired) {
        let _ = thread.join();
        let error = counters.last_error.lock().ok().and_then(|e| e.clone());
        summary.sinks.push((counters.report(), error));
    }
    summary
}

/// Hands a batch to every sink, in order. A `stats` record's `sinks` are
/// taken when everything before it has been dispatched, so the batch is cut
/// before each one.
fn dispatch_batch(sinks: &[Sink], mut records: Records) {
    while let Some(cut) = records
        .iter()
        .skip(1)
        .position(|r| matches!(r, Record::Stats(_)))
    {
        let rest = records.split_off(cut + 1);
        dispatch(sinks, records);
        records = rest;
    }
    dispatch(sinks, records);
}

/// Hands records (only the first may be a `stats` record) to every sink's
/// queue without waiting; what a queue has no room for is dropped and
/// counted, per record.
fn dispatch(sinks: &[Sink], mut records: Records) {
    if let Some(Record::Stats(stats)) = records.first_mut() {
        // Taken here, in stream order: every record before this one is
        // delivered, queued or counted as dropped.
        stats.sinks = sinks.iter().map(|s| s.counters.report()).collect();
    }
    let records: Vec<Arc<Record>> = records.into_iter().map(Arc::new).collect();
    for sink in sinks {
        let mut wanted: Vec<Arc<Record>> = if sink.alerts_only {
            records
                .iter()
                .filter(|r| matches!(***r, Record::Alert(_)))
                .cloned()
                .collect()
        } else {
            records.clone()
        };
        if wanted.is_empty() {
            continue;
        }
        let counters = &sink.counters;
        // Only this thread raises the depth, so the room can only grow
        // between this read and the send.
        let room = counters
            .queue_capacity
            .saturating_sub(counters.queue_depth.load(Relaxed));
        let room = usize::try_from(room).unwrap_or(usize::MAX);
        if wanted.len() > room {
            let dropped = wanted.split_off(room);
            counters
                .dropped_queue_full
                .add(dropped.len() as u64, events_among(&dropped));
        }
        if wanted.is_empty() {
            continue;
        }
        let queued = wanted.len() as u64;
        counters.queue_depth.fetch_add(queued, Relaxed);
        if let Err(refused) = sink.queue.send(wanted) {
            // The sink's thread is gone: nothing it is handed is delivered.
            counters.queue_depth.fetch_sub(queued, Relaxed);
            counters
                .dropped_failed
                .add(queued, events_among(&refused.0));
        }
    }
}

fn events_among(records: &[Arc<Record>]) -> u64 {
    records.iter().map(|r| u64::from(r.is_event())).sum()
}

#[cfg(test)]
mod tests;
