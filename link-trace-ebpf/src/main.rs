//! Kernel side of link-trace: the syscalls:sys_enter/exit_link(at)
//! tracepoints. Entry reads the arguments (both paths in full) into an
//! in-flight entry keyed by thread; exit adds the result and sends the record,
//! sized to the paths actually read, to the ring buffer.
//!
//! unlink, unlinkat, rename, renameat and renameat2 go through the same entry
//! code and in-flight slot, and a lean exit of their own (`context_exit`)
//! that sends a RECORD_CONTEXT record: paths, bases and credentials only.
#![no_std]
#![no_main]

mod context;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        generated::{
            bpf_get_smp_processor_id, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
            bpf_probe_read_user_str,
        },
    },
    macros::{map, tracepoint},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
};
use aya_log_ebpf::warn;
use link_trace_common::{
    AT_FDCWD, CONTEXT_HEADER_OFFSET, CONTEXT_HEADER_SIZE, CONTEXT_SEG_COUNT, CONTEXT_STATS,
    CTX_CREDS, ContextRecordHeader, DEFAULT_RING_BYTES, EXE_CACHE_ENTRIES, ExeCacheEntry,
    FILTER_COMM, FILTER_MAX_ENTRIES, FILTER_TGID, FILTER_UID, INFLIGHT_RELEASE_FAILED,
    MAX_INFLIGHT, OutRecord, PATH_KEEP_MAX, PATH_READ_FAILED, PATH_READ_MAX, PATH_TRUNCATED,
    PathArg, PendingCall, RECORD_CONTEXT, RECORD_HEADER_SIZE, RECORD_LINK, RESOLVE_NO_OFFSETS,
    SEG_NEW_RAW, SEG_OLD_RAW, STATS_ENTRIES, Stat, SyscallId, TASK_COMM_LEN, WAKEUP_AFTER_NS,
    WAKEUP_BYTES, WALK_CAP,
};

const OUT_RECORD_SIZE: usize = core::mem::size_of::<OutRecord>();

/// The tracer's own tgid: its activity is never reported.
#[unsafe(no_mangle)]
static TRACER_TGID: Global<u32> = Global::new(0);
/// The syscall numbers of link and linkat (-1 where there is none), so an
/// exit without its entry is counted against the right record kind.
#[unsafe(no_mangle)]
static LINK_NR: Global<i32> = Global::new(-1);
#[unsafe(no_mangle)]
static LINKAT_NR: Global<i32> = Global::new(-1);
/// FILTER_* bits: which of the filter sets below are in force.
#[unsafe(no_mangle)]
static FILTER_FLAGS: Global<u32> = Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
/// One slot per live thread that made a traced call, freed when the thread
/// exits (`task_exit`), so it holds live threads only. Still an LRU: should
/// more live threads call than it has slots, the idle slots of threads that
/// called long ago make room, rather than every newcomer being refused.
#[map]
static INFLIGHT: LruHashMap<u64, PendingCall> = LruHashMap::with_max_entries(MAX_INFLIGHT, 0);
/// An idle PendingCall (all zero) that new INFLIGHT slots are copied from:
/// a PendingCall is far too large for the 512-byte BPF stack.
#[map]
static SCRATCH: PerCpuArray<PendingCall> = PerCpuArray::with_max_entries(1, 0);
#[map]
static LAST_WAKEUP_NS: Array<u64> = Array::with_max_entries(1, 0);
/// Where exit assembles the wire record, one slot per CPU (indexed by CPU
/// id: the record is larger than a per-CPU map value may be).
#[map]
static OUT: Array<OutRecord> = Array::with_max_entries(1, 0);
/// Per-CPU scratch for path walks and exit-time re-reads.
#[map]
pub(crate) static WALK: PerCpuArray<[u8; WALK_CAP]> = PerCpuArray::with_max_entries(1, 0);
/// Executable paths by tgid (see context::add_exe).
#[map]
pub(crate) static EXE_CACHE: LruHashMap<u32, ExeCacheEntry> =
    LruHashMap::with_max_entries(EXE_CACHE_ENTRIES, 0);
