//! Kernel-side counters and the `loss` records derived from them.

use aya::maps::{MapData, PerCpuArray};
use link_trace_common::{CONTEXT_STATS, INFLIGHT_RELEASE_FAILED, STATS_ENTRIES, Stat};

use crate::{
    clock::WallClock,
    event::{LossCount, LossReason, LossRecord, RecordKind, SCHEMA_VERSION, StatsRecord},
};

/// Kernel counters that mean an event was lost, with their reported reason.
pub const KERNEL_LOSSES: [(Stat, LossReason); 5] = [
    (Stat::RingFull, LossReason::RingFull),
    (Stat::InflightInsertFailed, LossReason::InflightInsertFailed),
    (Stat::ExitWithoutEnter, LossReason::ExitWithoutEnter),
    (Stat::ScratchUnavailable, LossReason::ScratchUnavailable),
    (Stat::ArgReadFailed, LossReason::ArgReadFailed),
];

/// Link event counters at `Stat as usize`, context records' at
/// `CONTEXT_STATS + Stat as usize`.
pub type KernelCounters = [u64; STATS_ENTRIES as usize];

/// Where a kind's counter of `stat` is.
pub fn index(kind: RecordKind, stat: Stat) -> usize {
    match kind {
        RecordKind::Event => stat as usize,
        RecordKind::Context => (CONTEXT_STATS + stat as u32) as usize,
    }
}

const KINDS: [RecordKind; 2] = [RecordKind::Event, RecordKind::Context];

/// The kernel's counters, per CPU as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelStats {
    pub per_cpu: Vec<KernelCounters>,
}

impl KernelStats {
    pub fn totals(&self) -> KernelCounters {
        let mut totals = [0u64; STATS_ENTRIES as usize];
        for cpu in &self.per_cpu {
            for (total, value) in totals.iter_mut().zip(cpu) {
                *total += value;
            }
        }
        totals
    }
}

pub fn read_kernel(stats: &PerCpuArray<MapData, u64>) -> Result<KernelStats, aya::maps::MapError> {
    let mut per_cpu: Vec<KernelCounters> = Vec::new();
    for index in 0..STATS_ENTRIES {
        for (cpu, value) in stats.get(&index, 0)?.iter().enumerate() {
            if per_cpu.len() <= cpu {
                per_cpu.resize(cpu + 1, [0; STATS_ENTRIES as usize]);
            }
            per_cpu[cpu][index as usize] = *value;
        }
    }
    Ok(KernelStats { per_cpu })
}

/// Records decoded by the daemon, per kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Decoded {
    pub events: u64,
    pub context: u64,
}

/// A `stats` record: running totals, with every loss reason per CPU, for
/// link events and context records apart.
pub fn stats_record(
    kernel: &KernelStats,
    decoded: Decoded,
    decode_errors: u64,
    sinks: Vec<crate::sink::SinkReport>,
    clock: &WallClock,
) -> StatsRecord {
    let totals = kernel.totals();
    let losses = |kind| {
        KERNEL_LOSSES
            .iter()
            .map(|(stat, reason)| {
                let at = index(kind, *stat);
                LossCount {
                    reason: *reason,
                    total: totals[at],
                    per_cpu: kernel.per_cpu.iter().map(|cpu| cpu[at]).collect(),
                }
            })
            .collect()
    };
    StatsRecord {
        schema_version: SCHEMA_VERSION,
        time: clock.rfc3339(crate::clock::boot_now_ns()),
        kernel_submitted: totals[index(RecordKind::Event, Stat::Submitted)],
        events_decoded: decoded.events,
        decode_errors,
        losses: losses(RecordKind::Event),
        context_submitted: totals[index(RecordKind::Context, Stat::Submitted)],
        context_decoded: decoded.context,
        context_losses: losses(RecordKind::Context),
        inflight_release_failed: totals[INFLIGHT_RELEASE_FAILED as usize],
        sinks,
    }
}

/// Remembers what was already reported, so each loss record carries the
/// losses since the previous one and the running total.
#[derive(Debug, Default)]
pub struct LossTracker {
    reported_kernel: KernelCounters,
    reported_decode_errors: u64,
}

impl LossTracker {
    pub fn records(
        &mut self,
        kernel: &KernelStats,
        decode_errors: u64,
        clock: &WallClock,
    ) -> Vec<LossRecord> {
        let kernel = kernel.totals();
        let now = clock.rfc3339(crate::clock::boot_now_ns());
        let mut records = Vec::new();
        let mut report = |reason, record_kind, total: u64, reported: &mut u64| {
            if total > *reported {
                records.push(LossRecord {
                    schema_version: SCHEMA_VERSION,
                    time: now.clone(),
                    reason,
                    record_kind,
                    count: total - *reported,
                    total,
                });
                *reported = total;
            }
        };
        for kind in KINDS {
            for (stat, reason) in KERNEL_LOSSES {
                let at = index(kind, stat);
                report(reason, kind, kernel[at], &mut self.reported_kernel[at]);
            }
        }
        // A record that cannot be decoded has no trustworthy kind: it is
        // counted against the events.
        report(
            LossReason::DecodeError,
            RecordKind::Event,
            decode_errors,
            &mut self.reported_decode_errors,
        );
        records
    }

