//! Kernel-side counters and the `loss` records derived from them.

use aya::maps::{MapData, PerCpuArray};
use link_trace_common::{STAT_COUNT, Stat};

use crate::{
    clock::WallClock,
    event::{LossCount, LossReason, LossRecord, SCHEMA_VERSION, StatsRecord},
};

/// Kernel counters that mean an event was lost, with their reported reason.
pub const KERNEL_LOSSES: [(Stat, LossReason); 5] = [
    (Stat::RingFull, LossReason::RingFull),
    (Stat::InflightInsertFailed, LossReason::InflightInsertFailed),
    (Stat::ExitWithoutEnter, LossReason::ExitWithoutEnter),
    (Stat::ScratchUnavailable, LossReason::ScratchUnavailable),
    (Stat::ArgReadFailed, LossReason::ArgReadFailed),
];

pub type KernelCounters = [u64; STAT_COUNT as usize];

/// The kernel's counters, per CPU as the kernel keeps them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KernelStats {
    pub per_cpu: Vec<KernelCounters>,
}

impl KernelStats {
    pub fn totals(&self) -> KernelCounters {
        let mut totals = [0u64; STAT_COUNT as usize];
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
    for index in 0..STAT_COUNT {
        for (cpu, value) in stats.get(&index, 0)?.iter().enumerate() {
            if per_cpu.len() <= cpu {
                per_cpu.resize(cpu + 1, [0; STAT_COUNT as usize]);
            }
            per_cpu[cpu][index as usize] = *value;
        }
    }
    Ok(KernelStats { per_cpu })
}

/// A `stats` record: running totals, with every loss reason per CPU.
pub fn stats_record(
    kernel: &KernelStats,
    decoded: u64,
    decode_errors: u64,
    sinks: Vec<crate::sink::SinkReport>,
    clock: &WallClock,
) -> StatsRecord {
    let totals = kernel.totals();
    let losses = KERNEL_LOSSES
        .iter()
        .map(|(stat, reason)| LossCount {
            reason: *reason,
            total: totals[*stat as usize],
            per_cpu: kernel
                .per_cpu
                .iter()
                .map(|cpu| cpu[*stat as usize])
                .collect(),
        })
        .collect();
    StatsRecord {
        schema_version: SCHEMA_VERSION,
        time: clock.rfc3339(crate::clock::boot_now_ns()),
        kernel_submitted: totals[Stat::Submitted as usize],
        events_decoded: decoded,
        decode_errors,
        losses,
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
        let mut report = |reason, total: u64, reported: &mut u64| {
            if total > *reported {
                records.push(LossRecord {
                    schema_version: SCHEMA_VERSION,
                    time: now.clone(),
                    reason,
                    count: total - *reported,
                    total,
                });
                *reported = total;
            }
        };
        for (stat, reason) in KERNEL_LOSSES {
            let index = stat as usize;
            report(reason, kernel[index], &mut self.reported_kernel[index]);
        }
        report(
            LossReason::DecodeError,
            decode_errors,
            &mut self.reported_decode_errors,
        );
        records
    }

    /// Every event lost so far, for the summary on exit.
    pub fn total_lost(&self) -> u64 {
        KERNEL_LOSSES
            .iter()
            .map(|(stat, _)| self.reported_kernel[*stat as usize])
            .sum::<u64>()
            + self.reported_decode_errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_only_increases_with_running_totals() {
        let clock = WallClock::with_offset(0);
        let mut tracker = LossTracker::default();
        let mut kernel = [0u64; STAT_COUNT as usize];
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
        let mut cpu0 = [0u64; STAT_COUNT as usize];
        let mut cpu1 = [0u64; STAT_COUNT as usize];
        cpu0[Stat::Submitted as usize] = 10;
        cpu1[Stat::Submitted as usize] = 5;
        cpu1[Stat::RingFull as usize] = 3;
        let stats = KernelStats {
            per_cpu: vec![cpu0, cpu1],
        };
        let record = stats_record(&stats, 15, 0, Vec::new(), &WallClock::with_offset(0));
        assert_eq!(record.kernel_submitted, 15);
        let ring = record
            .losses
            .iter()
            .find(|l| l.reason == LossReason::RingFull)
            .unwrap();
        assert_eq!((ring.total, ring.per_cpu.as_slice()), (3, &[0, 3][..]));
    }
}
