//! Reads the caller's context from kernel structs at syscall exit: process
//! identity, the directories relative paths resolve against (walked to
//! absolute paths across mounts), the executable, file facts for
//! AT_EMPTY_PATH, and an exit-time re-read of the path arguments.
//!
//! Member offsets come from the running kernel's BTF, filled into OFFSETS by
//! the loader; nothing here assumes one kernel's layout.

use aya_ebpf::{
    cty::c_void,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid,
        generated::{
            bpf_get_current_task_btf, bpf_loop, bpf_probe_read_kernel, bpf_probe_read_user_str,
        },
    },
};
use link_trace_common::{
    AT_FDCWD, BASE_ABSOLUTE, BASE_CWD, BASE_DIRFD, BASE_FD_FILE, BASE_NONE, BASE_ROOT,
    BASE_SAME_AS_OLD, BaseInfo, CTX_AUDIT, CTX_CREDS, CTX_EXE, CTX_MNT_NS, CTX_PID_NS, CTX_PPID,
    ExeCacheEntry, FileFacts, KernelOffsets, NAME_MAX, NEW_CHANGED_AT_EXIT, NEW_REREAD_FAILED,
    OLD_CHANGED_AT_EXIT, OLD_REREAD_FAILED, OPT_CGROUP_CHAIN, OPT_DENTRY_BLOCK, OPT_MOUNT_PAIR,
    OPT_PID_FLEX, OUT_OFFSET_MASK, OutRecord, PATH_KEEP_MAX, PATH_READ_FAILED, PATH_READ_MAX,
    PendingCall, ProcessContext, RESOLVE_BAD_FD, RESOLVE_DELETED, RESOLVE_DEPTH_LIMIT,
    RESOLVE_NO_ARGUMENT, RESOLVE_NOT_A_DIRECTORY, RESOLVE_OK, RESOLVE_READ_FAILED,
    RESOLVE_TOO_LONG, SEG_EXE, SEG_NEW_AT_EXIT, SEG_NEW_BASE, SEG_OLD_AT_EXIT, SEG_OLD_BASE,
    SyscallId, TASK_COMM_LEN, WALK_CAP, WALK_END, WALK_MAX_DEPTH,
};

/// Filled in by the loader from BTF (see link-trace/src/btf.rs).
#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = unsafe { core::mem::zeroed() };

macro_rules! off {
    ($field:ident) => {
        // SAFETY: a read of a plain integer in .rodata; volatile so the
        // compiler does not fold the zero it sees at build time.
        (unsafe { core::ptr::read_volatile(&raw const OFFSETS.$field) }) as u64
    };
}

const S_IFMT: u32 = 0o170000;
const S_IFDIR: u32 = 0o040000;
const AT_EMPTY_PATH: u32 = 0x1000;
/// Bytes of a walked path or re-read argument kept in a segment.
const SEG_MAX: usize = PATH_KEEP_MAX;

type Walk = [u8; WALK_CAP];

#[inline(always)]
fn read<T>(addr: u64) -> Result<T, u8> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: the helper copes with any kernel address and fills `value` on success.
    let ret = unsafe {
        bpf_probe_read_kernel(
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            addr as *const _,
        )
    };
    if ret == 0 {
        // SAFETY: filled by the successful read above.
        Ok(unsafe { value.assume_init() })
    } else {
        Err(RESOLVE_READ_FAILED)
    }
}

#[inline(always)]
fn ptr(addr: u64) -> Result<u64, u8> {
    let value = read::<u64>(addr)?;
    if value == 0 {
        Err(RESOLVE_READ_FAILED)
    } else {
        Ok(value)
    }
}

pub fn offsets_ready() -> bool {
    off!(ready) == 1
}

/// The current task as a BTF-typed pointer, the base of `load`.
#[inline(always)]
pub(crate) fn current_task() -> u64 {
    // SAFETY: plain helper call; the task outlives the program run.
    unsafe { bpf_get_current_task_btf() as u64 }
}

/// A member of a kernel struct, loaded straight through a BTF-typed pointer:
/// `base` is `current_task()` or a pointer member loaded from one, and
/// `offset` comes from OFFSETS, frozen .rodata the verifier reads as a known
/// constant. The verifier checks the access against the kernel's BTF and
/// the JIT emits one load with a fault handler (a bad address reads 0):
/// no helper call, where each bpf_probe_read_kernel costs tens of ns on a
/// CPU with return-thunk mitigations. (`read` stays for pointers the
/// verifier cannot type: fd table entries and `struct mount`, which is
/// reached by container_of.)
#[inline(always)]
pub(crate) fn load<T>(base: u64, offset: u64) -> T {
    // SAFETY: see above; the verifier rejects the program rather than let
    // an access outside the member through.
    unsafe { core::ptr::read_volatile((base + offset) as *const T) }
}

/// A pointer member loaded as in `load`; NULL is an error.
#[inline(always)]
fn load_ptr(base: u64, offset: u64) -> Result<u64, u8> {
    match load::<u64>(base, offset) {
        0 => Err(RESOLVE_READ_FAILED),
        value => Ok(value),
    }
}

