//! Drops every capability the daemon no longer needs once its programs are
//! loaded and attached.
//!
//! Loading and attaching need CAP_BPF and CAP_PERFMON (and CAP_SYS_ADMIN to
//! mount tracefs when it is not mounted). After that the daemon only:
//!
//! * reads the ring buffers through memory mapped at load time, and the
//!   per-CPU stats map with BPF_MAP_LOOKUP_ELEM on a map fd it already holds.
//!   Since Linux 6.5 `kernel.unprivileged_bpf_disabled` only guards map and
//!   program creation, and a lookup on a held fd needs no capability (tested
//!   on 6.18 with the sysctl at 2: the loss and stats records are still
//!   there). Before 6.5 the sysctl refused every bpf(2) command without
//!   CAP_BPF, so on such a kernel with the sysctl set CAP_BPF is kept too;
//! * detaches the programs at exit by closing their link fds;
//! * stats the linked files by path, realpaths their directories, walks the
//!   cgroup2 tree, and rereads rule files on SIGHUP: **CAP_DAC_READ_SEARCH**,
//!   or a directory a user keeps 0700 hides its files from the daemon (it
//!   still runs as uid 0, but without capabilities uid 0 is just the owner of
//!   root's files);
//! * looks paths up through `/proc/<pid>/root` (callers in another mount
//!   namespace) and `/proc/<pid>/fd` (`/proc/self/fd/N` arguments):
//!   **CAP_SYS_PTRACE**, because the kernel lets a process into another's
//!   `/proc/<pid>/{root,cwd,fd,exe}` only when it could ptrace-read it, and a
//!   process without capabilities cannot ptrace-read one with more, root
//!   included (`cap_ptrace_access_check`);
//! * writes its output to stdout, files, sockets and ports it opens as root
//!   in root-owned directories: no capability.
//!
//! Capabilities belong to threads, not processes: the drop applies to the
//! calling thread and to the threads it starts afterwards, so it must run
//! before the daemon starts any other thread; it refuses to run otherwise.

use std::{fmt, path::Path};

use caps::{CapSet, Capability, CapsHashSet};

/// What the daemon keeps after attach; see the module documentation for why.
pub const KEEP: [Capability; 2] = [Capability::CAP_DAC_READ_SEARCH, Capability::CAP_SYS_PTRACE];

/// Why CAP_BPF is kept as well, when it is.
const BPF_KEPT_BECAUSE: &str = "reading the stats map needs CAP_BPF before Linux 6.5 with kernel.unprivileged_bpf_disabled set";

/// Whether bpf(2) on a map fd the daemon holds needs CAP_BPF on this kernel
/// (`osrelease` as in /proc/sys/kernel/osrelease, `unprivileged_bpf_disabled`
/// that sysctl's value). Unknown counts as needed: losing the loss counters
/// would break the promise that every lost event is reported.
fn map_reads_need_cap_bpf(
    osrelease: Option<&str>,
    unprivileged_bpf_disabled: Option<&str>,
) -> bool {
    if unprivileged_bpf_disabled.map(str::trim) == Some("0") {
        return false;
    }
    let version = osrelease.and_then(|release| {
        let mut parts = release.trim().split(|c: char| !c.is_ascii_digit());
        let major: u32 = parts.next()?.parse().ok()?;
        let minor: u32 = parts.next()?.parse().ok()?;
        Some((major, minor))
    });
    version.is_none_or(|version| version < (6, 5))
}

