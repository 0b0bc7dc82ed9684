use super::*;
use crate::event::{FileInfo, sample_event};

/// An event as the daemon would see it: paths resolved, caller fsuid set,
/// source file facts from a stat.
pub(crate) struct Ev(pub LinkEvent);

impl Ev {
    pub fn new(seq: u64, old: &str, new: &str) -> Ev {
        let mut e = sample_event(Some(b"old"), Some(b"new"), 0);
        e.seq = seq;
        e.boot_ns = seq * 1_000_000;
        e.flags = 0;
        e.flag_names = Vec::new();
        e.oldpath.bytes = Some(old.as_bytes().to_vec());
        e.oldpath.resolved = Some(old.as_bytes().to_vec());
        e.newpath.bytes = Some(new.as_bytes().to_vec());
        e.newpath.resolved = Some(new.as_bytes().to_vec());
        e.uid = 1000;
        e.process.fsuid = Some(1000);
        e.process.euid = Some(1000);
        e.process.exe = Some("/usr/bin/ln".into());
        e.file = Some(FileInfo::new(
            "stat",
            "8:1".into(),
            42,
            0o100644,
            1000,
            1000,
            2,
        ));
        Ev(e)
    }
    pub fn at_ms(mut self, ms: u64) -> Ev {
        self.0.boot_ns = ms * 1_000_000;
        self
    }
    pub fn failed(mut self, errno: i32) -> Ev {
        self.0.ret = -i64::from(errno);
        self.0.success = false;
        self.0.errno = Some(crate::names::errno_name(errno));
        self
    }
    pub fn caller(mut self, pid: u32, fsuid: u32) -> Ev {
        self.0.pid = pid;
        self.0.tid = pid;
        self.0.uid = fsuid;
        self.0.process.fsuid = Some(fsuid);
        self.0.process.euid = Some(fsuid);
        self
    }
    pub fn exe(mut self, exe: &str) -> Ev {
        self.0.process.exe = Some(exe.into());
        self
    }
    pub fn file(mut self, uid: u32, mode: u32) -> Ev {
        self.0.file = Some(FileInfo::new("stat", "8:1".into(), 42, mode, uid, uid, 2));
        self
    }
    pub fn flags(mut self, flags: u32) -> Ev {
        self.0.flags = flags;
        self.0.flag_names = crate::names::flag_names(flags);
        self
    }

    /// A context record (unlink, rename) as the daemon builds it: paths
    /// resolved, credentials, none of the link-only fields. `new` is None
    /// for unlink and unlinkat.
    pub fn context(seq: u64, syscall: &'static str, old: &str, new: Option<&str>) -> Ev {
        let mut e = Ev::new(seq, old, new.unwrap_or_default()).0;
        e.syscall = syscall;
        e.comm = "mv".into();
        e.process.exe = None;
        e.file = None;
        if new.is_none() {
            e.newdirfd = 0;
            e.newpath = crate::event::PathField::new(None, false, None);
        }
        Ev(e)
    }
}

fn builtin() -> Engine {
    Engine::new(RuleSet::builtin().expect("built-in rules compile"))
}

/// The rule ids one event raises on a fresh engine.
fn raised(ev: Ev) -> Vec<String> {
    let mut alerts = Vec::new();
    builtin().evaluate(&ev.0, &mut alerts);
    alerts.into_iter().map(|a| a.rule_id).collect()
}

#[test]
fn builtin_rules_compile_with_unique_ids_and_full_metadata() {
    let set = RuleSet::builtin().unwrap();
    assert_eq!(set.rules.len(), 17);
    assert!(set.warnings.is_empty());
    for rule in &set.rules {
        assert_eq!(set.rules.iter().filter(|r| r.id == rule.id).count(), 1);
        assert!(
            !rule.title.is_empty() && !rule.description.is_empty(),
            "{}",
            rule.id
        );
        assert!(!rule.mitre.is_empty(), "{} has MITRE ids", rule.id);
        assert_eq!(rule.origin, BUILTIN_NAME);
    }
}

