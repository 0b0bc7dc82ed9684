//! Privileged tests of the event context: kernel-resolved absolute paths,
//! process identity, the linked file's facts, and TOCTOU evidence. Every
//! field is compared with ground truth the test reads itself.

use std::{
    ffi::CString,
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::Command,
};

use serde_json::Value;

use crate::harness::{
    TestDir, Tracer, check, close, cstr, expect_fields, gettid, link_with_oldpath_swapped, my_pid,
    o_tmpfile, open_dir, privileged,
};

const AT_FDCWD: i32 = libc::AT_FDCWD;

fn linkat(olddirfd: i32, old: &Path, newdirfd: i32, new: &Path, flags: i32) -> Result<(), i32> {
    let (old, new) = (cstr(old), cstr(new));
    // SAFETY: valid NUL-terminated strings for the duration of the call.
    check(unsafe { libc::linkat(olddirfd, old.as_ptr(), newdirfd, new.as_ptr(), flags) })
}

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// The one event whose raw newpath is `raw` from this thread.
fn mine<'a>(run: &'a crate::harness::Run, raw: &str) -> &'a Value {
    let tid = gettid();
    let found: Vec<&Value> = run
        .events()
        .filter(|e| e["newpath"] == raw && e["tid"] == tid)
        .collect();
    assert_eq!(
        found.len(),
        1,
        "one event with newpath {raw:?} from tid {tid}: {:#?}",
        run.records
    );
    found[0]
}

