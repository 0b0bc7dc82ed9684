//! Privileged tests: the real tracer, real link(2)/linkat(2) calls, and the
//! resulting events checked field by field. Each test filters by its own pid
//! (or its child's uid or comm) and uses paths no other test touches.

mod config;
mod context;
mod context_syscalls;
mod doctor;
mod formats;
mod harness;
mod inflight;
mod metrics;
mod privileges;
mod rules;
mod sinks;
mod syslog;

use std::{
    os::unix::{ffi::OsStrExt, fs::MetadataExt, process::CommandExt},
    path::Path,
    process::Command,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use harness::{
    TestDir, Tracer, caller_fields, check, cstr, expect_fields, gettid, my_pid, open_dir,
    privileged,
};
use serde_json::{Value, json};

const AT_FDCWD: i32 = libc::AT_FDCWD;

fn linkat(olddirfd: i32, old: &Path, newdirfd: i32, new: &Path, flags: i32) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe { libc::linkat(olddirfd, old.as_ptr(), newdirfd, new.as_ptr(), flags) })
}

fn path_fields(old: &str, new: &str) -> Vec<(&'static str, Value)> {
    vec![
        ("oldpath", old.into()),
        ("oldpath_truncated", false.into()),
        ("oldpath_error", Value::Null),
        ("newpath", new.into()),
        ("newpath_truncated", false.into()),
        ("newpath_error", Value::Null),
    ]
}

