//! `link-trace doctor`: what will and won't work on this host, from real
//! probes rather than version numbers: the kernel's BTF read by our own
//! reader, tracefs and the four tracepoints, privileges, and bpf(2) calls
//! that create a ring buffer and load and attach small programs (tracepoint,
//! fentry, BPF LSM), then link-trace's own programs. It changes nothing on the
//! host: mounts it needs are detached ones, and everything it loads or
//! attaches is closed again before it returns.

mod sys;

use std::{
    io::Write,
    os::fd::OwnedFd,
    path::{Path, PathBuf},
    time::Instant,
};

use aya::{
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, is_helper_supported},
};
use clap::Parser as _;
use link_trace_common::{CTX_AUDIT, DEFAULT_RING_BYTES};
use serde::Serialize;
use serde_json::{Value, json};

use crate::{btf::Btf, names::errno_name};

/// `fail` means link-trace cannot trace on this host because of it; `warn`
/// a feature that is missing or degraded while capture still works.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    Warn,
    Fail,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub detail: String,
    /// The step of a probe that failed: "load", "attach", "map create", ...
    pub step: Option<&'static str>,
    /// That step's errno, e.g. "EPERM".
    pub errno: Option<String>,
    /// The finding in machine-readable form, where there is one.
    pub value: Value,
}

impl Check {
    fn new(name: &'static str, status: Status, detail: impl Into<String>) -> Self {
        Check {
            name,
            status,
            detail: detail.into(),
            step: None,
            errno: None,
            value: Value::Null,
        }
    }

    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Ok, detail)
    }

    fn warn(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Warn, detail)
    }

    fn fail(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, Status::Fail, detail)
    }

    /// A probe that failed: `what` and the step, errno and verifier message.
    fn failed(name: &'static str, status: Status, what: &str, failure: &sys::Failure) -> Self {
        let errno = errno_name(failure.errno).into_owned();
        let mut detail = format!("{what}: {} failed: {errno}", failure.step);
        if let Some(log) = &failure.log {
            detail.push_str(&format!(" (verifier: {log})"));
        }
        Check {
            step: Some(failure.step),
            errno: Some(errno),
            ..Self::new(name, status, detail)
        }
    }

    fn with_value(mut self, value: Value) -> Self {
        self.value = value;
        self
    }
}

/// One line of the "what will work" summary.
#[derive(Debug, Clone, Serialize)]
pub struct Verdict {
    pub feature: &'static str,
    pub title: &'static str,
    pub available: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub kind: &'static str,
    pub kernel_release: String,
    pub arch: String,
    /// Whether `link-trace` can trace here; the exit status says the same.
    pub capture: bool,
    pub checks: Vec<Check>,
    pub summary: Vec<Verdict>,
}

/// `link-trace doctor [--json]`: prints the report; true when capture will work.
pub fn main(json: bool, out: &mut impl Write) -> std::io::Result<bool> {
    let report = run();
    if json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        write_text(&report, out)?;
    }
    Ok(report.capture)
}