#[map]
pub(crate) static EXE_SCRATCH: PerCpuArray<ExeCacheEntry> = PerCpuArray::with_max_entries(1, 0);
/// Where typed pointers are stored and read back as plain numbers (see
/// context::untyped).
#[map]
pub(crate) static UNTYPED: PerCpuArray<[u64; 2]> = PerCpuArray::with_max_entries(1, 0);
/// A (mnt, dentry) root known to walk to "/" (see context::walk_root).
#[map]
pub(crate) static SLASH_ROOT: Array<[u64; 2]> = Array::with_max_entries(1, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STATS_ENTRIES, 0);
#[map]
static FILTER_TGIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);
#[map]
static FILTER_UIDS: HashMap<u32, u8> = HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);
#[map]
static FILTER_COMMS: HashMap<[u8; TASK_COMM_LEN], u8> =
    HashMap::with_max_entries(FILTER_MAX_ENTRIES, 0);

// Offsets in the syscalls:* tracepoint records (see each event's `format`
// file in tracefs): common header, __syscall_nr, then one 8-byte slot per
// argument; the exit record holds `long ret` at 16.
const SYSCALL_NR: usize = 8;
const ARG0: usize = 16;
const ARG_SLOT: usize = 8;
const EXIT_RET: usize = 16;

#[tracepoint]
pub fn link_enter(ctx: TracePointContext) -> u32 {
    if let Err(stat) = try_enter(&ctx, SyscallId::Link) {
        count(stat);
    }
    0
}

#[tracepoint]
pub fn linkat_enter(ctx: TracePointContext) -> u32 {
    if let Err(stat) = try_enter(&ctx, SyscallId::Linkat) {
        count(stat);
    }
    0
}

// Context syscalls: one small entry program each (the syscall is a
// constant, so each keeps only its own argument reads), attached only when a
// rule in force or --context-events asks for them.
macro_rules! context_enter {
    ($name:ident, $syscall:expr) => {
        #[tracepoint]
        pub fn $name(ctx: TracePointContext) -> u32 {
            if let Err(stat) = try_enter(&ctx, $syscall) {
                count_context(stat);
            }
            0
        }
    };
}
context_enter!(unlink_enter, SyscallId::Unlink);
context_enter!(unlinkat_enter, SyscallId::Unlinkat);
context_enter!(rename_enter, SyscallId::Rename);
context_enter!(renameat_enter, SyscallId::Renameat);
context_enter!(renameat2_enter, SyscallId::Renameat2);

/// One exit program for every traced syscall (their exit records have the
/// same layout): the kernel verifies it once, which halves start-up, and
/// the context syscalls, attached later, add no verification at all.
#[tracepoint]
pub fn link_exit(ctx: TracePointContext) -> u32 {
    match try_exit(&ctx) {
        Err((stat, true)) => count_context(stat),
        Err((stat, false)) => count(stat),
        Ok(()) => {}
    }
    0
}

/// sched:sched_process_exit, run by every exiting task, thread or process,
/// in its own context: frees its in-flight slot. Without it the slots of
/// dead threads filled the map, and under thread churn the LRU took slots
/// of calls between entry and exit.
#[tracepoint]
pub fn task_exit(_ctx: TracePointContext) -> u32 {
    release_slot(bpf_get_current_pid_tgid());
    0
}

// sched:sched_process_exec's record (see its `format` file): pid, and the
// old_pid the task had before the exec (both as the initial namespace sees
// them).
const EXEC_PID: usize = 12;
const EXEC_OLD_PID: usize = 16;

/// sched:sched_process_exec: a thread other than the leader that execs
/// takes the leader's thread id, so its slot under the old id would never
/// be freed by task_exit; free it now. (The leader's own slot went when the
/// leader exited, before the exec took its id.)
#[tracepoint]
pub fn task_exec(ctx: TracePointContext) -> u32 {
    // SAFETY: reads inside the tracepoint record, bounds checked by the helper.
    let (pid, old_pid) = unsafe {
        (
            ctx_field::<u32>(&ctx, EXEC_PID),
            ctx_field::<u32>(&ctx, EXEC_OLD_PID),
        )
    };
    if pid != old_pid {
        let tgid = bpf_get_current_pid_tgid() >> 32;
        release_slot(tgid << 32 | u64::from(old_pid));
    }
    0
}

#[inline(always)]
fn release_slot(pid_tgid: u64) {
    // Most tasks never made a traced call: ENOENT is the common case.
    const ENOENT: i32 = 2;
    if let Err(err) = INFLIGHT.remove(pid_tgid)
        && err != -ENOENT
    {
        count_at(INFLIGHT_RELEASE_FAILED);
    }
}