fn result_fields(errno: Option<(i32, &str)>) -> Vec<(&'static str, Value)> {
    match errno {
        None => vec![
            ("ret", 0.into()),
            ("success", true.into()),
            ("errno", Value::Null),
        ],
        Some((code, name)) => {
            vec![
                ("ret", (-code).into()),
                ("success", false.into()),
                ("errno", name.into()),
            ]
        }
    }
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

#[test]
fn linkat_success_is_reported_field_by_field() {
    if !privileged("linkat_success_is_reported_field_by_field") {
        return;
    }
    let dir = TestDir::new("/tmp", "success");
    let (src, dst) = (dir.file("src"), dir.join("dst"));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let before_ns = harness_boot_ns();
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("linkat");
    let after_ns = harness_boot_ns();
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = run.event_for(&dst);

    expect_fields(
        event,
        &[
            ("kind", "event".into()),
            ("schema_version", 1.into()),
            ("syscall", "linkat".into()),
        ],
    );
    expect_fields(
        event,
        &[("olddirfd", AT_FDCWD.into()), ("newdirfd", AT_FDCWD.into())],
    );
    expect_fields(event, &path_fields(s(&src), s(&dst)));
    expect_fields(event, &[("flags", 0.into()), ("flag_names", json!([]))]);
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
    assert_eq!(
        std::fs::metadata(&dst).unwrap().ino(),
        std::fs::metadata(&src).unwrap().ino()
    );

    let boot_ns = event["boot_ns"].as_u64().expect("boot_ns");
    assert!(
        (before_ns..=after_ns).contains(&boot_ns),
        "boot_ns {boot_ns} outside [{before_ns}, {after_ns}]"
    );
    let duration = event["duration_ns"].as_u64().expect("duration_ns");
    assert!(
        duration > 0 && boot_ns + duration <= after_ns,
        "duration_ns {duration}"
    );
    assert!(event["seq"].as_u64().expect("seq") >= 1);
    let time = event["time"].as_str().expect("time");
    let stamp = chrono::DateTime::parse_from_rfc3339(time).expect("RFC 3339 time");
    let skew = (chrono::Utc::now() - stamp.with_timezone(&chrono::Utc))
        .num_seconds()
        .abs();
    assert!(skew < 60, "time {time} is {skew}s from now");
    assert_eq!(
        time.split('.').nth(1).map(str::len),
        Some(10),
        "nanoseconds plus Z in {time}"
    );
}

fn harness_boot_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_BOOTTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[test]
fn link_relative_to_cwd_uses_at_fdcwd() {
    if !privileged("link_relative_to_cwd_uses_at_fdcwd") {
        return;
    }
    let dir = TestDir::new("/tmp", "cwd");
    dir.file("rel-src");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    // No other test uses cwd-relative paths, so changing the process cwd is safe.
    std::env::set_current_dir(&dir.path).expect("chdir");
    // SAFETY: valid NUL-terminated strings; link(2) proper, not linkat.
    let result = check(unsafe { libc::link(c"rel-src".as_ptr(), c"rel-dst".as_ptr()) });
    std::env::set_current_dir("/").expect("chdir /");
    result.expect("link");
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = run
        .events()
        .find(|e| e["newpath"] == "rel-dst" && e["tid"] == gettid())
        .unwrap_or_else(|| panic!("no rel-dst event in {:#?}", run.records));
    expect_fields(
        event,
        &[
            ("syscall", "link".into()),
            ("olddirfd", AT_FDCWD.into()),
            ("newdirfd", AT_FDCWD.into()),
        ],
    );
    expect_fields(event, &path_fields("rel-src", "rel-dst"));
    expect_fields(event, &[("flags", 0.into()), ("flag_names", json!([]))]);
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
    assert!(dir.join("rel-dst").exists());
}

#[test]
fn linkat_relative_to_dirfds() {
    if !privileged("linkat_relative_to_dirfds") {
        return;
    }
    let dir = TestDir::new("/tmp", "dirfd");
    std::fs::create_dir(dir.join("a")).unwrap();
    std::fs::create_dir(dir.join("b")).unwrap();
    std::fs::write(dir.join("a/src"), b"x").unwrap();
    let (fd_a, fd_b) = (open_dir(&dir.join("a")), open_dir(&dir.join("b")));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(fd_a, Path::new("src"), fd_b, Path::new("dst-dirfd"), 0);
    let run = tracer.stop();
    // SAFETY: closing our own fds.
    unsafe { (libc::close(fd_a), libc::close(fd_b)) };
    result.expect("linkat");
    run.assert_clean_exit();
    let event = run.event_for(Path::new("dst-dirfd"));
    expect_fields(
        event,
        &[
            ("syscall", "linkat".into()),
            ("olddirfd", fd_a.into()),
            ("newdirfd", fd_b.into()),
        ],
    );
    expect_fields(event, &path_fields("src", "dst-dirfd"));
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
    assert!(dir.join("b/dst-dirfd").exists());
}

#[test]
fn linkat_follows_symlink_with_at_symlink_follow() {
    if !privileged("linkat_follows_symlink_with_at_symlink_follow") {
        return;
    }
    let dir = TestDir::new("/tmp", "follow");
    let target = dir.file("target");
    let symlink = dir.join("symlink");
    std::os::unix::fs::symlink(&target, &symlink).unwrap();
    let dst = dir.join("dst");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &symlink, AT_FDCWD, &dst, libc::AT_SYMLINK_FOLLOW).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = run.event_for(&dst);
    expect_fields(event, &path_fields(s(&symlink), s(&dst)));
    expect_fields(
        event,
        &[
            ("flags", 0x400.into()),
            ("flag_names", json!(["AT_SYMLINK_FOLLOW"])),
        ],
    );
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
    // The new name is the target file, not the symlink.
    assert_eq!(
        std::fs::metadata(&dst).unwrap().ino(),
        std::fs::metadata(&target).unwrap().ino()
    );
}

#[test]
fn linkat_empty_path_materializes_o_tmpfile() {
    if !privileged("linkat_empty_path_materializes_o_tmpfile") {
        return;
    }
    let dir = TestDir::new("/tmp", "tmpfile");
    let fd = harness::o_tmpfile(&dir.path, libc::O_WRONLY, 0o600);
    let dst = dir.join("materialized");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(fd, Path::new(""), AT_FDCWD, &dst, libc::AT_EMPTY_PATH);
    let run = tracer.stop();
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    result.expect("linkat AT_EMPTY_PATH");
    run.assert_clean_exit();
    let event = run.event_for(&dst);
    expect_fields(
        event,
        &[("olddirfd", fd.into()), ("newdirfd", AT_FDCWD.into())],
    );
    expect_fields(event, &path_fields("", s(&dst)));
    expect_fields(
        event,
        &[
            ("flags", 0x1000.into()),
            ("flag_names", json!(["AT_EMPTY_PATH"])),
        ],
    );
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
}

/// One failing linkat, checked field by field.
fn expect_failure(name: &str, src: &Path, dst: &Path, errno: (i32, &str)) {
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(AT_FDCWD, src, AT_FDCWD, dst, 0);
    let run = tracer.stop();
    assert_eq!(result, Err(errno.0), "{name}: the call itself");
    run.assert_clean_exit();
    let event = run.event_for(dst);
    expect_fields(event, &path_fields(s(src), s(dst)));
    expect_fields(event, &result_fields(Some(errno)));
    expect_fields(event, &caller_fields());
}