#[derive(Debug, thiserror::Error)]
pub enum PrivilegeError {
    #[error(
        "cannot drop capabilities: {count} other threads already run ({names}) and would keep theirs; capabilities are per thread"
    )]
    OtherThreads { count: usize, names: String },
    #[error("cannot set no_new_privs: {0}")]
    NoNewPrivs(#[source] nix::Error),
    #[error("cannot {action}: {source}")]
    Caps {
        action: &'static str,
        #[source]
        source: caps::errors::CapsError,
    },
    #[error("cannot read {path}: {source}")]
    Status {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot parse {0} in /proc/self/status")]
    StatusField(&'static str),
    #[error("capabilities left after the drop are not the ones kept: {0}")]
    Verify(String),
}

/// What the drop left.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    /// Effective and permitted after the drop, by number (inheritable and
    /// ambient are empty).
    pub capabilities: Vec<Capability>,
    /// The bounding set was reduced to `capabilities` (needs CAP_SETPCAP).
    pub bounding_reduced: bool,
    /// The process held any capability before, so something was dropped.
    pub dropped: bool,
    /// Why more than [`KEEP`] was kept.
    pub note: Option<&'static str>,
}

impl fmt::Display for Kept {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.dropped {
            return write!(f, "held no capabilities, nothing to drop; no_new_privs set");
        }
        let names: Vec<String> = self.capabilities.iter().map(|c| c.to_string()).collect();
        let kept = if names.is_empty() {
            "none".to_owned()
        } else {
            names.join(", ")
        };
        write!(f, "dropped capabilities after attach; kept {kept}")?;
        if let Some(note) = self.note {
            write!(f, " ({note})")?;
        }
        if self.bounding_reduced {
            write!(f, " (bounding set reduced too)")?;
        } else {
            write!(f, " (bounding set unchanged: no CAP_SETPCAP)")?;
        }
        write!(f, "; no_new_privs set")
    }
}

/// The five capability sets and no_new_privs of a task, as
/// `/proc/<pid>/status` shows them (bit N is capability N).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskCaps {
    pub inheritable: u64,
    pub permitted: u64,
    pub effective: u64,
    pub bounding: u64,
    pub ambient: u64,
    pub no_new_privs: bool,
}

impl TaskCaps {
    /// Parses the text of `/proc/<pid>/status` or `/proc/<pid>/task/<tid>/status`.
    pub fn parse(status: &str) -> Result<TaskCaps, PrivilegeError> {
        let field = |name: &'static str| {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
                .map(str::trim)
                .ok_or(PrivilegeError::StatusField(name))
        };
        let mask = |name: &'static str| {
            u64::from_str_radix(field(name)?, 16).map_err(|_| PrivilegeError::StatusField(name))
        };
        Ok(TaskCaps {
            inheritable: mask("CapInh")?,
            permitted: mask("CapPrm")?,
            effective: mask("CapEff")?,
            bounding: mask("CapBnd")?,
            ambient: mask("CapAmb")?,
            no_new_privs: field("NoNewPrivs")? == "1",
        })
    }

    pub fn read(status_path: &Path) -> Result<TaskCaps, PrivilegeError> {
        let text =
            std::fs::read_to_string(status_path).map_err(|source| PrivilegeError::Status {
                path: status_path.display().to_string(),
                source,
            })?;
        Self::parse(&text)
    }
}

/// The bit mask of a set of capabilities, as `/proc/<pid>/status` shows it.
pub fn mask<'a>(capabilities: impl IntoIterator<Item = &'a Capability>) -> u64 {
    capabilities.into_iter().map(Capability::bitmask).sum()
}

fn caps_err(action: &'static str) -> impl FnOnce(caps::errors::CapsError) -> PrivilegeError {
    move |source| PrivilegeError::Caps { action, source }
}

/// Fails unless the calling thread is the process's only one.
fn ensure_single_thread() -> Result<(), PrivilegeError> {
    let tasks = Path::new("/proc/thread-self/..");
    let entries = std::fs::read_dir(tasks).map_err(|source| PrivilegeError::Status {
        path: tasks.display().to_string(),
        source,
    })?;
    let own = nix::unistd::gettid().to_string();
    let others: Vec<String> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|tid| *tid != own)
        .map(|tid| {
            let comm = std::fs::read_to_string(tasks.join(&tid).join("comm")).unwrap_or_default();
            format!("{tid} {}", comm.trim_end())
        })
        .collect();
    if others.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::OtherThreads {
            count: others.len(),
            names: others.join(", "),
        })
    }
}