/// Runs every check, in an order where each finding feeds the next.
pub fn run() -> Report {
    let mut checks = Vec::new();
    let (kernel_release, arch) = match sys::uname() {
        Ok((release, machine)) => {
            checks.push(Check::ok("kernel", format!("Linux {release} {machine}")));
            (release, machine)
        }
        Err(failure) => {
            checks.push(Check::failed("kernel", Status::Warn, "uname", &failure));
            (String::new(), String::new())
        }
    };

    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    checks.push(privileges_check(euid));
    let cap_eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| parse_cap_eff(&status));
    checks.push(capabilities_check(cap_eff));
    checks.push(sysctl_check(
        "unprivileged_bpf_disabled",
        "kernel/unprivileged_bpf_disabled",
        unprivileged_bpf_meaning,
    ));
    checks.push(sysctl_check(
        "perf_event_paranoid",
        "kernel/perf_event_paranoid",
        perf_event_paranoid_meaning,
    ));

    let btf = Btf::from_sys_fs();
    checks.push(btf_check(&btf));
    checks.push(btf_offsets_check(&btf));
    let btf = btf.ok();

    let (tracefs_check, tracefs) = find_tracefs();
    checks.push(tracefs_check);
    let (tracepoints_check, enter_linkat_id) = tracepoints_check(tracefs.as_ref());
    checks.push(tracepoints_check);

    checks.push(ringbuf_check());
    checks.push(tracepoint_program_check(enter_linkat_id));
    checks.push(helpers_check());
    checks.push(memlock_check());
    let tracefs_unmounted = matches!(tracefs, Some(Tracefs::Detached(_)));
    checks.push(programs_check(tracefs_unmounted));

    checks.push(btf_hook_check(
        "fentry",
        "fentry",
        btf.as_ref(),
        "vfs_link",
        sys::ProgramSpec {
            prog_type: sys::BPF_PROG_TYPE_TRACING,
            expected_attach_type: sys::BPF_TRACE_FENTRY,
            attach_btf_id: 0,
        },
    ));
    checks.push(lsm_list_check());
    checks.push(btf_hook_check(
        "bpf_lsm",
        "BPF LSM",
        btf.as_ref(),
        "bpf_lsm_path_link",
        sys::ProgramSpec {
            prog_type: sys::BPF_PROG_TYPE_LSM,
            expected_attach_type: sys::BPF_LSM_MAC,
            attach_btf_id: 0,
        },
    ));
    checks.push(kprobes_check(tracefs.as_ref()));

    checks.push(sysctl_check(
        "protected_hardlinks",
        "fs/protected_hardlinks",
        protected_hardlinks_meaning,
    ));
    checks.push(sysctl_check(
        "protected_symlinks",
        "fs/protected_symlinks",
        protected_symlinks_meaning,
    ));
    checks.push(sysctl_check(
        "bpf_stats_enabled",
        "kernel/bpf_stats_enabled",
        bpf_stats_meaning,
    ));

    if euid != 0 {
        // Without privileges bpf(2) refuses everything: say so where it did.
        for check in checks
            .iter_mut()
            .filter(|c| c.errno.as_deref() == Some("EPERM"))
        {
            check.detail.push_str(" (expected when not root)");
        }
    }
    let (capture, summary) = summarize(&checks);
    Report {
        kind: "doctor",
        kernel_release,
        arch,
        capture,
        checks,
        summary,
    }
}

pub fn write_text(report: &Report, out: &mut impl Write) -> std::io::Result<()> {
    for check in &report.checks {
        writeln!(
            out,
            "{:<4}  {}: {}",
            check.status.label(),
            check.name,
            check.detail
        )?;
    }
    writeln!(out)?;
    writeln!(out, "What will work on this host:")?;
    for verdict in &report.summary {
        writeln!(
            out,
            "  {:<3}  {}: {}",
            if verdict.available { "yes" } else { "no" },
            verdict.title,
            verdict.detail
        )?;
    }
    writeln!(out)?;
    if report.capture {
        writeln!(out, "link-trace doctor: capture will work")
    } else {
        let blocking: Vec<&str> = report
            .checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .map(|c| c.name)
            .collect();
        writeln!(
            out,
            "link-trace doctor: capture will NOT work (failed: {})",
            blocking.join(", ")
        )
    }
}

// ---- privileges ----

/// (bit, name) of the capabilities link-trace's work involves.
const CAPABILITIES: [(u32, &str); 5] = [
    (39, "CAP_BPF"),
    (38, "CAP_PERFMON"),
    (21, "CAP_SYS_ADMIN"),
    (2, "CAP_DAC_READ_SEARCH"),
    (19, "CAP_SYS_PTRACE"),
];

/// The effective capability set from /proc/self/status ("CapEff:\t<hex>").
pub fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has_cap(cap_eff: u64, name: &str) -> bool {
    CAPABILITIES
        .iter()
        .any(|&(bit, cap)| cap == name && cap_eff & (1 << bit) != 0)
}

fn privileges_check(euid: u32) -> Check {
    let check = if euid == 0 {
        Check::ok("privileges", "euid 0 (root)")
    } else {
        Check::fail(
            "privileges",
            format!(
                "euid {euid}, not 0: link-trace must run as root (it loads eBPF programs and attaches tracepoints)"
            ),
        )
    };
    check.with_value(json!({ "euid": euid }))
}

pub fn capabilities_check(cap_eff: Option<u64>) -> Check {
    let Some(cap_eff) = cap_eff else {
        return Check::warn("capabilities", "cannot read CapEff from /proc/self/status");
    };
    let (present, missing): (Vec<&str>, Vec<&str>) = CAPABILITIES
        .iter()
        .map(|&(_, name)| name)
        .partition(|name| has_cap(cap_eff, name));
    let listing = format!(
        "effective: {}; missing: {}",
        if present.is_empty() {
            "none of them".to_owned()
        } else {
            present.join(" ")
        },
        if missing.is_empty() {
            "none".to_owned()
        } else {
            missing.join(" ")
        }
    );
    let can_load = has_cap(cap_eff, "CAP_SYS_ADMIN")
        || (has_cap(cap_eff, "CAP_BPF") && has_cap(cap_eff, "CAP_PERFMON"));
    let check = if !can_load {
        Check::fail(
            "capabilities",
            format!(
                "{listing}: loading tracing programs needs CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN"
            ),
        )
    } else if !has_cap(cap_eff, "CAP_DAC_READ_SEARCH") || !has_cap(cap_eff, "CAP_SYS_PTRACE") {
        Check::warn(
            "capabilities",
            format!(
                "{listing}: stat of other users' files and /proc/PID/root of other processes may fail, so file facts and canonical paths can be missing"
            ),
        )
    } else {
        Check::ok("capabilities", listing)
    };
    check.with_value(json!({ "cap_eff": format!("{cap_eff:#x}"), "missing": missing }))
}