/// The caller's pid_tgid and uid_gid as the helpers of those names give
/// them (tgid << 32 | pid, gid << 32 | uid). pid and tgid are loaded from
/// the typed task (no helper call); uid_gid stays with its helper: loading
/// task->cred, a pointer, from the trusted task costs the verifier several
/// by-name searches of the kernel's BTF each time it visits the load
/// (~0.8 ms per entry program measured), for a saving of one helper call.
#[inline(always)]
pub(crate) fn caller_ids() -> (u64, u64) {
    if !offsets_ready() {
        return (bpf_get_current_pid_tgid(), bpf_get_current_uid_gid());
    }
    let task = current_task();
    let pid = load::<u32>(task, off!(task_pid)) as u64;
    let tgid = load::<u32>(task, off!(task_tgid)) as u64;
    (tgid << 32 | pid, bpf_get_current_uid_gid())
}

/// The caller's comm, NUL-padded as bpf_get_current_comm gives it (loaded
/// from the typed task, or from the helper without BTF).
#[inline(always)]
pub(crate) fn caller_comm() -> [u8; TASK_COMM_LEN] {
    if !offsets_ready() {
        return bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);
    }
    let task = current_task();
    let first = zero_after_nul(load::<u64>(task, off!(task_comm)));
    // The kernel keeps comm NUL-padded; the masks only make that certain.
    let second = if has_zero_byte(first) {
        0
    } else {
        zero_after_nul(load::<u64>(task, off!(task_comm) + 8))
    };
    // SAFETY: two u64 are 16 plain bytes, in memory order on this
    // little-endian target.
    unsafe { core::mem::transmute::<[u64; 2], [u8; TASK_COMM_LEN]>([first, second]) }
}

/// The bytes of a little-endian word at and after its first NUL, if any, as
/// flags in their top bits (exact for the first NUL, which is all we use).
#[inline(always)]
fn zero_bytes(word: u64) -> u64 {
    word.wrapping_sub(0x0101_0101_0101_0101) & !word & 0x8080_8080_8080_8080
}

#[inline(always)]
fn has_zero_byte(word: u64) -> bool {
    zero_bytes(word) != 0
}

/// `word` with every byte from its first NUL on cleared.
#[inline(always)]
fn zero_after_nul(word: u64) -> u64 {
    let flags = zero_bytes(word);
    if flags == 0 {
        return word;
    }
    // The lowest flag is the first NUL's top bit: keep the bytes below it.
    let first = flags & flags.wrapping_neg();
    word & ((first >> 7) - 1)
}

/// `pair` as plain numbers: a round trip through map memory, which the
/// verifier does not type. The path walk reads with bpf_probe_read_kernel
/// and takes (mount, dentry) from typed and untyped sources alike; given
/// typed pointers it would be verified once per source type.
#[inline(always)]
fn untyped(pair: [u64; 2]) -> Result<[u64; 2], u8> {
    let slot = crate::UNTYPED.get_ptr_mut(0).ok_or(RESOLVE_READ_FAILED)?;
    // SAFETY: this CPU's slot, ours until the program returns; volatile so
    // the compiler does not forward the stored registers.
    unsafe {
        core::ptr::write_volatile(slot, pair);
        Ok(core::ptr::read_volatile(slot))
    }
}

/// Fills everything beyond the raw call; returns the record's data length.
/// The running data length lives in `out.header.call.record_len` (map
/// memory), not in a register: the verifier does not track map memory, so
/// the many ways a record can grow do not multiply its states.
#[inline(always)]
pub fn enrich(call: &PendingCall, out: &mut OutRecord, walk: &mut Walk) {
    let task = current_task();
    // The bases first, on one path for links and context records alike, so
    // the verifier walks this code once; what differs comes after (see
    // crate::is_context).
    resolve_bases(task, call, out, walk);

    if crate::is_context(call) {
        // The lean context of an unlink or rename: the credentials (the
        // rules group these calls by name and fsuid); no exe, namespaces or
        // re-read.
        if let Some([euid, egid, fsuid, fsgid]) = creds(task) {
            let p = &mut out.header.process;
            (p.euid, p.egid, p.fsuid, p.fsgid) = (euid, egid, fsuid, fsgid);
            p.valid = CTX_CREDS;
        }
        return;
    }
    out.header.process = process_context(task);

    if add_exe(task, out, walk).is_ok() {
        out.header.process.valid |= CTX_EXE;
    }

    recheck(call, out, walk, true);
    recheck(call, out, walk, false);
}

