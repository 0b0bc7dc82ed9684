//! Kernel side of link-trace: the syscalls:sys_enter/exit_link(at)
//! tracepoints. Entry reads the arguments (both paths in full) into an
//! in-flight entry keyed by thread; exit adds the result and sends the record,
//! sized to the paths actually read, to the ring buffer.
#![no_std]
#![no_main]

mod context;

use aya_ebpf::{
    EbpfContext, Global,
    bindings::{BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
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
    AT_FDCWD, DEFAULT_RING_BYTES, EXE_CACHE_ENTRIES, ExeCacheEntry, FILTER_COMM,
    FILTER_MAX_ENTRIES, FILTER_TGID, FILTER_UID, LinkRecordHeader, MAX_INFLIGHT, OutRecord,
    PATH_KEEP_MAX, PATH_READ_FAILED, PATH_READ_MAX, PATH_TRUNCATED, PathArg, PendingCall,
    RECORD_HEADER_SIZE, RECORD_LINK, RESOLVE_NO_OFFSETS, SEG_NEW_RAW, SEG_OLD_RAW, STAT_COUNT,
    Stat, SyscallId, TASK_COMM_LEN, WAKEUP_AFTER_NS, WAKEUP_BYTES, WALK_CAP,
};

const OUT_RECORD_SIZE: usize = core::mem::size_of::<OutRecord>();

/// The tracer's own tgid: its activity is never reported.
#[unsafe(no_mangle)]
static TRACER_TGID: Global<u32> = Global::new(0);
/// FILTER_* bits: which of the filter sets below are in force.
#[unsafe(no_mangle)]
static FILTER_FLAGS: Global<u32> = Global::new(0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(DEFAULT_RING_BYTES, 0);
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
/// A (mnt, dentry) root known to walk to "/" (see context::walk_root).
#[map]
pub(crate) static SLASH_ROOT: Array<[u64; 2]> = Array::with_max_entries(1, 0);
#[map]
static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);
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

/// One exit program for both syscalls (their exit records have the same
/// layout): the kernel verifies it once, which halves start-up.
#[tracepoint]
pub fn link_exit(ctx: TracePointContext) -> u32 {
    if let Err(stat) = try_exit(&ctx) {
        count(stat);
    }
    0
}

#[inline(always)]
fn count(stat: Stat) {
    if let Some(counter) = STATS.get_ptr_mut(stat as u32) {
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
    if filters & FILTER_COMM != 0 {
        let comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
        if FILTER_COMMS.get_ptr(comm).is_none() {
            return false;
        }
    }
    true
}

#[inline(always)]
fn try_enter(ctx: &TracePointContext, syscall: SyscallId) -> Result<(), Stat> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let (tgid, uid) = ((pid_tgid >> 32) as u32, uid_gid as u32);
    if !wanted(tgid, uid) {
        return Ok(());
    }
    let call = inflight_slot(ctx, pid_tgid)?;
    // SAFETY: a map value of this thread's key: only this thread touches it
    // (entry and exit of one syscall run on its own task).
    let call = unsafe { &mut *call };

    let (olddirfd, oldname, newdirfd, newname, flags) = match syscall {
        SyscallId::Link => (
            AT_FDCWD as i64,
            arg::<u64>(ctx, 0)?,
            AT_FDCWD as i64,
            arg::<u64>(ctx, 1)?,
            0,
        ),
        SyscallId::Linkat => (
            arg::<i64>(ctx, 0)?,
            arg::<u64>(ctx, 1)?,
            arg::<i64>(ctx, 2)?,
            arg::<u64>(ctx, 3)?,
            arg::<i64>(ctx, 4)?,
        ),
    };

    let header = &mut call.header;
    header.record_type = RECORD_LINK;
    // SAFETY: plain helper call without arguments.
    header.enter_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    header.exit_boot_ns = 0;
    header.ret = 0;
    header.tgid = tgid;
    header.tid = pid_tgid as u32;
    header.uid = uid;
    header.gid = (uid_gid >> 32) as u32;
    header.syscall = syscall as u32;
    // The kernel takes dirfds and flags as int: keep the low 32 bits as it does.
    header.flags = flags as u32;
    header.olddirfd = olddirfd as i32;
    header.newdirfd = newdirfd as i32;
    header.comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);

    call.old_ptr = oldname;
    call.new_ptr = newname;
    header.old = read_path(call.paths.as_mut_ptr(), oldname);
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

fn try_exit(ctx: &TracePointContext) -> Result<(), Stat> {
    let pid_tgid = bpf_get_current_pid_tgid();
    let call = INFLIGHT
        .get_ptr_mut(pid_tgid)
        // SAFETY: a map value of this thread's key, touched by this thread only.
        .filter(|call| unsafe { (**call).header.record_type } == RECORD_LINK);
    let Some(call) = call else {
        // Only a caller we would have traced counts as a miss.
        let uid = bpf_get_current_uid_gid() as u32;
        return if wanted((pid_tgid >> 32) as u32, uid) {
            Err(Stat::ExitWithoutEnter)
        } else {
            Ok(())
        };
    };
    // SAFETY: as above; the slot stays in the map for this thread's next call.
    let call = unsafe { &mut *call };
    let result = submit(ctx, call);
    // Idle until the next entry; an exit without entry is then recognized.
    call.header.record_type = 0;
    result
}

#[inline(always)]
fn submit(ctx: &TracePointContext, call: &PendingCall) -> Result<(), Stat> {
    // SAFETY: plain helper call without arguments.
    let cpu = unsafe { bpf_get_smp_processor_id() };
    let out = OUT.get_ptr_mut(cpu).ok_or(Stat::ScratchUnavailable)?;
    let walk = WALK.get_ptr_mut(0).ok_or(Stat::ScratchUnavailable)?;
    // SAFETY: this CPU's slots, ours until the program returns.
    let (out, walk) = unsafe { (&mut *out, &mut *walk) };

    out.header = LinkRecordHeader {
        call: call.header,
        ..Default::default()
    };
    // SAFETY: plain helper call without arguments.
    out.header.call.exit_boot_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: reads inside the tracepoint record, bounds checked by the helper.
    out.header.call.ret = unsafe { ctx_field::<i64>(ctx, EXIT_RET) };

    // Both raw paths, packed as entry stored them.
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
    if context::offsets_ready() {
        context::enrich(call, out, walk);
    } else {
        out.header.old_base.error = RESOLVE_NO_OFFSETS;
        out.header.new_base.error = RESOLVE_NO_OFFSETS;
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
        .output::<[u8]>(record, wakeup_flag(out.header.call.exit_boot_ns))
        .map_err(|_| Stat::RingFull)?;
    count(Stat::Submitted);
    Ok(())
}

/// Batches consumer wakeups instead of waking userspace per event: wake when
/// WAKEUP_BYTES are pending, or when no wakeup was sent for WAKEUP_AFTER_NS
/// (so a lone event is delivered at once). Anything else waits for the next
/// batch or the daemon's periodic drain (link_trace_common::DRAIN_INTERVAL_MS).
#[inline(always)]
fn wakeup_flag(now_ns: u64) -> u64 {
    let Some(last) = LAST_WAKEUP_NS.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: an 8-byte map slot; a racing update from another CPU only
    // moves the next wakeup a little, which is harmless.
    let last = unsafe { &mut *last };
    if now_ns.saturating_sub(*last) >= WAKEUP_AFTER_NS
        || EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= WAKEUP_BYTES
    {
        *last = now_ns;
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
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