// ---- sysctls ----

fn read_sysctl(path: &str) -> Result<i64, String> {
    let full = Path::new("/proc/sys").join(path);
    let text = std::fs::read_to_string(&full).map_err(|e| {
        e.raw_os_error()
            .map_or_else(|| e.to_string(), |code| errno_name(code).into_owned())
    })?;
    text.trim()
        .parse()
        .map_err(|_| format!("not a number: {:?}", text.trim()))
}

/// A sysctl's value and what it means here, as (status, meaning).
fn sysctl_check(name: &'static str, path: &str, meaning: fn(i64) -> (Status, String)) -> Check {
    let sysctl = path.replace('/', ".");
    match read_sysctl(path) {
        Ok(value) => {
            let (status, text) = meaning(value);
            Check::new(name, status, format!("{sysctl} = {value}: {text}")).with_value(json!(value))
        }
        Err(e) => Check::warn(name, format!("cannot read {sysctl}: {e}")),
    }
}

pub fn unprivileged_bpf_meaning(value: i64) -> (Status, String) {
    let text = match value {
        0 => "unprivileged users may load socket filters; link-trace runs as root either way",
        1 => "bpf(2) is refused to unprivileged users until reboot; link-trace runs as root",
        2 => {
            "bpf(2) is refused to unprivileged users (an admin may set 0); link-trace runs as root"
        }
        _ => "unknown setting",
    };
    (Status::Ok, text.into())
}

pub fn perf_event_paranoid_meaning(value: i64) -> (Status, String) {
    let text = match value {
        i64::MIN..=-1 => "no restrictions",
        0..=2 => "unprivileged users may not trace system-wide; root (CAP_PERFMON) is not limited",
        _ => "perf_event_open is refused to unprivileged users; root (CAP_PERFMON) is not limited",
    };
    (Status::Ok, text.into())
}

pub fn protected_hardlinks_meaning(value: i64) -> (Status, String) {
    match value {
        0 => (
            Status::Warn,
            "any user may hard-link any file they can reach, e.g. a setuid binary or another user's file; link-trace reports such links (foreign-file-link, setuid-link) but the kernel does not stop them".into(),
        ),
        1 => (
            Status::Ok,
            "users can link only files they own or can read and write; other attempts fail with EPERM, which link-trace reports (foreign-file-link-denied, eperm-burst)".into(),
        ),
        _ => (Status::Warn, "unknown setting".into()),
    }
}

pub fn protected_symlinks_meaning(value: i64) -> (Status, String) {
    match value {
        0 => (
            Status::Warn,
            "symlinks in sticky world-writable directories such as /tmp are followed whoever owns them, also by linkat with AT_SYMLINK_FOLLOW".into(),
        ),
        1 => (
            Status::Ok,
            "symlinks in sticky world-writable directories are followed only when the follower or the directory owner owns them (linkat AT_SYMLINK_FOLLOW included; refusals are EACCES events)".into(),
        ),
        _ => (Status::Warn, "unknown setting".into()),
    }
}

pub fn bpf_stats_meaning(value: i64) -> (Status, String) {
    match value {
        0 => (Status::Ok, "BPF run-time statistics off, no cost per program run".into()),
        _ => (
            Status::Warn,
            "BPF run-time statistics on: every BPF program run on the host pays two clock reads, link-trace's too".into(),
        ),
    }
}

// ---- BTF ----

fn btf_check(btf: &Result<Btf, crate::btf::BtfError>) -> Check {
    match btf {
        Ok(btf) => {
            let bytes = std::fs::metadata("/sys/kernel/btf/vmlinux").map_or(0, |m| m.len());
            Check::ok(
                "btf",
                format!(
                    "/sys/kernel/btf/vmlinux: {bytes} bytes, {} types, parsed",
                    btf.type_count()
                ),
            )
            .with_value(json!({ "bytes": bytes, "types": btf.type_count() }))
        }
        Err(e) => Check::warn(
            "btf",
            format!(
                "{}: paths will not be resolved in the kernel and process context is limited (events say no_btf)",
                crate::error_chain(e)
            ),
        ),
    }
}

