//! Loads the eBPF object, configures its filters and attaches the tracepoints.

use std::path::Path;

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::TracePoint,
};
use link_trace_common::{
    FILTER_COMM, FILTER_TGID, FILTER_UID, KernelOffsets, PendingCall, RECORD_CONTEXT, SyscallId,
    TASK_COMM_LEN,
};

use crate::{config::Settings, rules::SyscallSet};

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "link-trace must run as root (it loads eBPF programs and attaches tracepoints); try: sudo link-trace"
    )]
    NotRoot,
    #[error("tracefs is not available and could not be mounted at /sys/kernel/tracing: {0}")]
    NoTracefs(String),
    #[error("tracepoint syscalls:{0} does not exist on this kernel (CONFIG_FTRACE_SYSCALLS off?)")]
    MissingTracepoint(&'static str),
    #[error("the kernel refused link-trace's eBPF object: {0}")]
    Load(String),
    #[error("could not {action}: {detail}")]
    Setup { action: String, detail: String },
}

fn setup_err(action: impl Into<String>) -> impl FnOnce(String) -> LoadError {
    let action = action.into();
    move |detail| LoadError::Setup { action, detail }
}

/// (program in the object, tracepoint name in the `syscalls` category)
/// One exit program serves both syscalls.
const ATTACHMENTS: [(&str, &[&str]); 3] = [
    ("link_enter", &["sys_enter_link"]),
    ("linkat_enter", &["sys_enter_linkat"]),
    ("link_exit", &["sys_exit_link", "sys_exit_linkat"]),
];

/// (program, tracepoint in the `sched` category): free a thread's in-flight
/// slot when it exits, and the slot under its old id when an exec gives a
/// thread its leader's id.
const SLOT_RELEASE: [(&str, &str); 2] = [
    ("task_exit", "sched_process_exit"),
    ("task_exec", "sched_process_exec"),
];

/// The context syscalls: (syscall, entry program, entry and exit tracepoint).
/// Their exits go to the link exit program, already loaded. Loaded and
/// attached on demand (`ContextProbes::attach`), so a run that needs none
/// pays neither their verification nor their probes on every unlink.
const CONTEXT_ATTACHMENTS: [(SyscallId, &str, &str, &str); 5] = [
    (
        SyscallId::Unlink,
        "unlink_enter",
        "sys_enter_unlink",
        "sys_exit_unlink",
    ),
    (
        SyscallId::Unlinkat,
        "unlinkat_enter",
        "sys_enter_unlinkat",
        "sys_exit_unlinkat",
    ),
    (
        SyscallId::Rename,
        "rename_enter",
        "sys_enter_rename",
        "sys_exit_rename",
    ),
    (
        SyscallId::Renameat,
        "renameat_enter",
        "sys_enter_renameat",
        "sys_exit_renameat",
    ),
    (
        SyscallId::Renameat2,
        "renameat2_enter",
        "sys_enter_renameat2",
        "sys_exit_renameat2",
    ),
];
const CONTEXT_EXIT: &str = "link_exit";

/// link(2)'s number, for the exit program's loss accounting; the newer
/// architectures have only linkat.
#[cfg(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm"))]
const LINK_NR: i32 = libc::SYS_link as i32;
#[cfg(not(any(target_arch = "x86_64", target_arch = "x86", target_arch = "arm")))]
const LINK_NR: i32 = -1;

/// The loaded programs. Dropping `programs` detaches every tracepoint; the
/// maps taken out of it stay usable, so the ring can be drained afterwards.
pub struct Tracer {
    pub programs: Option<Ebpf>,
    pub ring: RingBuf<MapData>,
    pub stats: PerCpuArray<MapData, u64>,
    pub context: ContextProbes,
    /// The calls in flight, for the enrich stage's mismatch verdicts.
    pub inflight: Option<InflightSlots>,
}

/// The kernel's in-flight map (one slot per thread between a call's entry
/// and exit), read to tell whether a thread is inside a rename.
pub struct InflightSlots(aya::maps::HashMap<MapData, u64, PendingCall>);

impl crate::enrich::RenameInFlight for InflightSlots {
    fn renaming(&self, tgid: u32, tid: u32) -> bool {
        let key = (u64::from(tgid) << 32) | u64::from(tid);
        // A missing slot or a failed read: not renaming, as far as known.
        self.0.get(&key, 0).is_ok_and(|call| {
            call.header.record_type == RECORD_CONTEXT
                && SyscallId::try_from(call.header.syscall).is_ok_and(|s| {
                    matches!(
                        s,
                        SyscallId::Rename | SyscallId::Renameat | SyscallId::Renameat2
                    )
                })
        })
    }
}

impl Tracer {
    /// Each loaded program's name and the instructions the kernel's
    /// verifier processed to accept it (None where the kernel does not say,
    /// before 5.16): what start-up time mostly goes to.
    pub fn verified_instructions(&self) -> Vec<(String, Option<u32>)> {
        let Some(ebpf) = &self.programs else {
            return Vec::new();
        };
        let mut counts: Vec<(String, Option<u32>)> = ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((name.to_owned(), info.verified_instruction_count()))
            })
            .collect();
        counts.sort();
        counts
    }
}

