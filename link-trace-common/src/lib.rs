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
/// An unlink or rename call captured as context for the rules
/// (`ContextRecordHeader`).
pub const RECORD_CONTEXT: u32 = 2;

/// The syscall an event came from.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyscallId {
    Link = 1,
    Linkat = 2,
    Unlink = 3,
    Unlinkat = 4,
    Rename = 5,
    Renameat = 6,
    Renameat2 = 7,
}

impl SyscallId {
    pub const ALL: [SyscallId; 7] = [
        SyscallId::Link,
        SyscallId::Linkat,
        SyscallId::Unlink,
        SyscallId::Unlinkat,
        SyscallId::Rename,
        SyscallId::Renameat,
        SyscallId::Renameat2,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            SyscallId::Link => "link",
            SyscallId::Linkat => "linkat",
            SyscallId::Unlink => "unlink",
            SyscallId::Unlinkat => "unlinkat",
            SyscallId::Rename => "rename",
            SyscallId::Renameat => "renameat",
            SyscallId::Renameat2 => "renameat2",
        }
    }

    pub fn from_name(name: &str) -> Option<SyscallId> {
        Self::ALL.into_iter().find(|id| id.name() == name)
    }

    /// Captured as a context record (RECORD_CONTEXT), not a link event.
    pub const fn is_context(self) -> bool {
        !matches!(self, SyscallId::Link | SyscallId::Linkat)
    }

    /// Takes a second path, the new name (link and rename do, unlink not).
    pub const fn has_new_path(self) -> bool {
        !matches!(self, SyscallId::Unlink | SyscallId::Unlinkat)
    }
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
    /// The user pointers, re-read at exit to catch arguments that changed.
    pub old_ptr: u64,
    pub new_ptr: u64,
    pub paths: [u8; PATHS_CAP],
}
pub const PENDING_CALL_SIZE: usize = core::mem::size_of::<PendingCall>();
const _: () = assert!(PENDING_CALL_SIZE == LINK_HEADER_SIZE + 16 + PATHS_CAP);
const _: () = assert!(PATHS_CAP >= PATH_KEEP_MAX + PATH_READ_MAX);

/// Variable-length parts of a wire record, packed after `LinkRecordHeader`
/// in this order; `LinkRecordHeader::seg_len` gives each one's length.
pub const SEG_OLD_RAW: usize = 0;
pub const SEG_NEW_RAW: usize = 1;
/// Absolute path of the directory (or, for AT_EMPTY_PATH, the file) a
/// relative argument is resolved against, walked in the kernel at exit.
pub const SEG_OLD_BASE: usize = 2;
pub const SEG_NEW_BASE: usize = 3;
/// The caller's executable.
pub const SEG_EXE: usize = 4;
/// The argument as re-read at exit, present only when it differs from entry.
pub const SEG_OLD_AT_EXIT: usize = 5;
pub const SEG_NEW_AT_EXIT: usize = 6;
pub const SEG_COUNT: usize = 8;

/// `BaseInfo::kind`: what a path argument is relative to.
pub const BASE_NONE: u8 = 0;
/// Relative to the caller's working directory (AT_FDCWD).
pub const BASE_CWD: u8 = 1;
/// Relative to the directory open on the dirfd.
pub const BASE_DIRFD: u8 = 2;
/// Absolute, inside a chroot: the base is the caller's root directory.
pub const BASE_ROOT: u8 = 3;
/// AT_EMPTY_PATH with an empty path: the file open on the dirfd itself.
pub const BASE_FD_FILE: u8 = 4;
/// Absolute, and the caller's root is its mount namespace's root.
pub const BASE_ABSOLUTE: u8 = 5;

