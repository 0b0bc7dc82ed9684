//! Privileged tests of the detection rules: every built-in rule provoked
//! with real syscalls against the real tracer, its alert checked field by
//! field; benign activity that must raise nothing; `--alerts-only`, SIGHUP
//! reloads, `rules check` and `replay` run as an unprivileged user.
//!
//! Tests run in parallel in one process: each finds its own events by the
//! unique paths it uses, and the alerts by those events' sequence numbers.

use std::{
    os::unix::{
        fs::{MetadataExt, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use serde_json::{Value, json};

use crate::harness::{
    Run, TestDir, Tracer, binary, close, expect_fields, link_with_oldpath_swapped, linkat, my_pid,
    o_tmpfile, open_dir, privileged,
};

const AT_FDCWD: i32 = libc::AT_FDCWD;
const NOBODY: u32 = 65534;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

fn chmod(path: &Path, mode: u32) {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

/// Runs a command as nobody.
fn as_nobody(cmd: &mut Command) -> Output {
    cmd.uid(NOBODY).gid(NOBODY).output().expect("run as nobody")
}

/// The events whose newpath, as passed or resolved, is `path`, in order.
fn events_to<'a>(run: &'a Run, path: &Path) -> Vec<&'a Value> {
    run.events()
        .filter(|e| e["newpath"] == s(path) || e["newpath_resolved"] == s(path))
        .collect()
}

/// The one alert of `rule` among those `event` triggered; its fields must
/// describe the event that completed the match.
fn alert_for<'a>(run: &'a Run, event: &Value, rule: &str) -> &'a Value {
    let alerts: Vec<&Value> = run
        .alerts_of(event)
        .into_iter()
        .filter(|a| a["rule_id"] == rule)
        .collect();
    assert_eq!(
        alerts.len(),
        1,
        "one {rule} alert for event {event:#}; alerts: {:#?}",
        run.alerts().collect::<Vec<_>>()
    );
    alerts[0]
}

/// Checks an alert's fields against the rule's contract and the last
/// triggering event.
fn expect_alert(alert: &Value, last: &Value, severity: &str, mitre: Value) {
    expect_fields(
        alert,
        &[
            ("kind", "alert".into()),
            ("schema_version", 1.into()),
            ("severity", severity.into()),
            ("mitre", mitre),
            ("time", last["time"].clone()),
            ("pid", last["pid"].clone()),
            ("uid", last["uid"].clone()),
            ("comm", last["comm"].clone()),
            ("oldpath_resolved", last["oldpath_resolved"].clone()),
            ("newpath_resolved", last["newpath_resolved"].clone()),
        ],
    );
    let seqs = alert["event_seqs"].as_array().expect("event_seqs");
    assert_eq!(
        seqs.last(),
        Some(&last["seq"]),
        "the last event completes the match"
    );
    assert!(!alert["message"].as_str().unwrap_or_default().is_empty());
    assert!(!alert["title"].as_str().unwrap_or_default().is_empty());
}

/// fs.protected_hardlinks=1 for the duration of a test, put back after.
struct ProtectedHardlinks(String);

impl ProtectedHardlinks {
    const KNOB: &str = "/proc/sys/fs/protected_hardlinks";

    fn on() -> Self {
        let saved = std::fs::read_to_string(Self::KNOB).expect("read protected_hardlinks");
        if saved.trim() != "1" {
            std::fs::write(Self::KNOB, "1").expect("enable protected_hardlinks");
        }
        Self(saved.trim().to_owned())
    }
}

impl Drop for ProtectedHardlinks {
    fn drop(&mut self) {
        if self.0 != "1" {
            let _ = std::fs::write(Self::KNOB, &self.0);
        }
    }
}