/// Drops every capability but [`KEEP`] from the effective, permitted,
/// inheritable and ambient sets and, with CAP_SETPCAP, the bounding set,
/// and sets no_new_privs. Without capabilities (not root) there is nothing
/// to drop and that is not an error.
pub fn drop_after_attach() -> Result<Kept, PrivilegeError> {
    ensure_single_thread()?;
    // Nothing this process or its children execute can gain privileges.
    nix::sys::prctl::set_no_new_privs().map_err(PrivilegeError::NoNewPrivs)?;

    let permitted =
        caps::read(None, CapSet::Permitted).map_err(caps_err("read the permitted set"))?;
    let read = |path| std::fs::read_to_string(path).ok();
    let keep_bpf = map_reads_need_cap_bpf(
        read("/proc/sys/kernel/osrelease").as_deref(),
        read("/proc/sys/kernel/unprivileged_bpf_disabled").as_deref(),
    );
    let keep: CapsHashSet = KEEP
        .iter()
        .copied()
        .chain(keep_bpf.then_some(Capability::CAP_BPF))
        .filter(|c| permitted.contains(c))
        .collect();
    let bounding = caps::read(None, CapSet::Bounding).map_err(caps_err("read the bounding set"))?;
    let effective =
        caps::read(None, CapSet::Effective).map_err(caps_err("read the effective set"))?;

    // PR_CAPBSET_DROP needs CAP_SETPCAP in the effective set, so the bounding
    // set goes first, while it is still there.
    let bounding_reduced = effective.contains(&Capability::CAP_SETPCAP);
    if bounding_reduced {
        for capability in bounding.difference(&keep) {
            caps::drop(None, CapSet::Bounding, *capability)
                .map_err(caps_err("drop from the bounding set"))?;
        }
    }
    caps::clear(None, CapSet::Ambient).map_err(caps_err("clear the ambient set"))?;
    caps::clear(None, CapSet::Inheritable).map_err(caps_err("clear the inheritable set"))?;
    // Effective must stay a subset of permitted: lower it first.
    caps::set(None, CapSet::Effective, &keep).map_err(caps_err("set the effective set"))?;
    caps::set(None, CapSet::Permitted, &keep).map_err(caps_err("set the permitted set"))?;

    let mut capabilities: Vec<Capability> = keep.into_iter().collect();
    capabilities.sort_by_key(Capability::index);
    let kept = Kept {
        note: capabilities
            .contains(&Capability::CAP_BPF)
            .then_some(BPF_KEPT_BECAUSE),
        capabilities,
        bounding_reduced,
        dropped: !permitted.is_empty(),
    };
    verify(&kept)?;
    Ok(kept)
}

/// Reads back what the kernel now holds for this thread.
fn verify(kept: &Kept) -> Result<(), PrivilegeError> {
    let now = TaskCaps::read(Path::new("/proc/thread-self/status"))?;
    let want = mask(&kept.capabilities);
    let mut wrong = Vec::new();
    for (name, got, expected) in [
        ("effective", now.effective, want),
        ("permitted", now.permitted, want),
        ("inheritable", now.inheritable, 0),
        ("ambient", now.ambient, 0),
    ] {
        if got != expected {
            wrong.push(format!("{name} {got:#x}, expected {expected:#x}"));
        }
    }
    // Only the capabilities this build knows can be named and dropped; a
    // newer kernel's extra ones stay in the bounding set, where no_new_privs
    // makes them worthless (they could only be gained through execve).
    let known = mask(&caps::all());
    if kept.bounding_reduced && now.bounding & known != want {
        wrong.push(format!(
            "bounding {:#x}, expected {want:#x}",
            now.bounding & known
        ));
    }
    if !now.no_new_privs {
        wrong.push("no_new_privs is not set".to_owned());
    }
    if wrong.is_empty() {
        Ok(())
    } else {
        Err(PrivilegeError::Verify(wrong.join("; ")))
    }
}

