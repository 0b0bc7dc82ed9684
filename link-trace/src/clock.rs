//! Turns the kernel's CLOCK_BOOTTIME stamps into wall-clock time.

use chrono::{DateTime, SecondsFormat, Utc};
use nix::time::{ClockId, clock_gettime};

/// Offset between CLOCK_REALTIME and CLOCK_BOOTTIME, sampled when built;
/// re-sample it now and then to follow wall-clock adjustments.
#[derive(Debug, Clone, Copy)]
pub struct WallClock {
    realtime_minus_boot_ns: i128,
}

fn nanos(clock: ClockId) -> i128 {
    clock_gettime(clock)
        .map(|ts| ts.tv_sec() as i128 * 1_000_000_000 + ts.tv_nsec() as i128)
        .unwrap_or(0)
}

/// CLOCK_BOOTTIME now, in the kernel's event time base.
pub fn boot_now_ns() -> u64 {
    nanos(ClockId::CLOCK_BOOTTIME) as u64
}

impl WallClock {
    pub fn sample() -> Self {
        let boot_before = nanos(ClockId::CLOCK_BOOTTIME);
        let real = nanos(ClockId::CLOCK_REALTIME);
        let boot_after = nanos(ClockId::CLOCK_BOOTTIME);
        Self {
            realtime_minus_boot_ns: real - (boot_before + boot_after) / 2,
        }
    }

    /// A fixed offset, for tests.
    #[cfg(test)]
    pub fn with_offset(realtime_minus_boot_ns: i128) -> Self {
        Self {
            realtime_minus_boot_ns,
        }
    }

    /// RFC 3339 UTC with nanoseconds, e.g. 2026-11-21T21:50:16.123456789Z.
    /// The date-and-second part is formatted once per second (per thread):
    /// events arrive in bursts within the same second.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        thread_local! {
            static SECOND: std::cell::RefCell<(i64, String)> = const { std::cell::RefCell::new((i64::MIN, String::new())) };
        }
        let wall = boot_ns as i128 + self.realtime_minus_boot_ns;
        // i64 division when the time fits (until 2262): i128 division is a
        // library call.
        let (secs, nsec) = match i64::try_from(wall) {
            Ok(wall) => (
                wall.div_euclid(1_000_000_000),
                wall.rem_euclid(1_000_000_000) as u32,
            ),
            Err(_) => (
                wall.div_euclid(1_000_000_000) as i64,
                wall.rem_euclid(1_000_000_000) as u32,
            ),
        };
        SECOND.with_borrow_mut(|(cached_secs, prefix)| {
            if *cached_secs != secs {
                let full = DateTime::<Utc>::from_timestamp(secs, 0)
                    .unwrap_or_default()
                    .to_rfc3339_opts(SecondsFormat::Secs, true);
                *prefix = full.trim_end_matches('Z').to_owned();
                *cached_secs = secs;
            }
            // ".NNNNNNNNNZ" by hand: the formatter's {:09} is several times
            // slower, and this runs once per event.
            let mut fraction = *b".000000000Z";
            let mut rest = nsec;
            for digit in fraction[1..10].iter_mut().rev() {
                *digit = b'0' + (rest % 10) as u8;
                rest /= 10;
            }
            let mut out = String::with_capacity(prefix.len() + fraction.len());
            out.push_str(prefix);
            out.push_str(std::str::from_utf8(&fraction).unwrap_or_default());
            out
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_with_nanoseconds() {
        let clock = WallClock::with_offset(1_700_000_000_000_000_000);
        assert_eq!(clock.rfc3339(5), "2023-11-14T22:13:20.000000005Z");
    }

    #[test]
    fn matches_chrono_for_any_time() {
        let mut rng = fastrand::Rng::with_seed(17);
        for _ in 0..20_000 {
            // Offsets before and after the epoch, beyond i64 nanoseconds too.
            let offset = rng.i128(-(1 << 62)..(1 << 64));
            let boot_ns = rng.u64(..1 << 62);
            let wall = boot_ns as i128 + offset;
            let secs = wall.div_euclid(1_000_000_000) as i64;
            let nsec = wall.rem_euclid(1_000_000_000) as u32;
            let expected = DateTime::<Utc>::from_timestamp(secs, nsec)
                .unwrap()
                .to_rfc3339_opts(SecondsFormat::Nanos, true);
            let clock = WallClock::with_offset(offset);
            assert_eq!(clock.rfc3339(boot_ns), expected, "{offset} {boot_ns}");
        }
    }

    #[test]
    fn sampled_clock_is_near_now() {
        let clock = WallClock::sample();
        let boot = nanos(ClockId::CLOCK_BOOTTIME) as u64;
        let stamp = DateTime::parse_from_rfc3339(&clock.rfc3339(boot)).unwrap();
        let skew = (Utc::now() - stamp.with_timezone(&Utc))
            .num_milliseconds()
            .abs();
        assert!(skew < 1000, "wall clock off by {skew} ms");
    }
}