#[test]
fn eexist_is_reported() {
    if !privileged("eexist_is_reported") {
        return;
    }
    let dir = TestDir::new("/tmp", "eexist");
    expect_failure(
        "EEXIST",
        &dir.file("src"),
        &dir.file("taken"),
        (libc::EEXIST, "EEXIST"),
    );
}

#[test]
fn enoent_is_reported() {
    if !privileged("enoent_is_reported") {
        return;
    }
    let dir = TestDir::new("/tmp", "enoent");
    expect_failure(
        "ENOENT",
        &dir.join("missing"),
        &dir.join("dst"),
        (libc::ENOENT, "ENOENT"),
    );
}

#[test]
fn exdev_is_reported() {
    if !privileged("exdev_is_reported") {
        return;
    }
    let shm = TestDir::new("/dev/shm", "exdev");
    let tmp = TestDir::new("/tmp", "exdev");
    expect_failure(
        "EXDEV",
        &shm.file("src"),
        &tmp.join("dst"),
        (libc::EXDEV, "EXDEV"),
    );
}

#[test]
fn eperm_from_protected_hardlinks_for_unprivileged_child() {
    if !privileged("eperm_from_protected_hardlinks_for_unprivileged_child") {
        return;
    }
    const NOBODY: u32 = 65534;
    let knob = "/proc/sys/fs/protected_hardlinks";
    let saved = std::fs::read_to_string(knob).expect("read protected_hardlinks");
    if saved.trim() != "1" {
        std::fs::write(knob, "1").expect("enable protected_hardlinks");
    }
    let dir = TestDir::new("/tmp", "eperm");
    std::fs::set_permissions(
        &dir.path,
        std::os::unix::fs::PermissionsExt::from_mode(0o777),
    )
    .unwrap();
    let secret = dir.file("root-secret");
    std::fs::set_permissions(&secret, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    let dst = dir.join("nobody-link");

    let tracer = Tracer::start(&["--uid", &NOBODY.to_string()]);
    let child = Command::new("ln")
        .arg(&secret)
        .arg(&dst)
        .uid(NOBODY)
        .gid(NOBODY)
        .output()
        .expect("run ln as nobody");
    let run = tracer.stop();
    if saved.trim() != "1" {
        let _ = std::fs::write(knob, saved.trim());
    }
    assert!(!child.status.success(), "ln as nobody should fail");
    run.assert_clean_exit();
    let event = run.event_for(&dst);
    // GNU ln makes hard links with linkat(AT_FDCWD, src, AT_FDCWD, dst, 0).
    expect_fields(event, &[("syscall", "linkat".into()), ("flags", 0.into())]);
    expect_fields(event, &path_fields(s(&secret), s(&dst)));
    expect_fields(event, &result_fields(Some((libc::EPERM, "EPERM"))));
    expect_fields(
        event,
        &[
            ("uid", NOBODY.into()),
            ("gid", NOBODY.into()),
            ("comm", "ln".into()),
        ],
    );
    assert_ne!(
        event["pid"],
        json!(std::process::id()),
        "the child's pid, not ours"
    );
    assert_eq!(event["pid"], event["tid"]);
    // Only nobody's calls pass the kernel uid filter.
    assert!(
        run.events().all(|e| e["uid"] == NOBODY),
        "uid filter let others through"
    );
}

#[test]
fn enametoolong_path_is_kept_truncated_at_path_max() {
    if !privileged("enametoolong_path_is_kept_truncated_at_path_max") {
        return;
    }
    let dir = TestDir::new("/tmp", "toolong");
    let src = dir.file("src");
    let long = format!("{}/{}", dir.path.display(), "n".repeat(5000));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(AT_FDCWD, &src, AT_FDCWD, Path::new(&long), 0);
    let run = tracer.stop();
    assert_eq!(result, Err(libc::ENAMETOOLONG));
    run.assert_clean_exit();
    let prefix = &long[..4096];
    let matches: Vec<&Value> = run.events().filter(|e| e["newpath"] == prefix).collect();
    assert_eq!(
        matches.len(),
        1,
        "one event with the first 4096 bytes: {:#?}",
        run.records
    );
    let event = matches[0];
    expect_fields(
        event,
        &[
            ("oldpath", s(&src).into()),
            ("oldpath_truncated", false.into()),
        ],
    );
    expect_fields(
        event,
        &[
            ("newpath_truncated", true.into()),
            ("newpath_error", Value::Null),
        ],
    );
    expect_fields(
        event,
        &result_fields(Some((libc::ENAMETOOLONG, "ENAMETOOLONG"))),
    );
    expect_fields(event, &caller_fields());
}

#[test]
fn path_of_4095_bytes_is_captured_whole() {
    if !privileged("path_of_4095_bytes_is_captured_whole") {
        return;
    }
    let dir = TestDir::new("/tmp", "maxpath");
    let src = dir.file("src");
    // Repeated slashes keep every component short while the string is as
    // long as the kernel accepts: 4095 bytes plus the NUL is PATH_MAX.
    let head = format!("{}/", dir.path.display());
    let name = "max-dst";
    let long = format!("{head}{}{name}", "/".repeat(4095 - head.len() - name.len()));
    assert_eq!(long.len(), 4095);
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &src, AT_FDCWD, Path::new(&long), 0).expect("linkat with a 4095-byte path");
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = run.event_for(Path::new(&long));
    expect_fields(event, &path_fields(s(&src), &long));
    expect_fields(event, &result_fields(None));
    assert!(dir.join(name).exists());
}