fn dev_string(dev: u64) -> String {
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

fn expect_file(event: &Value, field: &str, path: &Path, facts_from: &str) {
    let meta = std::fs::symlink_metadata(path).expect("stat ground truth");
    let file = &event[field];
    expect_fields(
        file,
        &[
            ("facts_from", facts_from.into()),
            ("dev", dev_string(meta.dev()).into()),
            ("ino", meta.ino().into()),
            ("mode", meta.mode().into()),
            (
                "permissions",
                format!("{:04o}", meta.mode() & 0o7777).into(),
            ),
            ("setuid", (meta.mode() & libc::S_ISUID != 0).into()),
            ("setgid", (meta.mode() & libc::S_ISGID != 0).into()),
            ("uid", meta.uid().into()),
            ("gid", meta.gid().into()),
            ("type", "regular".into()),
        ],
    );
}

#[test]
fn relative_path_after_chdir_resolves_against_cwd() {
    if !privileged("relative_path_after_chdir_resolves_against_cwd") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-cwd");
    std::fs::create_dir(dir.join("sub")).unwrap();
    dir.file("sub/ctx-src");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    // The only other cwd-relative test restores "/" right after its call; the
    // two never overlap because each resolves paths it alone creates.
    std::env::set_current_dir(dir.join("sub")).expect("chdir");
    let result = linkat(
        AT_FDCWD,
        Path::new("./ctx-src"),
        AT_FDCWD,
        Path::new("../sub/./ctx-dst"),
        0,
    );
    std::env::set_current_dir("/").expect("chdir /");
    result.expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = mine(&run, "../sub/./ctx-dst");
    let sub = dir.join("sub");
    expect_fields(
        event,
        &[
            ("oldpath_resolved", s(&sub.join("ctx-src")).into()),
            ("oldpath_resolution", "cwd".into()),
            ("oldpath_resolution_error", Value::Null),
            ("newpath_resolved", s(&sub.join("ctx-dst")).into()),
            ("newpath_resolution", "cwd".into()),
            ("newpath_resolution_error", Value::Null),
        ],
    );
    expect_file(event, "file", &sub.join("ctx-src"), "stat");
    expect_file(event, "new_file", &sub.join("ctx-dst"), "stat");
    expect_fields(event, &[("inode_mismatch", false.into())]);
}

/// A new name the caller unlinks right after the link is not stat'ed (the
/// stat could only fail or see a later file): `new_file_error` names the
/// unlink's context record instead. A name it keeps is stat'ed as ever.
/// The unlink is found when the daemon reads it from the ring together with
/// the link; a drain may fall between the two (the test thread preempted
/// under load), so there are several pairs, each of which must show one of
/// the three honest outcomes, and at least one the skipped stat.
#[test]
fn a_new_name_the_caller_unlinked_is_not_stated_and_one_it_kept_is() {
    if !privileged("a_new_name_the_caller_unlinked_is_not_stated_and_one_it_kept_is") {
        return;
    }
    const PAIRS: usize = 16;
    let dir = TestDir::new("/tmp", "ctx-unlinked");
    let src = dir.file("src");
    let gone: Vec<PathBuf> = (0..PAIRS).map(|i| dir.join(&format!("gone-{i}"))).collect();
    let kept = dir.join("kept");
    let tracer = Tracer::start(&["--pid", &my_pid(), "--context-events"]);
    let pairs: Vec<(Result<(), i32>, Result<(), i32>)> = gone
        .iter()
        .map(|name| {
            let linked = linkat(AT_FDCWD, &src, AT_FDCWD, name, 0);
            // SAFETY: a valid NUL-terminated string for the duration of the call.
            (linked, check(unsafe { libc::unlink(cstr(name).as_ptr()) }))
        })
        .collect();
    let kept_linked = linkat(AT_FDCWD, &src, AT_FDCWD, &kept, 0);
    let run = tracer.stop();
    for (linked, unlinked) in pairs {
        linked.expect("linkat");
        unlinked.expect("unlink");
    }
    kept_linked.expect("linkat");
    run.assert_clean_exit();
    let tid = gettid();
    let src_ino = std::fs::metadata(&src).expect("stat src").ino();
    let mut skipped = 0;
    for name in &gone {
        let unlink: Vec<&Value> = run
            .records
            .iter()
            .filter(|r| r["kind"] == "context" && r["tid"] == tid && r["oldpath"] == s(name))
            .collect();
        assert_eq!(
            unlink.len(),
            1,
            "the unlink's context record: {:#?}",
            run.records
        );
        assert_eq!(unlink[0]["syscall"], "unlink");
        let event = mine(&run, s(name));
        expect_file(event, "file", &src, "stat");
        let why = format!("unlinked by the caller (unlink seq {})", unlink[0]["seq"]);
        match (&event["new_file"], event["new_file_error"].as_str()) {
            (Value::Null, Some(error)) if error == why => skipped += 1,
            // The unlink came in a later batch: the stat failed.
            (Value::Null, Some("ENOENT")) => {}
            // The daemon got to the event before the unlink was made.
            (file, None) if file["ino"] == src_ino => {}
            _ => panic!("{name:?}: expected {why:?}, ENOENT or the source's facts: {event:#}"),
        }
        let mismatch = if event["new_file"].is_null() {
            Value::Null
        } else {
            false.into()
        };
        assert_eq!(event["inode_mismatch"], mismatch, "{event:#}");
    }
    assert!(
        skipped > 0,
        "no stat skipped in {PAIRS} pairs: {:#?}",
        run.records
    );
    let event = mine(&run, s(&kept));
    expect_file(event, "new_file", &kept, "stat");
    expect_fields(
        event,
        &[
            ("new_file_error", Value::Null),
            ("inode_mismatch", false.into()),
        ],
    );
}

#[test]
fn dirfd_of_a_renamed_directory_resolves_to_its_new_name() {
    if !privileged("dirfd_of_a_renamed_directory_resolves_to_its_new_name") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-renamed");
    std::fs::create_dir(dir.join("before")).unwrap();
    dir.file("before/src");
    let fd = open_dir(&dir.join("before"));
    std::fs::rename(dir.join("before"), dir.join("after")).unwrap();
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(fd, Path::new("src"), fd, Path::new("renamed-dst"), 0);
    let run = tracer.stop();
    close(fd);
    result.expect("linkat");
    run.assert_clean_exit();
    let event = mine(&run, "renamed-dst");
    expect_fields(
        event,
        &[
            ("olddirfd", fd.into()),
            ("oldpath_resolved", s(&dir.join("after/src")).into()),
            ("oldpath_resolution", "dirfd".into()),
            ("newpath_resolved", s(&dir.join("after/renamed-dst")).into()),
            ("newpath_resolution", "dirfd".into()),
        ],
    );
}

#[test]
fn dirfd_of_a_deleted_directory_says_so() {
    if !privileged("dirfd_of_a_deleted_directory_says_so") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-deleted");
    let src = dir.file("src");
    std::fs::create_dir(dir.join("gone")).unwrap();
    let fd = open_dir(&dir.join("gone"));
    std::fs::remove_dir(dir.join("gone")).unwrap();
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(AT_FDCWD, &src, fd, Path::new("into-deleted"), 0);
    let run = tracer.stop();
    close(fd);
    assert_eq!(
        result,
        Err(libc::ENOENT),
        "linking into a deleted directory fails"
    );
    run.assert_clean_exit();
    let event = mine(&run, "into-deleted");
    expect_fields(
        event,
        &[
            ("oldpath_resolved", s(&src).into()),
            ("oldpath_resolution", "absolute".into()),
            ("newpath_resolved", Value::Null),
            ("newpath_resolution", "dirfd".into()),
            ("newpath_resolution_error", "deleted_directory".into()),
            ("errno", "ENOENT".into()),
        ],
    );
    // The failed attempt still reports the source file.
    expect_file(event, "file", &src, "stat");
    expect_fields(
        event,
        &[("new_file", Value::Null), ("inode_mismatch", Value::Null)],
    );
}

#[test]
fn bad_dirfd_is_reported_as_bad_fd() {
    if !privileged("bad_dirfd_is_reported_as_bad_fd") {
        return;
    }
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(987_654, Path::new("x"), 987_654, Path::new("bad-fd-dst"), 0);
    let run = tracer.stop();
    assert_eq!(result, Err(libc::EBADF));
    let event = mine(&run, "bad-fd-dst");
    expect_fields(
        event,
        &[
            ("newpath_resolved", Value::Null),
            ("newpath_resolution", "dirfd".into()),
            ("newpath_resolution_error", "bad_fd".into()),
            ("errno", "EBADF".into()),
        ],
    );
}

/// Mounts for one test, detached again on drop.
struct Mounts(Vec<PathBuf>);

impl Mounts {
    fn mount(&mut self, source: &str, target: &Path, fstype: &str, flags: libc::c_ulong) {
        let (source, target_c, fstype) = (
            CString::new(source).unwrap(),
            cstr(target),
            CString::new(fstype).unwrap(),
        );
        // SAFETY: valid strings; no data argument.
        let ret = unsafe {
            libc::mount(
                source.as_ptr(),
                target_c.as_ptr(),
                fstype.as_ptr(),
                flags,
                std::ptr::null(),
            )
        };
        assert_eq!(
            ret,
            0,
            "mount {}: {}",
            target.display(),
            std::io::Error::last_os_error()
        );
        self.0.push(target.to_path_buf());
    }
}

impl Drop for Mounts {
    fn drop(&mut self) {
        for target in self.0.iter().rev() {
            let c = cstr(target);
            // SAFETY: valid string.
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
}

#[test]
fn paths_through_a_bind_mount_and_a_fresh_tmpfs_are_walked_across_mounts() {
    if !privileged("paths_through_a_bind_mount_and_a_fresh_tmpfs_are_walked_across_mounts") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-mounts");
    for sub in ["real", "bind", "tmp"] {
        std::fs::create_dir(dir.join(sub)).unwrap();
    }
    dir.file("real/src");
    let mut mounts = Mounts(Vec::new());
    mounts.mount(
        s(&dir.join("real")),
        &dir.join("bind"),
        "none",
        libc::MS_BIND,
    );
    mounts.mount("tmpfs", &dir.join("tmp"), "tmpfs", 0);
    std::fs::create_dir(dir.join("tmp/deep")).unwrap();
    std::fs::write(dir.join("tmp/deep/tsrc"), b"x").unwrap();
    let (bind_fd, tmp_fd) = (open_dir(&dir.join("bind")), open_dir(&dir.join("tmp/deep")));

    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let through_bind = linkat(bind_fd, Path::new("src"), bind_fd, Path::new("bind-dst"), 0);
    let in_tmpfs = linkat(tmp_fd, Path::new("tsrc"), tmp_fd, Path::new("tmpfs-dst"), 0);
    let run = tracer.stop();
    close(bind_fd);
    close(tmp_fd);
    through_bind.expect("link through the bind mount");
    in_tmpfs.expect("link in tmpfs");
    run.assert_clean_exit();

    let event = mine(&run, "bind-dst");
    expect_fields(
        event,
        &[
            ("newpath_resolved", s(&dir.join("bind/bind-dst")).into()),
            ("oldpath_resolved", s(&dir.join("bind/src")).into()),
            ("newpath_resolution", "dirfd".into()),
        ],
    );
    expect_file(event, "file", &dir.join("real/src"), "stat");
    let event = mine(&run, "tmpfs-dst");
    expect_fields(
        event,
        &[
            (
                "newpath_resolved",
                s(&dir.join("tmp/deep/tmpfs-dst")).into(),
            ),
            ("oldpath_resolved", s(&dir.join("tmp/deep/tsrc")).into()),
        ],
    );
    expect_file(event, "file", &dir.join("tmp/deep/tsrc"), "stat");
    drop(mounts);
}

fn ns_inode(kind: &str) -> u64 {
    let link = std::fs::read_link(format!("/proc/self/ns/{kind}")).expect("read ns link");
    let text = link.to_str().unwrap();
    text.split_once(":[")
        .unwrap()
        .1
        .trim_end_matches(']')
        .parse()
        .unwrap()
}

fn cgroup2_mount() -> PathBuf {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    info.lines()
        .find_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            (right.split_whitespace().next()? == "cgroup2")
                .then(|| PathBuf::from(left.split_whitespace().nth(4).unwrap()))
        })
        .expect("a cgroup2 mount")
}

fn audit_value(file: &str) -> Value {
    let text = std::fs::read_to_string(format!("/proc/self/{file}")).unwrap_or_default();
    match text.trim().parse::<u32>() {
        Ok(u32::MAX) | Err(_) => Value::Null,
        Ok(value) => value.into(),
    }
}

#[test]
fn process_context_matches_the_callers_own_view() {
    if !privileged("process_context_matches_the_callers_own_view") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-process");
    let src = dir.file("src");
    let dst = dir.join("dst");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    let event = mine(&run, s(&dst));
    // SAFETY: plain id getters.
    let (ppid, euid, egid) = unsafe { (libc::getppid(), libc::geteuid(), libc::getegid()) };
    let cgroup = std::fs::read_to_string("/proc/self/cgroup").unwrap();
    let cgroup_path = cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .expect("cgroup v2 line")
        .to_owned();
    let cgroup_dir = cgroup2_mount().join(cgroup_path.trim_start_matches('/'));
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    expect_fields(
        event,
        &[
            ("ppid", ppid.into()),
            ("euid", euid.into()),
            ("egid", egid.into()),
            ("fsuid", euid.into()),
            ("fsgid", egid.into()),
            ("auid", audit_value("loginuid")),
            ("sessionid", audit_value("sessionid")),
            ("mnt_ns", ns_inode("mnt").into()),
            ("pid_ns", ns_inode("pid").into()),
            (
                "cgroup_id",
                std::fs::metadata(&cgroup_dir).unwrap().ino().into(),
            ),
            ("cgroup_path", cgroup_path.into()),
            ("container_id", Value::Null),
            ("exe", s(&exe).into()),
            ("args_changed", false.into()),
            ("oldpath_at_exit", Value::Null),
            ("newpath_at_exit", Value::Null),
        ],
    );
}

#[test]
fn short_lived_child_in_a_container_cgroup_is_fully_described() {
    if !privileged("short_lived_child_in_a_container_cgroup_is_fully_described") {
        return;
    }
    const CONTAINER: &str = "4c1d2b3a4c1d2b3a4c1d2b3a4c1d2b3a4c1d2b3a4c1d2b3a4c1d2b3a4c1d2b3a";
    let dir = TestDir::new("/tmp", "ctx-child");
    dir.file("csrc");
    let cgroup_name = format!("docker-{CONTAINER}.scope");
    let cgroup_dir = cgroup2_mount()
        .join(format!("link-trace-test-{}", std::process::id()))
        .join(&cgroup_name);
    std::fs::create_dir_all(&cgroup_dir).expect("create a test cgroup");
    let procs = cgroup_dir.join("cgroup.procs");
    let tracer = Tracer::start(&["--comm", "ln"]);
    let procs_for_child = procs.clone();
    // SAFETY: the closure only writes its own pid to a cgroup file between
    // fork and exec (std::fs::write allocates, acceptable in this test-only
    // child of a process whose other threads hold no locks it needs).
    let child = unsafe {
        Command::new("ln")
            .args(["csrc", "cdst"])
            .current_dir(&dir.path)
            .pre_exec(move || std::fs::write(&procs_for_child, b"0"))
            .output()
            .expect("run ln")
    };
    let run = tracer.stop();
    let _ = std::fs::remove_dir(&cgroup_dir);
    let _ = std::fs::remove_dir(cgroup_dir.parent().unwrap());
    assert!(
        child.status.success(),
        "ln: {}",
        String::from_utf8_lossy(&child.stderr)
    );
    run.assert_clean_exit();
    let found: Vec<&Value> = run.events().filter(|e| e["newpath"] == "cdst").collect();
    assert_eq!(found.len(), 1, "{:#?}", run.records);
    let event = found[0];
    let cgroup_path = format!("/link-trace-test-{}/{cgroup_name}", std::process::id());
    expect_fields(
        event,
        &[
            ("ppid", std::process::id().into()),
            ("comm", "ln".into()),
            ("exe", "/usr/bin/ln".into()),
            ("oldpath_resolved", s(&dir.join("csrc")).into()),
            ("newpath_resolved", s(&dir.join("cdst")).into()),
            ("newpath_resolution", "cwd".into()),
            ("cgroup_path", cgroup_path.into()),
            ("container_id", CONTAINER.into()),
            ("success", true.into()),
        ],
    );
    assert!(event["cgroup_id"].as_u64().unwrap() > 1);
    expect_file(event, "file", &dir.join("csrc"), "stat");
}

#[test]
fn setuid_and_foreign_owned_files_are_described() {
    if !privileged("setuid_and_foreign_owned_files_are_described") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-owner");
    let suid = dir.file("suid");
    std::fs::set_permissions(&suid, std::os::unix::fs::PermissionsExt::from_mode(0o4755)).unwrap();
    let foreign = dir.file("foreign");
    std::os::unix::fs::chown(&foreign, Some(65534), Some(65534)).unwrap();
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &suid, AT_FDCWD, &dir.join("suid-link"), 0).expect("link setuid file");
    linkat(AT_FDCWD, &foreign, AT_FDCWD, &dir.join("foreign-link"), 0).expect("link foreign file");
    let taken = linkat(AT_FDCWD, &foreign, AT_FDCWD, &dir.join("foreign-link"), 0);
    let run = tracer.stop();
    assert_eq!(taken, Err(libc::EEXIST));
    run.assert_clean_exit();

    let suid_link = dir.join("suid-link");
    let event = mine(&run, s(&suid_link));
    expect_file(event, "file", &suid, "stat");
    expect_fields(
        &event["file"],
        &[("setuid", true.into()), ("permissions", "4755".into())],
    );
    expect_fields(event, &[("inode_mismatch", false.into())]);

    let foreign_link = dir.join("foreign-link");
    let events: Vec<&Value> = run
        .events()
        .filter(|e| e["newpath"] == s(&foreign_link))
        .collect();
    assert_eq!(events.len(), 2, "{:#?}", run.records);
    for event in events {
        expect_file(event, "file", &foreign, "stat");
        expect_fields(
            &event["file"],
            &[
                ("uid", 65534.into()),
                ("gid", 65534.into()),
                ("nlink", 2.into()),
            ],
        );
        expect_fields(event, &[("fsuid", 0.into())]);
    }
}