fn btf_offsets_check(btf: &Result<Btf, crate::btf::BtfError>) -> Check {
    let Ok(btf) = btf else {
        return Check::warn("btf_offsets", "not checked: no kernel BTF");
    };
    match crate::btf::kernel_offsets(btf) {
        Ok(offsets) => {
            let audit = offsets.optional & CTX_AUDIT != 0;
            Check::ok(
                "btf_offsets",
                format!(
                    "every struct member link-trace reads was found (task_struct, cred, fs_struct, dentry, mount, inode, ...); audit ids (loginuid, sessionid): {}",
                    if audit { "yes" } else { "no (CONFIG_AUDIT off)" }
                ),
            )
            .with_value(json!({ "audit": audit }))
        }
        Err(e) => Check::warn(
            "btf_offsets",
            format!("{e}: paths will not be resolved in the kernel and process context is limited"),
        ),
    }
}

// ---- tracefs and tracepoints ----

/// Where the tracepoints can be read: a mounted tracefs, or a detached mount
/// of it when none is mounted.
enum Tracefs {
    Mounted(PathBuf),
    Detached(OwnedFd),
}

impl Tracefs {
    fn read(&self, relative: &str) -> std::io::Result<String> {
        match self {
            Tracefs::Mounted(root) => std::fs::read_to_string(root.join(relative)),
            Tracefs::Detached(fd) => sys::read_at(fd, relative),
        }
    }
}

/// Mount points of `fstype` in /proc/self/mountinfo (field 5; the type
/// follows the " - " separator). Octal escapes (\040) are decoded.
pub fn mount_points(mountinfo: &str, fstype: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == fstype)
                .then(|| left.split_whitespace().nth(4).map(unescape_mount_path))?
        })
        .collect()
}

fn unescape_mount_path(field: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|digits| std::str::from_utf8(digits).ok())
            .and_then(|digits| u8::from_str_radix(digits, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// The standard places, where aya and the loader look.
const TRACEFS_PATHS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

fn find_tracefs() -> (Check, Option<Tracefs>) {
    let mounted = std::fs::read_to_string("/proc/self/mountinfo")
        .map(|info| mount_points(&info, "tracefs"))
        .unwrap_or_default();
    let mut unreadable = None;
    for path in TRACEFS_PATHS.iter().map(PathBuf::from) {
        if !mounted.contains(&path) {
            continue;
        }
        match std::fs::read_dir(path.join("events")) {
            Ok(_) => {
                let check = Check::ok("tracefs", format!("mounted at {}", path.display()))
                    .with_value(json!({ "mounted": path, "mountable": Value::Null }));
                return (check, Some(Tracefs::Mounted(path)));
            }
            Err(e) => unreadable = Some((path, e)),
        }
    }
    if let Some((path, e)) = unreadable {
        let errno = e.raw_os_error().map(|code| errno_name(code).into_owned());
        let check = Check {
            step: Some("read"),
            errno: errno.clone(),
            ..Check::fail(
                "tracefs",
                format!(
                    "mounted at {} but not readable: {}",
                    path.display(),
                    errno.unwrap_or_else(|| e.to_string())
                ),
            )
        };
        return (check, None);
    }
    match sys::detached_mount(c"tracefs") {
        Ok(fd) => (
            Check::ok(
                "tracefs",
                "not mounted; mountable (link-trace mounts it at /sys/kernel/tracing when it starts)",
            )
            .with_value(json!({ "mounted": Value::Null, "mountable": true })),
            Some(Tracefs::Detached(fd)),
        ),
        Err(failure) => (
            Check::failed(
                "tracefs",
                Status::Fail,
                "not mounted, and mounting it",
                &failure,
            )
            .with_value(json!({ "mounted": Value::Null, "mountable": false })),
            None,
        ),
    }
}

const TRACEPOINTS: [&str; 4] = [
    "sys_enter_link",
    "sys_exit_link",
    "sys_enter_linkat",
    "sys_exit_linkat",
];

/// The check, and the id of syscalls:sys_enter_linkat for the attach probe.
fn tracepoints_check(tracefs: Option<&Tracefs>) -> (Check, Option<u64>) {
    let Some(tracefs) = tracefs else {
        return (
            Check::fail("tracepoints", "not checked: tracefs is not readable"),
            None,
        );
    };
    let mut ids = serde_json::Map::new();
    let mut missing = Vec::new();
    for name in TRACEPOINTS {
        match tracefs
            .read(&format!("events/syscalls/{name}/id"))
            .map(|text| text.trim().parse::<u64>())
        {
            Ok(Ok(id)) => {
                ids.insert(name.into(), id.into());
            }
            Ok(Err(_)) => missing.push(format!("{name} (unreadable id)")),
            Err(e) => missing.push(format!(
                "{name} ({})",
                e.raw_os_error()
                    .map_or_else(|| e.to_string(), |code| errno_name(code).into_owned())
            )),
        }
    }
    let enter_linkat = ids.get("sys_enter_linkat").and_then(Value::as_u64);
    let listing: Vec<String> = ids
        .iter()
        .map(|(name, id)| format!("{name} {id}"))
        .collect();
    let check = if missing.is_empty() {
        Check::ok(
            "tracepoints",
            format!("syscalls: {} (ids)", listing.join(", ")),
        )
    } else {
        Check::fail(
            "tracepoints",
            format!(
                "missing: {} (CONFIG_FTRACE_SYSCALLS off?)",
                missing.join(", ")
            ),
        )
    };
    (check.with_value(Value::Object(ids)), enter_linkat)
}

// ---- BPF features ----

fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{bytes} bytes")
    }
}

