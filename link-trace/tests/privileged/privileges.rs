//! Privileged tests of the capability drop after attach and of the systemd
//! unit: what the running tracer holds, read from /proc, and what it can
//! still do with it.

use std::{
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
};

use link_trace::privileges::TaskCaps;
use serde_json::Value;

use crate::harness::{Run, TestDir, Tracer, cstr, expect_fields, linkat, my_pid, privileged};

/// The capabilities the README says the daemon keeps: CAP_DAC_READ_SEARCH
/// (2) and CAP_SYS_PTRACE (19).
const DOCUMENTED_KEEP: u64 = 1 << 2 | 1 << 19;
const NOBODY: u32 = 65534;

fn unit_file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/link-trace.service")
}

fn unit_text() -> String {
    std::fs::read_to_string(unit_file()).expect("read packaging/link-trace.service")
}

/// Every thread of the tracer holds exactly the documented capabilities,
/// nothing inheritable or ambient, and no_new_privs.
fn expect_dropped(tracer: &Tracer) {
    let tasks = PathBuf::from(format!("/proc/{}/task", tracer.pid()));
    let mut seen = 0;
    for task in std::fs::read_dir(&tasks).expect("list the tracer's threads") {
        let status = task.expect("task entry").path().join("status");
        let caps = TaskCaps::read(&status).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            caps,
            TaskCaps {
                inheritable: 0,
                permitted: DOCUMENTED_KEEP,
                effective: DOCUMENTED_KEEP,
                bounding: DOCUMENTED_KEEP,
                ambient: 0,
                no_new_privs: true,
            },
            "capabilities of {}",
            status.display()
        );
        seen += 1;
    }
    // The main thread plus the enrich, detect and output stages.
    assert!(seen >= 4, "only {seen} threads in {}", tasks.display());
    let line = tracer
        .wait_for_stderr("kept", std::time::Duration::ZERO)
        .expect("a stderr line saying what was kept");
    assert!(
        line.contains("kept CAP_DAC_READ_SEARCH, CAP_SYS_PTRACE (bounding set reduced too)"),
        "{line}"
    );
}

/// A directory only its owner, nobody, may search: a process without
/// CAP_DAC_READ_SEARCH (or CAP_DAC_OVERRIDE) cannot stat what is inside,
/// root included. The test itself still has every capability.
fn nobody_only_dir(dir: &TestDir) -> PathBuf {
    let private = dir.join("nobody-0700");
    std::fs::create_dir(&private).expect("mkdir");
    std::fs::write(private.join("src"), b"x").expect("write src");
    std::os::unix::fs::chown(&private, Some(NOBODY), Some(NOBODY)).expect("chown");
    std::fs::set_permissions(&private, PermissionsExt::from_mode(0o700)).expect("chmod");
    private
}

fn the_event<'a>(run: &'a Run, newpath: &Path) -> &'a Value {
    let event = run.event_for(newpath);
    expect_fields(event, &[("success", true.into())]);
    event
}

/// `file` and `new_file` are a stat of `path`, the linked inode (nlink
/// aside: later links raise it).
fn expect_stat_facts(event: &Value, path: &Path) {
    let meta = std::fs::metadata(path).expect("stat ground truth");
    for field in ["file", "new_file"] {
        let facts = &event[field];
        assert!(
            facts.is_object(),
            "{field} missing (file_error {}): {event:#}",
            event["file_error"]
        );
        expect_fields(
            facts,
            &[
                ("facts_from", "stat".into()),
                ("ino", meta.ino().into()),
                ("uid", meta.uid().into()),
                ("mode", meta.mode().into()),
            ],
        );
    }
}

#[test]
fn after_attach_only_the_documented_capabilities_are_left_and_suffice() {
    if !privileged("after_attach_only_the_documented_capabilities_are_left_and_suffice") {
        return;
    }
    let dir = TestDir::new("/tmp", "privdrop");
    let private = nobody_only_dir(&dir);
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    expect_dropped(&tracer);
    let (src, dst) = (private.join("src"), private.join("dst"));
    linkat(libc::AT_FDCWD, &src, libc::AT_FDCWD, &dst, 0).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    // Found only with CAP_DAC_READ_SEARCH: nobody's 0700 directory.
    let event = the_event(&run, &dst);
    expect_stat_facts(event, &dst);
    expect_fields(
        event,
        &[
            ("oldpath_canonical", src.to_str().unwrap().into()),
            ("newpath_canonical", dst.to_str().unwrap().into()),
        ],
    );
    // The per-CPU stats map is still read after the drop.
    let stats = run.final_stats();
    assert!(
        stats["kernel_submitted"].as_u64() >= Some(1),
        "stats at exit count the event: {stats}"
    );
}