#[test]
fn sensitive_files_raise_their_rule_however_they_are_named() {
    if !privileged("sensitive_files_raise_their_rule_however_they_are_named") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-sensitive");
    let own = dir.file("own");
    // A symlink to /etc used as a dirfd: the kernel walks the real directory.
    std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
    let unique = format!("link-trace-test-{}", std::process::id());
    let missing_dir = |base: &str, name: &str| PathBuf::from(format!("{base}/{unique}/{name}"));
    let etc_fd = open_dir(&dir.join("etc-link"));

    let tracer = Tracer::start(&["--pid", &my_pid()]);
    // (rule, severity, MITRE, olddirfd, oldpath, newpath, expected resolved source)
    let cases: Vec<(&str, &str, Value, i32, PathBuf, PathBuf, PathBuf)> = vec![
        (
            "sensitive-credentials-link",
            "critical",
            json!(["T1003.008"]),
            etc_fd,
            "shadow".into(),
            dir.join("shadow-via-dirfd"),
            "/etc/shadow".into(),
        ),
        (
            "sensitive-credentials-link",
            "critical",
            json!(["T1003.008"]),
            AT_FDCWD,
            "/tmp/../etc/./passwd".into(),
            dir.join("passwd-via-dotdot"),
            "/etc/passwd".into(),
        ),
        (
            "sensitive-sudoers-link",
            "critical",
            json!(["T1548.003"]),
            AT_FDCWD,
            "/etc/sudoers".into(),
            dir.join("sudoers"),
            "/etc/sudoers".into(),
        ),
        (
            "sensitive-pam-link",
            "high",
            json!(["T1556.003"]),
            AT_FDCWD,
            own.clone(),
            missing_dir("/etc/pam.d", "login"),
            own.clone(),
        ),
        (
            "sensitive-ssh-link",
            "high",
            json!(["T1098.004", "T1552.004"]),
            AT_FDCWD,
            "/root/.ssh/authorized_keys".into(),
            dir.join("keys"),
            "/root/.ssh/authorized_keys".into(),
        ),
        (
            "sensitive-preload-link",
            "critical",
            json!(["T1574.006"]),
            AT_FDCWD,
            "/etc/ld.so.preload".into(),
            dir.join("preload"),
            "/etc/ld.so.preload".into(),
        ),
        (
            "sensitive-cron-link",
            "high",
            json!(["T1053.003"]),
            AT_FDCWD,
            own.clone(),
            missing_dir("/etc/cron.d", "job"),
            own.clone(),
        ),
        (
            "sensitive-systemd-link",
            "high",
            json!(["T1543.002"]),
            AT_FDCWD,
            own.clone(),
            missing_dir("/etc/systemd/system", "evil.service"),
            own.clone(),
        ),
    ];
    // Whether each call succeeds depends on the host (a missing file,
    // /tmp on another filesystem); an attempt alerts either way.
    let results: Vec<Result<(), i32>> = cases
        .iter()
        .map(|(_, _, _, dirfd, old, new, _)| linkat(*dirfd, old, AT_FDCWD, new, 0))
        .collect();
    let run = tracer.stop();
    close(etc_fd);
    run.assert_clean_exit();
    for ((rule, severity, mitre, _, _, new, source), result) in cases.into_iter().zip(results) {
        let events = events_to(&run, &new);
        assert_eq!(events.len(), 1, "{rule}: one event to {}", new.display());
        let event = events[0];
        expect_fields(
            event,
            &[
                ("oldpath_resolved", s(&source).into()),
                ("newpath_resolved", s(&new).into()),
                ("success", result.is_ok().into()),
            ],
        );
        let alert = alert_for(&run, event, rule);
        expect_alert(alert, event, severity, mitre);
        assert_eq!(alert["event_seqs"], json!([event["seq"]]));
        assert!(
            alert["message"].as_str().unwrap().contains(s(&source)),
            "{alert:#}"
        );
        assert!(
            alert["tags"]
                .as_array()
                .unwrap()
                .contains(&"sensitive-file".into())
        );
    }
}

