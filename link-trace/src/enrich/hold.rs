//! The verdict on an `inode_mismatch`: explained, or not.
//!
//! The daemon stats the link's source some time after the call. When the
//! caller's own process renamed another file onto the source in between
//! (`link(f, f.bak)` then `rename(f.new, f)`: dpkg, editors, `install`
//! scripts), the stat sees the new file and the new name the old one: a
//! mismatch with nothing behind it but that rename. The rename's context
//! record comes later in the stream than the link event, sometimes only
//! after the stat, so the event that shows a mismatch is held here, with
//! every record behind it (the output keeps the stream order), until:
//!
//! * a successful rename by the same process (tgid) onto the link's
//!   resolved source path, entered after the link's exit and before the
//!   stat, is seen: the event gets `inode_mismatch_explained_by`;
//! * or a record that left the kernel more than `MARGIN_NS` after the stat
//!   is seen: a rename that could have explained it would have been
//!   submitted before that one (the ring keeps submission order; the margin
//!   covers a rename preempted between its effect and its record);
//! * or `DEADLINE` passes and capture has since emptied the ring in a drain
//!   that began more than `MARGIN_NS` after the stat: on a quiet stream the
//!   rename's record may wait in the ring for the daemon's periodic drain
//!   (`DRAIN_INTERVAL_MS`), and while the daemon is stopped (SIGSTOP) or
//!   detaching its programs at exit, no drain runs at all: the clock alone
//!   let such a record come too late, and the rule fired on an explained
//!   mismatch;
//! * or more than `MAX_HELD` records pile up behind it (a flood), or the
//!   input closes.
//!
//! The second and third end a wait early while the link's own thread is
//! inside a rename (its in-flight slot in the kernel says so, see
//! `RenameInFlight`): a rename preempted between its effect and its record
//! can come after any margin (100 ms seen under load), so the event waits
//! for it, up to `MAX_RENAME_WAIT`. A rename by another thread of the
//! process is not seen this way; it still has the margins.
//!
//! Only the first gives a verdict of "explained"; the others leave the
//! mismatch unexplained, so the rule still fires. A rename by any other
//! process never explains one: that is the swap the rule exists for.
//!
//! Events without a mismatch cost one branch here, and pass at once
//! unless an earlier event is held.

use std::{
    collections::VecDeque,
    time::{Duration, Instant},
};

use link_trace_common::DRAIN_INTERVAL_MS;

use crate::{
    event::{LinkEvent, MismatchExplanation, Record},
    pipeline::Records,
};

/// How far past the stat a record's exit must be to close the wait.
pub const MARGIN_NS: u64 = 5_000_000;

/// When a held event's wait may end without a verdict: one periodic drain
/// of the ring plus room for a busy machine, if capture has drained since.
pub const DEADLINE: Duration = Duration::from_millis(DRAIN_INTERVAL_MS + 15);

/// How often a due event looks again whether capture has drained past it.
pub const RECHECK: Duration = Duration::from_millis(5);

/// Records held behind a waiting event before it goes on unexplained: two
/// stage queues' worth (`pipeline::STAGE_QUEUE_BATCHES` of `MAX_BATCH`), so
/// a flood cannot grow memory much past what the pipeline already budgets.
pub const MAX_HELD: usize = 1024;

/// How long a waiting event may wait, in all, for its thread's rename in
/// flight: it holds every record behind it.
pub const MAX_RENAME_WAIT: Duration = Duration::from_secs(1);

/// Whether a thread is inside a rename right now: entered, not yet exited.
pub trait RenameInFlight: Send {
    fn renaming(&self, tgid: u32, tid: u32) -> bool;
}

/// A held event that waits for its verdict.
struct Waiting {
    /// Its position in the stream of held records (see `Hold::front_pos`).
    pos: u64,
    stat_ns: u64,
    deadline: Instant,
    /// Until when its thread's rename in flight may keep it waiting.
    rename_wait_until: Instant,
    /// When the in-flight slot may be read again (a read copies ~8 KiB).
    next_rename_look: Instant,
}

/// The records held back, in stream order, and the events among them that
/// wait for a verdict, oldest first.
#[derive(Default)]
pub struct Hold {
    held: VecDeque<Record>,
    /// Stream position of `held[0]`: records ever pushed minus those held.
    front_pos: u64,
    waiting: VecDeque<Waiting>,
    renames: Option<Box<dyn RenameInFlight>>,
}

/// Whether `w`'s link came from a thread that is inside a rename now (and
/// may still wait for it). Reads the slot at most once per `RECHECK`: a
/// thread seen renaming counts as renaming until then.
fn thread_renaming(
    renames: Option<&dyn RenameInFlight>,
    held: &VecDeque<Record>,
    front_pos: u64,
    w: &mut Waiting,
    now: Instant,
) -> bool {
    let Some(renames) = renames else {
        return false;
    };
    if now >= w.rename_wait_until {
        return false;
    }
    if now < w.next_rename_look {
        return true;
    }
    let Some(Record::Event(link)) = held.get((w.pos - front_pos) as usize) else {
        return false;
    };
    let renaming = renames.renaming(link.pid, link.tid);
    if renaming {
        w.next_rename_look = now + RECHECK;
    }
    renaming
}