/// Runs the calling thread, and so every thread it starts later, at nice
/// `-boost` (like auditd's `priority_boost`): under a flood of links the
/// consumer then gets the CPU before the generators, instead of the ring
/// filling up. Call it while the process has one thread and still holds
/// CAP_SYS_NICE. A priority already at least as high (systemd's `Nice=`) is
/// left alone. Returns a line for stderr saying what happened.
pub fn boost_priority(boost: u8) -> String {
    if boost == 0 {
        return "link-trace: priority unchanged (priority_boost 0)".to_owned();
    }
    let target = -i32::from(boost);
    // getpriority may legitimately return -1, so errno is cleared first and
    // checked after.
    nix::errno::Errno::clear();
    // SAFETY: getpriority/setpriority on the calling thread (who = 0) only
    // read or set its nice value.
    let current = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
    if current <= target && nix::errno::Errno::last_raw() == 0 {
        return format!("link-trace: running at nice {current} (already at or above the boost)");
    }
    // SAFETY: as above.
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } == 0 {
        format!("link-trace: running at nice {target} (priority_boost {boost})")
    } else {
        format!(
            "link-trace: warning: could not raise the priority to nice {target} ({}); under a flood the ring may fill sooner",
            std::io::Error::last_os_error()
        )
    }
}

/// Drops capabilities unless told to keep them, and says what it did on
/// stderr (one line).
pub fn drop_unless_kept(keep_all: bool) -> Result<(), PrivilegeError> {
    if keep_all {
        eprintln!("link-trace: --keep-capabilities: keeping every capability");
        return Ok(());
    }
    let kept = drop_after_attach()?;
    eprintln!("link-trace: {kept}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS: &str = "Name:\tlink-trace\nUmask:\t0022\nState:\tS (sleeping)\n\
        NoNewPrivs:\t1\nSeccomp:\t0\nCapInh:\t0000000000000000\nCapPrm:\t0000000000080004\n\
        CapEff:\t0000000000080004\nCapBnd:\t0000000000080004\nCapAmb:\t0000000000000000\n";

    #[test]
    fn parses_the_capability_lines_of_proc_status() {
        let caps = TaskCaps::parse(STATUS).unwrap();
        assert_eq!(caps.effective, mask(&KEEP));
        assert_eq!(
            caps,
            TaskCaps {
                inheritable: 0,
                permitted: 0x80004,
                effective: 0x80004,
                bounding: 0x80004,
                ambient: 0,
                no_new_privs: true,
            }
        );
        assert!(matches!(
            TaskCaps::parse("CapInh:\tzz\n"),
            Err(PrivilegeError::StatusField("CapInh"))
        ));
        assert!(matches!(
            TaskCaps::parse(&STATUS.replace("CapAmb", "Other")),
            Err(PrivilegeError::StatusField("CapAmb"))
        ));
    }

    #[test]
    fn says_what_it_kept() {
        let kept = Kept {
            capabilities: KEEP.to_vec(),
            bounding_reduced: true,
            dropped: true,
            note: None,
        };
        assert_eq!(
            kept.to_string(),
            "dropped capabilities after attach; kept CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE (bounding set reduced too); no_new_privs set"
        );
        let nothing = Kept {
            capabilities: Vec::new(),
            bounding_reduced: false,
            dropped: false,
            note: None,
        };
        assert!(nothing.to_string().starts_with("held no capabilities"));
    }

    #[test]
    fn cap_bpf_is_kept_only_where_map_reads_need_it() {
        let need = |release, sysctl| map_reads_need_cap_bpf(release, sysctl);
        assert!(!need(Some("6.18.44-fc-v669\n"), Some("2\n")));
        assert!(!need(Some("6.5.0"), Some("1")));
        assert!(need(Some("6.4.16-generic"), Some("2")));
        assert!(need(Some("5.17.0"), Some("1")));
        assert!(!need(Some("5.17.0"), Some("0")), "unprivileged BPF allowed");
        assert!(need(Some("garbage"), Some("2")), "unknown release: keep it");
        assert!(need(None, None), "nothing known: keep it");
        assert!(!need(None, Some("0")));
    }
}