#[test]
fn efault_for_null_and_unmapped_pointers() {
    if !privileged("efault_for_null_and_unmapped_pointers") {
        return;
    }
    let dir = TestDir::new("/tmp", "efault");
    let src = dir.file("src");
    let dst = dir.join("dst");
    let (c_src, c_dst) = (cstr(&src), cstr(&dst));
    // Below vm.mmap_min_addr nothing can ever be mapped, so this pointer is
    // unmapped for certain (a freshly munmapped page could be reused at once
    // by a concurrent test's allocation).
    let min_addr: usize = std::fs::read_to_string("/proc/sys/vm/mmap_min_addr")
        .expect("read mmap_min_addr")
        .trim()
        .parse()
        .expect("mmap_min_addr is a number");
    assert!(
        min_addr > 0x800,
        "vm.mmap_min_addr is {min_addr}: address 0x800 could be mapped"
    );
    let unmapped = 0x800 as *const libc::c_char;
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    // SAFETY: deliberately invalid pointers; the kernel must refuse them with EFAULT.
    let null_old =
        check(unsafe { libc::linkat(AT_FDCWD, std::ptr::null(), AT_FDCWD, c_dst.as_ptr(), 0) });
    // SAFETY: as above.
    let unmapped_new =
        check(unsafe { libc::linkat(AT_FDCWD, c_src.as_ptr(), AT_FDCWD, unmapped, 0) });
    let run = tracer.stop();
    assert_eq!(
        (null_old, unmapped_new),
        (Err(libc::EFAULT), Err(libc::EFAULT))
    );
    run.assert_clean_exit();

    let null_event = run.event_for(&dst);
    expect_fields(
        null_event,
        &[
            ("oldpath", Value::Null),
            ("oldpath_error", "EFAULT".into()),
            ("oldpath_truncated", false.into()),
        ],
    );
    expect_fields(null_event, &[("newpath_error", Value::Null)]);
    expect_fields(null_event, &result_fields(Some((libc::EFAULT, "EFAULT"))));
    expect_fields(null_event, &caller_fields());

    let unmapped_events: Vec<&Value> = run.events().filter(|e| e["oldpath"] == s(&src)).collect();
    assert_eq!(unmapped_events.len(), 1, "{:#?}", run.records);
    let event = unmapped_events[0];
    expect_fields(
        event,
        &[("newpath", Value::Null), ("newpath_error", "EFAULT".into())],
    );
    expect_fields(event, &result_fields(Some((libc::EFAULT, "EFAULT"))));
    expect_fields(event, &caller_fields());
}