    /// Every event lost so far (kernel and decoder), for the summary on exit.
    pub fn total_lost(&self) -> u64 {
        self.kernel_lost(RecordKind::Event) + self.reported_decode_errors
    }

    /// Records of one kind the kernel counted as lost so far.
    pub fn kernel_lost(&self, kind: RecordKind) -> u64 {
        KERNEL_LOSSES
            .iter()
            .map(|(stat, _)| self.reported_kernel[index(kind, *stat)])
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_increases_with_running_totals() {
        let clock = WallClock::with_offset(0);
        let mut tracker = LossTracker::default();
        let mut kernel = [0u64; STATS_ENTRIES as usize];
        let per_cpu = |kernel: &KernelCounters| KernelStats {
            per_cpu: vec![*kernel],
        };
        kernel[Stat::Submitted as usize] = 100;
        assert!(tracker.records(&per_cpu(&kernel), 0, &clock).is_empty());

        kernel[Stat::RingFull as usize] = 5;
        let records = tracker.records(&per_cpu(&kernel), 2, &clock);
        assert_eq!(records.len(), 2);
        assert_eq!(
            (records[0].reason, records[0].count, records[0].total),
            (LossReason::RingFull, 5, 5)
        );
        assert_eq!(
            (records[1].reason, records[1].count),
            (LossReason::DecodeError, 2)
        );

        kernel[Stat::RingFull as usize] = 7;
        let records = tracker.records(&per_cpu(&kernel), 2, &clock);
        assert_eq!(records.len(), 1);
        assert_eq!((records[0].count, records[0].total), (2, 7));
        assert_eq!(tracker.total_lost(), 9);
    }

    #[test]
    fn stats_record_sums_cpus_and_keeps_each_one() {
        let mut cpu0 = [0u64; STATS_ENTRIES as usize];
        let mut cpu1 = [0u64; STATS_ENTRIES as usize];
        cpu0[Stat::Submitted as usize] = 10;
        cpu1[Stat::Submitted as usize] = 5;
        cpu1[Stat::RingFull as usize] = 3;
        let stats = KernelStats {
            per_cpu: vec![cpu0, cpu1],
        };
        let decoded = Decoded {
            events: 15,
            context: 0,
        };
        let record = stats_record(&stats, decoded, 0, Vec::new(), &WallClock::with_offset(0));
        assert_eq!(record.kernel_submitted, 15);
        let ring = record
            .losses
            .iter()
            .find(|l| l.reason == LossReason::RingFull)
            .unwrap();
        assert_eq!((ring.total, ring.per_cpu.as_slice()), (3, &[0, 3][..]));
    }

    #[test]
    fn context_records_are_accounted_apart_from_events() {
        let clock = WallClock::with_offset(0);
        let mut kernel = [0u64; STATS_ENTRIES as usize];
        kernel[index(RecordKind::Event, Stat::Submitted)] = 10;
        kernel[index(RecordKind::Context, Stat::Submitted)] = 7;
        kernel[index(RecordKind::Context, Stat::RingFull)] = 4;
        kernel[index(RecordKind::Event, Stat::ExitWithoutEnter)] = 1;
        let stats = KernelStats {
            per_cpu: vec![kernel],
        };
        let mut tracker = LossTracker::default();
        let records = tracker.records(&stats, 0, &clock);
        let summary: Vec<(LossReason, RecordKind, u64)> = records
            .iter()
            .map(|r| (r.reason, r.record_kind, r.count))
            .collect();
        assert_eq!(
            summary,
            [
                (LossReason::ExitWithoutEnter, RecordKind::Event, 1),
                (LossReason::RingFull, RecordKind::Context, 4)
            ]
        );
        assert_eq!(tracker.total_lost(), 1, "events only");
        assert_eq!(tracker.kernel_lost(RecordKind::Context), 4);

        let decoded = Decoded {
            events: 10,
            context: 7,
        };
        let record = stats_record(&stats, decoded, 0, Vec::new(), &clock);
        assert_eq!((record.kernel_submitted, record.events_decoded), (10, 10));
        assert_eq!((record.context_submitted, record.context_decoded), (7, 7));
        let lost = |losses: &[LossCount]| losses.iter().map(|l| l.total).sum::<u64>();
        assert_eq!((lost(&record.losses), lost(&record.context_losses)), (1, 4));
    }

    #[test]
    fn failed_slot_frees_are_reported_and_are_not_losses() {
        let clock = WallClock::with_offset(0);
        let mut cpu0 = [0u64; STATS_ENTRIES as usize];
        let mut cpu1 = [0u64; STATS_ENTRIES as usize];
        cpu0[INFLIGHT_RELEASE_FAILED as usize] = 2;
        cpu1[INFLIGHT_RELEASE_FAILED as usize] = 1;
        let stats = KernelStats {
            per_cpu: vec![cpu0, cpu1],
        };
        let mut tracker = LossTracker::default();
        assert!(tracker.records(&stats, 0, &clock).is_empty());
        let record = stats_record(&stats, Decoded::default(), 0, Vec::new(), &clock);
        assert_eq!(record.inflight_release_failed, 3);
        assert!(record.losses.iter().all(|l| l.total == 0));
    }
}