#[inline(always)]
fn count(stat: Stat) {
    count_at(stat as u32);
}

/// Counters of context records live after the link events' (CONTEXT_STATS).
#[inline(always)]
fn count_context(stat: Stat) {
    count_at(CONTEXT_STATS + stat as u32);
}

#[inline(always)]
fn count_at(index: u32) {
    if let Some(counter) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot; tracepoint programs do not nest on a CPU.
        unsafe { *counter += 1 };
    }
}

/// A direct load from the tracepoint record: tracepoint programs may read
/// their context, and the verifier checks the offset against the record
/// size. Cheaper than a bpf_probe_read_kernel call per argument.
///
/// # Safety
/// `offset` must be an 8-byte aligned field of the record of type `T`.
#[inline(always)]
unsafe fn ctx_field<T>(ctx: &TracePointContext, offset: usize) -> T {
    unsafe { core::ptr::read(ctx.as_ptr().cast::<u8>().add(offset).cast::<T>()) }
}

#[inline(always)]
fn arg<T>(ctx: &TracePointContext, index: usize) -> Result<T, Stat> {
    // SAFETY: reads inside the tracepoint record, bounds checked by the helper.
    Ok(unsafe { ctx_field::<T>(ctx, ARG0 + index * ARG_SLOT) })
}

/// Whether the calling task passes the user's filters (kernel side, so that
/// filtered-out calls cost no path reads and no ring space).
#[inline(always)]
fn wanted(tgid: u32, uid: u32) -> bool {
    if tgid == TRACER_TGID.load() {
        return false;
    }
    let filters = FILTER_FLAGS.load();
    if filters & FILTER_TGID != 0 && FILTER_TGIDS.get_ptr(tgid).is_none() {
        return false;
    }
    if filters & FILTER_UID != 0 && FILTER_UIDS.get_ptr(uid).is_none() {
        return false;
    }
    if filters & FILTER_COMM != 0 && FILTER_COMMS.get_ptr(context::caller_comm()).is_none() {
        return false;
    }
    true
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext, syscall: SyscallId) -> Result<(), Stat> {
    let (pid_tgid, uid_gid) = context::caller_ids();
    let (tgid, uid) = ((pid_tgid >> 32) as u32, uid_gid as u32);
    if !wanted(tgid, uid) {
        return Ok(());
    }
    let call = inflight_slot(ctx, pid_tgid)?;
    // SAFETY: a map value of this thread's key: only this thread touches it
    // (entry and exit of one syscall run on its own task).
    let call = unsafe { &mut *call };

    // (olddirfd, oldname, newdirfd, newname, flags); unlink's one path is
    // the "old" one and its new name is a null pointer, never read.
    let (olddirfd, oldname, newdirfd, newname, flags) = match syscall {
        SyscallId::Link | SyscallId::Rename => (
            AT_FDCWD as i64,
            arg::<u64>(ctx, 0)?,
            AT_FDCWD as i64,
            arg::<u64>(ctx, 1)?,
            0,
        ),
        SyscallId::Linkat | SyscallId::Renameat2 => (
            arg::<i64>(ctx, 0)?,
            arg::<u64>(ctx, 1)?,
            arg::<i64>(ctx, 2)?,
            arg::<u64>(ctx, 3)?,
            arg::<i64>(ctx, 4)?,
        ),
        SyscallId::Renameat => (
            arg::<i64>(ctx, 0)?,
            arg::<u64>(ctx, 1)?,
            arg::<i64>(ctx, 2)?,
            arg::<u64>(ctx, 3)?,
            0,
        ),
        SyscallId::Unlink => (AT_FDCWD as i64, arg::<u64>(ctx, 0)?, 0, 0, 0),
        SyscallId::Unlinkat => (
            arg::<i64>(ctx, 0)?,
            arg::<u64>(ctx, 1)?,
            0,
            0,
            arg::<i64>(ctx, 2)?,
        ),
    };

    let header = &mut call.header;
    header.record_type = if syscall.is_context() {
        RECORD_CONTEXT
    } else {
        RECORD_LINK
    };
    // SAFETY: plain helper call without arguments.
    header.enter_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // Volatile: two adjacent zero stores become a (byte-wise) memset call.
    // SAFETY: plain field writes.
    unsafe {
        core::ptr::write_volatile(&raw mut header.exit_boot_ns, 0);
        core::ptr::write_volatile(&raw mut header.ret, 0);
    }
    header.tgid = tgid;
    header.tid = pid_tgid as u32;
    header.uid = uid;
    header.gid = (uid_gid >> 32) as u32;
    header.syscall = syscall as u32;
    // The kernel takes dirfds and flags as int: keep the low 32 bits as it does.
    header.flags = flags as u32;
    header.olddirfd = olddirfd as i32;
    header.newdirfd = newdirfd as i32;
    header.comm = context::caller_comm();

    call.old_ptr = oldname;
    call.new_ptr = newname;
    header.old = read_path(call.paths.as_mut_ptr(), oldname);
    if !syscall.has_new_path() {
        call.header.new = PathArg::default();
        return Ok(());
    }
    let new_offset = call.header.old.len as usize;
    if new_offset > PATH_KEEP_MAX {
        return Err(Stat::ArgReadFailed);
    }
    // SAFETY: new_offset <= PATH_KEEP_MAX and PATHS_CAP >= PATH_KEEP_MAX +
    // PATH_READ_MAX, so the read below stays inside `paths`.
    call.header.new = read_path(unsafe { call.paths.as_mut_ptr().add(new_offset) }, newname);
    Ok(())
}