#[test]
fn linking_another_users_file_alerts_when_it_succeeds_and_when_refused() {
    if !privileged("linking_another_users_file_alerts_when_it_succeeds_and_when_refused") {
        return;
    }
    let _knob = ProtectedHardlinks::on();
    let dir = TestDir::new("/tmp", "rules-foreign");
    chmod(&dir.path, 0o1777);
    let shared = dir.file("root-shared");
    chmod(&shared, 0o666);
    let secret = dir.file("root-secret");
    chmod(&secret, 0o600);
    let (shared_link, secret_link) = (dir.join("nobody-shared"), dir.join("nobody-secret"));

    let tracer = Tracer::start(&["--uid", &NOBODY.to_string()]);
    let ok = as_nobody(Command::new("ln").arg(&shared).arg(&shared_link));
    let refused = as_nobody(Command::new("ln").arg(&secret).arg(&secret_link));
    let run = tracer.stop();
    assert!(
        ok.status.success(),
        "read-write access allows the link: {ok:?}"
    );
    assert!(!refused.status.success(), "protected_hardlinks refuses it");
    run.assert_clean_exit();

    let event = run.event_for(&shared_link);
    expect_fields(event, &[("success", true.into()), ("fsuid", NOBODY.into())]);
    expect_fields(&event["file"], &[("uid", 0.into())]);
    let alert = alert_for(&run, event, "foreign-file-link");
    expect_alert(alert, event, "high", json!(["T1068"]));
    assert_eq!(
        alert["message"],
        format!(
            "ln (pid {}, fsuid {NOBODY}) linked {} owned by uid 0 as {} (owned by uid 0)",
            event["pid"],
            s(&shared),
            s(&shared_link)
        )
    );
    assert!(
        run.alerts_of(event)
            .iter()
            .all(|a| a["rule_id"] == "foreign-file-link")
    );

    let event = run.event_for(&secret_link);
    expect_fields(event, &[("errno", "EPERM".into())]);
    let alert = alert_for(&run, event, "foreign-file-link-denied");
    expect_alert(alert, event, "medium", json!(["T1068"]));
    assert!(
        run.alerts_of(event)
            .iter()
            .all(|a| a["rule_id"] == "foreign-file-link-denied"),
        "one refusal is not a burst: {:#?}",
        run.alerts_of(event)
    );
}

#[test]
fn repeated_eperm_from_one_process_is_a_burst() {
    if !privileged("repeated_eperm_from_one_process_is_a_burst") {
        return;
    }
    let _knob = ProtectedHardlinks::on();
    let dir = TestDir::new("/tmp", "rules-burst");
    chmod(&dir.path, 0o1777);
    let into = dir.join("into");
    std::fs::create_dir(&into).unwrap();
    chmod(&into, 0o1777);
    let secrets: Vec<PathBuf> = (0..5)
        .map(|i| {
            let path = dir.file(&format!("secret-{i}"));
            chmod(&path, 0o600);
            path
        })
        .collect();

    let tracer = Tracer::start(&["--uid", &NOBODY.to_string()]);
    // One ln process, five refused links.
    let out = as_nobody(Command::new("ln").args(&secrets).arg(&into));
    let run = tracer.stop();
    assert!(!out.status.success());
    run.assert_clean_exit();
    let events: Vec<&Value> = secrets
        .iter()
        .map(|secret| {
            let name = secret.file_name().unwrap();
            let found = events_to(&run, &into.join(name));
            assert_eq!(found.len(), 1, "{:#?}", run.records);
            found[0]
        })
        .collect();
    assert!(
        events
            .iter()
            .all(|e| e["errno"] == "EPERM" && e["pid"] == events[0]["pid"])
    );
    let last = events[4];
    let alert = alert_for(&run, last, "eperm-burst");
    expect_alert(alert, last, "medium", json!(["T1068"]));
    let seqs: Vec<Value> = events.iter().map(|e| e["seq"].clone()).collect();
    assert_eq!(alert["event_seqs"], Value::Array(seqs));
    for event in &events[..4] {
        assert!(
            run.alerts_of(event)
                .iter()
                .all(|a| a["rule_id"] != "eperm-burst"
                    || a["event_seqs"].as_array().unwrap().len() == 5),
            "no burst before the fifth refusal"
        );
    }
}

fn setuid_file(path: &Path) {
    std::fs::write(path, b"#!/bin/false\n").unwrap();
    chmod(path, 0o4755);
}