/// The event that waits for a verdict, if `record` is one.
fn needs_verdict(record: &Record) -> Option<u64> {
    match record {
        Record::Event(e) if e.inode_mismatch_explained_by.is_none() => e.source_stat_ns,
        _ => None,
    }
}

/// When the record left the kernel; None for the daemon's own records.
fn kernel_exit_ns(record: &Record) -> Option<u64> {
    match record {
        Record::Event(e) => Some(e.exit_ns()),
        Record::Context(c) => Some(c.0.exit_ns()),
        _ => None,
    }
}

/// Whether `rename` explains the mismatch `link`'s stat at `stat_ns` saw.
fn explains(link: &LinkEvent, stat_ns: u64, rename: &LinkEvent) -> bool {
    matches!(rename.syscall, "rename" | "renameat" | "renameat2")
        && rename.success
        && rename.pid == link.pid
        && link.oldpath.resolved.is_some()
        && rename.newpath.resolved == link.oldpath.resolved
        && rename.boot_ns >= link.exit_ns()
        && rename.boot_ns <= stat_ns
}

impl Hold {
    /// A hold that also waits for the link's thread's rename in flight.
    pub fn with_renames(renames: Option<Box<dyn RenameInFlight>>) -> Self {
        Self {
            renames,
            ..Self::default()
        }
    }

    /// When the oldest waiting event goes on unexplained; None when nothing
    /// waits.
    pub fn deadline(&self) -> Option<Instant> {
        self.waiting.front().map(|w| w.deadline)
    }

    /// Takes an enriched batch; returns what may go on now, in order.
    pub fn push_batch(&mut self, mut records: Records, now: Instant) -> Records {
        if self.held.is_empty() {
            // The common path: nothing held, and no mismatch in the batch.
            let Some(first) = records.iter().position(|r| needs_verdict(r).is_some()) else {
                return records;
            };
            let rest = records.split_off(first);
            for record in rest {
                self.push(record, now);
            }
            records.extend(self.release());
            return records;
        }
        for record in records {
            self.push(record, now);
        }
        self.release()
    }

    fn push(&mut self, record: Record, now: Instant) {
        if let Record::Context(rename) = &record {
            self.try_explain(&rename.0);
        }
        if let Some(exit_ns) = kernel_exit_ns(&record) {
            // Stat times grow along the stream: the decided ones are the oldest.
            while let Some(w) = self.waiting.front_mut()
                && exit_ns > w.stat_ns.saturating_add(MARGIN_NS)
            {
                if thread_renaming(self.renames.as_deref(), &self.held, self.front_pos, w, now) {
                    break;
                }
                self.waiting.pop_front();
            }
        }
        if let Some(stat_ns) = needs_verdict(&record) {
            self.waiting.push_back(Waiting {
                pos: self.front_pos + self.held.len() as u64,
                stat_ns,
                deadline: now + DEADLINE,
                rename_wait_until: now + MAX_RENAME_WAIT,
                next_rename_look: now,
            });
        }
        self.held.push_back(record);
        if self.held.len() > MAX_HELD {
            self.waiting.pop_front();
        }
    }

    /// Gives the first waiting event that `rename` explains its
    /// explanation, and ends its wait.
    fn try_explain(&mut self, rename: &LinkEvent) {
        let front_pos = self.front_pos;
        let Some(index) = self.waiting.iter().position(|w| {
            let held = self.held.get((w.pos - front_pos) as usize);
            matches!(held, Some(Record::Event(link)) if explains(link, w.stat_ns, rename))
        }) else {
            return;
        };
        let Some(w) = self.waiting.remove(index) else {
            return;
        };
        if let Some(Record::Event(link)) = self.held.get_mut((w.pos - front_pos) as usize) {
            link.inode_mismatch_explained_by = Some(Box::new(MismatchExplanation::of(rename)));
        }
    }

    /// The held records before the oldest waiting event.
    fn release(&mut self) -> Records {
        let until = self
            .waiting
            .front()
            .map_or(self.held.len(), |w| (w.pos - self.front_pos) as usize);
        self.front_pos += until as u64;
        self.held.drain(..until).collect()
    }

    /// Ends the wait of every event whose deadline has passed, provided
    /// capture emptied the ring in a drain begun more than `MARGIN_NS`
    /// after its stat (`drained_ns`, see `capture::DrainMark`): until then
    /// the rename may still be in the ring, and the event looks again after
    /// `RECHECK`. Returns what may go on now.
    pub fn expire(&mut self, now: Instant, drained_ns: u64) -> Records {
        if self.held.is_empty() {
            return Records::new();
        }
        while let Some(w) = self.waiting.front_mut()
            && w.deadline <= now
        {
            // Stat times grow along the queue: if the front is not drained
            // past, none behind it is.
            if drained_ns <= w.stat_ns.saturating_add(MARGIN_NS)
                || thread_renaming(self.renames.as_deref(), &self.held, self.front_pos, w, now)
            {
                w.deadline = now + RECHECK;
                break;
            }
            self.waiting.pop_front();
        }
        self.release()
    }

    /// Everything held, in order; the waiting events go on unexplained.
    pub fn flush(&mut self) -> Records {
        self.waiting.clear();
        self.release()
    }
}

#[cfg(test)]
mod tests;