#[test]
fn sensitive_files_as_source_or_destination() {
    for (path, rule) in [
        ("/etc/shadow", "sensitive-credentials-link"),
        ("/etc/gshadow", "sensitive-credentials-link"),
        ("/etc/passwd", "sensitive-credentials-link"),
        ("/etc/group", "sensitive-credentials-link"),
        ("/etc/sudoers", "sensitive-sudoers-link"),
        ("/etc/sudoers.d/90-cloud", "sensitive-sudoers-link"),
        ("/etc/pam.conf", "sensitive-pam-link"),
        ("/etc/pam.d/common-auth", "sensitive-pam-link"),
        ("/etc/security/limits.conf", "sensitive-pam-link"),
        ("/etc/ssh/sshd_config", "sensitive-ssh-link"),
        ("/etc/ssh/sshd_config.d/x.conf", "sensitive-ssh-link"),
        ("/root/.ssh/id_ed25519", "sensitive-ssh-link"),
        ("/home/alice/.ssh/authorized_keys", "sensitive-ssh-link"),
        ("/srv/git/.ssh/authorized_keys", "sensitive-ssh-link"),
        ("/etc/ld.so.preload", "sensitive-preload-link"),
        ("/etc/crontab", "sensitive-cron-link"),
        ("/etc/cron.d/job", "sensitive-cron-link"),
        ("/etc/cron.daily/logrotate", "sensitive-cron-link"),
        ("/var/spool/cron/crontabs/root", "sensitive-cron-link"),
        ("/etc/systemd/system/evil.service", "sensitive-systemd-link"),
        (
            "/usr/lib/systemd/system/ssh.service",
            "sensitive-systemd-link",
        ),
        (
            "/home/bob/.config/systemd/user/x.service",
            "sensitive-systemd-link",
        ),
    ] {
        assert_eq!(
            raised(Ev::new(1, path, "/tmp/x/copy").file(1000, 0o100644)),
            [rule],
            "{path} as source"
        );
        assert_eq!(
            raised(Ev::new(1, "/tmp/x/src", path).failed(libc::EEXIST)),
            [rule],
            "{path} as destination, even refused"
        );
    }
    for benign in [
        "/etc/shadowy",
        "/etc/passwd.lock",
        "/etc/hostname",
        "/home/alice/notes/ssh.txt",
        "/etc/systemd/system.conf",
        "/etc/cron.allow",
    ] {
        assert!(
            raised(Ev::new(1, benign, "/tmp/x/copy")).is_empty(),
            "{benign}"
        );
    }
    // dpkg backing up a unit file before replacing it.
    let dpkg = Ev::new(
        1,
        "/usr/lib/systemd/system/ssh.service",
        "/usr/lib/systemd/system/ssh.service.dpkg-tmp",
    )
    .caller(900, 0)
    .exe("/usr/bin/dpkg")
    .file(0, 0o100644);
    assert!(raised(dpkg).is_empty());
    // The same link by a process that is not the package manager.
    let other = Ev::new(1, "/usr/lib/systemd/system/ssh.service", "/tmp/ssh.service")
        .caller(900, 0)
        .file(0, 0o100644);
    assert_eq!(raised(other), ["sensitive-systemd-link"]);
}

#[test]
fn foreign_owner_succeeded_or_refused() {
    let theirs = || Ev::new(1, "/home/bob/f", "/home/alice/f").file(1001, 0o100666);
    assert_eq!(raised(theirs()), ["foreign-file-link"]);
    assert_eq!(
        raised(theirs().failed(libc::EPERM)),
        ["foreign-file-link-denied"]
    );
    assert!(raised(theirs().failed(libc::EEXIST)).is_empty());
    assert!(raised(Ev::new(1, "/home/alice/a", "/home/alice/b")).is_empty());
    // Root is out of scope: it bypasses protected_hardlinks anyway.
    assert!(raised(theirs().caller(1, 0)).is_empty());
    // No file facts, no alert.
    let mut unknown = theirs();
    unknown.0.file = None;
    assert!(raised(unknown).is_empty());
}