#[test]
fn empty_path_file_facts_come_from_the_kernel() {
    if !privileged("empty_path_file_facts_come_from_the_kernel") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-fd");
    let fd = o_tmpfile(&dir.path, libc::O_RDWR, 0o640);
    // SAFETY: valid fd and out-pointer.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
    let dst = dir.join("from-fd");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let result = linkat(fd, Path::new(""), AT_FDCWD, &dst, libc::AT_EMPTY_PATH);
    let run = tracer.stop();
    close(fd);
    result.expect("linkat AT_EMPTY_PATH");
    run.assert_clean_exit();
    let event = mine(&run, s(&dst));
    expect_fields(
        event,
        &[
            ("oldpath_resolution", "fd".into()),
            ("oldpath_resolution_error", Value::Null),
        ],
    );
    let resolved = event["oldpath_resolved"].as_str().expect("the fd's path");
    assert!(resolved.starts_with(s(&dir.path)), "{resolved}");
    expect_fields(
        &event["file"],
        &[
            ("facts_from", "kernel".into()),
            ("ino", st.st_ino.into()),
            ("dev", dev_string(st.st_dev).into()),
            ("mode", st.st_mode.into()),
            ("permissions", "0640".into()),
            ("uid", st.st_uid.into()),
            ("gid", st.st_gid.into()),
            // Read at syscall exit: the link just made is counted.
            ("nlink", 1.into()),
            ("type", "regular".into()),
        ],
    );
    expect_file(event, "new_file", &dst, "stat");
    expect_fields(event, &[("inode_mismatch", false.into())]);
}