/// Resolves the old path's base and, unless the call is an unlink (which
/// has no new path), the new one's (reusing the old one when both are
/// relative to the same directory).
#[inline(always)]
fn resolve_bases(task: u64, call: &PendingCall, out: &mut OutRecord, walk: &mut Walk) {
    let h = &call.header;
    // AT_EMPTY_PATH means "the file open on the dirfd" for linkat only
    // (unlinkat's AT_REMOVEDIR is another bit; rename has no such flag).
    let empty_path = h.syscall == SyscallId::Linkat as u32 && h.flags & AT_EMPTY_PATH != 0;
    let has_new = h.syscall != SyscallId::Unlink as u32 && h.syscall != SyscallId::Unlinkat as u32;
    out.header.old_base = BaseInfo {
        kind: base_kind(
            empty_path,
            h.old.flags,
            first_byte(call, 0, h.old.len),
            h.olddirfd,
        ),
        ..Default::default()
    };
    // The old path's base, walked once; the new one reuses it when equal.
    place_base(task, out, walk, h.olddirfd, true);
    if !has_new {
        return;
    }
    let new_first = first_byte(call, h.old.len as usize, h.new.len);
    out.header.new_base = BaseInfo {
        kind: base_kind(false, h.new.flags, new_first, h.newdirfd),
        ..Default::default()
    };
    let (old_kind, new_kind) = (stored_kind(out, true), stored_kind(out, false));
    let same = new_kind == old_kind
        && matches!(new_kind, BASE_CWD | BASE_DIRFD | BASE_ROOT)
        && (new_kind == BASE_ROOT || h.newdirfd == h.olddirfd);
    if same {
        out.header.new_base = BaseInfo {
            flags: BASE_SAME_AS_OLD,
            ..out.header.old_base
        };
    } else {
        place_base(task, out, walk, h.newdirfd, false);
    }
}

#[inline(always)]
fn first_byte(call: &PendingCall, at: usize, len: u16) -> Option<u8> {
    if len == 0 || at > PATH_KEEP_MAX {
        return None;
    }
    call.paths.get(at).copied()
}

/// What an argument is relative to; BASE_NONE (nothing to resolve, error
/// RESOLVE_NO_ARGUMENT) when it could not be read.
#[inline(always)]
fn base_kind(empty_path_flag: bool, arg_flags: u16, first: Option<u8>, dirfd: i32) -> u8 {
    if arg_flags & PATH_READ_FAILED != 0 {
        return BASE_NONE;
    }
    match first {
        None if empty_path_flag => BASE_FD_FILE,
        // Walked like a base: a root that walks to "/" makes it plain absolute.
        Some(b'/') => BASE_ROOT,
        _ if dirfd == AT_FDCWD => BASE_CWD,
        _ => BASE_DIRFD,
    }
}

/// An argument's base kind as stored in the record, read back from map
/// memory at each use and never kept in a register: the verifier then sees
/// one unknown value, not one constant per kind, so it checks the path walk
/// once instead of once per kind of the old base times once per kind of the
/// new one (this cut link_exit's verification from ~200 ms to a fraction).
#[inline(always)]
fn stored_kind(out: &OutRecord, old: bool) -> u8 {
    let info = if old {
        &out.header.old_base
    } else {
        &out.header.new_base
    };
    // SAFETY: a read of an initialized u8 in this CPU's OUT slot.
    unsafe { core::ptr::read_volatile(&raw const info.kind) }
}

/// Resolves one argument's base and appends it; a root that is "/" turns
/// BASE_ROOT into BASE_ABSOLUTE with no segment. One walk_path call site
/// whatever the base: each copy of the walk costs the verifier dearly.
#[inline(always)]
fn place_base(task: u64, out: &mut OutRecord, walk: &Walk, dirfd: i32, old: bool) {
    let seg = if old { SEG_OLD_BASE } else { SEG_NEW_BASE };
    let result = base_start(task, dirfd, old, out).and_then(|start| {
        let Some((mnt, dentry)) = start else {
            return Ok(None);
        };
        let walked = walk_path(mnt, dentry)?;
        // A root that walks to "/" is the mount namespace's root after all.
        if stored_kind(out, old) == BASE_ROOT && walked.1 <= 1 {
            remember_slash_root([mnt, dentry]);
            return Ok(None);
        }
        Ok(Some(walked))
    });
    let info = if old {
        &mut out.header.old_base
    } else {
        &mut out.header.new_base
    };
    match result {
        Ok(None) => info.kind = BASE_ABSOLUTE,
        Ok(Some(walked)) => append_walk(out, seg, walk, walked),
        Err(error) => info.error = error,
    }
}

/// Where the walk of one argument's base starts (mount, dentry); None when
/// there is nothing to walk: an absolute argument of a caller whose root is
/// the mount namespace's root.
#[inline(always)]
fn base_start(
    task: u64,
    dirfd: i32,
    old: bool,
    out: &mut OutRecord,
) -> Result<Option<(u64, u64)>, u8> {
    if stored_kind(out, old) == BASE_ROOT {
        root_start(task)
    } else {
        resolve(task, dirfd, old, out).map(Some)
    }
}