/// This thread's in-flight slot, written in place. Slots are kept between
/// calls (exit marks them idle instead of deleting them), so the 8 KiB copy
/// of an insert is paid once per thread, not once per call.
#[inline(always)]
fn inflight_slot(ctx: &TracePointContext, pid_tgid: u64) -> Result<*mut PendingCall, Stat> {
    if let Some(slot) = INFLIGHT.get_ptr_mut(pid_tgid) {
        return Ok(slot);
    }
    let template = SCRATCH.get_ptr(0).ok_or(Stat::ScratchUnavailable)?;
    // SAFETY: the per-CPU scratch slot, never written: an idle template.
    let template: &PendingCall = unsafe { &*template };
    INFLIGHT.insert(pid_tgid, template, 0).map_err(|_| {
        warn!(
            ctx,
            "link-trace: in-flight map refused tid {}", pid_tgid as u32
        );
        Stat::InflightInsertFailed
    })?;
    INFLIGHT
        .get_ptr_mut(pid_tgid)
        .ok_or(Stat::InflightInsertFailed)
}

/// Reads one user path into `dest`, which must have PATH_READ_MAX bytes of room.
#[inline(always)]
fn read_path(dest: *mut u8, user_ptr: u64) -> PathArg {
    // SAFETY: the caller guarantees PATH_READ_MAX bytes at `dest`; the helper
    // copes with any user pointer, NULL and unmapped ones included.
    let ret =
        unsafe { bpf_probe_read_user_str(dest.cast(), PATH_READ_MAX as u32, user_ptr as *const _) };
    if ret < 0 {
        return PathArg {
            len: 0,
            flags: PATH_READ_FAILED,
            read_error: ret as i32,
        };
    }
    // `ret` counts the NUL. A full read means the string had no NUL within
    // PATH_MAX bytes: keep PATH_KEEP_MAX bytes and say it was cut.
    let with_nul = ret as usize;
    if with_nul >= PATH_READ_MAX {
        PathArg {
            len: PATH_KEEP_MAX as u16,
            flags: PATH_TRUNCATED,
            read_error: 0,
        }
    } else {
        PathArg {
            len: with_nul.saturating_sub(1) as u16,
            flags: 0,
            read_error: 0,
        }
    }
}

/// Err carries the loss and whether it is a context record's.
fn try_exit(ctx: &TracePointContext) -> Result<(), (Stat, bool)> {
    let pid_tgid = context::caller_pid_tgid();
    let call = INFLIGHT.get_ptr_mut(pid_tgid).filter(|call| {
        // SAFETY: a map value of this thread's key, touched by this thread only.
        let record_type = unsafe { (**call).header.record_type };
        record_type == RECORD_LINK || record_type == RECORD_CONTEXT
    });
    let Some(call) = call else {
        // Only a caller we would have traced counts as a miss.
        if !wanted((pid_tgid >> 32) as u32, bpf_get_current_uid_gid() as u32) {
            return Ok(());
        }
        // SAFETY: reads inside the tracepoint record, bounds checked by the helper.
        let nr = unsafe { ctx_field::<i32>(ctx, SYSCALL_NR) };
        let link = nr == LINK_NR.load() || nr == LINKAT_NR.load();
        return Err((Stat::ExitWithoutEnter, !link));
    };
    // SAFETY: as above; the slot stays in the map for this thread's next call.
    let call = unsafe { &mut *call };
    let result = submit(ctx, call).map_err(|stat| (stat, is_context(call)));
    // Idle until the next entry; an exit without entry is then recognized.
    call.header.record_type = 0;
    result
}