#[test]
fn setuid_links_alert_higher_in_world_writable_directories() {
    if !privileged("setuid_links_alert_higher_in_world_writable_directories") {
        return;
    }
    // /run is root's own tmpfs: neither world-writable nor under /tmp.
    let private = TestDir::new("/run", "rules-setuid");
    std::fs::create_dir(private.join("bin")).unwrap();
    std::fs::create_dir(private.join("keep")).unwrap();
    let suid = private.join("bin/tool");
    setuid_file(&suid);
    let kept = private.join("keep/tool");
    let shared = TestDir::new("/tmp", "rules-setuid");
    let suid_tmp = shared.join("tool");
    setuid_file(&suid_tmp);
    let planted = shared.join("planted");

    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &suid, AT_FDCWD, &kept, 0).expect("link setuid file");
    linkat(AT_FDCWD, &suid_tmp, AT_FDCWD, &planted, 0).expect("link setuid file in /tmp");
    let run = tracer.stop();
    run.assert_clean_exit();

    let event = run.event_for(&kept);
    let alert = alert_for(&run, event, "setuid-link");
    expect_alert(alert, event, "medium", json!(["T1548.001"]));
    assert!(
        alert["message"]
            .as_str()
            .unwrap()
            .contains("(mode 4755, owner 0)")
    );
    assert!(
        run.alerts_of(event)
            .iter()
            .all(|a| a["rule_id"] == "setuid-link")
    );

    let event = run.event_for(&planted);
    let alert = alert_for(&run, event, "setuid-link-world-writable");
    expect_alert(alert, event, "critical", json!(["T1548.001"]));
    assert!(
        run.alerts_of(event)
            .iter()
            .all(|a| a["rule_id"] == "setuid-link-world-writable")
    );
}

#[test]
fn an_argument_changed_during_the_call_alerts() {
    if !privileged("an_argument_changed_during_the_call_alerts") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-toctou");
    let real = dir.file("benign-src");
    let decoy = dir.file("decoy-src");
    let dst = dir.join("toctou-dst");
    let (result, run) = link_with_oldpath_swapped(&real, &decoy, &dst, &["--pid", &my_pid()]);
    result.expect("linkat");
    run.assert_clean_exit();
    let found: Vec<&Value> = run.events().filter(|e| e["oldpath"] == s(&real)).collect();
    assert_eq!(found.len(), 1, "{:#?}", run.records);
    let event = found[0];
    expect_fields(event, &[("args_changed", true.into())]);
    let alert = alert_for(&run, event, "toctou-args-changed");
    expect_alert(alert, event, "high", json!(["T1068"]));
    assert!(
        alert["message"].as_str().unwrap().contains(s(&decoy)),
        "{alert:#}"
    );
}

/// The attack `toctou-inode-mismatch` exists for: `/tmp/x` is a symlink
/// to a sensitive file when the victim links it with AT_SYMLINK_FOLLOW,
/// and another process swaps `/tmp/x` back to a benign file before the
/// tracer looks. The tracer is stopped (SIGSTOP) around the link and the
/// swap so that its stat of the source lands after the swap every time;
/// the swapping process's rename is in the stream and explains nothing.
#[test]
fn a_source_swapped_by_another_process_after_the_link_alerts() {
    if !privileged("a_source_swapped_by_another_process_after_the_link_alerts") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-swap");
    let secret = dir.file("secret");
    chmod(&secret, 0o600);
    let benign = dir.file("benign");
    let (x, y) = (dir.join("x"), dir.join("y"));
    std::os::unix::fs::symlink(&secret, &x).expect("symlink x -> secret");
    let ino = |p: &Path| std::fs::metadata(p).expect("stat").ino();
    let (secret_ino, benign_ino) = (ino(&secret), ino(&benign));
    let (c_benign, c_x) = (crate::harness::cstr(&benign), crate::harness::cstr(&x));
    let comm = format!("lt-swap-{}", std::process::id() % 100_000);

    let (run, swapper) = crate::harness::with_comm(&comm, || {
        let tracer = Tracer::start(&["--comm", &comm, "--context-events"]);
        tracer.signal(libc::SIGSTOP);
        linkat(AT_FDCWD, &x, AT_FDCWD, &y, libc::AT_SYMLINK_FOLLOW).expect("linkat");
        // SAFETY: the child makes one raw syscall on strings prepared
        // before the fork and _exits (this process is multi-threaded).
        let child = unsafe { libc::fork() };
        assert!(child >= 0, "fork: {}", std::io::Error::last_os_error());
        if child == 0 {
            // SAFETY: async-signal-safe calls only.
            unsafe {
                let ret = libc::syscall(libc::SYS_rename, c_benign.as_ptr(), c_x.as_ptr());
                libc::_exit(if ret == 0 { 0 } else { 1 });
            }
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(child, &mut status, 0) };
        assert!(
            libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
            "the swapping process's rename failed: status {status:#x}"
        );
        tracer.signal(libc::SIGCONT);
        (tracer.stop(), child as u32)
    });
    run.assert_clean_exit();
    assert_eq!(ino(&y), secret_ino, "the link took the sensitive file");

    let event = run.event_for(&y);
    expect_fields(
        event,
        &[
            ("success", true.into()),
            ("inode_mismatch", true.into()),
            ("inode_mismatch_explained_by", Value::Null),
        ],
    );
    expect_fields(&event["file"], &[("ino", benign_ino.into())]);
    expect_fields(&event["new_file"], &[("ino", secret_ino.into())]);
    let renames: Vec<&Value> = run
        .records
        .iter()
        .filter(|r| r["kind"] == "context" && r["newpath_resolved"] == s(&x))
        .collect();
    assert_eq!(
        renames.len(),
        1,
        "the swap is in the stream: {:#?}",
        run.records
    );
    expect_fields(
        renames[0],
        &[("pid", swapper.into()), ("syscall", "rename".into())],
    );
    let alert = alert_for(&run, event, "toctou-inode-mismatch");
    expect_alert(alert, event, "high", json!(["T1068"]));
    assert_eq!(
        alert["message"],
        format!(
            "{comm} (pid {}) linked {} (ino {benign_ino}) -> {}, which is ino {secret_ino}",
            event["pid"],
            s(&x),
            s(&y)
        )
    );
}

