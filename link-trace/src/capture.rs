//! Reads records from the ring buffer, decodes them and hands them on.

use aya::maps::{MapData, RingBuf};
use link_trace_common::decode::decode_record;
use tokio::sync::mpsc;

use crate::{
    clock::WallClock,
    event::{LinkEvent, Record},
};

/// Decoding state: the sequence counter and the error count.
pub struct Decoder {
    next_seq: u64,
    pub clock: WallClock,
    pub decode_errors: u64,
    /// Events decoded but refused by a closed output channel.
    pub undelivered: u64,
}

impl Decoder {
    pub fn new(clock: WallClock) -> Self {
        Self {
            next_seq: 1,
            clock,
            decode_errors: 0,
            undelivered: 0,
        }
    }

    /// Turns one raw record into an event; a bad record is counted and
    /// described on stderr (it is a bug, never expected from the kernel).
    pub fn decode(&mut self, bytes: &[u8]) -> Option<Record> {
        match decode_record(bytes) {
            Ok(record) => {
                let event = LinkEvent::from_record(&record, self.next_seq, &self.clock);
                self.next_seq += 1;
                Some(Record::Event(Box::new(event)))
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

    pub fn events_decoded(&self) -> u64 {
        self.next_seq - 1
    }
}

/// Moves every record now in the ring to the output channel. Waits while the
/// channel is full: the kernel then counts what the ring cannot hold.
pub async fn drain(ring: &mut RingBuf<MapData>, decoder: &mut Decoder, tx: &mpsc::Sender<Record>) {
    loop {
        let record = {
            let Some(item) = ring.next() else { return };
            decoder.decode(&item)
        };
        if let Some(record) = record
            && tx.send(record).await.is_err()
        {
            decoder.undelivered += 1;
        }
    }
}
