//! Wire types shared by the eBPF programs and the userspace daemon.
//!
//! Every type is `#[repr(C)]`, made of integers and byte arrays with explicit
//! padding, so both sides agree on the layout byte for byte. Sizes are pinned
//! by `const` asserts. The userspace decoder lives behind the `user` feature.
#![no_std]

#[cfg(feature = "user")]
pub mod decode;

/// Linux PATH_MAX: the largest path the kernel accepts, counting its NUL.
pub const PATH_MAX: usize = 4096;
/// Bytes asked of `bpf_probe_read_user_str` per path: one more than
/// PATH_MAX, so a string of PATH_MAX or more bytes (which the kernel refuses
/// with ENAMETOOLONG) can be told apart from a 4095-byte path that fits.
pub const PATH_READ_MAX: usize = PATH_MAX + 1;
/// At most this many path bytes are kept per argument.
pub const PATH_KEEP_MAX: usize = PATH_MAX;
/// Room for both paths packed back to back: the new path is read at the
/// offset where the old one ended, so the buffer must hold PATH_KEEP_MAX
/// plus a full PATH_READ_MAX read; rounded up to 8 bytes.
pub const PATHS_CAP: usize = (PATH_KEEP_MAX + PATH_READ_MAX + 7) & !7;
pub const TASK_COMM_LEN: usize = 16;

/// Fixed numeric record type ids; the first field of every record.
pub const RECORD_LINK: u32 = 1;

/// The syscall an event came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallId {
    Link = 1,
    Linkat = 2,
}

/// `PathArg::flags` bits.
pub const PATH_TRUNCATED: u16 = 1 << 0;
pub const PATH_READ_FAILED: u16 = 1 << 1;

/// What became of one user path argument.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PathArg {
    /// Bytes kept in `PendingCall::paths`, without the terminating NUL.
    pub len: u16,
    /// PATH_TRUNCATED, PATH_READ_FAILED.
    pub flags: u16,
    /// The negative errno returned by the read when PATH_READ_FAILED is set.
    pub read_error: i32,
}
const _: () = assert!(core::mem::size_of::<PathArg>() == 8);

/// Fixed part of a link record. The path bytes follow it on the wire:
/// `old.len` bytes of the old path, then `new.len` bytes of the new path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkEventHeader {
    /// RECORD_LINK.
    pub record_type: u32,
    /// Length of the whole record: header plus both paths.
    pub record_len: u32,
    /// CLOCK_BOOTTIME at syscall entry and exit.
    pub enter_boot_ns: u64,
    pub exit_boot_ns: u64,
    /// The syscall's return value: 0, or a negative errno.
    pub ret: i64,
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// A `SyscallId`.
    pub syscall: u32,
    /// linkat's flags argument as the kernel sees it (an int); 0 for link.
    pub flags: u32,
    pub olddirfd: i32,
    pub newdirfd: i32,
    pub old: PathArg,
    pub new: PathArg,
    pub comm: [u8; TASK_COMM_LEN],
}
pub const LINK_HEADER_SIZE: usize = core::mem::size_of::<LinkEventHeader>();
const _: () = assert!(LINK_HEADER_SIZE == 96);

/// One in-flight call as the kernel keeps it between entry and exit. The
/// record sent to userspace is the first `header.record_len` bytes of it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingCall {
    pub header: LinkEventHeader,
    pub paths: [u8; PATHS_CAP],
}
pub const PENDING_CALL_SIZE: usize = core::mem::size_of::<PendingCall>();
const _: () = assert!(PENDING_CALL_SIZE == LINK_HEADER_SIZE + PATHS_CAP);
const _: () = assert!(PATHS_CAP >= PATH_KEEP_MAX + PATH_READ_MAX);

/// AT_FDCWD, the dirfd that link(2) implies.
pub const AT_FDCWD: i32 = -100;

/// Indices of the per-CPU counters in the `STATS` map.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Records handed to the ring buffer.
    Submitted = 0,
    /// Records lost because the ring buffer was full.
    RingFull = 1,
    /// Calls lost because the in-flight map refused the entry.
    InflightInsertFailed = 2,
    /// Exits of traced callers whose entry was not found (evicted from the
    /// LRU map, or the call began before the tracer attached).
    ExitWithoutEnter = 3,
    /// Calls lost because the per-CPU scratch buffer was unavailable.
    ScratchUnavailable = 4,
    /// Calls lost because a tracepoint argument could not be read.
    ArgReadFailed = 5,
}
pub const STAT_COUNT: u32 = 6;

/// Kernel-side filter switches, set as a load-time global.
pub const FILTER_TGID: u32 = 1 << 0;
pub const FILTER_UID: u32 = 1 << 1;
pub const FILTER_COMM: u32 = 1 << 2;
/// Capacity of each filter set.
pub const FILTER_MAX_ENTRIES: u32 = 256;

/// Default ring buffer size in bytes (a power of two, page aligned).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// Calls that can be in flight at once before the LRU map evicts.
pub const MAX_INFLIGHT: u32 = 16384;

/// The kernel wakes the daemon once this many bytes wait in the ring...
pub const WAKEUP_BYTES: u64 = 64 * 1024;
/// ...or when it has not woken it for this long (a lone event goes at once).
pub const WAKEUP_AFTER_NS: u64 = 5_000_000;
/// The daemon drains the ring at least this often, which bounds the delay of
/// an event that neither condition above woke it for.
pub const DRAIN_INTERVAL_MS: u64 = 25;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, no padding holes.
    unsafe impl aya::Pod for super::PathArg {}
    unsafe impl aya::Pod for super::LinkEventHeader {}
}
