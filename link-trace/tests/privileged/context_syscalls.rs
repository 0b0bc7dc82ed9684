//! Privileged tests of the context syscalls: real unlink, unlinkat, rename,
//! renameat and renameat2 calls, their `kind: "context"` records checked
//! field by field with --context-events, their absence from the default
//! stream, and the rules that use them: name churn in a sticky directory by
//! two users (a forked child switches to nobody with setresuid), a race won
//! by rename, and a benign one-user tmp + link + rename sequence.
//!
//! Tests run in parallel in one process: each finds its records by its own
//! thread id or the unique paths it uses.

use std::{
    ffi::CString,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use serde_json::{Value, json};

use crate::harness::{
    Run, TestDir, Tracer, caller_fields, check, close, cstr, expect_fields, gettid, linkat, my_pid,
    open_dir, privileged, unique_comm, with_comm,
};

const AT_FDCWD: i32 = libc::AT_FDCWD;
const NOBODY: u32 = 65534;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

fn unlinkat(dirfd: i32, path: &Path, flags: i32) -> Result<(), i32> {
    let path = cstr(path);
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::unlinkat(dirfd, path.as_ptr(), flags) })
}

/// Raw renameat2, unlink and rename, not the libc wrappers (glibc turns
/// renameat2 without flags into renameat, and may implement unlink and
/// rename with the *at forms): the test needs the very syscall.
fn renameat2(olddirfd: i32, old: &Path, newdirfd: i32, new: &Path, flags: u32) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat2,
            olddirfd,
            old.as_ptr(),
            newdirfd,
            new.as_ptr(),
            flags,
        )
    } as libc::c_int)
}

fn sys_unlink(path: &Path) -> Result<(), i32> {
    let path = cstr(path);
    // SAFETY: a valid NUL-terminated string for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_unlink, path.as_ptr()) } as libc::c_int)
}

fn sys_rename(old: &Path, new: &Path) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe { libc::syscall(libc::SYS_rename, old.as_ptr(), new.as_ptr()) } as libc::c_int)
}

fn sys_renameat(olddirfd: i32, old: &Path, newdirfd: i32, new: &Path) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe {
        libc::syscall(
            libc::SYS_renameat,
            olddirfd,
            old.as_ptr(),
            newdirfd,
            new.as_ptr(),
        )
    } as libc::c_int)
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

fn context_records(run: &Run) -> impl Iterator<Item = &Value> {
    run.records.iter().filter(|r| r["kind"] == "context")
}

/// This thread's context records, in order.
fn mine(run: &Run) -> Vec<&Value> {
    let tid = gettid();
    context_records(run).filter(|r| r["tid"] == tid).collect()
}

/// The alerts citing the context record `record`.
fn alerts_citing<'a>(run: &'a Run, record: &Value) -> Vec<&'a Value> {
    run.alerts()
        .filter(|a| {
            a["context_seqs"]
                .as_array()
                .is_some_and(|seqs| seqs.contains(&record["seq"]))
        })
        .collect()
}

fn result(errno: Option<(i32, &str)>) -> Vec<(&'static str, Value)> {
    match errno {
        None => vec![
            ("ret", 0.into()),
            ("success", true.into()),
            ("errno", Value::Null),
        ],
        Some((code, name)) => vec![
            ("ret", (-code).into()),
            ("success", false.into()),
            ("errno", name.into()),
        ],
    }
}

/// The fields of one path argument as given and as resolved.
fn path(prefix: &str, raw: &str, resolved: &str, how: &str) -> Vec<(String, Value)> {
    vec![
        (prefix.to_owned(), raw.into()),
        (format!("{prefix}_truncated"), false.into()),
        (format!("{prefix}_error"), Value::Null),
        (format!("{prefix}_resolved"), resolved.into()),
        (format!("{prefix}_resolution"), how.into()),
        (format!("{prefix}_resolution_error"), Value::Null),
    ]
}

fn expect_owned(record: &Value, fields: &[(String, Value)]) {
    for (field, want) in fields {
        assert_eq!(&record[field], want, "field {field:?} of {record:#}");
    }
}