#[test]
fn failures_then_a_success_on_one_name_alert_and_replay_agrees() {
    if !privileged("failures_then_a_success_on_one_name_alert_and_replay_agrees") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-race");
    let src = dir.file("payload");
    let dst = dir.file("victim-name");
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    for _ in 0..3 {
        assert_eq!(linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0), Err(libc::EEXIST));
    }
    std::fs::remove_file(&dst).unwrap();
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("the race is won");
    let run = tracer.stop();
    run.assert_clean_exit();
    let events = events_to(&run, &dst);
    assert_eq!(events.len(), 4, "{:#?}", run.records);
    let last = events[3];
    let alert = alert_for(&run, last, "link-race-retry");
    expect_alert(alert, last, "medium", json!(["T1068"]));
    let seqs: Vec<Value> = events.iter().map(|e| e["seq"].clone()).collect();
    assert_eq!(alert["event_seqs"], Value::Array(seqs));

    // The recording replayed by an unprivileged user raises the same alerts.
    let recording = dir.join("recording.jsonl");
    let lines: Vec<String> = run.records.iter().map(Value::to_string).collect();
    std::fs::write(&recording, lines.join("\n") + "\n").unwrap();
    let out = as_nobody(Command::new(binary()).args([
        "replay",
        "--json",
        "--alerts-only",
        s(&recording),
    ]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let key = |a: &Value| {
        (
            a["rule_id"].clone(),
            a["event_seqs"].clone(),
            a["message"].clone(),
        )
    };
    let replayed: Vec<(Value, Value, Value)> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| key(&serde_json::from_str(l).unwrap()))
        .collect();
    let live: Vec<(Value, Value, Value)> = run.alerts().map(key).collect();
    assert_eq!(replayed, live);
}

#[test]
fn one_name_in_a_sticky_directory_linked_by_two_users_alerts() {
    if !privileged("one_name_in_a_sticky_directory_linked_by_two_users_alerts") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-churn");
    chmod(&dir.path, 0o1777);
    let root_file = dir.file("root-file");
    let nobody_file = dir.file("nobody-file");
    std::os::unix::fs::chown(&nobody_file, Some(NOBODY), Some(NOBODY)).unwrap();
    let name = dir.join("shared-name");
    let tracer = Tracer::start(&["--uid", "0", "--uid", &NOBODY.to_string()]);
    linkat(AT_FDCWD, &root_file, AT_FDCWD, &name, 0).expect("root takes the name");
    let out = as_nobody(Command::new("ln").arg(&nobody_file).arg(&name));
    let run = tracer.stop();
    assert!(!out.status.success(), "the name is taken");
    run.assert_clean_exit();
    let events = events_to(&run, &name);
    assert_eq!(events.len(), 2, "{:#?}", run.records);
    expect_fields(
        events[1],
        &[("fsuid", NOBODY.into()), ("errno", "EEXIST".into())],
    );
    let alert = alert_for(&run, events[1], "sticky-dir-name-churn");
    expect_alert(alert, events[1], "medium", json!(["T1068"]));
    assert_eq!(
        alert["event_seqs"],
        json!([events[0]["seq"], events[1]["seq"]])
    );
}

