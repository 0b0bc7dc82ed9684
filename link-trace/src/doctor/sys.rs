//! The raw system calls `doctor` probes the kernel with: bpf(2),
//! perf_event_open(2), the mount API (fsopen/fsmount), lsm_list_modules(2)
//! and uname(2).
//!
//! By hand because aya loads programs only from ELF objects, while these
//! probes load two-instruction programs against chosen BTF targets and must
//! tell which step failed with which errno (as `bpftool feature probe` does).
//! Every descriptor is an `OwnedFd`, so each is closed when its probe returns,
//! which also detaches whatever it attached.

use std::{
    ffi::CStr,
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

/// Which call failed, and how.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub step: &'static str,
    pub errno: i32,
    /// The verifier's first message, when it said something.
    pub log: Option<String>,
}

impl Failure {
    fn last(step: &'static str) -> Self {
        Failure {
            step,
            errno: std::io::Error::last_os_error().raw_os_error().unwrap_or(0),
            log: None,
        }
    }
}

/// A raw syscall return value as an owned descriptor, or the errno.
fn owned_fd(ret: libc::c_long, step: &'static str) -> Result<OwnedFd, Failure> {
    match libc::c_int::try_from(ret) {
        Ok(fd) if fd >= 0 => {
            // SAFETY: a descriptor the kernel has just created for us; nothing
            // else owns it.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        }
        _ => Err(Failure::last(step)),
    }
}

// bpf(2) commands, map, program and attach types (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_int = 0;
const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_RAW_TRACEPOINT_OPEN: libc::c_int = 17;
const BPF_LINK_CREATE: libc::c_int = 28;
const BPF_MAP_TYPE_RINGBUF: u32 = 27;
pub const BPF_PROG_TYPE_TRACEPOINT: u32 = 5;
pub const BPF_PROG_TYPE_TRACING: u32 = 26;
pub const BPF_PROG_TYPE_LSM: u32 = 29;
pub const BPF_TRACE_FENTRY: u32 = 24;
pub const BPF_LSM_MAC: u32 = 27;

/// `union bpf_attr` as bytes (144 is its size in Linux 6.18's uapi), each
/// field written at its uapi offset. A byte image rather than a mirror of the
/// union: a probe sets a handful of fields and every other byte must be zero,
/// which older kernels check for sizes beyond theirs.
#[repr(C, align(8))]
struct BpfAttr([u8; 144]);

impl BpfAttr {
    fn new() -> Self {
        BpfAttr([0; 144])
    }

    fn u32_at(mut self, offset: usize, value: u32) -> Self {
        self.0[offset..offset + 4].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn u64_at(mut self, offset: usize, value: u64) -> Self {
        self.0[offset..offset + 8].copy_from_slice(&value.to_ne_bytes());
        self
    }

    fn bytes_at(mut self, offset: usize, value: &[u8]) -> Self {
        self.0[offset..offset + value.len()].copy_from_slice(value);
        self
    }
}

fn sys_bpf(cmd: libc::c_int, mut attr: BpfAttr, step: &'static str) -> Result<OwnedFd, Failure> {
    // SAFETY: `attr` is a fully initialised bpf_attr image of the size
    // passed; the pointers written into it reference buffers the caller keeps
    // alive across this call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.0.as_mut_ptr(),
            attr.0.len() as libc::c_uint,
        )
    };
    owned_fd(ret, step)
}

/// A BPF_MAP_TYPE_RINGBUF of `bytes` (a power-of-two multiple of the page size).
pub fn create_ringbuf(bytes: u32) -> Result<OwnedFd, Failure> {
    // map_type @0, key_size @4, value_size @8, max_entries @12, map_name @28
    let attr = BpfAttr::new()
        .u32_at(0, BPF_MAP_TYPE_RINGBUF)
        .u32_at(12, bytes)
        .bytes_at(28, b"lt_doctor");
    sys_bpf(BPF_MAP_CREATE, attr, "map create")
}

/// What to load: the program type and, for BTF-attached types, the attach
/// type and the vmlinux BTF id of the target function.
#[derive(Debug, Clone, Copy)]
pub struct ProgramSpec {
    pub prog_type: u32,
    pub expected_attach_type: u32,
    pub attach_btf_id: u32,
}

/// `r0 = 0; exit`: the smallest program every type accepts (0 lets an LSM
/// hook allow the operation).
const RETURN_ZERO: [[u8; 8]; 2] = [
    [0xb7, 0, 0, 0, 0, 0, 0, 0], // BPF_ALU64 | BPF_MOV | BPF_K, r0, imm 0
    [0x95, 0, 0, 0, 0, 0, 0, 0], // BPF_JMP | BPF_EXIT
];