/// Which context syscalls (unlink, rename) are captured.
#[derive(Debug, Default)]
pub struct ContextProbes {
    /// Context syscalls whose tracepoints are attached.
    pub attached: SyscallSet,
    /// Context syscalls this kernel has no tracepoints for (e.g. unlink and
    /// rename on arm64, which only has the *at forms).
    pub unavailable: SyscallSet,
}

impl ContextProbes {
    /// Loads and attaches the programs of the context syscalls in `wanted`
    /// that are not attached yet (entry before exit, so no exit of a traced
    /// call goes unmatched because of the order); returns those it attached.
    /// Syscalls without tracepoints here are skipped and remembered in
    /// `unavailable`. Nothing is detached: a syscall attached once stays
    /// attached for the run. `programs` is the tracer's (None once detached).
    /// The exit program is the link exit, loaded by `load`.
    pub fn attach(
        &mut self,
        programs: Option<&mut Ebpf>,
        wanted: SyscallSet,
    ) -> Result<SyscallSet, LoadError> {
        let Some(ebpf) = programs else {
            return Ok(SyscallSet::EMPTY);
        };
        let missing = wanted
            .intersection(SyscallSet::CONTEXT)
            .without(self.attached)
            .without(self.unavailable);
        let mut attached = SyscallSet::EMPTY;
        for (syscall, program, enter, exit) in CONTEXT_ATTACHMENTS {
            if !missing.overlaps(SyscallSet::of(syscall)) {
                continue;
            }
            if !tracepoint_exists(enter) || !tracepoint_exists(exit) {
                self.unavailable = self.unavailable.union(SyscallSet::of(syscall));
                continue;
            }
            attach_program(ebpf, program, &[enter], true)?;
            attach_program(ebpf, CONTEXT_EXIT, &[exit], false)?;
            attached = attached.union(SyscallSet::of(syscall));
        }
        self.attached = self.attached.union(attached);
        Ok(attached)
    }
}

/// Where syscall tracepoints live; aya looks in both places.
fn tracefs_ready() -> bool {
    [
        "/sys/kernel/tracing/events/syscalls",
        "/sys/kernel/debug/tracing/events/syscalls",
    ]
    .iter()
    .any(|dir| Path::new(dir).is_dir())
        || Path::new("/sys/kernel/tracing/events").is_dir()
}

/// Mounts tracefs at /sys/kernel/tracing unless it is there already.
pub fn ensure_tracefs() -> Result<(), LoadError> {
    if tracefs_ready() {
        return Ok(());
    }
    nix::mount::mount(
        Some("tracefs"),
        "/sys/kernel/tracing",
        Some("tracefs"),
        nix::mount::MsFlags::empty(),
        None::<&str>,
    )
    .map_err(|e| LoadError::NoTracefs(e.to_string()))?;
    if tracefs_ready() {
        Ok(())
    } else {
        Err(LoadError::NoTracefs("no events directory".into()))
    }
}

fn tracepoint_exists(name: &str) -> bool {
    [
        "/sys/kernel/tracing/events/syscalls",
        "/sys/kernel/debug/tracing/events/syscalls",
    ]
    .iter()
    .any(|dir| Path::new(dir).join(name).is_dir())
}