#[test]
fn files_materialized_from_descriptors_alert() {
    if !privileged("files_materialized_from_descriptors_alert") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-fd");
    let tmpfile = || o_tmpfile(&dir.path, libc::O_WRONLY, 0o600);
    let (fd_empty, fd_proc) = (tmpfile(), tmpfile());
    let (by_fd, by_proc) = (dir.join("by-empty-path"), dir.join("by-proc-fd"));
    let proc_path = PathBuf::from(format!("/proc/self/fd/{fd_proc}"));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let empty = linkat(
        fd_empty,
        Path::new(""),
        AT_FDCWD,
        &by_fd,
        libc::AT_EMPTY_PATH,
    );
    let follow = linkat(
        AT_FDCWD,
        &proc_path,
        AT_FDCWD,
        &by_proc,
        libc::AT_SYMLINK_FOLLOW,
    );
    let run = tracer.stop();
    close(fd_empty);
    close(fd_proc);
    empty.expect("AT_EMPTY_PATH");
    follow.expect("/proc/self/fd with AT_SYMLINK_FOLLOW");
    run.assert_clean_exit();

    let event = run.event_for(&by_fd);
    let alert = alert_for(&run, event, "fd-materialize");
    expect_alert(alert, event, "medium", json!(["T1564"]));
    assert!(alert["message"].as_str().unwrap().contains("AT_EMPTY_PATH"));
    let event = run.event_for(&by_proc);
    expect_fields(event, &[("oldpath_resolved", s(&proc_path).into())]);
    let alert = alert_for(&run, event, "fd-materialize");
    expect_alert(alert, event, "medium", json!(["T1564"]));
}

#[test]
fn benign_links_and_package_manager_sequences_raise_nothing() {
    if !privileged("benign_links_and_package_manager_sequences_raise_nothing") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-benign");
    chmod(&dir.path, 0o1777);
    let run_dir = TestDir::new("/run", "rules-benign");
    let own = dir.file("notes");
    let nobody_own = dir.file("nobody-notes");
    std::os::unix::fs::chown(&nobody_own, Some(NOBODY), Some(NOBODY)).unwrap();
    // Package files: a config file and a setuid binary in a root directory.
    let conf = dir.file("app.conf");
    let tool = run_dir.join("tool");
    setuid_file(&tool);

    let tracer = Tracer::start(&["--uid", "0", "--uid", &NOBODY.to_string()]);
    // A user links their own files; one name taken once.
    linkat(AT_FDCWD, &own, AT_FDCWD, &dir.join("notes-link"), 0).expect("own link");
    assert_eq!(
        linkat(AT_FDCWD, &own, AT_FDCWD, &dir.join("notes-link"), 0),
        Err(libc::EEXIST)
    );
    let out = as_nobody(
        Command::new("ln")
            .arg(&nobody_own)
            .arg(dir.join("nobody-link")),
    );
    assert!(out.status.success(), "{out:?}");
    // dpkg-style upgrades: back the old file up with a hard link, put the
    // new one in place with rename, drop the backup.
    for file in [&conf, &tool] {
        let backup = PathBuf::from(format!("{}.dpkg-tmp", file.display()));
        let new = PathBuf::from(format!("{}.dpkg-new", file.display()));
        linkat(AT_FDCWD, file, AT_FDCWD, &backup, 0).expect("backup link");
        std::fs::write(&new, b"new version\n").unwrap();
        std::fs::rename(&new, file).unwrap();
        std::fs::remove_file(&backup).unwrap();
    }
    let run = tracer.stop();
    run.assert_clean_exit();

    let ours: Vec<&Value> = run
        .events()
        .filter(|e| {
            let new = e["newpath"].as_str().unwrap_or_default();
            new.starts_with(s(&dir.path)) || new.starts_with(s(&run_dir.path))
        })
        .collect();
    assert_eq!(ours.len(), 5, "{:#?}", run.records);
    for event in ours {
        assert_eq!(run.alerts_of(event), Vec::<&Value>::new(), "for {event:#}");
    }
}