/// The caller's root for an absolute argument: None when it is the mount
/// namespace's root "/" (remembered in SLASH_ROOT, so the common case costs
/// three reads and no walk), else where to walk it from (a chroot).
#[inline(always)]
fn root_start(task: u64) -> Result<Option<(u64, u64)>, u8> {
    let fs = load_ptr(task, off!(task_fs))?;
    let pair = untyped([
        load_ptr(fs, off!(fs_root) + off!(path_mnt))?,
        load_ptr(fs, off!(fs_root) + off!(path_dentry))?,
    ])?;
    let cached = crate::SLASH_ROOT.get_ptr(0).ok_or(RESOLVE_READ_FAILED)?;
    // SAFETY: a 16-byte map slot; a racing writer stores another valid pair.
    if unsafe { *cached } == pair {
        return Ok(None);
    }
    Ok(Some((pair[0], pair[1])))
}

#[inline(always)]
fn remember_slash_root(pair: [u64; 2]) {
    if let Some(cached) = crate::SLASH_ROOT.get_ptr_mut(0) {
        // SAFETY: as in root_start.
        unsafe { *cached = pair };
    }
}

/// The (mount, dentry) of one relative argument's base directory (or, for
/// AT_EMPTY_PATH, of the file open on the dirfd).
#[inline(always)]
fn resolve(task: u64, dirfd: i32, old: bool, out: &mut OutRecord) -> Result<(u64, u64), u8> {
    let [mnt, dentry] = match stored_kind(out, old) {
        BASE_NONE => return Err(RESOLVE_NO_ARGUMENT),
        BASE_ABSOLUTE => return Err(RESOLVE_OK),
        BASE_CWD => {
            let fs = load_ptr(task, off!(task_fs))?;
            let dentry = load_ptr(fs, off!(fs_pwd) + off!(path_dentry))?;
            // d_unlinked(): hashed out of the dcache and not a root.
            let parent = load_ptr(dentry, off!(dentry_d_parent))?;
            if parent != dentry && load::<u64>(dentry, off!(dentry_d_hash_pprev)) == 0 {
                return Err(RESOLVE_DELETED);
            }
            untyped([load_ptr(fs, off!(fs_pwd) + off!(path_mnt))?, dentry])?
        }
        _ => {
            let file = fd_file(task, dirfd)?;
            let inode = ptr(file + off!(file_f_inode))?;
            let mode = read::<u16>(inode + off!(inode_i_mode))? as u32;
            if stored_kind(out, old) == BASE_FD_FILE {
                out.header.file = file_facts(inode)?;
            } else if mode & S_IFMT != S_IFDIR {
                return Err(RESOLVE_NOT_A_DIRECTORY);
            }
            let path = file + off!(file_f_path);
            let pair = [ptr(path + off!(path_mnt))?, ptr(path + off!(path_dentry))?];
            if stored_kind(out, old) != BASE_FD_FILE && unlinked(pair[1])? {
                return Err(RESOLVE_DELETED);
            }
            pair
        }
    };
    Ok((mnt, dentry))
}

/// The `struct file` open on `fd` in the current task.
#[inline(always)]
fn fd_file(task: u64, fd: i32) -> Result<u64, u8> {
    if fd < 0 {
        return Err(RESOLVE_BAD_FD);
    }
    let files = load_ptr(task, off!(task_files))?;
    let fdt = load_ptr(files, off!(files_fdt))?;
    let max_fds = load::<u32>(fdt, off!(fdt_max_fds));
    if fd as u32 >= max_fds {
        return Err(RESOLVE_BAD_FD);
    }
    // `struct file **`: the verifier does not type what it points to.
    let table = untyped([load_ptr(fdt, off!(fdt_fd))?, 0])?[0];
    ptr(table + fd as u64 * 8).map_err(|_| RESOLVE_BAD_FD)
}

/// d_unlinked(): hashed out of the dcache and not a root.
#[inline(always)]
fn unlinked(dentry: u64) -> Result<bool, u8> {
    let parent = ptr(dentry + off!(dentry_d_parent))?;
    let pprev = read::<u64>(dentry + off!(dentry_d_hash_pprev))?;
    Ok(parent != dentry && pprev == 0)
}

/// State of one path walk, on the stack of the program that calls bpf_loop.
/// The write position is not here but in WALK (see WALK_POS_AT).
#[repr(C)]
struct WalkState {
    mount: u64,
    dentry: u64,
    mnt_root: u64,
    /// Bytes written so far; checked by the decoder, not here.
    total: u64,
    /// WALK_RUNNING, WALK_DONE or a RESOLVE_* error.
    status: u64,
}
/// Not 0: two adjacent zero fields make the compiler call memset, which
/// the BPF target implements a byte at a time.
const WALK_RUNNING: u64 = 0xfe;
const WALK_DONE: u64 = 0xff;

