//! The queues between the daemon's stages (capture → enrich → detect →
//! output). Records travel in batches: the kernel already wakes the daemon
//! once per 5 ms or 64 KiB of records, and handing each stage the whole
//! drain at once means each thread wakes (a futex wake and a context switch,
//! several µs on this kind of machine) once per batch instead of once per
//! record.

use tokio::sync::mpsc;

use crate::event::{Record, Undelivered};

/// Records handed from one stage to the next in one message, in stream order.
pub type Records = Vec<Record>;

/// Most records a stage puts in one batch. The detect stage may add the
/// alerts of its last event on top. 256 rather than 64: under a pair flood
/// the downstream threads then woke about 3 times less often (voluntary
/// switches per 100 K pairs: detect ~2.5 K -> ~0.9 K, sink ~4 K -> ~1.4 K),
/// and the kernel ring absorbs the bursts.
pub const MAX_BATCH: usize = 256;

/// Batches queued between two stages: at most 512 records (plus alerts).
/// With the batch each stage has in hand, a flood backed up through every
/// stage stays within the memory budget (an event is ~1-2 KiB in memory):
/// 4 queues of 4 batches of 256 took the flood's VmHWM to 33.5 MiB once,
/// over the 32 MiB target. The kernel ring (8 MiB) is the real buffer.
pub const STAGE_QUEUE_BATCHES: usize = 2;

/// A bounded queue between two stages.
pub fn channel() -> (mpsc::Sender<Records>, mpsc::Receiver<Records>) {
    mpsc::channel(STAGE_QUEUE_BATCHES)
}

impl Undelivered {
    /// Counts every event and context record of a batch that was not
    /// handed on.
    pub fn count_all(&mut self, records: &[Record]) {
        for record in records {
            self.count(record);
        }
    }
}

/// Closes a stage's input queue and counts the events and context records
/// still in it: its output is gone, so they will never be delivered.
pub fn close_and_count(rx: &mut mpsc::Receiver<Records>) -> Undelivered {
    rx.close();
    let mut undelivered = Undelivered::default();
    while let Ok(records) = rx.try_recv() {
        undelivered.count_all(&records);
    }
    undelivered
}