/// A context record's fixed contract: kind, credentials of this root test
/// thread, nothing of what only events carry.
fn expect_context(record: &Value, syscall: &str, before_ns: u64, after_ns: u64) {
    expect_fields(
        record,
        &[
            ("kind", "context".into()),
            ("schema_version", 1.into()),
            ("syscall", syscall.into()),
            ("euid", 0.into()),
            ("egid", 0.into()),
            ("fsuid", 0.into()),
            ("fsgid", 0.into()),
        ],
    );
    expect_fields(record, &caller_fields());
    let boot_ns = record["boot_ns"].as_u64().expect("boot_ns");
    assert!(
        (before_ns..=after_ns).contains(&boot_ns),
        "boot_ns {boot_ns} outside [{before_ns}, {after_ns}]"
    );
    let duration = record["duration_ns"].as_u64().expect("duration_ns");
    assert!(duration > 0 && boot_ns + duration <= after_ns);
    assert!(record["time"].as_str().is_some_and(|t| t.ends_with('Z')));
    for absent in [
        "file",
        "new_file",
        "exe",
        "ppid",
        "cgroup_id",
        "args_changed",
        "oldpath_canonical",
        "oldpath_at_exit",
        "inode_mismatch",
    ] {
        assert!(record.get(absent).is_none(), "{absent} in {record:#}");
    }
    let has_new = record.get("newpath").is_some();
    assert_eq!(
        has_new,
        !syscall.starts_with("unlink"),
        "newpath only for rename: {record:#}"
    );
}