#[test]
fn setuid_files_and_world_writable_destinations() {
    let suid = |new: &str| {
        Ev::new(1, "/usr/bin/sudo", new)
            .caller(50, 0)
            .file(0, 0o104755)
    };
    assert_eq!(raised(suid("/opt/keep/sudo")), ["setuid-link"]);
    assert_eq!(raised(suid("/tmp/sudo")), ["setuid-link-world-writable"]);
    assert_eq!(
        raised(suid("/dev/shm/x/sudo")),
        ["setuid-link-world-writable"]
    );
    assert_eq!(raised(suid("/var/tmp/s")), ["setuid-link-world-writable"]);
    let sgid = Ev::new(1, "/usr/bin/wall", "/opt/wall")
        .caller(50, 0)
        .file(0, 0o102755);
    assert_eq!(raised(sgid), ["setuid-link"]);
    // Root backing up in place, and dpkg, are left alone.
    assert!(raised(suid("/usr/bin/sudo.bak")).is_empty());
    assert!(raised(suid("/opt/sudo").exe("/usr/bin/dpkg")).is_empty());
    // A failed attempt made no new name.
    assert!(raised(suid("/opt/sudo").failed(libc::EEXIST)).is_empty());
    // An unprivileged user linking a root setuid binary: both rules speak.
    let user = Ev::new(1, "/usr/bin/su", "/home/alice/su").file(0, 0o104755);
    assert_eq!(raised(user), ["foreign-file-link", "setuid-link"]);
}

#[test]
fn toctou_evidence() {
    let mut changed = Ev::new(1, "/tmp/a", "/tmp/b");
    changed.0.args_changed = true;
    changed.0.oldpath.at_exit = Some(b"/etc/shadow".to_vec());
    assert_eq!(raised(changed), ["toctou-args-changed"]);
    let mut swapped = Ev::new(1, "/tmp/a", "/tmp/b");
    swapped.0.inode_mismatch = Some(true);
    assert_eq!(raised(swapped), ["toctou-inode-mismatch"]);
    let mut same = Ev::new(1, "/tmp/a", "/tmp/b");
    same.0.inode_mismatch = Some(false);
    assert!(raised(same).is_empty());
}

/// The caller's own rename onto the source explains a mismatch; the rules
/// on the linked file's owner and mode still read the new name, which the
/// rename did not touch.
#[test]
fn an_explained_mismatch_raises_nothing_but_the_linked_inode_still_counts() {
    let explain = |mut ev: Ev| {
        ev.0.inode_mismatch = Some(true);
        ev.0.inode_mismatch_explained_by = Some(Box::new(crate::event::MismatchExplanation {
            seq: 9,
            pid: ev.0.pid,
            tid: ev.0.tid,
            syscall: "rename",
            boot_ns: ev.0.boot_ns + 1,
            oldpath_resolved: Some(b"/home/alice/f.new".to_vec()),
            newpath_resolved: ev.0.oldpath.resolved.clone(),
        }));
        ev
    };
    let backup = Ev::new(1, "/home/alice/f", "/home/alice/f.bak");
    let mut backup = explain(backup);
    backup.0.new_file = backup.0.file.clone();
    assert!(raised(backup).is_empty());
    // Alice linked root's setuid binary through /tmp/x, then renamed her
    // own file onto /tmp/x: the source's stat sees her file, the new name
    // is the binary.
    let mut hidden = explain(Ev::new(2, "/tmp/x", "/tmp/y"));
    hidden.0.new_file = Some(FileInfo::new("stat", "8:1".into(), 77, 0o104755, 0, 0, 2));
    assert_eq!(
        raised(hidden),
        ["foreign-file-link", "setuid-link-world-writable"]
    );
}

#[test]
fn descriptors_materialized() {
    let empty = Ev::new(1, "/tmp/#1234 (deleted)", "/tmp/now-visible").flags(0x1000);
    assert_eq!(raised(empty), ["fd-materialize"]);
    for fd_path in [
        "/proc/self/fd/3",
        "/proc/4321/fd/7",
        "/proc/1/task/1/fd/9",
        "/dev/fd/3",
    ] {
        let proc_fd = Ev::new(1, fd_path, "/tmp/out").flags(0x400);
        assert_eq!(raised(proc_fd), ["fd-materialize"], "{fd_path}");
        assert!(
            raised(Ev::new(1, fd_path, "/tmp/out")).is_empty(),
            "no follow"
        );
    }
    assert!(raised(Ev::new(1, "/tmp/a", "/tmp/b").flags(0x400)).is_empty());
}