#[test]
fn keep_capabilities_flag_keeps_them() {
    if !privileged("keep_capabilities_flag_keeps_them") {
        return;
    }
    let tracer = Tracer::start(&["--pid", &my_pid(), "--keep-capabilities"]);
    let status = PathBuf::from(format!("/proc/{}/status", tracer.pid()));
    let caps = TaskCaps::read(&status).unwrap_or_else(|e| panic!("{e}"));
    let own = TaskCaps::read(Path::new("/proc/self/status")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (caps.effective, caps.bounding),
        (own.effective, own.bounding),
        "--keep-capabilities keeps what it started with"
    );
    let run = tracer.stop();
    run.assert_clean_exit();
    assert!(
        run.stderr
            .iter()
            .any(|l| l.contains("--keep-capabilities: keeping every capability")),
        "{:?}",
        run.stderr
    );
}

/// A caller in a mount namespace of its own links a file on a tmpfs only
/// that namespace has: the tracer, with its capabilities dropped, can only
/// stat it through /proc/<pid>/root, which takes CAP_SYS_PTRACE because the
/// caller holds more capabilities than the tracer kept.
#[test]
fn caller_in_another_mount_namespace_is_stated_through_proc_pid_root() {
    if !privileged("caller_in_another_mount_namespace_is_stated_through_proc_pid_root") {
        return;
    }
    let dir = TestDir::new("/tmp", "privdrop-mntns");
    let mount_point = dir.join("private-tmpfs");
    std::fs::create_dir(&mount_point).expect("mkdir");
    let (src, dst) = (mount_point.join("src"), mount_point.join("dst"));
    let (c_mount, c_src, c_dst) = (cstr(&mount_point), cstr(&src), cstr(&dst));
    let (tmpfs, none) = (c"tmpfs", c"none");
    let child = Child::fork(|| {
        // SAFETY: only raw system calls, on strings made (and freed) by the
        // parent: nothing is allocated or freed in the child.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    none.as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                || libc::mount(
                    tmpfs.as_ptr(),
                    c_mount.as_ptr(),
                    tmpfs.as_ptr(),
                    0,
                    std::ptr::null(),
                ) != 0
            {
                return 1;
            }
            let fd = libc::open(c_src.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
            if fd < 0 {
                return 2;
            }
            libc::close(fd);
            if libc::linkat(
                libc::AT_FDCWD,
                c_src.as_ptr(),
                libc::AT_FDCWD,
                c_dst.as_ptr(),
                0,
            ) != 0
            {
                return 3;
            }
            0
        }
    });
    let tracer = Tracer::start(&["--pid", &child.pid.to_string()]);
    child.go();
    let linked = child.wait_until_done();
    let run = tracer.stop();
    // Ground truth, seen from outside the child's namespace.
    let through_root = PathBuf::from(format!("/proc/{}/root", child.pid))
        .join(dst.strip_prefix("/").expect("absolute"));
    let truth = std::fs::metadata(&through_root);
    let status = child.finish();
    assert_eq!((linked, status), (0, 0), "the child's steps failed");
    run.assert_clean_exit();
    let truth = truth.expect("stat through /proc/<child>/root");
    assert!(
        !dst.exists(),
        "the tmpfs must be private to the child's namespace"
    );
    let event = the_event(&run, &dst);
    assert_ne!(
        event["mnt_ns"],
        Value::Null,
        "the caller's mount namespace is known"
    );
    for field in ["file", "new_file"] {
        expect_fields(
            &event[field],
            &[("facts_from", "stat".into()), ("ino", truth.ino().into())],
        );
    }
}

/// A forked child that waits for a go, runs `work` (raw system calls only:
/// the test process has other threads), reports its result and then stays
/// alive until told to exit.
struct Child {
    pid: i32,
    go: i32,
    done: i32,
}