fn ringbuf_check() -> Check {
    let what = format!(
        "the default BPF ring buffer ({}, --ring-bytes)",
        mib(DEFAULT_RING_BYTES.into())
    );
    match sys::create_ringbuf(DEFAULT_RING_BYTES) {
        Ok(_map) => Check::ok("bpf_ringbuf", format!("created {what}")),
        Err(failure) => Check::failed(
            "bpf_ringbuf",
            Status::Fail,
            &format!("creating {what}"),
            &failure,
        ),
    }
    .with_value(json!({ "bytes": DEFAULT_RING_BYTES }))
}

fn tracepoint_program_check(enter_linkat_id: Option<u64>) -> Check {
    let name = "bpf_tracepoint";
    let program = match sys::load_program(sys::ProgramSpec {
        prog_type: sys::BPF_PROG_TYPE_TRACEPOINT,
        expected_attach_type: 0,
        attach_btf_id: 0,
    }) {
        Ok(program) => program,
        Err(failure) => {
            return Check::failed(name, Status::Fail, "a trivial tracepoint program", &failure);
        }
    };
    let Some(id) = enter_linkat_id else {
        return Check::fail(
            name,
            "a trivial tracepoint program loads; attaching not tried: no tracepoint id",
        );
    };
    match sys::attach_tracepoint(&program, id) {
        Ok(()) => Check::ok(
            name,
            "a trivial tracepoint program loads and attaches to syscalls:sys_enter_linkat (then detached)",
        ),
        Err(failure) => Check::failed(
            name,
            Status::Fail,
            "a trivial tracepoint program loads; attaching it to syscalls:sys_enter_linkat",
            &failure,
        ),
    }
}

/// An aya probe error as (text, errno name): "bpf_prog_load failed: EPERM".
fn aya_failure(e: &ProgramError) -> (String, Option<String>) {
    match e {
        ProgramError::SyscallError(syscall) => match syscall.io_error.raw_os_error() {
            Some(code) => {
                let errno = errno_name(code).into_owned();
                (format!("{} failed: {errno}", syscall.call), Some(errno))
            }
            None => (crate::error_chain(e), None),
        },
        _ => (crate::error_chain(e), None),
    }
}

/// The helpers link-trace's programs call, probed for tracepoint programs
/// with aya's probe (libbpf's method: load a call, read the verifier's verdict).
fn helpers_check() -> Check {
    let helpers = [
        (
            BpfHelper::BPF_FUNC_probe_read_user_str,
            "probe_read_user_str",
        ),
        (BpfHelper::BPF_FUNC_probe_read_kernel, "probe_read_kernel"),
        (BpfHelper::BPF_FUNC_ringbuf_output, "ringbuf_output"),
        (BpfHelper::BPF_FUNC_loop, "loop"),
        (BpfHelper::BPF_FUNC_get_current_task, "get_current_task"),
        (
            BpfHelper::BPF_FUNC_get_current_cgroup_id,
            "get_current_cgroup_id",
        ),
        (BpfHelper::BPF_FUNC_ktime_get_boot_ns, "ktime_get_boot_ns"),
    ];
    let mut missing = Vec::new();
    for (helper, name) in helpers {
        match is_helper_supported(ProgramType::TracePoint, helper) {
            Ok(true) => {}
            Ok(false) => missing.push(name),
            Err(e) => {
                let (text, errno) = aya_failure(&e);
                return Check {
                    step: Some("load"),
                    errno,
                    ..Check::fail("bpf_helpers", format!("could not probe bpf_{name}: {text}"))
                };
            }
        }
    }
    let names: Vec<String> = helpers.iter().map(|(_, n)| format!("bpf_{n}")).collect();
    if missing.is_empty() {
        Check::ok(
            "bpf_helpers",
            format!("tracepoint programs may call {}", names.join(", ")),
        )
    } else {
        Check::fail(
            "bpf_helpers",
            format!(
                "tracepoint programs may not call bpf_{}: link-trace's programs will not load",
                missing.join(", bpf_")
            ),
        )
        .with_value(json!({ "missing": missing }))
    }
}

