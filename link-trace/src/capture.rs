//! Reads records from the ring buffer, decodes them and hands them on.

use std::sync::{
    Arc,
    atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};
use link_trace_common::decode::{Decoded, decode};
use tokio::sync::mpsc;

use crate::{
    clock::WallClock,
    event::{ContextEvent, LinkEvent, Record, Undelivered},
    pipeline::{MAX_BATCH, Records},
    stats,
};

/// How far capture has read the ring, for the enrich stage: the
/// CLOCK_BOOTTIME at which the latest drain that emptied the ring began,
/// published once its batches are queued. Every record the kernel
/// submitted before that time is then in the queue or past it.
#[derive(Clone, Default)]
pub struct DrainMark(Arc<AtomicU64>);

impl DrainMark {
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }

    pub(crate) fn publish(&self, started_ns: u64) {
        self.0.fetch_max(started_ns, Ordering::Release);
    }
}

/// Decoding state: the sequence counters and the error count.
pub struct Decoder {
    next_seq: u64,
    /// Context records (unlink, rename) are numbered on their own, so link
    /// events keep consecutive `seq` whether or not context is printed.
    next_context_seq: u64,
    pub clock: WallClock,
    pub decode_errors: u64,
    /// Events decoded but refused by a closed output channel.
    pub undelivered: u64,
    /// The same for context records.
    pub context_undelivered: u64,
    pub drain_mark: DrainMark,
}

impl Decoder {
    pub fn new(clock: WallClock) -> Self {
        Self {
            next_seq: 1,
            next_context_seq: 1,
            clock,
            decode_errors: 0,
            undelivered: 0,
            context_undelivered: 0,
            drain_mark: DrainMark::default(),
        }
    }

    /// Turns one raw record into an event or context record; a bad record is
    /// counted and described on stderr (it is a bug, never expected from the
    /// kernel).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        match decode(bytes) {
            Ok(Decoded::Link(record)) => {
                let event = LinkEvent::from_record(&record, self.next_seq, &self.clock);
                self.next_seq += 1;
                Some(Record::Event(Box::new(event)))
            }
            Ok(Decoded::Context(record)) => {
                let event =
                    LinkEvent::from_context_record(&record, self.next_context_seq, &self.clock);
                self.next_context_seq += 1;
                Some(Record::Context(Box::new(ContextEvent(event))))
            }
            Err(e) => {
                self.decode_errors += 1;
                eprintln!(
                    "link-trace: dropped an undecodable {}-byte record: {e}",
                    bytes.len()
                );
                None
            }
        }
    }

    /// Counts a batch the next stage refused (it has stopped).
    pub fn count_undelivered(&mut self, records: &[Record]) {
        let mut undelivered = Undelivered::default();
        undelivered.count_all(records);
        self.undelivered += undelivered.events;
        self.context_undelivered += undelivered.context;
    }

    pub fn events_decoded(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn context_decoded(&self) -> u64 {
        self.next_context_seq - 1
    }

    pub fn decoded(&self) -> stats::Decoded {
        stats::Decoded {
            events: self.events_decoded(),
            context: self.context_decoded(),
        }
    }
}

/// Moves every record now in the ring to the next stage, in batches of up
/// to `MAX_BATCH` records (one wakeup of the next stage per batch). Waits
/// while the queue is full: the kernel then counts what the ring cannot
/// hold. Publishes the drain's start in the `DrainMark` once all is queued.
pub async fn drain(ring: &mut RingBuf<MapData>, decoder: &mut Decoder, tx: &mpsc::Sender<Records>) {
    let started_ns = crate::clock::boot_now_ns();
    loop {
        let mut batch = Records::new();
        while batch.len() < MAX_BATCH {
            let Some(item) = ring.next() else { break };
            if let Some(record) = decoder.decode(&item) {
                batch.push(record);
            }
        }
        let ring_empty = batch.len() < MAX_BATCH;
        if !batch.is_empty()
            && let Err(refused) = tx.send(batch).await
        {
            decoder.count_undelivered(&refused.0);
        }
        if ring_empty {
            decoder.drain_mark.publish(started_ns);
            return;
        }
    }
}