/// The "Phantom" attack (see `harness::link_with_oldpath_swapped`): the
/// tracer must flag the change and show both values.
#[test]
fn argument_changed_during_the_call_is_flagged() {
    if !privileged("argument_changed_during_the_call_is_flagged") {
        return;
    }
    let dir = TestDir::new("/tmp", "ctx-toctou");
    let real = dir.file("benign-src");
    let decoy = dir.file("decoy-src");
    let dst = dir.join("toctou-dst");
    let (result, run) = link_with_oldpath_swapped(&real, &decoy, &dst, &["--pid", &my_pid()]);
    result.expect("linkat");
    // Which name the kernel used depends on the order it copies the two
    // arguments in; the tracer must flag the change either way.
    let linked = std::fs::metadata(&dst).expect("dst exists").ino();
    let used = [&real, &decoy]
        .into_iter()
        .find(|p| std::fs::metadata(p).unwrap().ino() == linked);
    assert!(used.is_some(), "dst is a link of one of the two names");
    run.assert_clean_exit();

    let found: Vec<&Value> = run.events().filter(|e| e["oldpath"] == s(&real)).collect();
    assert_eq!(found.len(), 1, "{:#?}", run.records);
    let event = found[0];
    expect_fields(
        event,
        &[
            ("args_changed", true.into()),
            ("oldpath_at_exit", s(&decoy).into()),
            // newpath was not mapped at entry, so it could not be read
            // there; at exit it was, which is itself a change.
            ("newpath", Value::Null),
            ("newpath_error", "EFAULT".into()),
            ("newpath_at_exit", s(&dst).into()),
            ("success", true.into()),
        ],
    );
}