/// Where the walk's write position (the path's start in WALK) lives: a u64
/// in WALK's unused tail, map memory, whose value the verifier does not
/// track. On the stack it tracked it exactly, as a range that grew by one
/// name per pass of bpf_loop's callback, and re-verified the callback until
/// the range covered all of WALK (~80 passes per call site, half of
/// link_exit's verification). Read from map memory it is unknown from the
/// first pass, masked to a range that never changes, and the callback
/// converges in a few passes.
const WALK_POS_AT: usize = WALK_CAP - 8;
// The walk writes below WALK_END (bounded below WALK_END + NAME_MAX + 1 for
// the verifier), the exit re-read below PATH_READ_MAX.
const _: () = assert!(WALK_POS_AT > WALK_END + NAME_MAX && WALK_POS_AT >= PATH_READ_MAX);

#[inline(always)]
fn walk_pos(walk: &Walk) -> u64 {
    // SAFETY: WALK_POS_AT + 8 == WALK_CAP; an unaligned read of a u64.
    unsafe { core::ptr::read_unaligned(walk.as_ptr().add(WALK_POS_AT).cast::<u64>()) }
}

#[inline(always)]
fn set_walk_pos(walk: &mut Walk, pos: u64) {
    // SAFETY: as in walk_pos.
    unsafe { core::ptr::write_unaligned(walk.as_mut_ptr().add(WALK_POS_AT).cast::<u64>(), pos) }
}