pub fn load(cli: &Settings) -> Result<Tracer, LoadError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(LoadError::NotRoot);
    }
    ensure_tracefs()?;
    for tracepoint in ATTACHMENTS
        .iter()
        .flat_map(|(_, tracepoints)| tracepoints.iter())
    {
        if !tracepoint_exists(tracepoint) {
            return Err(LoadError::MissingTracepoint(tracepoint));
        }
    }

    let tracer_tgid = std::process::id();
    let mut filter_flags = 0u32;
    for (flag, active) in [
        (FILTER_TGID, !cli.pids.is_empty()),
        (FILTER_UID, !cli.uids.is_empty()),
        (FILTER_COMM, !cli.comms.is_empty()),
    ] {
        if active {
            filter_flags |= flag;
        }
    }
    // Kernel struct layouts from this kernel's BTF. Without BTF the programs
    // still capture every call; they just resolve nothing (events say why).
    let offsets = match crate::btf::Btf::from_sys_fs()
        .and_then(|btf| crate::btf::kernel_offsets(&btf))
    {
        Ok(offsets) => offsets,
        Err(e) => {
            eprintln!(
                "link-trace: warning: {e}; paths will not be resolved and process context is limited"
            );
            KernelOffsets::default()
        }
    };
    // OUT is indexed by CPU id. The possible-CPU mask is contiguous from 0 in
    // practice; a CPU id beyond it would fail its lookup, which is counted
    // (scratch_unavailable), never silent.
    let cpu_slots = aya::util::nr_cpus()
        .map_err(|(_, e)| setup_err("count possible CPUs")(e.to_string()))?
        as u32;
    let mut ebpf = EbpfLoader::new()
        .override_global("OFFSETS", &offsets, true)
        .map_max_entries("OUT", cpu_slots)
        .override_global("TRACER_TGID", &tracer_tgid, true)
        .override_global("LINK_NR", &LINK_NR, true)
        .override_global("LINKAT_NR", &(libc::SYS_linkat as i32), true)
        .override_global("FILTER_FLAGS", &filter_flags, true)
        .map_max_entries("EVENTS", cli.ring_bytes)
        .load(aya::include_bytes_aligned!(concat!(
            env!("OUT_DIR"),
            "/link-trace"
        )))
        .map_err(|e| LoadError::Load(crate::error_chain(&e)))?;

    crate::klog::start(&mut ebpf);
    fill_set(&mut ebpf, "FILTER_TGIDS", &cli.pids)?;
    fill_set(&mut ebpf, "FILTER_UIDS", &cli.uids)?;
    fill_set::<[u8; TASK_COMM_LEN]>(&mut ebpf, "FILTER_COMMS", &cli.comms)?;

    let ring = take_map(&mut ebpf, "EVENTS", RingBuf::try_from)?;
    // Only a refinement of the mismatch verdicts: without it they keep
    // their time margins.
    let inflight = take_map(&mut ebpf, "INFLIGHT", aya::maps::HashMap::try_from)
        .map(InflightSlots)
        .inspect_err(|e| {
            eprintln!("link-trace: warning: in-flight map not readable ({e}); a rename preempted past 5 ms may leave an inode mismatch unexplained")
        })
        .ok();
    let stats = take_map(&mut ebpf, "STATS", PerCpuArray::try_from)?;

    // Before the entries: every slot an entry makes is then freed at exit.
    // Only a safeguard: without it, tracing still works and an evicted
    // call is still counted, so a kernel that refuses it gets a warning.
    for (program, tracepoint) in SLOT_RELEASE {
        if let Err(e) = attach_in(&mut ebpf, "sched", program, &[tracepoint], true) {
            eprintln!(
                "link-trace: warning: in-flight slots are not freed at {tracepoint} ({e}); \
                 under heavy thread churn a call can be lost (counted as exit_without_enter)"
            );
        }
    }
    for (program, tracepoints) in ATTACHMENTS {
        attach_program(&mut ebpf, program, tracepoints, true)?;
    }
    Ok(Tracer {
        programs: Some(ebpf),
        ring,
        stats,
        context: ContextProbes::default(),
        inflight,
    })
}

/// Loads `program` (the kernel verifies it) when `load` is set, and
/// attaches it to each of `tracepoints` in the `syscalls` category.
fn attach_program(
    ebpf: &mut Ebpf,
    program: &str,
    tracepoints: &[&str],
    load: bool,
) -> Result<(), LoadError> {
    attach_in(ebpf, "syscalls", program, tracepoints, load)
}

/// As `attach_program`, for tracepoints of `category`.
fn attach_in(
    ebpf: &mut Ebpf,
    category: &str,
    program: &str,
    tracepoints: &[&str],
    load: bool,
) -> Result<(), LoadError> {
    let prog: &mut TracePoint = ebpf
        .program_mut(program)
        .ok_or_else(|| LoadError::Load(format!("program {program} missing from the object")))?
        .try_into()
        .map_err(|e| LoadError::Load(crate::error_chain(&e)))?;
    if load {
        prog.load()
            .map_err(|e| LoadError::Load(format!("{program}: {}", crate::error_chain(&e))))?;
    }
    for tracepoint in tracepoints {
        prog.attach(category, tracepoint).map_err(|e| {
            setup_err(format!("attach {category}:{tracepoint}"))(crate::error_chain(&e))
        })?;
    }
    Ok(())
}

fn take_map<T, E: std::error::Error + 'static>(
    ebpf: &mut Ebpf,
    name: &str,
    convert: impl FnOnce(aya::maps::Map) -> Result<T, E>,
) -> Result<T, LoadError> {
    let map = ebpf
        .take_map(name)
        .ok_or_else(|| LoadError::Load(format!("map {name} missing from the object")))?;
    convert(map).map_err(|e| setup_err(format!("open map {name}"))(crate::error_chain(&e)))
}

fn fill_set<K: aya::Pod>(ebpf: &mut Ebpf, name: &str, keys: &[K]) -> Result<(), LoadError> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| LoadError::Load(format!("map {name} missing from the object")))?;
    let mut set: HashMap<_, K, u8> = HashMap::try_from(map)
        .map_err(|e| setup_err(format!("open map {name}"))(crate::error_chain(&e)))?;
    for key in keys {
        set.insert(key, 1, 0)
            .map_err(|e| setup_err(format!("fill filter map {name}"))(crate::error_chain(&e)))?;
    }
    Ok(())
}