/// Whether RLIMIT_MEMLOCK limits BPF memory. Since 5.11 the kernel charges
/// it to the memory cgroup instead; like libbpf, tell by a helper that came
/// with that change (bpf_ktime_get_coarse_ns). The ring buffer check above
/// is the real test; this says why it would fail.
fn memlock_check() -> Check {
    let limit = match sys::memlock_limit() {
        Ok(limit) => limit,
        Err(failure) => return Check::failed("memlock", Status::Warn, "RLIMIT_MEMLOCK", &failure),
    };
    let limit_text = limit.map_or_else(|| "unlimited".to_owned(), mib);
    let needed = u64::from(DEFAULT_RING_BYTES) + (1 << 20);
    let check = match is_helper_supported(
        ProgramType::SocketFilter,
        BpfHelper::BPF_FUNC_ktime_get_coarse_ns,
    ) {
        Ok(true) => Check::ok(
            "memlock",
            format!(
                "BPF memory is charged to the memory cgroup, so RLIMIT_MEMLOCK ({limit_text}) does not limit it"
            ),
        ),
        Ok(false) if limit.is_none_or(|limit| limit >= needed) => Check::ok(
            "memlock",
            format!(
                "BPF memory counts against RLIMIT_MEMLOCK ({limit_text}), enough for the default ring"
            ),
        ),
        Ok(false) => Check::warn(
            "memlock",
            format!(
                "BPF memory counts against RLIMIT_MEMLOCK ({limit_text}), less than the default ring needs ({}): raise it (ulimit -l) or pass a smaller --ring-bytes",
                mib(needed)
            ),
        ),
        Err(e) => {
            let (text, errno) = aya_failure(&e);
            Check {
                step: Some("load"),
                errno,
                ..Check::warn(
                    "memlock",
                    format!(
                        "RLIMIT_MEMLOCK {limit_text}; whether it limits BPF memory is unknown: {text}"
                    ),
                )
            }
        }
    };
    check.with_value(json!({ "rlimit_memlock": limit }))
}

/// The definitive check: link-trace's own object, loaded and attached as
/// `link-trace --pid <doctor's pid>` would (so it captures nothing), then
/// detached. The loader mounts tracefs when it is not mounted; doctor then
/// runs it in a mount namespace of its own, so the host's mounts stay as
/// they were.
fn programs_check(tracefs_unmounted: bool) -> Check {
    let name = "programs";
    if tracefs_unmounted && let Err(failure) = sys::private_mount_namespace() {
        return Check::failed(
            name,
            Status::Warn,
            "not tried: the loader would mount tracefs, and doctor mounts nothing on the host; a private mount namespace",
            &failure,
        );
    }
    let pid = std::process::id().to_string();
    let settings = match crate::cli::Cli::try_parse_from(["link-trace", "--pid", &pid]) {
        Ok(cli) => crate::config::Settings::merge(None, Default::default(), &cli),
        Err(e) => return Check::fail(name, format!("internal: {e}")),
    };
    // The loader forwards kernel log messages on a tokio task.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => return Check::fail(name, format!("cannot start a runtime: {e}")),
    };
    let started = Instant::now();
    let loaded = runtime.block_on(async {
        crate::loader::load(&settings).map(|tracer| tracer.verified_instructions())
    });
    let elapsed = started.elapsed();
    match loaded {
        Ok(verified) => {
            let busiest = verified
                .iter()
                .filter_map(|(program, count)| Some((program, (*count)?)))
                .max_by_key(|(_, count)| *count)
                .map(|(program, count)| {
                    format!("; the verifier processed {count} instructions for {program}, the most")
                })
                .unwrap_or_default();
            let verified: serde_json::Map<String, serde_json::Value> = verified
                .into_iter()
                .map(|(program, count)| (program, json!(count)))
                .collect();
            Check::ok(
                name,
                format!(
                    "link-trace's eBPF programs load and attach to the 4 tracepoints ({} ms, mostly the verifier{busiest}), then detach",
                    elapsed.as_millis()
                ),
            )
            .with_value(json!({ "load_ms": elapsed.as_millis() as u64, "verified_insns": verified }))
        }
        Err(e) => Check::fail(
            name,
            format!("link-trace's eBPF programs: {}", crate::error_chain(&e)),
        ),
    }
}