#[test]
fn hostile_bytes_in_paths_survive_exactly() {
    if !privileged("hostile_bytes_in_paths_survive_exactly") {
        return;
    }
    let dir = TestDir::new("/tmp", "hostile");
    let src = dir.file("src");
    let mut raw = dir.path.as_os_str().as_bytes().to_vec();
    raw.extend_from_slice(b"/evil\nline\xff\xfe\x1b[31m\"quote\\");
    let dst = std::path::PathBuf::from(std::ffi::OsStr::from_bytes(&raw));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("linkat to a hostile name");
    let run = tracer.stop();
    run.assert_clean_exit();
    let matches: Vec<&Value> = run
        .events()
        .filter(|e| {
            e["newpath_b64"]
                .as_str()
                .and_then(|b| STANDARD.decode(b).ok())
                .as_deref()
                == Some(&raw[..])
        })
        .collect();
    assert_eq!(
        matches.len(),
        1,
        "one event carrying the exact bytes: {:#?}",
        run.records
    );
    let event = matches[0];
    let lossy = String::from_utf8_lossy(&raw).into_owned();
    expect_fields(
        event,
        &[("newpath", lossy.into()), ("oldpath", s(&src).into())],
    );
    assert!(
        event.get("oldpath_b64").is_none(),
        "UTF-8 paths carry no base64"
    );
    expect_fields(event, &result_fields(None));
    expect_fields(event, &caller_fields());
}