#[test]
fn messages_fill_in_fields() {
    let mut alerts = Vec::new();
    builtin().evaluate(&Ev::new(9, "/etc/shadow", "/tmp/s").0, &mut alerts);
    let alert = &alerts[0];
    assert_eq!(
        alert.message,
        "ln (pid 7, uid 1000) linked /etc/shadow -> /tmp/s: ok"
    );
    assert_eq!(alert.event_seqs, [9]);
    assert_eq!(alert.severity, Severity::Critical);
    assert_eq!(alert.mitre, ["T1003.008"]);
    assert_eq!(alert.oldpath_resolved.as_deref(), Some("/etc/shadow"));
    assert_eq!((alert.pid, alert.uid, alert.comm.as_str()), (7, 1000, "ln"));
}

fn error_of(text: &str) -> String {
    match parse_rules("f.toml", text) {
        Ok(_) => panic!("compiled:\n{text}"),
        Err(e) => e.to_string(),
    }
}

const GOOD: &str = r#"
[[rule]]
id = "mine"
title = "Mine"
severity = "low"
condition = { field = "comm", eq = "evil" }
"#;

#[test]
fn errors_name_file_line_and_column() {
    // TOML syntax.
    assert_eq!(
        error_of("[[rule]]\nid = \"x\"\ntitle = \"t\"\nseverity = high\n"),
        "f.toml:4:12: string values must be quoted, expected literal string"
    );
    // A missing key.
    let e =
        error_of("[[rule]]\nid = \"x\"\ntitle = \"t\"\ncondition = { field = \"pid\", eq = 1 }\n");
    assert!(e.starts_with("f.toml:1:1: missing field `severity`"), "{e}");
    // An unknown key in a rule.
    let e = error_of(&format!("{GOOD}\nseverty = \"low\"\n"));
    assert!(e.starts_with("f.toml:8:1: unknown field `severty`"), "{e}");
    // A bad field deep in a condition.
    let text = "[[rule]]\nid = \"x\"\ntitle = \"t\"\nseverity = \"low\"\n[rule.condition]\nall = [\n  { field = \"pid\", eq = 1 },\n  { field = \"fsuidd\", eq = 0 },\n]\n";
    assert!(error_of(text).starts_with("f.toml:8:13: unknown field `fsuidd`"));
    // A type mismatch points at the value.
    let text = "[[rule]]\nid = \"x\"\ntitle = \"t\"\nseverity = \"low\"\ncondition = { field = \"uid\", eq = \"root\" }\n";
    assert_eq!(
        error_of(text),
        "f.toml:5:35: field `uid` is an integer, not a string"
    );
    // Duplicate ids, bad MITRE ids, bad templates, half a window.
    let e = error_of(&format!("{GOOD}{GOOD}"));
    assert!(
        e.starts_with("f.toml:9:6: rule id `mine` is defined twice"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("severity", "mitre = [\"T10\"]\nseverity"));
    assert!(e.starts_with("f.toml:5:10: `T10` is not a MITRE"), "{e}");
    let e = error_of(&GOOD.replace("severity", "message = \"{nope}\"\nseverity"));
    assert!(e.starts_with("f.toml:5:11: unknown field `nope`"), "{e}");
    let e = error_of(&GOOD.replace("severity", "threshold = 3\nseverity"));
    assert!(e.contains("needs both window_seconds and threshold"), "{e}");
    let e = error_of(&GOOD.replace("severity", "window_seconds = 5\nthreshold = 0\nseverity"));
    assert!(
        e.starts_with("f.toml:6:13: threshold must be 1 to 64"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("\"mine\"", "\"has space\""));
    assert!(e.contains("rule id `has space`"), "{e}");
}

#[test]
fn files_override_and_disable_earlier_rules() {
    let mut set = RuleSet::builtin().unwrap();
    let count = set.rules.len();
    let file = parse_rules(
        "site.toml",
        r#"
disable = ["fd-materialize", "no-such-rule"]

[[rule]]
id = "setuid-link"
title = "Setuid file linked (site policy)"
severity = "critical"
mitre = ["T1548.001"]
condition = { field = "file.setuid", eq = true }

[[rule]]
id = "site-extra"
title = "Extra"
severity = "info"
condition = { field = "comm", eq = "evil" }
"#,
    )
    .unwrap();
    set.merge("site.toml", file);
    assert_eq!(set.rules.len(), count);
    assert!(!set.rules.iter().any(|r| r.id == "fd-materialize"));
    let setuid = set.rules.iter().find(|r| r.id == "setuid-link").unwrap();
    assert_eq!(
        (setuid.severity, setuid.origin.as_str()),
        (Severity::Critical, "site.toml")
    );
    assert_eq!(
        set.warnings,
        ["site.toml: disable: no rule `no-such-rule` is defined before"]
    );
}

#[test]
fn sources_load_everything_or_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let rules_d = dir.path().join("rules.d");
    std::fs::create_dir(&rules_d).unwrap();
    std::fs::write(rules_d.join("10-a.toml"), GOOD).unwrap();
    std::fs::write(rules_d.join("ignored.txt"), "garbage").unwrap();
    let extra = dir.path().join("extra.toml");
    std::fs::write(&extra, GOOD.replace("mine", "extra")).unwrap();
    let sources = Sources {
        builtin: false,
        rules_dir: Some(rules_d.clone()),
        files: vec![extra.clone()],
    };
    let set = sources.load().unwrap();
    let ids: Vec<&str> = set.rules.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids, ["mine", "extra"]);
    assert_eq!(set.files, [rules_d.join("10-a.toml"), extra.clone()]);

    std::fs::write(rules_d.join("20-bad.toml"), "[[rule]]\nid = 5\n").unwrap();
    let e = sources.load().unwrap_err().to_string();
    assert!(
        e.starts_with(&format!("{}:2:6:", rules_d.join("20-bad.toml").display())),
        "{e}"
    );

    let missing = Sources {
        builtin: true,
        rules_dir: None,
        files: vec![dir.path().join("missing.toml")],
    };
    assert!(matches!(missing.load(), Err(RuleError::Read { .. })));
}