/// `BaseInfo::error`: why a base could not be resolved.
pub const RESOLVE_OK: u8 = 0;
pub const RESOLVE_DEPTH_LIMIT: u8 = 1;
pub const RESOLVE_DELETED: u8 = 2;
pub const RESOLVE_BAD_FD: u8 = 3;
pub const RESOLVE_NOT_A_DIRECTORY: u8 = 4;
pub const RESOLVE_TOO_LONG: u8 = 5;
pub const RESOLVE_READ_FAILED: u8 = 6;
pub const RESOLVE_NO_OFFSETS: u8 = 7;
/// The argument itself could not be read, so there is nothing to resolve.
pub const RESOLVE_NO_ARGUMENT: u8 = 8;

/// `BaseInfo::flags`: the new path's base is the old path's (same kind and
/// dirfd), so its segment is empty and the old base serves both.
pub const BASE_SAME_AS_OLD: u8 = 1;

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BaseInfo {
    pub kind: u8,
    pub error: u8,
    pub flags: u8,
    pub _pad: [u8; 5],
}
const _: () = assert!(core::mem::size_of::<BaseInfo>() == 8);

/// `ProcessContext::valid` bits: which fields the kernel could fill.
pub const CTX_PPID: u32 = 1 << 0;
pub const CTX_CREDS: u32 = 1 << 1;
pub const CTX_AUDIT: u32 = 1 << 2;
pub const CTX_MNT_NS: u32 = 1 << 3;
pub const CTX_PID_NS: u32 = 1 << 4;
pub const CTX_EXE: u32 = 1 << 5;

/// The caller, read from its task_struct at syscall exit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcessContext {
    pub ppid: u32,
    pub euid: u32,
    pub egid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    /// Login uid (audit uid); u32::MAX when unset.
    pub auid: u32,
    /// Audit session id; u32::MAX when unset.
    pub sessionid: u32,
    pub valid: u32,
    /// cgroup v2 id (the cgroup directory's inode number).
    pub cgroup_id: u64,
    pub mnt_ns: u32,
    pub pid_ns: u32,
}
const _: () = assert!(core::mem::size_of::<ProcessContext>() == 48);

/// Facts about the file being linked, read from its inode in the kernel at
/// call time (set when `valid` is 1: AT_EMPTY_PATH on a descriptor).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileFacts {
    pub ino: u64,
    /// Kernel dev_t encoding: major << 20 | minor.
    pub dev: u32,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub valid: u32,
}
const _: () = assert!(core::mem::size_of::<FileFacts>() == 32);

/// `LinkRecordHeader::toctou` bits.
pub const OLD_CHANGED_AT_EXIT: u32 = 1 << 0;
pub const NEW_CHANGED_AT_EXIT: u32 = 1 << 1;
/// The exit-time re-read itself failed (e.g. the memory was unmapped).
pub const OLD_REREAD_FAILED: u32 = 1 << 2;
pub const NEW_REREAD_FAILED: u32 = 1 << 3;

/// The wire record: this header, then the segments in SEG_* order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkRecordHeader {
    /// `call.record_len` is the length of the whole wire record.
    pub call: LinkEventHeader,
    pub process: ProcessContext,
    pub file: FileFacts,
    pub old_base: BaseInfo,
    pub new_base: BaseInfo,
    pub seg_len: [u16; SEG_COUNT],
    /// For walked segments (bases, exe): the length the walk produced. A
    /// value above PATH_KEEP_MAX means the path did not fit and the segment
    /// is garbage (the kernel side never compares it, to keep the verifier's
    /// loop analysis cheap; the decoder does).
    pub walked_len: [u16; SEG_COUNT],
    pub toctou: u32,
    pub _pad: u32,
}
pub const RECORD_HEADER_SIZE: usize = core::mem::size_of::<LinkRecordHeader>();
const _: () = assert!(RECORD_HEADER_SIZE == 96 + 48 + 32 + 16 + 16 + 16 + 8);

/// Segments of a context record: the raw paths and their bases, the first
/// four SEG_* indices (a context record has no exe or exit-time re-read).
pub const CONTEXT_SEG_COUNT: usize = 4;