/// Loads `r0 = 0; exit` as `spec`; on failure, keeps the verifier's first
/// line of output.
pub fn load_program(spec: ProgramSpec) -> Result<OwnedFd, Failure> {
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // prog_type @0, insn_cnt @4, insns @8, license @16, log_level @24,
    // log_size @28, log_buf @32, prog_name @48, expected_attach_type @68,
    // attach_btf_id @108 (attach_btf_obj_fd @112 stays 0: vmlinux).
    let attr = BpfAttr::new()
        .u32_at(0, spec.prog_type)
        .u32_at(4, RETURN_ZERO.len() as u32)
        .u64_at(8, RETURN_ZERO.as_ptr() as u64)
        .u64_at(16, license.as_ptr() as u64)
        .u32_at(24, 1)
        .u32_at(28, log.len() as u32)
        .u64_at(32, log.as_mut_ptr() as u64)
        .bytes_at(48, b"lt_doctor")
        .u32_at(68, spec.expected_attach_type)
        .u32_at(108, spec.attach_btf_id);
    sys_bpf(BPF_PROG_LOAD, attr, "load").map_err(|mut failure| {
        failure.log = first_log_line(&log);
        failure
    })
}

fn first_log_line(log: &[u8]) -> Option<String> {
    let text = CStr::from_bytes_until_nul(log).ok()?.to_string_lossy();
    text.lines()
        .map(str::trim)
        .find(|line| !line.is_empty())
        .map(str::to_owned)
}

/// Attaches a loaded fentry/fexit/LSM program to the target it was loaded
/// for, as a BPF link (BPF_LINK_CREATE; BPF_RAW_TRACEPOINT_OPEN on kernels
/// without links for these types). The link is returned so the caller
/// decides when it goes.
pub fn attach_btf_program(program: &OwnedFd, attach_type: u32) -> Result<OwnedFd, Failure> {
    // link_create: prog_fd @0, target_fd @4 (0: the load-time target), attach_type @8
    let attr = BpfAttr::new()
        .u32_at(0, program.as_raw_fd() as u32)
        .u32_at(8, attach_type);
    match sys_bpf(BPF_LINK_CREATE, attr, "attach") {
        Err(failure) if failure.errno == libc::EINVAL => {
            // raw_tracepoint: name @0 (NULL: the load-time target), prog_fd @8
            let attr = BpfAttr::new().u32_at(8, program.as_raw_fd() as u32);
            sys_bpf(BPF_RAW_TRACEPOINT_OPEN, attr, "attach")
        }
        other => other,
    }
}

/// `struct perf_event_attr` as bytes (PERF_ATTR_SIZE_VER8, 136), for the
/// same reason as `BpfAttr`.
#[repr(C, align(8))]
struct PerfEventAttr([u8; 136]);

impl PerfEventAttr {
    /// type @0, size @4, config @8, sample_period @16, wakeup_events @48
    fn new(pmu_type: u32, config: u64) -> Self {
        const SIZE: usize = 136;
        let mut attr = PerfEventAttr([0; SIZE]);
        attr.0[0..4].copy_from_slice(&pmu_type.to_ne_bytes());
        attr.0[4..8].copy_from_slice(&(SIZE as u32).to_ne_bytes());
        attr.0[8..16].copy_from_slice(&config.to_ne_bytes());
        attr.0[16..24].copy_from_slice(&1u64.to_ne_bytes());
        attr.0[48..52].copy_from_slice(&1u32.to_ne_bytes());
        attr
    }

    /// config1 @56, config2 @64 (for a kprobe: the symbol and the offset in it)
    fn with_config1(mut self, config1: u64) -> Self {
        self.0[56..64].copy_from_slice(&config1.to_ne_bytes());
        self
    }
}

const PERF_TYPE_TRACEPOINT: u32 = 2;
const PERF_FLAG_FD_CLOEXEC: libc::c_ulong = 8;

/// A system-wide perf event (pid -1) on CPU 0, as aya opens them to attach
/// BPF programs.
fn perf_event_open(attr: &PerfEventAttr) -> Result<OwnedFd, Failure> {
    // SAFETY: `attr` is a valid perf_event_attr image of the size it states,
    // alive across the call; any pointer in it too (see callers).
    let ret = unsafe {
        libc::syscall(
            libc::SYS_perf_event_open,
            attr.0.as_ptr(),
            -1 as libc::pid_t,
            0 as libc::c_int,
            -1 as libc::c_int,
            PERF_FLAG_FD_CLOEXEC,
        )
    };
    owned_fd(ret, "perf_event_open")
}