#[test]
fn unlink_and_rename_calls_are_reported_field_by_field_with_context_events() {
    if !privileged("unlink_and_rename_calls_are_reported_field_by_field_with_context_events") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-fields");
    let (gone, by_dirfd) = (dir.file("gone"), dir.file("by-dirfd"));
    let sub = dir.join("sub");
    std::fs::create_dir(&sub).unwrap();
    let (a, b, c, d) = (dir.file("a"), dir.join("b"), dir.join("c"), dir.join("d"));
    let taken = dir.file("taken");
    let dirfd = open_dir(&dir.path);
    let long = PathBuf::from(format!("{}/{}", dir.path.display(), "n".repeat(5000)));

    let tracer = Tracer::start(&["--pid", &my_pid(), "--context-events"]);
    let before = crate::harness_boot_ns();
    let results = [
        sys_unlink(&gone),
        unlinkat(dirfd, Path::new("by-dirfd"), 0),
        unlinkat(AT_FDCWD, &sub, libc::AT_REMOVEDIR),
        sys_rename(&a, &b),
        sys_renameat(dirfd, Path::new("b"), AT_FDCWD, &c),
        renameat2(
            AT_FDCWD,
            &c,
            dirfd,
            Path::new("taken"),
            libc::RENAME_NOREPLACE,
        ),
        renameat2(AT_FDCWD, &c, AT_FDCWD, &d, 0),
        sys_unlink(&long),
        // SAFETY: a null path; the kernel must refuse it with EFAULT.
        check(
            unsafe { libc::syscall(libc::SYS_unlink, std::ptr::null::<libc::c_char>()) }
                as libc::c_int,
        ),
    ];
    let after = crate::harness_boot_ns();
    let run = tracer.stop();
    close(dirfd);
    run.assert_clean_exit();
    assert_eq!(
        results,
        [
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Ok(()),
            Err(libc::EEXIST),
            Ok(()),
            Err(libc::ENAMETOOLONG),
            Err(libc::EFAULT)
        ]
    );
    assert!(!by_dirfd.exists() && d.exists() && taken.exists());

    let records = mine(&run);
    assert_eq!(records.len(), 9, "{:#?}", run.records);
    let syscalls: Vec<&str> = records
        .iter()
        .map(|r| r["syscall"].as_str().unwrap())
        .collect();
    assert_eq!(
        syscalls,
        [
            "unlink",
            "unlinkat",
            "unlinkat",
            "rename",
            "renameat",
            "renameat2",
            "renameat2",
            "unlink",
            "unlink"
        ]
    );
    for (record, syscall) in records.iter().zip(&syscalls) {
        expect_context(record, syscall, before, after);
    }
    let seqs: Vec<u64> = records.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]) && seqs[0] >= 1,
        "{seqs:?}"
    );
    let dir_str = s(&dir.path);
    let none =
        || -> Vec<(&'static str, Value)> { vec![("flags", 0.into()), ("flag_names", json!([]))] };

    // unlink(2): absolute path.
    expect_owned(records[0], &path("oldpath", s(&gone), s(&gone), "absolute"));
    expect_fields(records[0], &[("olddirfd", AT_FDCWD.into())]);
    expect_fields(records[0], &none());
    expect_fields(records[0], &result(None));
    // unlinkat(dirfd, "by-dirfd", 0): resolved against the dirfd.
    expect_owned(
        records[1],
        &path("oldpath", "by-dirfd", s(&by_dirfd), "dirfd"),
    );
    expect_fields(records[1], &[("olddirfd", dirfd.into())]);
    expect_fields(records[1], &none());
    // unlinkat(AT_FDCWD, sub, AT_REMOVEDIR).
    expect_owned(records[2], &path("oldpath", s(&sub), s(&sub), "absolute"));
    expect_fields(
        records[2],
        &[
            ("flags", libc::AT_REMOVEDIR.into()),
            ("flag_names", json!(["AT_REMOVEDIR"])),
        ],
    );
    // rename(2).
    expect_owned(records[3], &path("oldpath", s(&a), s(&a), "absolute"));
    expect_owned(records[3], &path("newpath", s(&b), s(&b), "absolute"));
    expect_fields(
        records[3],
        &[("olddirfd", AT_FDCWD.into()), ("newdirfd", AT_FDCWD.into())],
    );
    expect_fields(records[3], &none());
    expect_fields(records[3], &result(None));
    // renameat(dirfd, "b", AT_FDCWD, c).
    expect_owned(records[4], &path("oldpath", "b", s(&b), "dirfd"));
    expect_owned(records[4], &path("newpath", s(&c), s(&c), "absolute"));
    expect_fields(
        records[4],
        &[("olddirfd", dirfd.into()), ("newdirfd", AT_FDCWD.into())],
    );
    // renameat2(.., RENAME_NOREPLACE) onto a taken name: EEXIST.
    expect_owned(records[5], &path("newpath", "taken", s(&taken), "dirfd"));
    expect_fields(
        records[5],
        &[
            ("newdirfd", dirfd.into()),
            ("flags", libc::RENAME_NOREPLACE.into()),
            ("flag_names", json!(["RENAME_NOREPLACE"])),
        ],
    );
    expect_fields(records[5], &result(Some((libc::EEXIST, "EEXIST"))));
    // renameat2(.., 0).
    expect_owned(records[6], &path("newpath", s(&d), s(&d), "absolute"));
    expect_fields(records[6], &none());
    expect_fields(records[6], &result(None));
    // A path of PATH_MAX bytes or more: the first 4096 kept, marked cut.
    expect_fields(
        records[7],
        &[
            ("oldpath", long.to_str().unwrap()[..4096].into()),
            ("oldpath_truncated", true.into()),
            ("oldpath_error", Value::Null),
        ],
    );
    expect_fields(
        records[7],
        &result(Some((libc::ENAMETOOLONG, "ENAMETOOLONG"))),
    );
    // A null path: unreadable, with the read's error.
    expect_fields(
        records[8],
        &[
            ("oldpath", Value::Null),
            ("oldpath_error", "EFAULT".into()),
            ("oldpath_resolved", Value::Null),
            ("oldpath_resolution_error", "no_argument".into()),
        ],
    );
    expect_fields(records[8], &result(Some((libc::EFAULT, "EFAULT"))));
    assert!(dir_str.starts_with("/tmp/"));

    // The final stats account for them apart from the events.
    let stats = run.final_stats();
    let captured = stats["context_decoded"].as_u64().unwrap();
    assert!(captured >= 9, "{stats:#}");
    assert_eq!(stats["context_submitted"].as_u64().unwrap(), captured);
    assert_eq!(
        context_records(&run).count() as u64,
        captured,
        "every captured context record was printed"
    );
    assert!(
        run.stderr.iter().any(|l| l.starts_with(
            "link-trace: capturing unlink, unlinkat, rename, renameat, renameat2 as context for the rules"
        ) && l.ends_with("printed as kind \"context\" (--context-events)")),
        "{:?}",
        run.stderr
    );
}