/// Loads `r0 = 0; exit` as an fentry or LSM program on `function` and
/// attaches it (it returns 0, so an LSM hook allows everything), then closes
/// both; reports the step that failed.
fn btf_hook_check(
    name: &'static str,
    kind: &str,
    btf: Option<&Btf>,
    function: &str,
    mut spec: sys::ProgramSpec,
) -> Check {
    let value = |loads: bool, attaches: bool| json!({ "function": function, "loads": loads, "attaches": attaches });
    let Some(btf) = btf else {
        return Check::warn(name, format!("{kind} not probed: needs kernel BTF"))
            .with_value(value(false, false));
    };
    let Some(id) = btf.func_id(function) else {
        return Check::warn(
            name,
            format!("{kind}: no function {function} in the kernel's BTF"),
        )
        .with_value(value(false, false));
    };
    spec.attach_btf_id = id;
    let what = format!("a trivial {kind} program on {function}");
    let program = match sys::load_program(spec) {
        Ok(program) => program,
        Err(failure) => {
            return Check::failed(name, Status::Warn, &what, &failure)
                .with_value(value(false, false));
        }
    };
    match sys::attach_btf_program(&program, spec.expected_attach_type) {
        Ok(_link) => Check::ok(name, format!("{what} loads and attaches (then detached)"))
            .with_value(value(true, true)),
        Err(failure) => Check::failed(name, Status::Warn, &format!("{what} loads; then"), &failure)
            .with_value(value(true, false)),
    }
}

/// Names of the LSM ids lsm_list_modules(2) returns (include/uapi/linux/lsm.h).
pub fn lsm_name(id: u64) -> String {
    let name = match id {
        100 => "capability",
        101 => "selinux",
        102 => "smack",
        103 => "tomoyo",
        104 => "apparmor",
        105 => "yama",
        106 => "loadpin",
        107 => "safesetid",
        108 => "lockdown",
        109 => "bpf",
        110 => "landlock",
        111 => "ima",
        112 => "evm",
        113 => "ipe",
        _ => return format!("lsm-{id}"),
    };
    name.to_owned()
}

/// securityfs's `lsm` file: a comma-separated list, no newline.
pub fn parse_lsm_list(text: &str) -> Vec<String> {
    text.trim()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The active LSMs: from securityfs (mounted, or a detached mount of it),
/// else from lsm_list_modules(2), which needs no privilege.
fn active_lsms() -> Result<(Vec<String>, &'static str), String> {
    if let Ok(text) = std::fs::read_to_string("/sys/kernel/security/lsm") {
        return Ok((parse_lsm_list(&text), "/sys/kernel/security/lsm"));
    }
    let securityfs = sys::detached_mount(c"securityfs")
        .map_err(|f| format!("securityfs {}: {}", f.step, errno_name(f.errno)))
        .and_then(|fd| sys::read_at(&fd, "lsm").map_err(|e| format!("securityfs lsm: {e}")));
    match securityfs {
        Ok(text) => Ok((parse_lsm_list(&text), "securityfs")),
        Err(securityfs_error) => match sys::lsm_list_modules() {
            Ok(ids) => Ok((
                ids.into_iter().map(lsm_name).collect(),
                "lsm_list_modules(2)",
            )),
            Err(f) => Err(format!(
                "{securityfs_error}; lsm_list_modules: {}",
                errno_name(f.errno)
            )),
        },
    }
}

fn lsm_list_check() -> Check {
    match active_lsms() {
        Ok((lsms, source)) => {
            let listing = format!("active LSMs {} (from {source})", lsms.join(","));
            let check = if lsms.iter().any(|lsm| lsm == "bpf") {
                Check::ok("lsm_list", format!("{listing}: bpf is active"))
            } else {
                Check::warn(
                    "lsm_list",
                    format!(
                        "{listing}: bpf is not active, so BPF LSM programs cannot run (boot with lsm=...,bpf)"
                    ),
                )
            };
            check.with_value(json!({ "lsms": lsms, "source": source }))
        }
        Err(e) => Check::warn("lsm_list", format!("cannot list the active LSMs: {e}")),
    }
}

fn kprobes_check(tracefs: Option<&Tracefs>) -> Check {
    let pmu_type = std::fs::read_to_string("/sys/bus/event_source/devices/kprobe/type")
        .ok()
        .and_then(|text| text.trim().parse::<u32>().ok());
    let kprobe_events = tracefs.is_some_and(|t| t.read("kprobe_events").is_ok());
    match pmu_type {
        Some(pmu) => match sys::open_kprobe(pmu, c"vfs_link") {
            Ok(()) => Check::ok(
                "kprobes",
                "a kprobe on vfs_link opens (link-trace does not use kprobes)",
            ),
            Err(failure) => Check::failed(
                "kprobes",
                Status::Warn,
                "a kprobe on vfs_link (link-trace does not use kprobes)",
                &failure,
            ),
        },
        None => Check::warn(
            "kprobes",
            format!(
                "no kprobe PMU (/sys/bus/event_source/devices/kprobe){}: kernel without CONFIG_KPROBES; link-trace does not use kprobes",
                if kprobe_events {
                    ""
                } else {
                    " and no kprobe_events in tracefs"
                }
            ),
        ),
    }
    .with_value(json!({ "pmu_type": pmu_type, "kprobe_events": kprobe_events }))
}

// ---- verdict ----

fn find<'a>(checks: &'a [Check], name: &str) -> Option<&'a Check> {
    checks.iter().find(|c| c.name == name)
}