#[test]
fn replaced_rules_keep_their_windows_when_unchanged() {
    let text = r#"
[[rule]]
id = "burst"
title = "Burst"
severity = "low"
window_seconds = 10
threshold = 2
group_by = ["pid"]
condition = { field = "success", eq = false }
"#;
    let load = |text: &str| {
        let mut set = RuleSet::default();
        set.merge("t", parse_rules("t", text).unwrap());
        set
    };
    let mut engine = Engine::new(load(text));
    let mut alerts = Vec::new();
    engine.evaluate(&Ev::new(1, "/a", "/b").failed(libc::EEXIST).0, &mut alerts);
    engine.replace(load(text));
    engine.evaluate(&Ev::new(2, "/a", "/b").failed(libc::EEXIST).0, &mut alerts);
    assert_eq!(
        alerts.len(),
        1,
        "the first failure was kept across the reload"
    );
    assert_eq!(alerts[0].event_seqs, [1, 2]);
    engine.evaluate(&Ev::new(3, "/a", "/b").failed(libc::EEXIST).0, &mut alerts);
    engine.replace(load(&text.replace("threshold = 2", "threshold = 3")));
    engine.evaluate(&Ev::new(4, "/a", "/b").failed(libc::EEXIST).0, &mut alerts);
    assert_eq!(alerts.len(), 1, "a changed window starts afresh");
    assert_eq!(engine.alerts_raised, 1);
}

const TMP_RULE: &str = r#"
[[rule]]
id = "tmp"
title = "Anything under /tmp"
severity = "low"
condition = { field = "target_resolved", prefix = "/tmp/" }
"#;

/// An engine with the rules of one file's text.
pub(crate) fn engine_of(text: &str) -> Engine {
    let mut set = RuleSet::default();
    set.merge("t", parse_rules("t", text).unwrap());
    Engine::new(set)
}