/// Builds the absolute path of (mnt, dentry) back to front, ending at
/// WALK_END, crossing mount points up to the mount namespace's root (d_path
/// without the chroot cut-off). Returns (start offset, walked length).
#[inline(always)]
fn walk_path(vfsmnt: u64, dentry: u64) -> Result<(usize, u16), u8> {
    let mut state = WalkState {
        mount: vfsmnt - off!(mount_mnt),
        dentry,
        mnt_root: ptr(vfsmnt + off!(vfsmount_mnt_root))?,
        total: 0,
        status: WALK_RUNNING,
    };
    let walk = crate::WALK.get_ptr_mut(0).ok_or(RESOLVE_READ_FAILED)?;
    // SAFETY: this CPU's scratch slot.
    set_walk_pos(unsafe { &mut *walk }, WALK_END as u64);
    // SAFETY: walk_step matches bpf_loop's callback contract and only
    // touches `state` through the pointer it is given.
    unsafe {
        bpf_loop(
            WALK_MAX_DEPTH,
            walk_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    match state.status {
        WALK_DONE => {
            // SAFETY: this CPU's scratch slot.
            let walk = unsafe { &mut *walk };
            let mut pos = (walk_pos(walk) & 0xfff) as usize;
            if state.total == 0 {
                pos = WALK_END - 1;
                walk[pos] = b'/';
            }
            Ok((pos, (state.total.max(1)) as u16))
        }
        WALK_RUNNING => Err(RESOLVE_DEPTH_LIMIT),
        error => Err(error as u8),
    }
}

/// One step up the tree; returns 1 to stop the loop.
extern "C" fn walk_step(_index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the WalkState pointer walk_path gave it.
    let state = unsafe { &mut *ctx.cast::<WalkState>() };
    match step(state) {
        Ok(true) => 0,
        Ok(false) => {
            state.status = WALK_DONE;
            1
        }
        Err(error) => {
            state.status = error as u64;
            1
        }
    }
}

/// Ok(true) to go on, Ok(false) when the namespace root is reached.
#[inline(always)]
fn step(state: &mut WalkState) -> Result<bool, u8> {
    let optional = off!(optional) as u32;
    if state.dentry == state.mnt_root {
        let (parent, mountpoint) = if optional & OPT_MOUNT_PAIR != 0 {
            let [parent, mountpoint] = read::<[u64; 2]>(state.mount + off!(mount_mnt_parent))?;
            (parent, mountpoint)
        } else {
            (
                read::<u64>(state.mount + off!(mount_mnt_parent))?,
                read::<u64>(state.mount + off!(mount_mnt_mountpoint))?,
            )
        };
        if parent == 0 {
            return Err(RESOLVE_READ_FAILED);
        }
        if parent == state.mount {
            return Ok(false);
        }
        if mountpoint == 0 {
            return Err(RESOLVE_READ_FAILED);
        }
        state.dentry = mountpoint;
        state.mount = parent;
        state.mnt_root = ptr(parent + off!(mount_mnt) + off!(vfsmount_mnt_root))?;
        return Ok(true);
    }
    // d_parent, then d_name's hash_len (len in the high half) and name.
    let [parent, hash_len, name] = if optional & OPT_DENTRY_BLOCK != 0 {
        read::<[u64; 3]>(state.dentry + off!(dentry_d_parent))?
    } else {
        [
            read::<u64>(state.dentry + off!(dentry_d_parent))?,
            (read::<u32>(state.dentry + off!(dentry_d_name_len))? as u64) << 32,
            read::<u64>(state.dentry + off!(dentry_d_name_name))?,
        ]
    };
    if parent == 0 {
        return Err(RESOLVE_READ_FAILED);
    }
    if parent == state.dentry {
        return Ok(false);
    }
    if name == 0 {
        return Err(RESOLVE_READ_FAILED);
    }
    let len = hash_len >> 32;
    if len > NAME_MAX as u64 {
        return Err(RESOLVE_TOO_LONG);
    }
    let walk = crate::WALK.get_ptr_mut(0).ok_or(RESOLVE_READ_FAILED)?;
    // SAFETY: this CPU's scratch slot.
    let walk = unsafe { &mut *walk };
    let pos = walk_pos(walk).wrapping_sub(len + 1) & 0xfff;
    // SAFETY: (pos + 1) & 0x1fff < 4097 and len <= 255, inside WALK_CAP.
    let ret = unsafe {
        bpf_probe_read_kernel(
            walk.as_mut_ptr().add(((pos + 1) & 0x1fff) as usize).cast(),
            len as u32,
            name as *const _,
        )
    };
    if ret != 0 {
        return Err(RESOLVE_READ_FAILED);
    }
    walk[(pos & 0xfff) as usize] = b'/';
    set_walk_pos(walk, pos);
    state.total += len + 1;
    state.dentry = parent;
    Ok(true)
}

/// Copies walk[start..WALK_END] into the record as segment `seg`, noting
/// the walked length for the decoder's overflow check.
#[inline(always)]
fn append_walk(out: &mut OutRecord, seg: usize, walk: &Walk, (start, walked): (usize, u16)) {
    let start = start & 0xfff;
    let len = WALK_END - start;
    if seg < out.header.walked_len.len() {
        out.header.walked_len[seg] = walked;
    }
    // SAFETY: start <= 4095, so start + len == WALK_END <= WALK_CAP.
    append(out, seg, unsafe { walk.as_ptr().add(start) }, len);
}

/// Copies `len` bytes of kernel memory at `src` to the end of the record's
/// data as segment `seg`.
#[inline(always)]
pub fn append(out: &mut OutRecord, seg: usize, src: *const u8, len: usize) {
    let off = out.header.call.record_len as usize;
    if len > SEG_MAX || off > OUT_OFFSET_MASK || seg >= out.header.seg_len.len() {
        return;
    }
    // SAFETY: (off & OUT_OFFSET_MASK) + len <= 32767 + 4096 < OUT_DATA_CAP.
    let ret = unsafe {
        bpf_probe_read_kernel(
            out.data.as_mut_ptr().add(off & OUT_OFFSET_MASK).cast(),
            len as u32,
            src.cast(),
        )
    };
    if ret == 0 {
        out.header.seg_len[seg] = len as u16;
        out.header.call.record_len = (off + len) as u32;
    }
}

#[inline(always)]
fn process_context(task: u64) -> ProcessContext {
    let mut ctx = ProcessContext {
        auid: u32::MAX,
        sessionid: u32::MAX,
        cgroup_id: cgroup_id(task),
        ..Default::default()
    };
    if let Ok(parent) = load_ptr(task, off!(task_real_parent)) {
        ctx.ppid = load::<u32>(parent, off!(task_tgid));
        ctx.valid |= CTX_PPID;
    }
    let optional = off!(optional) as u32;
    if let Some([euid, egid, fsuid, fsgid]) = creds(task) {
        (ctx.euid, ctx.egid, ctx.fsuid, ctx.fsgid) = (euid, egid, fsuid, fsgid);
        ctx.valid |= CTX_CREDS;
    }
    if optional & CTX_AUDIT != 0 {
        // Two loads even when adjacent: one 8-byte load would span two
        // members, which the verifier refuses on a typed pointer.
        ctx.auid = load::<u32>(task, off!(task_loginuid));
        ctx.sessionid = load::<u32>(task, off!(task_sessionid));
        ctx.valid |= CTX_AUDIT;
    }
    if let Ok(nsproxy) = load_ptr(task, off!(task_nsproxy))
        && let Ok(mnt_ns) = load_ptr(nsproxy, off!(nsproxy_mnt_ns))
    {
        ctx.mnt_ns = load::<u32>(mnt_ns, off!(mnt_ns_inum));
        ctx.valid |= CTX_MNT_NS;
    }
    if let Ok(pid) = load_ptr(task, off!(task_thread_pid))
        && let Ok(inum) = pid_ns_inum(pid)
    {
        ctx.pid_ns = inum;
        ctx.valid |= CTX_PID_NS;
    }
    ctx
}

/// The id of the task's cgroup in the default hierarchy, as
/// bpf_get_current_cgroup_id gives it: task->cgroups->dfl_cgrp->kn->id.
#[inline(always)]
fn cgroup_id(task: u64) -> u64 {
    if off!(optional) as u32 & OPT_CGROUP_CHAIN == 0 {
        // SAFETY: plain helper call.
        return unsafe { bpf_get_current_cgroup_id() };
    }
    let kn = load_ptr(task, off!(task_cgroups))
        .and_then(|css_set| load_ptr(css_set, off!(css_set_dfl_cgrp)))
        .and_then(|cgroup| load_ptr(cgroup, off!(cgroup_kn)));
    match kn {
        Ok(kn) => load::<u64>(kn, off!(kernfs_node_id)),
        Err(_) => 0,
    }
}

/// The inode number of the pid namespace `pid` (typed) belongs to:
/// pid->numbers[pid->level].ns. A typed load needs a constant offset, so
/// the entries of the first three levels (host, container, nested
/// container) are all loaded and the right one picked (loading only the
/// one wanted lets the compiler fold the three into one load at a variable
/// offset, which the verifier refuses); deeper levels take
/// bpf_probe_read_kernel. Before Linux 6.5 numbers[] was declared with one
/// entry, and the verifier allows typed loads of that one only.
#[inline(always)]
fn pid_ns_inum(pid: u64) -> Result<u32, u8> {
    let level = load::<u32>(pid, off!(pid_level));
    let entry = |level: u64| off!(pid_numbers) + level * off!(upid_size) + off!(upid_ns);
    let host = load::<u64>(pid, entry(0));
    let typed = if off!(optional) as u32 & OPT_PID_FLEX == 0 {
        (level == 0).then_some(host)
    } else {
        let (inner, nested) = (load::<u64>(pid, entry(1)), load::<u64>(pid, entry(2)));
        match level {
            0 => Some(host),
            1 => Some(inner),
            2 => Some(nested),
            _ => None,
        }
    };
    let Some(ns) = typed else {
        if level >= 32 {
            return Err(RESOLVE_READ_FAILED);
        }
        let pid = untyped([pid, 0])?[0];
        let ns = ptr(pid + entry(level as u64))?;
        return read::<u32>(ns + off!(pid_ns_inum));
    };
    if ns == 0 {
        return Err(RESOLVE_READ_FAILED);
    }
    Ok(load::<u32>(ns, off!(pid_ns_inum)))
}

/// euid, egid, fsuid, fsgid from the task's cred.
#[inline(always)]
fn creds(task: u64) -> Option<[u32; 4]> {
    let cred = load_ptr(task, off!(task_cred)).ok()?;
    Some([
        load::<u32>(cred, off!(cred_euid)),
        load::<u32>(cred, off!(cred_egid)),
        load::<u32>(cred, off!(cred_fsuid)),
        load::<u32>(cred, off!(cred_fsgid)),
    ])
}

#[inline(always)]
fn file_facts(inode: u64) -> Result<FileFacts, u8> {
    let sb = ptr(inode + off!(inode_i_sb))?;
    Ok(FileFacts {
        ino: read::<u64>(inode + off!(inode_i_ino))?,
        dev: read::<u32>(sb + off!(sb_s_dev))?,
        mode: read::<u16>(inode + off!(inode_i_mode))? as u32,
        uid: read::<u32>(inode + off!(inode_i_uid))?,
        gid: read::<u32>(inode + off!(inode_i_gid))?,
        nlink: read::<u32>(inode + off!(inode_i_nlink))?,
        valid: 1,
    })
}

/// Appends the caller's executable path, walked once per process and then
/// served from EXE_CACHE while mm->exe_file stays the same file.
#[inline(always)]
fn add_exe(task: u64, out: &mut OutRecord, walk: &Walk) -> Result<(), u8> {
    let mm = load_ptr(task, off!(task_mm))?;
    let exe = load_ptr(mm, off!(mm_exe_file))?;
    let tgid = load::<u32>(task, off!(task_tgid));
    if let Some(entry) = crate::EXE_CACHE.get_ptr(tgid) {
        // SAFETY: a map value; a concurrent update only swaps in another
        // complete walk of the same process.
        let entry = unsafe { &*entry };
        if entry.exe_file == exe {
            out.header.walked_len[SEG_EXE] = entry.walked;
            append(out, SEG_EXE, entry.path.as_ptr(), entry.len as usize);
            return Ok(());
        }
    }
    let [mnt, dentry] = untyped([
        load_ptr(exe, off!(file_f_path) + off!(path_mnt))?,
        load_ptr(exe, off!(file_f_path) + off!(path_dentry))?,
    ])?;
    let (start, walked) = walk_path(mnt, dentry)?;
    append_walk(out, SEG_EXE, walk, (start, walked));
    let scratch = crate::EXE_SCRATCH
        .get_ptr_mut(0)
        .ok_or(RESOLVE_READ_FAILED)?;
    // SAFETY: this CPU's scratch slot.
    let scratch = unsafe { &mut *scratch };
    let start = start & 0xfff;
    let len = WALK_END - start;
    // SAFETY: start + len == WALK_END <= WALK_CAP; len <= PATH_KEEP_MAX.
    let ret = unsafe {
        bpf_probe_read_kernel(
            scratch.path.as_mut_ptr().cast(),
            len as u32,
            walk.as_ptr().add(start).cast(),
        )
    };
    if ret == 0 {
        (scratch.exe_file, scratch.len, scratch.walked) = (exe, len as u16, walked);
        let entry: &ExeCacheEntry = scratch;
        let _ = crate::EXE_CACHE.insert(tgid, entry, 0);
    }
    Ok(())
}

/// Re-reads one user argument at exit and, if it differs from what entry
/// saw, sets the TOCTOU bit and appends the exit-time value.
#[inline(always)]
fn recheck(call: &PendingCall, out: &mut OutRecord, walk: &mut Walk, old: bool) {
    let h = &call.header;
    let (arg, user, at, seg, changed, failed) = if old {
        (
            h.old,
            call.old_ptr,
            0usize,
            SEG_OLD_AT_EXIT,
            OLD_CHANGED_AT_EXIT,
            OLD_REREAD_FAILED,
        )
    } else {
        (
            h.new,
            call.new_ptr,
            h.old.len as usize,
            SEG_NEW_AT_EXIT,
            NEW_CHANGED_AT_EXIT,
            NEW_REREAD_FAILED,
        )
    };
    let unreadable_at_entry = arg.flags & PATH_READ_FAILED != 0;
    // SAFETY: walk has WALK_CAP >= PATH_READ_MAX bytes; any user pointer is fine.
    let ret = unsafe {
        bpf_probe_read_user_str(
            walk.as_mut_ptr().cast(),
            PATH_READ_MAX as u32,
            user as *const _,
        )
    };
    if ret < 0 {
        out.header.toctou |= failed;
        return;
    }
    let now_len = (ret as usize).saturating_sub(1).min(PATH_KEEP_MAX);
    // Unreadable at entry but readable now is a change too: it is how an
    // attacker blinds a tracer that reads only at entry.
    if !unreadable_at_entry && now_len == arg.len as usize && same_bytes(call, at, now_len) {
        return;
    }
    out.header.toctou |= changed;
    append(out, seg, walk.as_ptr(), now_len);
}

struct CompareState {
    entry: *const PendingCall,
    /// Offset of the argument in the entry's paths.
    at: u64,
    len: u64,
    equal: u64,
}

/// Whether call.paths[at..at+len] equals walk[..len]: unrolled for short
/// strings, 8 bytes per bpf_loop step for long ones (a plain loop that long
/// costs the verifier far too much).
#[inline(always)]
fn same_bytes(call: &PendingCall, at: usize, len: usize) -> bool {
    if at > PATH_KEEP_MAX || len > PATH_KEEP_MAX {
        return false;
    }
    // Most paths are short: compare them in straight-line code, and leave
    // bpf_loop (an indirect call per step) to the long ones.
    if len <= SHORT_COMPARE {
        let Some(walk) = crate::WALK.get_ptr(0) else {
            return false;
        };
        // SAFETY: this CPU's scratch slot.
        let walk = unsafe { &*walk };
        let mut diff = 0;
        for i in 0..SHORT_COMPARE / 8 {
            diff |= masked_word_diff(&call.paths, walk, at, i, len);
        }
        return diff == 0;
    }
    let mut state = CompareState {
        entry: call,
        at: at as u64,
        len: len as u64,
        equal: 1,
    };
    // SAFETY: compare_step matches bpf_loop's callback contract.
    unsafe {
        bpf_loop(
            len.div_ceil(8) as u32,
            compare_step as *mut c_void,
            (&raw mut state).cast(),
            0,
        )
    };
    state.equal == 1
}

extern "C" fn compare_step(index: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: bpf_loop passes back the CompareState pointer same_bytes gave it.
    let state = unsafe { &mut *ctx.cast::<CompareState>() };
    let Some(walk) = crate::WALK.get_ptr(0) else {
        state.equal = 0;
        return 1;
    };
    // SAFETY: the entry outlives the loop; WALK is this CPU's slot.
    let (entry, walk) = unsafe { (&*state.entry, &*walk) };
    let diff = masked_word_diff(
        &entry.paths,
        walk,
        state.at as usize,
        index as usize,
        state.len as usize,
    );
    if diff != 0 {
        state.equal = 0;
        return 1;
    }
    0
}

// 48, not 64: unrolled to 64 the compare's spills took link_exit's own
// stack to 480 bytes, and with walk_step's 48 past the 512 the verifier
// allows caller and callee together on kernels that give tracepoints no
// private stack (before 6.13, or a JIT without it): link_exit was refused
// ("combined stack size of 2 calls is 528"). At 48 it is 392.
const SHORT_COMPARE: usize = 48;

/// The differing bits of word `index` of the two strings, limited to the
/// first `len` bytes.
#[inline(always)]
fn masked_word_diff(paths: &[u8], walk: &Walk, at: usize, index: usize, len: usize) -> u64 {
    let offset = index * 8;
    let rest = len.saturating_sub(offset);
    let mask = if rest >= 8 {
        u64::MAX
    } else {
        (1u64 << (rest * 8)) - 1
    };
    let a = word(paths, (at + offset) & 0x1fff);
    let b = word(walk, offset & 0x1fff);
    (a ^ b) & mask
}

#[inline(always)]
fn word(bytes: &[u8], at: usize) -> u64 {
    match bytes.get(at..at + 8) {
        // SAFETY: eight bytes, read unaligned.
        Some(chunk) => unsafe { core::ptr::read_unaligned(chunk.as_ptr().cast::<u64>()) },
        None => 0,
    }
}