/// The pid namespace inode in a `readlink /proc/self/ns/pid` output.
fn ns_inode_of(link: &str) -> u64 {
    link.trim()
        .strip_prefix("pid:[")
        .and_then(|rest| rest.strip_suffix(']'))
        .and_then(|inode| inode.parse().ok())
        .unwrap_or_else(|| panic!("not a pid namespace link: {link:?}"))
}

#[test]
fn pid_namespace_of_a_caller_nested_one_to_three_deep_is_its_own() {
    if !privileged("pid_namespace_of_a_caller_nested_one_to_three_deep_is_its_own") {
        return;
    }
    // Depths 1 and 2 are read with typed loads at a constant offset each,
    // 3 with bpf_probe_read_kernel: every branch of the kernel side.
    const DEPTHS: [usize; 3] = [1, 2, 3];
    let dir = TestDir::new("/tmp", "ctx-pidns");
    dir.file("nsrc");
    let tracer = Tracer::start(&["--comm", "ln"]);
    let mut expected = Vec::new();
    for depth in DEPTHS {
        let mut command = Command::new("unshare");
        for level in 0..depth {
            if level > 0 {
                command.arg("unshare");
            }
            command.args(["--pid", "--fork"]);
        }
        // The host's /proc still names the caller as /proc/self.
        let output = command
            .args([
                "sh",
                "-c",
                &format!("readlink /proc/self/ns/pid && exec ln nsrc ndst{depth}"),
            ])
            .current_dir(&dir.path)
            .output()
            .expect("run unshare");
        assert!(
            output.status.success(),
            "unshare at depth {depth}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        expected.push((depth, ns_inode_of(&String::from_utf8_lossy(&output.stdout))));
    }
    let run = tracer.stop();
    run.assert_clean_exit();
    let host = ns_inode("pid");
    for (depth, inode) in expected {
        assert_ne!(inode, host, "depth {depth} is not a namespace of its own");
        let resolved = dir.join(&format!("ndst{depth}"));
        let found: Vec<&Value> = run
            .events()
            .filter(|e| e["newpath_resolved"] == s(&resolved))
            .collect();
        assert_eq!(found.len(), 1, "depth {depth}: {:#?}", run.records);
        expect_fields(found[0], &[("pid_ns", inode.into()), ("comm", "ln".into())]);
    }
}