fn ids_raised(engine: &mut Engine, ev: Ev) -> Vec<String> {
    let mut alerts = Vec::new();
    engine.evaluate(&ev.0, &mut alerts);
    alerts.into_iter().map(|a| a.rule_id).collect()
}

#[test]
fn rules_judge_only_the_syscalls_they_name() {
    let unlink = || Ev::context(1, "unlink", "/tmp/x", None);
    let unlinkat = || Ev::context(2, "unlinkat", "/tmp/x", None);
    let rename = || Ev::context(3, "rename", "/tmp/a", Some("/tmp/x"));
    let link = || Ev::new(4, "/home/u/a", "/tmp/x");

    let mut default = engine_of(TMP_RULE);
    assert!(
        ids_raised(&mut default, unlink()).is_empty(),
        "link and linkat by default"
    );
    assert!(ids_raised(&mut default, rename()).is_empty());
    assert_eq!(ids_raised(&mut default, link()), ["tmp"]);

    let mut only_unlinkat =
        engine_of(&TMP_RULE.replace("severity", "syscalls = [\"unlinkat\"]\nseverity"));
    assert_eq!(ids_raised(&mut only_unlinkat, unlinkat()), ["tmp"]);
    assert!(ids_raised(&mut only_unlinkat, unlink()).is_empty());
    assert!(ids_raised(&mut only_unlinkat, link()).is_empty());
    let rule = &only_unlinkat.rules()[0];
    assert_eq!(rule.syscalls_summary().as_deref(), Some("unlinkat"));
    assert_eq!(engine_of(TMP_RULE).rules()[0].syscalls_summary(), None);
}

#[test]
fn path_and_file_rules_never_fire_on_unlink_or_rename() {
    // passwd(1) puts a new shadow file in place with rename; an admin
    // removes a sudoers snippet; a user renames a setuid copy in /tmp.
    for ev in [
        Ev::context(1, "rename", "/etc/nshadow", Some("/etc/shadow")).caller(9, 0),
        Ev::context(2, "unlinkat", "/etc/sudoers.d/old", None).caller(9, 0),
        Ev::context(
            3,
            "renameat2",
            "/home/u/.ssh/k.tmp",
            Some("/home/u/.ssh/authorized_keys"),
        ),
        Ev::context(4, "rename", "/tmp/a", Some("/tmp/b")).file(0, 0o104755),
    ] {
        assert!(raised(ev).is_empty());
    }
}

#[test]
fn the_builtin_rules_need_the_context_syscalls_unless_disabled() {
    let set = RuleSet::builtin().unwrap();
    assert_eq!(set.context_syscalls(), SyscallSet::CONTEXT);
    assert_eq!(
        set.rules_seeing(SyscallSet::CONTEXT),
        ["link-race-retry", "sticky-dir-name-churn"]
    );
    let mut set = RuleSet::builtin().unwrap();
    set.merge(
        "site.toml",
        parse_rules("site.toml", "disable = [\"sticky-dir-name-churn\"]\n").unwrap(),
    );
    let renames = ["rename", "renameat", "renameat2"]
        .into_iter()
        .fold(SyscallSet::EMPTY, |set, name| {
            set.union(SyscallSet::of_name(name))
        });
    assert_eq!(set.context_syscalls(), renames);
    set.merge(
        "site.toml",
        parse_rules("site.toml", "disable = [\"link-race-retry\"]\n").unwrap(),
    );
    assert!(set.context_syscalls().is_empty());
}

#[test]
fn bad_syscall_lists_are_refused_with_their_place() {
    let e = error_of(&GOOD.replace("severity", "syscalls = [\"link\", \"unlnk\"]\nseverity"));
    assert!(
        e.starts_with("f.toml:5:21: unknown syscall `unlnk`; link-trace captures link, linkat, unlink, unlinkat, rename, renameat, renameat2"),
        "{e}"
    );
    let e = error_of(&GOOD.replace("severity", "syscalls = []\nseverity"));
    assert!(
        e.starts_with("f.toml:5:12: syscalls must name at least one syscall"),
        "{e}"
    );
}