/// Attaches `program` to the tracepoint with this id (from tracefs) the way
/// aya does, then closes the event again, which detaches it.
pub fn attach_tracepoint(program: &OwnedFd, tracepoint_id: u64) -> Result<(), Failure> {
    let event = perf_event_open(&PerfEventAttr::new(PERF_TYPE_TRACEPOINT, tracepoint_id))?;
    // SAFETY: both descriptors are open and owned here for the whole call.
    let ret = unsafe {
        libc::ioctl(
            event.as_raw_fd(),
            libc::_IOW::<u32>(b'$' as u32, 8), // PERF_EVENT_IOC_SET_BPF
            program.as_raw_fd(),
        )
    };
    if ret < 0 {
        return Err(Failure::last("attach"));
    }
    Ok(())
}

/// Opens (and closes) a kprobe perf event on `symbol` through the kprobe PMU
/// whose type is `pmu_type` (/sys/bus/event_source/devices/kprobe/type).
pub fn open_kprobe(pmu_type: u32, symbol: &CStr) -> Result<(), Failure> {
    // The symbol string outlives the call; config1 points at it.
    let attr = PerfEventAttr::new(pmu_type, 0).with_config1(symbol.as_ptr() as u64);
    perf_event_open(&attr).map(drop)
}

/// A mount of `fstype` that is attached nowhere (fsopen, fsconfig, fsmount):
/// its files can be read through the returned descriptor, no mount table
/// changes, and the mount is gone when the descriptor closes.
pub fn detached_mount(fstype: &CStr) -> Result<OwnedFd, Failure> {
    // SAFETY: a valid C string; plain flags.
    let context = owned_fd(
        unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), libc::FSOPEN_CLOEXEC) },
        "fsopen",
    )?;
    // SAFETY: no key or value for FSCONFIG_CMD_CREATE.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_fsconfig,
            context.as_raw_fd(),
            libc::FSCONFIG_CMD_CREATE,
            std::ptr::null::<libc::c_char>(),
            std::ptr::null::<libc::c_void>(),
            0,
        )
    };
    if ret < 0 {
        return Err(Failure::last("fsconfig"));
    }
    // SAFETY: an fs context descriptor we own; plain flags.
    owned_fd(
        unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                context.as_raw_fd(),
                libc::FSMOUNT_CLOEXEC,
                libc::MOUNT_ATTR_RDONLY,
            )
        },
        "fsmount",
    )
}

/// Moves this process into a mount namespace of its own whose mounts do not
/// propagate back: a mount made from here on is invisible to the host and
/// goes away with the process. Only while the process has a single thread.
pub fn private_mount_namespace() -> Result<(), Failure> {
    // SAFETY: plain flags; the caller runs single-threaded.
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } < 0 {
        return Err(Failure::last("unshare"));
    }
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|errno| Failure {
        step: "make / private",
        errno: errno as i32,
        log: None,
    })
}

/// Reads a small file below a directory descriptor (such as a detached mount).
pub fn read_at(dir: &OwnedFd, path: &str) -> std::io::Result<String> {
    let fd = nix::fcntl::openat(
        dir,
        path,
        nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    let mut text = String::new();
    std::fs::File::from(fd).read_to_string(&mut text)?;
    Ok(text)
}

/// lsm_list_modules(2), Linux 6.8: the ids of the active LSMs, needing no
/// privilege. 461 on every architecture (the tables are shared from 424 on;
/// libc does not name it yet).
pub fn lsm_list_modules() -> Result<Vec<u64>, Failure> {
    const SYS_LSM_LIST_MODULES: libc::c_long = 461;
    let mut ids = [0u64; 64];
    let mut size = std::mem::size_of_val(&ids) as u32;
    // SAFETY: `ids` has `size` writable bytes; `size` is a valid in/out u32.
    let count = unsafe {
        libc::syscall(
            SYS_LSM_LIST_MODULES,
            ids.as_mut_ptr(),
            &mut size as *mut u32,
            0u32,
        )
    };
    let count = usize::try_from(count).map_err(|_| Failure::last("lsm_list_modules"))?;
    Ok(ids.get(..count).unwrap_or(&ids).to_vec())
}

/// Kernel release and machine, from uname(2).
pub fn uname() -> Result<(String, String), Failure> {
    // SAFETY: utsname is plain bytes; all-zero is a valid value.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::uname(&mut names) } < 0 {
        return Err(Failure::last("uname"));
    }
    let field = |raw: &[libc::c_char]| {
        let bytes: Vec<u8> = raw
            .iter()
            .map(|&c| c as u8)
            .take_while(|&b| b != 0)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    Ok((field(&names.release), field(&names.machine)))
}

/// RLIMIT_MEMLOCK's soft limit in bytes (None: unlimited).
pub fn memlock_limit() -> Result<Option<u64>, Failure> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } < 0 {
        return Err(Failure::last("getrlimit"));
    }
    Ok((limit.rlim_cur != libc::RLIM_INFINITY).then_some(limit.rlim_cur))
}