#[test]
fn alerts_only_prints_nothing_but_alerts() {
    if !privileged("alerts_only_prints_nothing_but_alerts") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-only");
    let dst = dir.join("shadow-copy");
    let tracer = Tracer::start(&["--pid", &my_pid(), "--alerts-only"]);
    let _ = linkat(AT_FDCWD, Path::new("/etc/shadow"), AT_FDCWD, &dst, 0);
    let (benign_src, benign_dst) = (dir.file("a"), dir.join("b"));
    linkat(AT_FDCWD, &benign_src, AT_FDCWD, &benign_dst, 0).expect("linkat");
    let run = tracer.stop();
    run.assert_clean_exit();
    assert!(
        run.records.iter().all(|r| r["kind"] == "alert"),
        "{:#?}",
        run.records
    );
    let mine: Vec<&Value> = run
        .alerts()
        .filter(|a| a["newpath_resolved"] == s(&dst))
        .collect();
    assert_eq!(mine.len(), 1, "{:#?}", run.records);
    expect_fields(mine[0], &[("rule_id", "sensitive-credentials-link".into())]);
    assert!(
        run.alerts()
            .all(|a| a["newpath_resolved"] != s(&benign_dst))
    );
}

const HUP_RULE: &str = r#"
[[rule]]
id = "hup-test"
title = "Name with the test prefix"
severity = "info"
mitre = ["T1070"]
message = "{comm} made {newpath_name}"
condition = { field = "newpath_name", glob = "PREFIX*" }
"#;

#[test]
fn sighup_reloads_rule_files_and_keeps_the_old_rules_when_one_is_broken() {
    if !privileged("sighup_reloads_rule_files_and_keeps_the_old_rules_when_one_is_broken") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-hup");
    let src = dir.file("src");
    let rules = dir.join("site.toml");
    std::fs::write(&rules, HUP_RULE.replace("PREFIX", "hup-a")).unwrap();
    let tracer = Tracer::start(&[
        "--pid",
        &my_pid(),
        "--no-builtin-rules",
        "--rules-dir",
        s(&dir.join("no-such-dir")),
        "--rules",
        s(&rules),
    ]);
    let link = |name: &str| linkat(AT_FDCWD, &src, AT_FDCWD, &dir.join(name), 0).expect("linkat");
    let wait = |tracer: &Tracer, text: &str| {
        tracer
            .wait_for_stderr(text, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no stderr line with {text:?}"))
    };
    link("hup-a-1");
    // A broken file: the old rule stays, one line says why.
    std::fs::write(
        &rules,
        "[[rule]]\nid = \"hup-test\"\ntitle = \"t\"\nseverity = \"loud\"\n",
    )
    .unwrap();
    tracer.signal(libc::SIGHUP);
    let line = wait(&tracer, "reload failed");
    assert_eq!(
        line,
        format!(
            "link-trace: error: reload failed, keeping the configuration and the 1 rules in force: {}:4:12: unknown variant `loud`, expected one of `info`, `low`, `medium`, `high`, `critical`",
            s(&rules)
        )
    );
    link("hup-a-2");
    // A good file: the new rule replaces the old one.
    std::fs::write(&rules, HUP_RULE.replace("PREFIX", "hup-b")).unwrap();
    tracer.signal(libc::SIGHUP);
    wait(&tracer, "reloaded: 1 rules in force");
    link("hup-a-3");
    link("hup-b-1");
    let run = tracer.stop();
    run.assert_clean_exit();
    let alerted = |name: &str| !run.alerts_of(run.event_for(&dir.join(name))).is_empty();
    assert!(alerted("hup-a-1"));
    assert!(alerted("hup-a-2"), "the broken file kept the old rule");
    assert!(!alerted("hup-a-3"), "the old rule is gone");
    assert!(alerted("hup-b-1"), "the new rule is in force");
    let alert = &run.alerts_of(run.event_for(&dir.join("hup-b-1")))[0];
    expect_fields(
        alert,
        &[
            ("rule_id", "hup-test".into()),
            ("severity", "info".into()),
            (
                "message",
                format!("{} made hup-b-1", crate::harness::thread_comm()).into(),
            ),
        ],
    );
}

#[test]
fn bad_rule_files_are_refused_with_their_line() {
    if !privileged("bad_rule_files_are_refused_with_their_line") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-check");
    let good = dir.join("good.toml");
    std::fs::write(&good, HUP_RULE.replace("PREFIX", "x")).unwrap();
    let bad = dir.join("bad.toml");
    std::fs::write(
        &bad,
        HUP_RULE
            .replace("PREFIX", "x")
            .replace("field = \"newpath_name\"", "field = \"newpath_nam\""),
    )
    .unwrap();
    let out = Command::new(binary())
        .args(["rules", "check", s(&good), s(&bad)])
        .output()
        .expect("rules check");
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        format!("{}: 1 rules OK\n", s(&good))
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let expected = format!(
        "link-trace: error: {}:8:23: unknown field `newpath_nam`; fields are:",
        s(&bad)
    );
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert_eq!(stderr.lines().count(), 1);

    // The tracer refuses to start with it, before attaching anything.
    let out = Command::new(binary())
        .args(["--json", "--rules", s(&bad)])
        .output()
        .expect("run link-trace");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.starts_with(&expected), "{stderr}");
    assert!(!stderr.contains("tracing"), "{stderr}");
}