fn is_ok(checks: &[Check], name: &str) -> bool {
    find(checks, name).is_some_and(|c| c.status == Status::Ok)
}

/// "load failed: EPERM", "not probed", or "allowed".
fn hook_finding(checks: &[Check], name: &str) -> String {
    match find(checks, name) {
        Some(c) if c.status == Status::Ok => "allowed".into(),
        Some(Check {
            step: Some(step),
            errno: Some(errno),
            ..
        }) => format!("{step} refused, {errno}"),
        Some(c) => c.detail.clone(),
        None => "not probed".into(),
    }
}

/// Capture works when no check failed; the summary says what that means.
pub fn summarize(checks: &[Check]) -> (bool, Vec<Verdict>) {
    let failed: Vec<&str> = checks
        .iter()
        .filter(|c| c.status == Status::Fail)
        .map(|c| c.name)
        .collect();
    let capture = failed.is_empty();
    let context = capture && is_ok(checks, "btf_offsets");
    let hooks_allowed = is_ok(checks, "fentry") || is_ok(checks, "bpf_lsm");
    let hooks = format!(
        "fentry on vfs_link: {}; BPF LSM on path_link: {}",
        hook_finding(checks, "fentry"),
        hook_finding(checks, "bpf_lsm")
    );
    let summary = vec![
        Verdict {
            feature: "capture",
            title: "capture of link(2) and linkat(2)",
            available: capture,
            detail: if capture {
                "every call on the host, successful or not: both paths, dirfds, flags, result, caller; losses counted".into()
            } else {
                format!("blocked by: {}", failed.join(", "))
            },
        },
        Verdict {
            feature: "kernel_context",
            title: "kernel-resolved paths and process context",
            available: context,
            detail: if context {
                "absolute paths walked in the kernel, credentials, parent, namespaces, cgroup, executable (BTF offsets found)".into()
            } else if !capture {
                "no capture".into()
            } else {
                "needs the kernel's BTF offsets: events say no_btf".into()
            },
        },
        Verdict {
            feature: "call_time_inode_facts",
            title: "call-time inode facts of path arguments",
            available: false,
            detail: if hooks_allowed {
                format!(
                    "this kernel allows a hook on the link path ({hooks}), but link-trace does not use one yet: facts come from a stat after the call (kernel facts only for AT_EMPTY_PATH)"
                )
            } else {
                format!(
                    "need fentry or BPF LSM ({hooks}): facts come from a stat after the call (kernel facts only for AT_EMPTY_PATH)"
                )
            },
        },
        Verdict {
            feature: "compat_and_io_uring",
            title: "32-bit (ia32) callers and io_uring IORING_OP_LINKAT",
            available: false,
            detail: "they bypass syscall tracepoints, link-trace's only hooks".into(),
        },
        Verdict {
            feature: "rules",
            title: "detection rules, replay",
            available: true,
            detail: if capture {
                "rules run on live events; replay needs no privileges".into()
            } else {
                "replay of recorded events works without privileges".into()
            },
        },
    ];
    (capture, summary)
}

#[cfg(test)]
mod tests;