/// The wire record of an unlink or rename call captured as rule context:
/// lean on purpose (no exe, namespaces, file facts or TOCTOU re-read), then
/// the segments SEG_OLD_RAW..=SEG_NEW_BASE. `call.record_type` is
/// RECORD_CONTEXT; for unlink and unlinkat `call.new` is empty and
/// `call.olddirfd`/`call.old` are its dirfd and path.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContextRecordHeader {
    /// `call.record_len` is the length of the whole wire record.
    pub call: LinkEventHeader,
    /// The caller's credentials at exit; meaningful when `creds_valid` is 1.
    pub euid: u32,
    pub egid: u32,
    pub fsuid: u32,
    pub fsgid: u32,
    pub creds_valid: u32,
    pub _pad: u32,
    pub old_base: BaseInfo,
    pub new_base: BaseInfo,
    pub seg_len: [u16; CONTEXT_SEG_COUNT],
    /// As `LinkRecordHeader::walked_len`, for the two bases.
    pub walked_len: [u16; CONTEXT_SEG_COUNT],
}
pub const CONTEXT_HEADER_SIZE: usize = core::mem::size_of::<ContextRecordHeader>();
const _: () = assert!(CONTEXT_HEADER_SIZE == 96 + 24 + 16 + 8 + 8);
const _: () = assert!(SEG_NEW_BASE < CONTEXT_SEG_COUNT && SEG_OLD_BASE < CONTEXT_SEG_COUNT);
/// The kernel builds a context record in an `OutRecord` like a link record
/// and then writes its (shorter) header just before the data, so header and
/// segments are contiguous without a second buffer: the record starts here.
pub const CONTEXT_HEADER_OFFSET: usize = RECORD_HEADER_SIZE - CONTEXT_HEADER_SIZE;
const _: () = assert!(core::mem::offset_of!(OutRecord, data) == RECORD_HEADER_SIZE);

/// Room for the segments: both raw paths (8192), two bases, the executable
/// and two exit-time re-reads (4096 each), plus one read's slack so a
/// bounded-offset copy never runs off the end.
pub const OUT_DATA_CAP: usize = 32768 + 4096;
/// Appends start below this offset (a mask the verifier can follow).
pub const OUT_OFFSET_MASK: usize = 32767;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct OutRecord {
    pub header: LinkRecordHeader,
    pub data: [u8; OUT_DATA_CAP],
}

/// Where the kernel walks a path: built back to front ending at
/// WALK_END, so each component lands at a masked offset below it.
pub const WALK_END: usize = 4096;
pub const WALK_CAP: usize = 8192;
/// Components (and mount crossings) walked before giving up.
pub const WALK_MAX_DEPTH: u32 = 40;
pub const NAME_MAX: usize = 255;

/// `KernelOffsets::optional` bits besides CTX_AUDIT: layouts that allow one
/// read instead of several.
/// task->cgroups->dfl_cgrp->kn->id can be loaded (CONFIG_CGROUPS): the
/// cgroup id without the helper call.
pub const OPT_CGROUP_CHAIN: u32 = 1 << 10;
/// dentry's d_parent is directly followed by d_name (a qstr: hash, len,
/// name): one 24-byte read per step of a path walk instead of three.
pub const OPT_DENTRY_BLOCK: u32 = 1 << 11;
/// mount's mnt_mountpoint directly follows mnt_parent: one read per mount
/// crossing instead of two.
pub const OPT_MOUNT_PAIR: u32 = 1 << 12;
/// struct pid's numbers[] is a flexible array (Linux 6.5+), so the
/// verifier lets typed loads reach the entries past the first.
pub const OPT_PID_FLEX: u32 = 1 << 13;

/// A process's executable path as walked once, cached by tgid and checked
/// against the exe file it was walked from.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ExeCacheEntry {
    /// The `struct file *` of mm->exe_file the path belongs to.
    pub exe_file: u64,
    pub len: u16,
    pub walked: u16,
    pub _pad: u32,
    pub path: [u8; PATH_KEEP_MAX],
}
/// Processes whose executable path is cached.
pub const EXE_CACHE_ENTRIES: u32 = 1024;