#[test]
fn context_records_stay_off_the_default_stream_and_uncaptured_when_no_rule_needs_them() {
    if !privileged(
        "context_records_stay_off_the_default_stream_and_uncaptured_when_no_rule_needs_them",
    ) {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-default");
    let calls = |tag: &str| {
        let (a, b) = (dir.file(&format!("{tag}-a")), dir.join(&format!("{tag}-b")));
        sys_rename(&a, &b).expect("rename");
        sys_unlink(&b).expect("unlink");
    };

    // The built-in rules need them: captured, judged, not printed.
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    calls("default");
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(context_records(&run).count(), 0, "{:#?}", run.records);
    let stats = run.final_stats();
    assert!(stats["context_decoded"].as_u64().unwrap() >= 2, "{stats:#}");
    assert!(
        run.stderr
            .iter()
            .any(|l| l.ends_with("not printed (--context-events prints them)")),
        "{:?}",
        run.stderr
    );
    assert!(
        run.stderr
            .iter()
            .any(|l| l.starts_with("link-trace: context records (")),
        "{:?}",
        run.stderr
    );

    // No rule needs them: not even attached.
    let tracer = Tracer::start(&["--pid", &my_pid(), "--no-builtin-rules"]);
    calls("no-rules");
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(context_records(&run).count(), 0);
    let stats = run.final_stats();
    assert_eq!(stats["context_submitted"], 0, "{stats:#}");
    assert!(
        run.stderr.iter().any(|l| l
            == "link-trace: unlink and rename calls are not captured: no rule in force needs them (--context-events captures and prints them)"),
        "{:?}",
        run.stderr
    );
}

/// A tracer of root's and nobody's calls made under `comm`, with `extra`
/// arguments. The test makes its calls with that comm (`with_comm`; a
/// forked child keeps it): the uids alone took in every root process on
/// the machine, and a benchmark's flood of root links there once cost a
/// test its own record.
fn trace_root_and_nobody(comm: &str, extra: &[&str]) -> Tracer {
    let nobody = NOBODY.to_string();
    let mut args = vec!["--uid", "0", "--uid", &nobody, "--comm", comm];
    args.extend_from_slice(extra);
    Tracer::start(&args)
}

/// What a forked child does as nobody, with raw syscalls only (the parent
/// is multi-threaded: nothing but async-signal-safe calls after fork).
enum AsNobody<'a> {
    Rename(&'a CString, &'a CString),
    Unlink(&'a CString),
}

/// Forks a child that drops to nobody with setresgid/setresuid and makes
/// `calls` in order; returns its pid and each call's result.
fn as_nobody(calls: &[AsNobody<'_>]) -> (u32, Vec<Result<(), i32>>) {
    assert!(calls.len() <= 8);
    // The child reports each call's errno (0 for success) through a pipe.
    let mut fds = [0; 2];
    // SAFETY: valid out-array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: the child only makes raw syscalls and _exits.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork: {}", std::io::Error::last_os_error());
    if pid == 0 {
        // SAFETY: async-signal-safe syscalls on data prepared before fork.
        unsafe {
            let mut codes = [0u8; 8];
            if libc::setresgid(NOBODY, NOBODY, NOBODY) != 0
                || libc::setresuid(NOBODY, NOBODY, NOBODY) != 0
            {
                libc::_exit(2);
            }
            for (code, call) in codes.iter_mut().zip(calls) {
                let ret = match call {
                    AsNobody::Rename(old, new) => {
                        libc::syscall(libc::SYS_rename, old.as_ptr(), new.as_ptr())
                    }
                    AsNobody::Unlink(path) => libc::syscall(libc::SYS_unlink, path.as_ptr()),
                };
                *code = if ret == 0 {
                    0
                } else {
                    *libc::__errno_location() as u8
                };
            }
            libc::write(fds[1], codes.as_ptr().cast(), calls.len());
            libc::_exit(0);
        }
    }
    close(fds[1]);
    let mut codes = [0u8; 8];
    // SAFETY: reading into a buffer of 8 bytes.
    let n = unsafe { libc::read(fds[0], codes.as_mut_ptr().cast(), calls.len()) };
    close(fds[0]);
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "child as nobody failed: status {status:#x}"
    );
    assert_eq!(n as usize, calls.len());
    let results = codes[..calls.len()]
        .iter()
        .map(|&c| if c == 0 { Ok(()) } else { Err(i32::from(c)) })
        .collect();
    (pid as u32, results)
}

/// A sticky world-writable directory under /tmp holding a file of root's,
/// and the shared name (not yet taken) the users will contend for.
fn sticky_dir(tag: &str) -> (TestDir, PathBuf, PathBuf) {
    let dir = TestDir::new("/tmp", tag);
    chmod(&dir.path, 0o1777);
    let root_file = dir.file("root-file");
    let name = dir.join("shared-name");
    (dir, root_file, name)
}

#[test]
fn link_unlink_and_rename_of_one_shared_name_by_two_users_alert() {
    if !privileged("link_unlink_and_rename_of_one_shared_name_by_two_users_alert") {
        return;
    }
    let (dir, root_file, name) = sticky_dir("ctx-churn");
    let nobody_file = dir.file("nobody-file");
    std::os::unix::fs::chown(&nobody_file, Some(NOBODY), Some(NOBODY)).unwrap();
    let (c_nobody_file, c_name) = (cstr(&nobody_file), cstr(&name));

    // Default configuration: the built-in churn rule asks for the context
    // syscalls; the records themselves are not printed.
    let comm = unique_comm();
    let tracer = trace_root_and_nobody(&comm, &[]);
    let (child, results) = with_comm(&comm, || {
        linkat(AT_FDCWD, &root_file, AT_FDCWD, &name, 0).expect("root takes the name");
        sys_unlink(&name).expect("root lets it go");
        as_nobody(&[AsNobody::Rename(&c_nobody_file, &c_name)])
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(results, [Ok(())], "nobody's rename takes the free name");
    assert_eq!(context_records(&run).count(), 0);

    let links: Vec<&Value> = run
        .events()
        .filter(|e| e["newpath_resolved"] == s(&name))
        .collect();
    assert_eq!(links.len(), 1, "{:#?}", run.records);
    let alerts: Vec<&Value> = run
        .alerts()
        .filter(|a| a["rule_id"] == "sticky-dir-name-churn" && a["newpath_resolved"] == s(&name))
        .collect();
    assert_eq!(alerts.len(), 1, "{:#?}", run.records);
    let alert = alerts[0];
    expect_fields(
        alert,
        &[
            ("kind", "alert".into()),
            ("severity", "medium".into()),
            ("mitre", json!(["T1068"])),
            ("syscall", "rename".into()),
            ("pid", child.into()),
            ("uid", NOBODY.into()),
            ("oldpath_resolved", s(&nobody_file).into()),
            ("event_seqs", json!([links[0]["seq"]])),
        ],
    );
    assert_eq!(
        alert["context_seqs"].as_array().map(Vec::len),
        Some(2),
        "root's unlink and nobody's rename: {alert:#}"
    );
    assert_eq!(
        alert["message"],
        format!(
            "{comm} (pid {child}, fsuid {NOBODY}) rename on {}: ok, a name another user worked on moments before",
            s(&name)
        )
    );
}

#[test]
fn the_same_churn_recorded_with_context_events_cites_printed_records() {
    if !privileged("the_same_churn_recorded_with_context_events_cites_printed_records") {
        return;
    }
    let (_dir, root_file, name) = sticky_dir("ctx-churn-printed");
    let c_name = cstr(&name);

    let comm = unique_comm();
    let tracer = trace_root_and_nobody(&comm, &["--context-events"]);
    let (child, results) = with_comm(&comm, || {
        linkat(AT_FDCWD, &root_file, AT_FDCWD, &name, 0).expect("root takes the name");
        // The sticky bit keeps nobody from removing root's name: refused,
        // and still churn on it.
        as_nobody(&[AsNobody::Unlink(&c_name)])
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(results, [Err(libc::EPERM)]);
    let unlinks: Vec<&Value> = context_records(&run)
        .filter(|r| r["oldpath_resolved"] == s(&name))
        .collect();
    assert_eq!(unlinks.len(), 1, "{:#?}", run.records);
    let unlink = unlinks[0];
    expect_fields(
        unlink,
        &[
            ("syscall", "unlink".into()),
            ("pid", child.into()),
            ("uid", NOBODY.into()),
            ("fsuid", NOBODY.into()),
            ("errno", "EPERM".into()),
        ],
    );
    let alerts = alerts_citing(&run, unlink);
    assert_eq!(alerts.len(), 1, "{:#?}", run.records);
    expect_fields(
        alerts[0],
        &[
            ("rule_id", "sticky-dir-name-churn".into()),
            ("syscall", "unlink".into()),
            ("context_seqs", json!([unlink["seq"]])),
            ("time", unlink["time"].clone()),
        ],
    );
}

#[test]
fn failed_noreplace_renames_then_a_winning_rename_alert() {
    if !privileged("failed_noreplace_renames_then_a_winning_rename_alert") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-race");
    let payload = dir.file("payload");
    let target = dir.file("target");
    let tracer = Tracer::start(&["--pid", &my_pid(), "--context-events"]);
    for _ in 0..3 {
        assert_eq!(
            renameat2(
                AT_FDCWD,
                &payload,
                AT_FDCWD,
                &target,
                libc::RENAME_NOREPLACE
            ),
            Err(libc::EEXIST)
        );
    }
    std::fs::remove_file(&target).unwrap();
    renameat2(
        AT_FDCWD,
        &payload,
        AT_FDCWD,
        &target,
        libc::RENAME_NOREPLACE,
    )
    .expect("the race is won");
    let run = tracer.stop();
    run.assert_clean_exit();
    let renames: Vec<&Value> = mine(&run)
        .into_iter()
        .filter(|r| r["syscall"] == "renameat2" && r["newpath_resolved"] == s(&target))
        .collect();
    assert_eq!(renames.len(), 4, "{:#?}", run.records);
    let last = renames[3];
    let alerts: Vec<&Value> = alerts_citing(&run, last)
        .into_iter()
        .filter(|a| a["rule_id"] == "link-race-retry")
        .collect();
    assert_eq!(alerts.len(), 1, "{:#?}", run.records);
    let seqs: Vec<Value> = renames.iter().map(|r| r["seq"].clone()).collect();
    expect_fields(
        alerts[0],
        &[
            ("context_seqs", Value::Array(seqs)),
            ("event_seqs", json!([])),
            ("syscall", "renameat2".into()),
            ("newpath_resolved", s(&target).into()),
        ],
    );
}

#[test]
fn one_user_writing_a_temporary_then_linking_and_renaming_raises_nothing() {
    if !privileged("one_user_writing_a_temporary_then_linking_and_renaming_raises_nothing") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-benign");
    chmod(&dir.path, 0o1777);
    // Root, like a package manager: back the file up with a link, put the
    // new version in place with rename, drop the backup.
    let conf = dir.file("app.conf");
    let (conf_tmp, conf_bak) = (dir.file("app.conf.tmp"), dir.join("app.conf.bak"));
    // nobody, the same on a file of its own (an editor's safe save).
    let notes = dir.file("notes");
    let notes_tmp = dir.file("notes.tmp");
    for path in [&notes, &notes_tmp] {
        std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY)).unwrap();
    }
    let (c_notes_tmp, c_notes) = (cstr(&notes_tmp), cstr(&notes));

    let comm = unique_comm();
    let tracer = trace_root_and_nobody(&comm, &["--context-events"]);
    let (_, results) = with_comm(&comm, || {
        linkat(AT_FDCWD, &conf, AT_FDCWD, &conf_bak, 0).expect("backup link");
        sys_rename(&conf_tmp, &conf).expect("new version in place");
        sys_unlink(&conf_bak).expect("backup dropped");
        as_nobody(&[AsNobody::Rename(&c_notes_tmp, &c_notes)])
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(results, [Ok(())]);

    let within = |r: &&Value| {
        ["oldpath_resolved", "newpath_resolved"]
            .iter()
            .any(|f| r[*f].as_str().is_some_and(|p| p.starts_with(s(&dir.path))))
    };
    let events: Vec<&Value> = run.events().filter(within).collect();
    let context: Vec<&Value> = context_records(&run).filter(within).collect();
    assert_eq!((events.len(), context.len()), (1, 3), "{:#?}", run.records);
    for event in events {
        assert_eq!(run.alerts_of(event), Vec::<&Value>::new(), "for {event:#}");
    }
    for record in context {
        assert_eq!(
            alerts_citing(&run, record),
            Vec::<&Value>::new(),
            "for {record:#}"
        );
    }
}

/// Checks that a link event's mismatch, if any, is explained by this
/// process's rename onto its source, printed in the same run.
fn expect_explained_if_mismatched(run: &Run, event: &Value) -> bool {
    if event["inode_mismatch"] != true {
        assert_eq!(
            event["inode_mismatch_explained_by"],
            Value::Null,
            "{event:#}"
        );
        return false;
    }
    let why = &event["inode_mismatch_explained_by"];
    expect_fields(
        why,
        &[
            ("pid", std::process::id().into()),
            ("tid", gettid().into()),
            ("syscall", "rename".into()),
            ("newpath_resolved", event["oldpath_resolved"].clone()),
        ],
    );
    let renames: Vec<&Value> = context_records(run)
        .filter(|r| r["seq"] == why["seq"])
        .collect();
    assert_eq!(
        renames.len(),
        1,
        "the explaining rename is in the stream: {why:#}"
    );
    for field in [
        "boot_ns",
        "oldpath_resolved",
        "newpath_resolved",
        "pid",
        "tid",
    ] {
        assert_eq!(renames[0][field], why[field], "{field} of {why:#}");
    }
    true
}

/// dpkg's way of replacing a file, over and over: back it up with a link,
/// rename the new version onto it. When the daemon's stat of the source
/// lands after the rename, the source is the new version and the backup
/// the old one: a mismatch, which the caller's own rename explains. 200
/// rounds as they come, then 20 with the tracer stopped (SIGSTOP) until
/// they are done, so that every stat lands after its rename: no alert at
/// all, and every mismatch carries its explanation. The stop outlasts the
/// daemon's wait for a rename (hold::DEADLINE, 40 ms): an event held when it
/// stopped must still get its explanation from the ring afterwards, as one
/// held while the daemon detaches at exit must (the wait once ended on the
/// clock alone, and this test failed about 1 run in 6 on a loaded machine).
#[test]
fn backing_up_with_a_link_then_renaming_the_new_version_in_place_raises_nothing() {
    if !privileged("backing_up_with_a_link_then_renaming_the_new_version_in_place_raises_nothing") {
        return;
    }
    const FREE: usize = 200;
    const STOPPED: usize = 20;
    let dir = TestDir::new("/tmp", "ctx-backup-rename");
    let files: Vec<(PathBuf, PathBuf, PathBuf)> = (0..FREE + STOPPED)
        .map(|i| {
            (
                dir.file(&format!("conf-{i}")),
                dir.file(&format!("conf-{i}.dpkg-new")),
                dir.join(&format!("conf-{i}.dpkg-old")),
            )
        })
        .collect();
    let replace = |(conf, new, old): &(PathBuf, PathBuf, PathBuf)| {
        linkat(AT_FDCWD, conf, AT_FDCWD, old, 0).expect("backup link");
        sys_rename(new, conf).expect("new version in place");
    };

    let tracer = Tracer::start(&["--pid", &my_pid(), "--context-events"]);
    files[..FREE].iter().for_each(replace);
    tracer.signal(libc::SIGSTOP);
    files[FREE..].iter().for_each(replace);
    std::thread::sleep(std::time::Duration::from_millis(100));
    tracer.signal(libc::SIGCONT);
    let run = tracer.stop();
    run.assert_clean_exit();

    let mut mismatched = 0;
    for (i, (conf, _, old)) in files.iter().enumerate() {
        let event = run.event_for(old);
        expect_fields(
            event,
            &[
                ("success", true.into()),
                ("oldpath_resolved", s(conf).into()),
            ],
        );
        let mismatch = expect_explained_if_mismatched(&run, event);
        assert!(
            mismatch || i < FREE,
            "stopped until the rename was done, the stat must see it: {event:#}"
        );
        mismatched += usize::from(mismatch);
        assert_eq!(run.alerts_of(event), Vec::<&Value>::new(), "for {event:#}");
    }
    eprintln!(
        "backup link + rename: {} of {FREE} free-running rounds showed an explained mismatch",
        mismatched - STOPPED
    );
    let mine: Vec<&Value> = run
        .alerts()
        .filter(|a| {
            ["oldpath_resolved", "newpath_resolved"]
                .iter()
                .any(|f| a[*f].as_str().is_some_and(|p| p.starts_with(s(&dir.path))))
        })
        .collect();
    assert_eq!(mine, Vec::<&Value>::new());
}

const UNLINKAT_RULE: &str = r#"
[[rule]]
id = "ctx-hup"
title = "A name with the test prefix removed"
severity = "info"
mitre = ["T1070.004"]
syscalls = ["unlinkat"]
message = "{comm} removed {target_resolved}"
condition = { field = "target_resolved", glob = "**/ctx-hup-*" }
"#;

#[test]
fn a_reload_whose_rules_need_unlinkat_attaches_it() {
    if !privileged("a_reload_whose_rules_need_unlinkat_attaches_it") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-hup");
    let rules = dir.join("site.toml");
    // First no rule needs unlink or rename: nothing of theirs is attached.
    std::fs::write(
        &rules,
        UNLINKAT_RULE.replace("syscalls = [\"unlinkat\"]\n", ""),
    )
    .unwrap();
    // Attaching on reload needs the capabilities the daemon otherwise drops.
    let tracer = Tracer::start(&[
        "--pid",
        &my_pid(),
        "--no-builtin-rules",
        "--rules-dir",
        s(&dir.join("no-such-dir")),
        "--rules",
        s(&rules),
        "--keep-capabilities",
    ]);
    let (before, after) = (dir.file("ctx-hup-before"), dir.file("ctx-hup-after"));
    unlinkat(AT_FDCWD, &before, 0).expect("unlinkat");
    std::fs::write(&rules, UNLINKAT_RULE).unwrap();
    tracer.signal(libc::SIGHUP);
    let wait = |text: &str| {
        tracer
            .wait_for_stderr(text, std::time::Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no stderr line with {text:?}"))
    };
    let line = wait("link-trace: capturing unlinkat");
    assert_eq!(
        line,
        "link-trace: capturing unlinkat as context for the rules ctx-hup; not printed (--context-events prints them)"
    );
    wait("reloaded: 1 rules in force");
    unlinkat(AT_FDCWD, &after, 0).expect("unlinkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    assert!(
        run.stderr.iter().any(|l| l
            == "link-trace: unlink and rename calls are not captured: no rule in force needs them (--context-events captures and prints them)"),
        "{:?}",
        run.stderr
    );
    let alerts: Vec<&Value> = run.alerts().collect();
    assert_eq!(alerts.len(), 1, "{:#?}", run.records);
    expect_fields(
        alerts[0],
        &[
            ("rule_id", "ctx-hup".into()),
            ("syscall", "unlinkat".into()),
            ("oldpath_resolved", s(&after).into()),
            ("event_seqs", json!([])),
            (
                "message",
                format!("{} removed {}", crate::harness::thread_comm(), s(&after)).into(),
            ),
        ],
    );
    // Other tests of this process may unlink meanwhile: only the count of
    // this alert's context records is certain.
    assert_eq!(alerts[0]["context_seqs"].as_array().map(Vec::len), Some(1));
}