impl Child {
    fn fork(work: impl FnOnce() -> u8) -> Child {
        let (mut go, mut done) = ([0i32; 2], [0i32; 2]);
        // SAFETY: pipe, fork, read, write and _exit; the child calls nothing
        // that allocates or takes a lock.
        unsafe {
            assert_eq!(libc::pipe2(go.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe");
            assert_eq!(libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC), 0, "pipe");
            let pid = libc::fork();
            assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
            if pid == 0 {
                let mut byte = 0u8;
                libc::read(go[0], (&raw mut byte).cast(), 1);
                let result = work();
                libc::write(done[1], (&raw const result).cast(), 1);
                // Stay alive (so /proc/<pid>/root exists) until told to exit.
                libc::read(go[0], (&raw mut byte).cast(), 1);
                libc::_exit(0);
            }
            libc::close(go[0]);
            libc::close(done[1]);
            Child {
                pid,
                go: go[1],
                done: done[0],
            }
        }
    }

    fn go(&self) {
        // SAFETY: writing one byte to our own pipe.
        assert_eq!(unsafe { libc::write(self.go, [1u8].as_ptr().cast(), 1) }, 1);
    }

    fn wait_until_done(&self) -> u8 {
        let mut result = 255u8;
        // SAFETY: reading one byte from our own pipe.
        let n = unsafe { libc::read(self.done, (&raw mut result).cast(), 1) };
        assert_eq!(n, 1, "the child died before reporting");
        result
    }

    /// Lets the child exit and reaps it; its exit status.
    fn finish(self) -> i32 {
        self.go();
        let mut status = 0;
        // SAFETY: reaping our own child; closing our own fds.
        unsafe {
            libc::waitpid(self.pid, &mut status, 0);
            libc::close(self.go);
            libc::close(self.done);
        }
        libc::WEXITSTATUS(status)
    }
}

/// `CapabilityBoundingSet=` of the shipped unit as setpriv's
/// `--bounding-set` argument (`-all,+bpf,...`).
fn unit_bounding_set() -> String {
    let text = unit_text();
    let names: Vec<String> = text
        .lines()
        .filter_map(|line| line.trim().strip_prefix("CapabilityBoundingSet="))
        .flat_map(str::split_whitespace)
        .map(|name| {
            let name = name
                .strip_prefix("CAP_")
                .unwrap_or_else(|| panic!("not a capability name: {name}"));
            format!("+{}", name.to_ascii_lowercase())
        })
        .collect();
    assert!(!names.is_empty(), "the unit sets CapabilityBoundingSet=");
    format!("-all,{}", names.join(","))
}

/// Runs the tracer the way the unit does, without systemd: a mount namespace
/// of its own with every mount but /dev and /proc read-only
/// (ProtectSystem=strict, ProtectKernelTunables=, ProtectControlGroups=),
/// the unit's bounding set, nothing inheritable, no_new_privs. It must load,
/// attach, trace and enrich: file facts in a directory only nobody may
/// search, and canonical paths, also for a caller that has exited before the
/// tracer looks at its event (a sandboxed daemon looks the host's paths up
/// through its parent's /proc/<pid>/root; under systemd that is PID 1).
#[test]
fn tracer_runs_with_only_the_units_capabilities_in_a_read_only_sandbox() {
    if !privileged("tracer_runs_with_only_the_units_capabilities_in_a_read_only_sandbox") {
        return;
    }
    assert!(
        unit_text()
            .lines()
            .any(|l| l.trim() == "NoNewPrivileges=yes"),
        "the unit sets NoNewPrivileges=yes"
    );
    let dir = TestDir::new("/tmp", "privdrop-unit");
    let private = nobody_only_dir(&dir);
    // A mount another test removes meanwhile may fail; one still there may not.
    let read_only_everything = r#"awk '{print $5}' /proc/self/mountinfo | while read -r m; do
        case "$m" in /dev|/dev/*|/proc|/proc/*) continue;; esac
        mount -o remount,bind,ro "$m" || ! grep -q " $m " /proc/self/mountinfo || exit 1
    done && exec "$@""#;
    let mut cmd = Command::new("unshare");
    cmd.args(["--mount", "--propagation", "slave", "--", "sh", "-c"])
        .arg(read_only_everything)
        .arg("sh")
        .args(["setpriv", "--bounding-set"])
        .arg(unit_bounding_set())
        .args([
            "--inh-caps=-all",
            "--ambient-caps=-all",
            "--no-new-privs",
            "--",
        ])
        .arg(crate::harness::binary())
        .args(["--json", "--comm", "ln"]);
    let tracer = Tracer::start_command(cmd);
    expect_dropped(&tracer);
    let own_mnt_ns = std::fs::read_link("/proc/self/ns/mnt").expect("own mnt ns");
    let tracer_mnt_ns =
        std::fs::read_link(format!("/proc/{}/ns/mnt", tracer.pid())).expect("tracer mnt ns");
    assert_ne!(
        own_mnt_ns, tracer_mnt_ns,
        "the tracer runs in its own mount namespace"
    );
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", tracer.pid()))
        .expect("the tracer's mountinfo");
    for point in ["/", "/sys"] {
        let options = mounts
            .lines()
            .map(|line| line.split(' ').collect::<Vec<_>>())
            .find(|fields| fields.get(4) == Some(&point))
            .and_then(|fields| fields.get(5).map(|o| o.to_string()))
            .unwrap_or_else(|| panic!("{point} in the tracer's mountinfo"));
        assert!(
            options.split(',').any(|o| o == "ro"),
            "{point} is read-only for the tracer: {options}"
        );
    }

    let src = private.join("src");
    let ln = |new: &Path| {
        let status = Command::new("ln").arg(&src).arg(new).status();
        assert!(status.expect("run ln").success(), "ln {}", new.display());
    };
    let running = private.join("ln-while-running");
    ln(&running);
    // The second ln is gone before the tracer, stopped, handles its event.
    let gone = private.join("ln-while-stopped");
    tracer.signal(libc::SIGSTOP);
    ln(&gone);
    tracer.signal(libc::SIGCONT);
    let run = tracer.stop();
    run.assert_clean_exit();

    for newpath in [&running, &gone] {
        let event = the_event(&run, newpath);
        expect_stat_facts(event, newpath);
        expect_fields(
            event,
            &[
                ("oldpath_canonical", src.to_str().unwrap().into()),
                ("newpath_canonical", newpath.to_str().unwrap().into()),
            ],
        );
    }
    assert!(
        run.final_stats()["kernel_submitted"].as_u64() >= Some(2),
        "stats at exit"
    );
}

/// `systemd-analyze verify` on the unit as shipped, with the binary at the
/// unit's ExecStart path (a tmpfs over /usr/local/bin in a mount namespace
/// of the test's own, so nothing is installed on the host).
#[test]
fn unit_file_passes_systemd_analyze_verify() {
    if !privileged("unit_file_passes_systemd_analyze_verify") {
        return;
    }
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        eprintln!("SKIP unit_file_passes_systemd_analyze_verify: systemd-analyze is not installed");
        return;
    }
    let exec_start = unit_text()
        .lines()
        .find_map(|l| l.trim().strip_prefix("ExecStart=").map(str::to_owned))
        .expect("ExecStart=");
    let installed = exec_start
        .split_whitespace()
        .next()
        .expect("ExecStart= names a program");
    let bin_dir = Path::new(installed).parent().expect("absolute path");
    let script = r#"mount -t tmpfs tmpfs "$1" && cp "$2" "$3" && exec systemd-analyze verify "$4""#;
    let out = Command::new("unshare")
        .args([
            "--mount",
            "--propagation",
            "private",
            "--",
            "sh",
            "-c",
            script,
            "sh",
        ])
        .arg(bin_dir)
        .arg(crate::harness::binary())
        .arg(installed)
        .arg(unit_file())
        .output()
        .expect("run systemd-analyze verify");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\n{stderr}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The nice value (field 19 of /proc/PID/task/TID/stat) of every thread of
/// the tracer.
fn thread_nice_values(tracer: &Tracer) -> Vec<i64> {
    let tasks = PathBuf::from(format!("/proc/{}/task", tracer.pid()));
    std::fs::read_dir(&tasks)
        .expect("list the tracer's threads")
        .map(|task| {
            let stat = std::fs::read_to_string(task.expect("task entry").path().join("stat"))
                .expect("read a thread's stat");
            // The comm (field 2) may hold spaces; count from after its ')'.
            let after_comm = &stat[stat.rfind(')').expect("comm in stat") + 2..];
            after_comm
                .split(' ')
                .nth(16)
                .and_then(|nice| nice.parse().ok())
                .unwrap_or_else(|| panic!("no nice value in {stat:?}"))
        })
        .collect()
}

#[test]
fn every_thread_runs_at_the_priority_boost_and_zero_leaves_it_alone() {
    if !privileged("every_thread_runs_at_the_priority_boost_and_zero_leaves_it_alone") {
        return;
    }
    let boosted = Tracer::start(&["--pid", &my_pid()]);
    let nice = thread_nice_values(&boosted);
    boosted.stop().assert_clean_exit();
    assert!(nice.len() >= 4, "only {} threads: {nice:?}", nice.len());
    assert!(
        nice.iter().all(|&n| n == -5),
        "default priority_boost 5 must put every thread at nice -5: {nice:?}"
    );

    let unchanged = Tracer::start(&["--pid", &my_pid(), "--priority-boost", "0"]);
    let nice = thread_nice_values(&unchanged);
    unchanged.stop().assert_clean_exit();
    assert!(
        nice.iter().all(|&n| n == 0),
        "priority_boost 0 must leave every thread at nice 0: {nice:?}"
    );
}