/// Byte offsets of the kernel struct members the programs read, taken from
/// the running kernel's BTF at start-up (never hard-coded).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// 1 once filled in; the programs resolve nothing while it is 0.
    pub ready: u32,
    /// CTX_AUDIT when task_struct has loginuid/sessionid (CONFIG_AUDIT).
    pub optional: u32,
    pub task_real_parent: u32,
    pub task_tgid: u32,
    pub task_fs: u32,
    pub task_files: u32,
    pub task_mm: u32,
    pub task_cred: u32,
    pub task_loginuid: u32,
    pub task_sessionid: u32,
    pub task_nsproxy: u32,
    pub task_thread_pid: u32,
    pub cred_euid: u32,
    pub cred_egid: u32,
    pub cred_fsuid: u32,
    pub cred_fsgid: u32,
    pub fs_root: u32,
    pub fs_pwd: u32,
    pub path_mnt: u32,
    pub path_dentry: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub file_f_path: u32,
    pub file_f_inode: u32,
    pub dentry_d_parent: u32,
    pub dentry_d_name_len: u32,
    pub dentry_d_name_name: u32,
    pub dentry_d_hash_pprev: u32,
    pub mount_mnt_parent: u32,
    pub mount_mnt_mountpoint: u32,
    pub mount_mnt: u32,
    pub vfsmount_mnt_root: u32,
    pub inode_i_mode: u32,
    pub inode_i_uid: u32,
    pub inode_i_gid: u32,
    pub inode_i_ino: u32,
    pub inode_i_nlink: u32,
    pub inode_i_sb: u32,
    pub sb_s_dev: u32,
    pub mm_exe_file: u32,
    pub nsproxy_mnt_ns: u32,
    pub mnt_ns_inum: u32,
    pub pid_level: u32,
    pub pid_numbers: u32,
    pub upid_size: u32,
    pub upid_ns: u32,
    pub pid_ns_inum: u32,
    /// Read at syscall entry through the BTF-typed current task, in place
    /// of the pid_tgid and comm helpers.
    pub task_pid: u32,
    pub task_comm: u32,
    /// The default-hierarchy cgroup id chain (OPT_CGROUP_CHAIN).
    pub task_cgroups: u32,
    pub css_set_dfl_cgrp: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
}

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
/// Counters per record kind: link events use `Stat as u32`, context records
/// (unlink, rename) `CONTEXT_STATS + Stat as u32`, so each kind's calls can
/// be balanced against what was delivered and lost on its own.
pub const STAT_COUNT: u32 = 6;
pub const CONTEXT_STATS: u32 = STAT_COUNT;
/// After both kinds' counters: in-flight slots an exiting thread could not
/// free (any error but "none there"). Not a loss: the slot is idle and the
/// LRU reclaims it when it needs room.
pub const INFLIGHT_RELEASE_FAILED: u32 = 2 * STAT_COUNT;
pub const STATS_ENTRIES: u32 = 2 * STAT_COUNT + 1;

/// Kernel-side filter switches, set as a load-time global.
pub const FILTER_TGID: u32 = 1 << 0;
pub const FILTER_UID: u32 = 1 << 1;
pub const FILTER_COMM: u32 = 1 << 2;
/// Capacity of each filter set.
pub const FILTER_MAX_ENTRIES: u32 = 256;

/// Default ring buffer size in bytes (a power of two, page aligned).
pub const DEFAULT_RING_BYTES: u32 = 8 << 20;
/// Slots of the in-flight map: one per live thread that made a traced call
/// (freed when the thread exits). The LRU hash evicts before it is full: it
/// keeps up to min(128, slots / (2 x possible CPUs)) free slots per CPU, so
/// at most about half of them, and 2048 slots hold ~1000 live calling
/// threads without any eviction on any number of CPUs (on 2 CPUs a call
/// held in flight survived 1900 live calling threads, not 2000).
/// Preallocated: 2048 x ~8.3 KiB is ~17 MiB of kernel memory.
pub const MAX_INFLIGHT: u32 = 2048;

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
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::PendingCall {}
}