/// Whether the slot holds an unlink or rename. Read afresh from the map at
/// each use, never kept in a register: the verifier then sees one unknown
/// value rather than two constants, and checks the code before the first
/// use (the base walks) once for both kinds instead of once per kind.
#[inline(always)]
pub(crate) fn is_context(call: &PendingCall) -> bool {
    // SAFETY: a read of an initialized u32 in the slot.
    unsafe { core::ptr::read_volatile(&raw const call.header.record_type) == RECORD_CONTEXT }
}

/// Sends the record of one completed call: a link event, or the lean
/// record of an unlink or rename, built the same way so the verifier
/// checks the base walks once for both.
#[inline(always)]
fn submit(ctx: &TracePointContext, call: &PendingCall) -> Result<(), Stat> {
    // SAFETY: plain helper call without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let out = OUT.get_ptr_mut(cpu).ok_or(Stat::ScratchUnavailable)?;
    let walk = WALK.get_ptr_mut(0).ok_or(Stat::ScratchUnavailable)?;
    // SAFETY: this CPU's slots, ours until the program returns.
    let (out, walk) = unsafe { (&mut *out, &mut *walk) };

    // SAFETY: both are this program's own map memory, 8-aligned.
    unsafe {
        zero_words(&raw mut out.header);
        copy_words(&raw mut out.header.call, &raw const call.header);
    }
    // SAFETY: plain helper call without arguments.
    out.header.call.exit_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: reads inside the tracepoint record, bounds checked by the helper.
    out.header.call.ret = unsafe { ctx_field::<i64>(ctx, EXIT_RET) };

    copy_raw_paths(call, out)?;
    if context::offsets_ready() {
        context::enrich(call, out, walk);
    } else {
        out.header.old_base.error = RESOLVE_NO_OFFSETS;
        out.header.new_base.error = RESOLVE_NO_OFFSETS;
    }
    if is_context(call) {
        return emit_context(out);
    }

    let len = RECORD_HEADER_SIZE + out.header.call.record_len as usize;
    out.header.call.record_len = len as u32;
    // A plain upper-bound test on the very register passed as the size: the
    // verifier must see `len <= value size`, and a range test gets rewritten
    // into a subtraction it cannot follow.
    if len > OUT_RECORD_SIZE {
        return Err(Stat::ArgReadFailed);
    }
    // SAFETY: `len` lies within the map value, checked just above.
    let record =
        unsafe { core::slice::from_raw_parts((out as *const OutRecord).cast::<u8>(), len) };
    EVENTS
        .output::<[u8]>(record, wakeup_flag(out.header.call.exit_boot_ns, len))
        .map_err(|_| Stat::RingFull)?;
    count(Stat::Submitted);
    Ok(())
}

/// Sends an unlink or rename record built in OUT like a link record: its
/// shorter header is written right before the data (CONTEXT_HEADER_OFFSET),
/// so header and segments are contiguous, and that span goes to the ring.
#[inline(always)]
fn emit_context(out: &mut OutRecord) -> Result<(), Stat> {
    let data_len = out.header.call.record_len as usize;
    let len = CONTEXT_HEADER_SIZE + data_len;
    let full = &out.header;
    let mut header = ContextRecordHeader {
        call: full.call,
        euid: full.process.euid,
        egid: full.process.egid,
        fsuid: full.process.fsuid,
        fsgid: full.process.fsgid,
        creds_valid: u32::from(full.process.valid & CTX_CREDS != 0),
        _pad: 0,
        old_base: full.old_base,
        new_base: full.new_base,
        seg_len: [0; CONTEXT_SEG_COUNT],
        walked_len: [0; CONTEXT_SEG_COUNT],
    };
    header.call.record_type = RECORD_CONTEXT;
    header.call.record_len = len as u32;
    for i in 0..CONTEXT_SEG_COUNT {
        header.seg_len[i] = full.seg_len[i];
        header.walked_len[i] = full.walked_len[i];
    }
    // As in submit: a plain upper bound on the register passed as the size.
    if len > OUT_RECORD_SIZE - CONTEXT_HEADER_OFFSET {
        return Err(Stat::ArgReadFailed);
    }
    // SAFETY: CONTEXT_HEADER_OFFSET + CONTEXT_HEADER_SIZE == RECORD_HEADER_SIZE
    // (the data's offset), so the header ends where the data begins, inside
    // this CPU's OUT slot; `len` was bounded just above.
    let record = unsafe {
        let start = (out as *mut OutRecord)
            .cast::<u8>()
            .add(CONTEXT_HEADER_OFFSET);
        // 8-aligned (the header sizes are multiples of 8): an aligned
        // write is word stores, where write_unaligned is a byte-wise memcpy.
        core::ptr::write(start.cast::<ContextRecordHeader>(), header);
        core::slice::from_raw_parts(start.cast_const(), len)
    };
    EVENTS
        .output::<[u8]>(record, wakeup_flag(header.call.exit_boot_ns, len))
        .map_err(|_| Stat::RingFull)?;
    count_context(Stat::Submitted);
    Ok(())
}