#[test]
fn concurrent_threads_lose_and_mix_up_nothing() {
    if !privileged("concurrent_threads_lose_and_mix_up_nothing") {
        return;
    }
    const THREADS: usize = 8;
    const CALLS: usize = 250;
    let dir = TestDir::new("/tmp", "threads");
    let src = dir.file("src");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let tids: Vec<u32> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (src, dir) = (&src, &dir);
                scope.spawn(move || {
                    for i in 0..CALLS {
                        linkat(AT_FDCWD, src, AT_FDCWD, &dir.join(&format!("t{t}-{i}")), 0)
                            .expect("linkat");
                    }
                    gettid()
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    // Calls of concurrently running tests that began before the attach show
    // up as exit_without_enter; any other loss is a failure. Our own calls
    // are all checked below, one by one.
    let losses: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["kind"] == "loss" && r["reason"] != "exit_without_enter")
        .collect();
    assert!(losses.is_empty(), "losses reported: {losses:#?}");
    let prefix = format!("{}/t", dir.path.display());
    let mine: Vec<&Value> = run
        .events()
        .filter(|e| {
            e["newpath"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .collect();
    assert_eq!(
        mine.len(),
        THREADS * CALLS,
        "every call reported exactly once"
    );
    let mut seen = std::collections::HashSet::new();
    for event in mine {
        let path = event["newpath"].as_str().unwrap();
        let thread: usize = path[prefix.len()..]
            .split('-')
            .next()
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            event["tid"], tids[thread],
            "event {path} carries another thread's tid"
        );
        expect_fields(
            event,
            &[("oldpath", s(&src).into()), ("success", true.into())],
        );
        assert!(seen.insert(path.to_owned()), "duplicate event for {path}");
    }
    let mut seqs: Vec<u64> = run.events().map(|e| e["seq"].as_u64().unwrap()).collect();
    let count = seqs.len();
    seqs.dedup();
    assert_eq!(seqs.len(), count, "sequence numbers are unique");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "sequence numbers increase"
    );
}

#[test]
fn sigint_drains_every_captured_event_and_exits_zero() {
    if !privileged("sigint_drains_every_captured_event_and_exits_zero") {
        return;
    }
    let dir = TestDir::new("/tmp", "sigint");
    let src = dir.file("src");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let dsts: Vec<_> = (0..50).map(|i| dir.join(&format!("d{i}"))).collect();
    for dst in &dsts {
        linkat(AT_FDCWD, &src, AT_FDCWD, dst, 0).expect("linkat");
    }
    let run = tracer.stop_with(libc::SIGINT);
    run.assert_clean_exit();
    for dst in &dsts {
        run.event_for(dst);
    }
}

#[test]
fn comm_and_pid_filters_apply_in_the_kernel() {
    if !privileged("comm_and_pid_filters_apply_in_the_kernel") {
        return;
    }
    let dir = TestDir::new("/tmp", "comm");
    let src = dir.file("src");
    let (by_ln, by_me) = (dir.join("by-ln"), dir.join("by-me"));
    let tracer = Tracer::start(&["--comm", "ln"]);
    let status = Command::new("ln")
        .arg(&src)
        .arg(&by_ln)
        .status()
        .expect("run ln");
    assert!(status.success());
    linkat(AT_FDCWD, &src, AT_FDCWD, &by_me, 0).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    expect_fields(
        run.event_for(&by_ln),
        &[("comm", "ln".into()), ("success", true.into())],
    );
    assert!(
        run.events().all(|e| e["comm"] == "ln"),
        "comm filter let others through"
    );

    // A pid filter naming some other process hides our own call.
    let tracer = Tracer::start(&["--pid", "1"]);
    let hidden = dir.join("hidden");
    linkat(AT_FDCWD, &src, AT_FDCWD, &hidden, 0).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    assert!(
        run.events().all(|e| e["pid"] == 1),
        "pid filter let others through: {:#?}",
        run.records
    );
}

#[test]
fn text_mode_prints_one_readable_line_per_event() {
    if !privileged("text_mode_prints_one_readable_line_per_event") {
        return;
    }
    let dir = TestDir::new("/tmp", "text");
    let src = dir.file("src");
    let dst = dir.join("dst\nnext");
    let tracer = Tracer::start_with(false, &["--pid", &my_pid()]);
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("linkat");
    let (code, lines) = tracer.stop_text();
    assert_eq!(code, Some(0));
    let escaped_dst = format!("{}/dst\\nnext", dir.path.display());
    let line = lines
        .iter()
        .find(|l| l.contains(&escaped_dst))
        .unwrap_or_else(|| panic!("no line for {escaped_dst:?} in {lines:#?}"));
    let expected = format!(
        " linkat pid={} tid={} uid=0 gid=0 comm=\"{}\" old=AT_FDCWD:\"{}\" new=AT_FDCWD:\"{escaped_dst}\" = 0",
        std::process::id(),
        gettid(),
        harness::thread_comm(),
        src.display()
    );
    assert!(
        line.ends_with(&expected),
        "line {line:?}\nexpected to end with {expected:?}"
    );
}

#[test]
fn not_root_gets_one_clear_error_line() {
    if !privileged("not_root_gets_one_clear_error_line") {
        return;
    }
    let out = Command::new(harness::binary())
        .arg("--json")
        .uid(65534)
        .gid(65534)
        .output()
        .expect("run as nobody");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr:?}");
    assert!(
        stderr.starts_with("link-trace: error: link-trace must run as root"),
        "{stderr:?}"
    );
}

#[test]
fn tiny_ring_accounts_for_every_call_exactly() {
    if !privileged("tiny_ring_accounts_for_every_call_exactly") {
        return;
    }
    const CALLS: usize = 3000;
    let dir = TestDir::new("/tmp", "tinyring");
    let src = dir.file("src");
    // A comm of our own, so the kernel's counters see this thread's calls only.
    let run = harness::with_comm("lt-tinyring", || {
        let tracer = Tracer::start(&[
            "--pid",
            &my_pid(),
            "--comm",
            "lt-tinyring",
            "--ring-bytes",
            "4096",
        ]);
        for i in 0..CALLS {
            linkat(AT_FDCWD, &src, AT_FDCWD, &dir.join(&format!("n{i}")), 0).expect("linkat");
        }
        tracer.stop()
    });
    run.assert_clean_exit();

    let prefix = format!("{}/n", dir.path.display());
    let delivered = run
        .events()
        .filter(|e| {
            e["newpath"]
                .as_str()
                .is_some_and(|p| p.starts_with(&prefix))
        })
        .count();
    assert_eq!(
        run.events().count(),
        delivered,
        "only this thread's calls pass the comm filter"
    );
    let stats = run.final_stats();
    let lost: u64 = stats["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["total"].as_u64().unwrap())
        .sum();
    let reported: u64 = run
        .records
        .iter()
        .filter(|r| r["kind"] == "loss")
        .map(|r| r["count"].as_u64().unwrap())
        .sum();
    assert!(
        lost > 0,
        "a 4 KiB ring cannot hold a burst of {CALLS} records"
    );
    assert_eq!(reported, lost, "loss records add up to the final stats");
    assert_eq!(
        delivered as u64 + lost,
        CALLS as u64,
        "calls = delivered + counted lost, exactly"
    );
    assert_eq!(
        stats["kernel_submitted"].as_u64().unwrap(),
        delivered as u64
    );
    for loss in stats["losses"].as_array().unwrap() {
        let per_cpu: u64 = loss["per_cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .sum();
        assert_eq!(
            per_cpu,
            loss["total"].as_u64().unwrap(),
            "per-CPU counts add up: {loss}"
        );
    }
}