#[test]
fn symlinked_directories_and_proc_fd_sources_do_not_evade_the_path_rules() {
    if !privileged("symlinked_directories_and_proc_fd_sources_do_not_evade_the_path_rules") {
        return;
    }
    let dir = TestDir::new("/tmp", "rules-evasion");
    // A symlink inside the path argument itself: the kernel's base walk
    // does not see it, the daemon's canonical look-up does.
    std::os::unix::fs::symlink("/etc", dir.join("etc-link")).unwrap();
    let via_dir = dir.join("via-symlinked-dir");
    let via_fd = dir.join("via-proc-fd");
    let gshadow = std::ffi::CString::new("/etc/gshadow").unwrap();
    // SAFETY: a valid path string.
    let fd = unsafe { libc::open(gshadow.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    assert!(fd >= 0, "open /etc/gshadow");
    let proc_fd = PathBuf::from(format!("/proc/self/fd/{fd}"));

    let tracer = Tracer::start(&["--pid", &my_pid()]);
    let through_dir = linkat(
        AT_FDCWD,
        &dir.join("etc-link/shadow"),
        AT_FDCWD,
        &via_dir,
        0,
    );
    let through_fd = linkat(
        AT_FDCWD,
        &proc_fd,
        AT_FDCWD,
        &via_fd,
        libc::AT_SYMLINK_FOLLOW,
    );
    let run = tracer.stop();
    // SAFETY: closing our own fd.
    unsafe { libc::close(fd) };
    through_dir.expect("link through a symlinked directory");
    through_fd.expect("link through /proc/self/fd");
    run.assert_clean_exit();

    let event = events_to(&run, &via_dir)[0];
    assert_eq!(
        event["oldpath_resolved"],
        s(&dir.join("etc-link/shadow")),
        "the argument as given"
    );
    assert_eq!(event["oldpath_canonical"], "/etc/shadow");
    assert_eq!(event["newpath_canonical"], s(&via_dir));
    alert_for(&run, event, "sensitive-credentials-link");

    let event = events_to(&run, &via_fd)[0];
    assert_eq!(event["oldpath_resolved"], s(&proc_fd));
    assert_eq!(event["oldpath_canonical"], "/etc/gshadow");
    // The caller's /proc/self, not the daemon's: the facts are gshadow's.
    let meta = std::fs::metadata("/etc/gshadow").unwrap();
    assert_eq!(event["file"]["ino"], meta.ino());
    alert_for(&run, event, "sensitive-credentials-link");
}