/// Copies both raw paths, packed as entry stored them, to the start of the
/// record's data, and starts the running data length.
#[inline(always)]
fn copy_raw_paths(call: &PendingCall, out: &mut OutRecord) -> Result<(), Stat> {
    let raw_len = call.header.old.len as usize + call.header.new.len as usize;
    if raw_len > 2 * PATH_KEEP_MAX {
        return Err(Stat::ArgReadFailed);
    }
    // SAFETY: raw_len <= 8192 <= both buffers.
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.data.as_mut_ptr().cast(),
            raw_len as u32,
            call.paths.as_ptr().cast(),
        )
    };
    if ret != 0 {
        return Err(Stat::ArgReadFailed);
    }
    out.header.seg_len[SEG_OLD_RAW] = call.header.old.len;
    out.header.seg_len[SEG_NEW_RAW] = call.header.new.len;
    // record_len counts data bytes while the record grows (see context::append).
    out.header.call.record_len = raw_len as u32;
    Ok(())
}

/// Batches consumer wakeups instead of waking userspace per event: wake when
/// the data pending in the ring crosses WAKEUP_BYTES with this record, or
/// when no wakeup was sent for WAKEUP_AFTER_NS (so a lone event is delivered
/// at once). Anything else waits for the next batch or the daemon's periodic
/// drain (link_trace_common::DRAIN_INTERVAL_MS). Only the crossing wakes:
/// waking for every record while more than WAKEUP_BYTES wait (until the
/// daemon gets to run) cost a self-IPI each, in a VM a trap to the
/// hypervisor, and was the largest single cost of the exit program.
#[inline(always)]
fn wakeup_flag(now_ns: u64, len: usize) -> u64 {
    let Some(last) = LAST_WAKEUP_NS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: an 8-byte map slot; a racing update from another CPU only
    // moves the next wakeup a little, which is harmless.
    let last = unsafe { &mut *last };
    let pending = EVENTS.query(BPF_RB_AVAIL_DATA as u64);
    if now_ns.saturating_sub(*last) >= WAKEUP_AFTER_NS
        || (pending < WAKEUP_BYTES && pending + len as u64 >= WAKEUP_BYTES)
    {
        *last = now_ns;
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Zeroes `*dst` one 8-byte store per word. Left to itself the compiler
/// calls memset, which the BPF target implements as a loop of one store
/// per byte (hundreds of instructions for a record header).
///
/// # Safety
/// `dst` must be valid for writes and 8-aligned.
#[inline(always)]
unsafe fn zero_words<T>(dst: *mut T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let words = dst.cast::<u64>();
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: inside *dst, per the caller's promise.
        unsafe { words.add(i).write_volatile(0) };
    }
}

/// Copies `*src` to `*dst` one 8-byte word at a time (not memmove, which
/// the BPF target implements a byte at a time; see zero_words).
///
/// # Safety
/// Both must be valid, 8-aligned and not overlap.
#[inline(always)]
unsafe fn copy_words<T>(dst: *mut T, src: *const T) {
    const { assert!(size_of::<T>().is_multiple_of(8) && align_of::<T>() >= 8) };
    let (to, from) = (dst.cast::<u64>(), src.cast::<u64>());
    for i in 0..size_of::<T>() / 8 {
        // SAFETY: inside both, per the caller's promise.
        unsafe { to.add(i).write_volatile(from.add(i).read_volatile()) };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
