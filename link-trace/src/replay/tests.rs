use super::*;
use crate::{
    event::{ContextEvent, LossReason, LossRecord, RecordKind, sample_event},
    rules::{Engine, RuleSet, tests::Ev},
};

fn schema() -> jsonschema::Validator {
    let text = include_str!("../../../schema/link-trace-event.schema.json");
    jsonschema::validator_for(&serde_json::from_str(text).unwrap()).unwrap()
}

fn line(record: &Record) -> String {
    serde_json::to_string(record).unwrap()
}

fn event_line(ev: Ev) -> String {
    line(&Record::Event(Box::new(ev.0)))
}

fn context_line(ev: Ev) -> String {
    line(&Record::Context(Box::new(ContextEvent(ev.0))))
}

#[test]
fn events_survive_the_round_trip_exactly() {
    let mut hostile = sample_event(Some(b"/tmp/\xff\n"), Some(b"b"), -17);
    hostile.comm = "l\u{fffd}".into();
    hostile.comm_b64 = Some("bP8=".into());
    hostile.oldpath.at_exit = Some(b"/etc/\xfe".to_vec());
    hostile.oldpath.canonical = Some(b"/real/\xfe".to_vec());
    hostile.newpath.canonical = Some(b"/real/b".to_vec());
    hostile.newpath.resolution_error = Some("deleted_directory");
    hostile.newpath.resolved = None;
    hostile.process.exe = Some("/usr/bin/ln".into());
    hostile.process.cgroup_path = Some("/user.slice".into());
    hostile.args_changed = true;
    hostile.file_error = Some("ENOENT".into());
    let rich = Ev::new(4, "/etc/shadow", "/tmp/s").flags(0x1400).0;
    let mut with_new = rich.clone();
    with_new.new_file = with_new.file.clone();
    with_new.inode_mismatch = Some(false);
    let mut explained = with_new.clone();
    explained.inode_mismatch = Some(true);
    explained.inode_mismatch_explained_by = Some(Box::new(crate::event::MismatchExplanation {
        seq: 12,
        pid: 4,
        tid: 5,
        syscall: "renameat2",
        boot_ns: 99,
        oldpath_resolved: Some(b"/etc/\xfenew".to_vec()),
        newpath_resolved: Some(b"/etc/shadow".to_vec()),
    }));
    for event in [hostile, rich, with_new, explained] {
        let json: Value = serde_json::to_value(Record::Event(Box::new(event.clone()))).unwrap();
        let back = event_from_json(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        assert_eq!(back, event);
    }
}

#[test]
fn older_recordings_without_context_fields_still_replay() {
    let full = serde_json::to_value(Record::Event(Box::new(Ev::new(1, "/a", "/b").0))).unwrap();
    let mut old = full.as_object().unwrap().clone();
    for key in [
        "ppid",
        "euid",
        "fsuid",
        "exe",
        "file",
        "new_file",
        "inode_mismatch",
        "inode_mismatch_explained_by",
    ] {
        old.remove(key);
    }
    for key in [
        "args_changed",
        "oldpath_resolution",
        "oldpath_resolved",
        "cgroup_id",
    ] {
        old.remove(key);
    }
    let event = event_from_json(&Value::Object(old)).unwrap();
    assert_eq!((event.process.fsuid, event.file.as_ref()), (None, None));
    assert_eq!(event.oldpath.resolution, "none");
}

#[test]
fn malformed_records_say_why() {
    assert!(matches!(record_from_line("{"), Err(ReplayError::Json(_))));
    assert_eq!(
        record_from_line(r#"{"kind":"event","seq":1}"#).err(),
        Some(ReplayError::Field("syscall"))
    );
    assert_eq!(
        record_from_line(r#"{"kind":"other"}"#).err(),
        Some(ReplayError::Kind("other".into()))
    );
    let mut v = serde_json::to_value(Record::Event(Box::new(Ev::new(1, "/a", "/b").0))).unwrap();
    v["syscall"] = "unlink".into();
    assert_eq!(
        event_from_json(&v).err(),
        Some(ReplayError::Unknown {
            field: "syscall",
            value: "unlink".into()
        })
    );
}

/// Replays lines through the built-in rules: (alerts as (rule, seqs), output).
fn run(lines: &[String], alerts_only: bool) -> (Vec<(String, Vec<u64>)>, String, ReplaySummary) {
    let input = lines.join("\n");
    let detector = Detector::new(Engine::new(RuleSet::builtin().unwrap()), alerts_only);
    let mut out = Vec::new();
    let summary = replay(input.as_bytes(), "test", detector, Format::Json, &mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let alerts = out
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "alert")
        .map(|v| {
            let seqs = v["event_seqs"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| s.as_u64().unwrap())
                .collect();
            (v["rule_id"].as_str().unwrap().to_owned(), seqs)
        })
        .collect();
    (alerts, out, summary)
}

fn alerts(lines: &[String]) -> Vec<(String, Vec<u64>)> {
    run(lines, false).0
}

fn ids(lines: &[String]) -> Vec<String> {
    alerts(lines).into_iter().map(|(id, _)| id).collect()
}

/// `n` failed links to `name` by one process, `gap_ms` apart from `start_ms`.
fn failures(first_seq: u64, n: u64, name: &str, start_ms: u64, gap_ms: u64) -> Vec<String> {
    (0..n)
        .map(|i| {
            event_line(
                Ev::new(first_seq + i, "/home/u/payload", name)
                    .at_ms(start_ms + i * gap_ms)
                    .failed(libc::EEXIST),
            )
        })
        .collect()
}

#[test]
fn failures_then_success_on_one_name_within_five_seconds() {
    let name = "/var/lib/app/target";
    let mut lines = failures(1, 3, name, 0, 1_000);
    lines.push(event_line(Ev::new(4, "/home/u/payload", name).at_ms(4_000)));
    assert_eq!(
        alerts(&lines),
        [("link-race-retry".to_owned(), vec![1, 2, 3, 4])]
    );

    // Two failures are not enough.
    let mut two = failures(1, 2, name, 0, 1_000);
    two.push(event_line(Ev::new(3, "/home/u/payload", name).at_ms(2_500)));
    assert!(ids(&two).is_empty());

    // The first failure is more than 5 s before the success: out of the window.
    let mut slow = failures(1, 3, name, 0, 2_000);
    slow.push(event_line(Ev::new(4, "/home/u/payload", name).at_ms(5_001)));
    assert!(ids(&slow).is_empty());
    // ...but a fourth failure inside it completes the pattern again.
    let mut slow = failures(1, 4, name, 0, 2_000);
    slow.push(event_line(Ev::new(5, "/home/u/payload", name).at_ms(7_000)));
    assert_eq!(
        alerts(&slow),
        [("link-race-retry".to_owned(), vec![2, 3, 4, 5])]
    );

    // The success must be on the same name.
    let mut other = failures(1, 3, name, 0, 100);
    other.push(event_line(
        Ev::new(4, "/home/u/payload", "/var/lib/app/other").at_ms(400),
    ));
    assert!(ids(&other).is_empty());

    // Lock files retry by design.
    let mut lock = failures(1, 5, "/var/lib/app/db.lock", 0, 10);
    lock.push(event_line(
        Ev::new(6, "/home/u/payload", "/var/lib/app/db.lock").at_ms(60),
    ));
    assert!(ids(&lock).is_empty());
}

#[test]
fn eperm_burst_from_one_process_within_ten_seconds() {
    let eperm = |seq: u64, pid: u32, ms: u64| {
        event_line(
            Ev::new(seq, &format!("/root/secret-{seq}"), "/home/u/x")
                .caller(pid, 1000)
                .file(1000, 0o100600)
                .at_ms(ms)
                .failed(libc::EPERM),
        )
    };
    let five: Vec<String> = (1..=5).map(|i| eperm(i, 40, i * 1_000)).collect();
    assert_eq!(
        alerts(&five),
        [("eperm-burst".to_owned(), vec![1, 2, 3, 4, 5])]
    );
    let four: Vec<String> = (1..=4).map(|i| eperm(i, 40, i * 1_000)).collect();
    assert!(ids(&four).is_empty());
    let split: Vec<String> = (1..=6).map(|i| eperm(i, 40 + (i % 2) as u32, i)).collect();
    assert!(ids(&split).is_empty(), "two processes, three each");
    let spread: Vec<String> = (1..=5).map(|i| eperm(i, 40, i * 2_600)).collect();
    assert!(ids(&spread).is_empty(), "over 10.4 s");
    // Ten in a row: two alerts, the window restarts after each.
    let ten: Vec<String> = (1..=10).map(|i| eperm(i, 40, i)).collect();
    assert_eq!(
        alerts(&ten),
        [
            ("eperm-burst".to_owned(), vec![1, 2, 3, 4, 5]),
            ("eperm-burst".to_owned(), vec![6, 7, 8, 9, 10])
        ]
    );
}

#[test]
fn one_shared_name_linked_by_two_users() {
    let by = |seq: u64, fsuid: u32, name: &str, ms: u64| {
        let ev = Ev::new(seq, &format!("/home/u{fsuid}/f"), name)
            .caller(100 + fsuid, fsuid)
            .file(fsuid, 0o100644)
            .at_ms(ms);
        event_line(if seq.is_multiple_of(2) {
            ev.failed(libc::EEXIST)
        } else {
            ev
        })
    };
    let race = [
        by(1, 1000, "/tmp/report.txt", 0),
        by(2, 0, "/tmp/report.txt", 3_000),
    ];
    assert_eq!(
        alerts(&race),
        [("sticky-dir-name-churn".to_owned(), vec![1, 2])]
    );
    let alone = [
        by(1, 1000, "/tmp/report.txt", 0),
        by(2, 1000, "/tmp/report.txt", 100),
        by(3, 1000, "/tmp/report.txt", 200),
    ];
    assert!(ids(&alone).is_empty(), "one user churning its own name");
    let late = [by(1, 1000, "/dev/shm/s", 0), by(2, 0, "/dev/shm/s", 10_001)];
    assert!(ids(&late).is_empty());
    let elsewhere = [by(1, 1000, "/srv/share/f", 0), by(2, 0, "/srv/share/f", 1)];
    assert!(ids(&elsewhere).is_empty(), "not a sticky directory");
    let two_names = [by(1, 1000, "/tmp/a", 0), by(2, 0, "/tmp/b", 1)];
    assert!(ids(&two_names).is_empty());
}

#[test]
fn package_manager_link_then_rename_raises_nothing() {
    // dpkg replacing /usr/bin/passwd (setuid) and a unit file: a backup
    // link next to each, then renames (not captured).
    let lines = [
        event_line(
            Ev::new(1, "/usr/bin/passwd", "/usr/bin/passwd.dpkg-tmp")
                .caller(77, 0)
                .exe("/usr/bin/dpkg")
                .file(0, 0o104755),
        ),
        event_line(
            Ev::new(
                2,
                "/usr/lib/systemd/system/cron.service",
                "/usr/lib/systemd/system/cron.service.dpkg-tmp",
            )
            .caller(77, 0)
            .exe("/usr/bin/dpkg")
            .file(0, 0o100644),
        ),
        // A user hard-linking their own files, twice to the same name.
        event_line(Ev::new(3, "/home/u/a", "/home/u/b")),
        event_line(Ev::new(4, "/home/u/a", "/home/u/b").failed(libc::EEXIST)),
    ];
    assert!(ids(&lines).is_empty());
}

#[test]
fn output_keeps_records_in_order_with_alerts_after_their_event() {
    let loss = line(&Record::Loss(Box::new(LossRecord {
        schema_version: 1,
        time: "2026-01-01T00:00:00.000000000Z".into(),
        reason: LossReason::RingFull,
        record_kind: RecordKind::Event,
        count: 2,
        total: 2,
    })));
    let first = event_line(Ev::new(1, "/etc/shadow", "/tmp/x/s"));
    let second = event_line(Ev::new(2, "/a", "/b"));
    let stale_alert = r#"{"kind":"alert","rule_id":"old"}"#.to_owned();
    let lines = [
        first.clone(),
        "not json".to_owned(),
        String::new(),
        loss.clone(),
        stale_alert,
        second.clone(),
    ];
    let (alerts, out, summary) = run(&lines, false);
    let out: Vec<&str> = out.lines().collect();
    for record in &out {
        let value: Value = serde_json::from_str(record).unwrap();
        let errors: Vec<String> = schema()
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {record}");
    }
    assert_eq!(out.len(), 4, "{out:#?}");
    assert_eq!(out[0], first, "events are written back exactly");
    assert!(out[1].starts_with(r#"{"kind":"alert""#));
    assert_eq!((out[2], out[3]), (loss.as_str(), second.as_str()));
    assert_eq!(alerts, [("sensitive-credentials-link".to_owned(), vec![1])]);
    assert_eq!((summary.lines, summary.bad_lines), (6, 1));
    assert_eq!((summary.detect.events, summary.detect.alerts), (2, 1));

    let (_, only, summary) = run(&lines, true);
    assert_eq!(only.lines().count(), 1);
    assert_eq!(summary.detect.suppressed, 3);
}

#[test]
fn context_records_survive_the_round_trip_exactly() {
    let mut rename = Ev::context(2, "renameat2", "/tmp/a", Some("/tmp/b"));
    rename.0.oldpath.bytes = Some(b"/tmp/\xff".to_vec());
    rename.0.oldpath.resolved = Some(b"/tmp/\xff".to_vec());
    rename.0.flags = 1;
    rename.0.flag_names = crate::names::flag_names_of(link_trace_common::SyscallId::Renameat2, 1);
    let unlink = Ev::context(3, "unlinkat", "/tmp/x", None).failed(libc::ENOENT);
    for ev in [rename, unlink] {
        let text = context_line(Ev(ev.0.clone()));
        let value: Value = serde_json::from_str(&text).unwrap();
        let errors: Vec<String> = schema()
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{errors:?}: {text}");
        assert_eq!(value["kind"], "context");
        for absent in ["file", "exe", "args_changed", "oldpath_canonical", "ppid"] {
            assert!(value.get(absent).is_none(), "{absent} in {text}");
        }
        let Ok(Some(Record::Context(back))) = record_from_line(&text) else {
            panic!("{text}");
        };
        assert_eq!(back.0, ev.0);
    }
    let unlink = serde_json::to_value(Record::Context(Box::new(ContextEvent(
        Ev::context(1, "unlink", "/tmp/x", None).0,
    ))))
    .unwrap();
    assert!(unlink.get("newpath").is_none() && unlink.get("newdirfd").is_none());
    // A context record is no event, and an event's syscall no context's.
    let mut wrong = unlink.clone();
    wrong["kind"] = "event".into();
    assert!(matches!(
        record_from_line(&wrong.to_string()),
        Err(ReplayError::Unknown {
            field: "syscall",
            ..
        })
    ));
}

/// (rule, event seqs, context seqs, completing syscall) of each alert.
type Full = (String, Vec<u64>, Vec<u64>, String);

fn full_alerts(lines: &[String]) -> Vec<Full> {
    let seqs = |v: &Value| -> Vec<u64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap())
            .collect()
    };
    run(lines, false)
        .1
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["kind"] == "alert")
        .map(|v| {
            let errors: Vec<String> = schema().iter_errors(&v).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{errors:?}: {v}");
            (
                v["rule_id"].as_str().unwrap().to_owned(),
                seqs(&v["event_seqs"]),
                seqs(&v["context_seqs"]),
                v["syscall"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn churn(events: Vec<u64>, context: Vec<u64>, syscall: &str) -> Vec<Full> {
    vec![(
        "sticky-dir-name-churn".to_owned(),
        events,
        context,
        syscall.to_owned(),
    )]
}

#[test]
fn churn_on_one_name_counts_unlink_and_rename_by_other_users() {
    let name = "/tmp/report.txt";
    // Root links the name; nobody removes it and renames its own file over it.
    let link_then_unlink = [
        event_line(Ev::new(1, "/root/f", name).caller(10, 0).at_ms(0)),
        context_line(
            Ev::context(1, "unlinkat", name, None)
                .caller(20, 65534)
                .at_ms(2_000),
        ),
    ];
    assert_eq!(
        full_alerts(&link_then_unlink),
        churn(vec![1], vec![1], "unlinkat")
    );

    let unlink_then_rename = [
        context_line(
            Ev::context(1, "unlink", name, None)
                .caller(10, 1000)
                .at_ms(0),
        ),
        context_line(
            Ev::context(2, "rename", "/tmp/mine", Some(name))
                .caller(20, 1001)
                .at_ms(9_000),
        ),
    ];
    assert_eq!(
        full_alerts(&unlink_then_rename),
        churn(vec![], vec![1, 2], "rename")
    );

    // The name a rename moves away is not the name it takes.
    let moved_away = [
        event_line(Ev::new(1, "/root/f", name).caller(10, 0).at_ms(0)),
        context_line(
            Ev::context(1, "rename", name, Some("/tmp/elsewhere"))
                .caller(20, 1000)
                .at_ms(1),
        ),
    ];
    assert!(full_alerts(&moved_away).is_empty());

    // Ten seconds apart, outside a sticky directory, one user: nothing.
    let late = [
        context_line(
            Ev::context(1, "unlink", name, None)
                .caller(10, 1000)
                .at_ms(0),
        ),
        context_line(
            Ev::context(2, "unlink", name, None)
                .caller(20, 1001)
                .at_ms(10_001),
        ),
    ];
    assert!(full_alerts(&late).is_empty());
    let private = [
        context_line(
            Ev::context(1, "unlink", "/srv/x", None)
                .caller(10, 1000)
                .at_ms(0),
        ),
        context_line(
            Ev::context(2, "unlink", "/srv/x", None)
                .caller(20, 1001)
                .at_ms(1),
        ),
    ];
    assert!(full_alerts(&private).is_empty());
}

#[test]
fn failed_renames_then_a_winning_rename_is_a_race() {
    let name = "/var/lib/app/target";
    let noreplace = |seq: u64, ms: u64| {
        context_line(
            Ev::context(seq, "renameat2", "/home/u/payload", Some(name))
                .at_ms(ms)
                .failed(libc::EEXIST),
        )
    };
    let mut lines: Vec<String> = (1..=3).map(|i| noreplace(i, i * 100)).collect();
    lines.push(context_line(
        Ev::context(4, "rename", "/home/u/payload", Some(name)).at_ms(500),
    ));
    assert_eq!(
        full_alerts(&lines),
        [(
            "link-race-retry".to_owned(),
            vec![],
            vec![1, 2, 3, 4],
            "rename".to_owned()
        )]
    );
    // Failed links, then the name won with a rename: one race.
    let mut mixed = failures(1, 3, name, 0, 100);
    mixed.push(context_line(
        Ev::context(1, "renameat", "/home/u/payload", Some(name)).at_ms(400),
    ));
    assert_eq!(
        full_alerts(&mixed),
        [(
            "link-race-retry".to_owned(),
            vec![1, 2, 3],
            vec![1],
            "renameat".to_owned()
        )]
    );
    // unlink claims no name: failed unlinks are no race.
    let unlinks: Vec<String> = (1..=3)
        .map(|i| {
            context_line(
                Ev::context(i, "unlink", name, None)
                    .at_ms(i)
                    .failed(libc::EPERM),
            )
        })
        .chain([event_line(Ev::new(1, "/home/u/payload", name).at_ms(10))])
        .collect();
    assert!(full_alerts(&unlinks).is_empty());
}

#[test]
fn writing_a_temporary_file_then_link_and_rename_by_one_user_raises_nothing() {
    // A package manager or editor: write a temporary, back the old file up
    // with a link, rename the temporary over it, drop the backup; as root in
    // /etc, and as a user in /tmp.
    let mut lines = Vec::new();
    for (dir, fsuid) in [("/etc/app", 0), ("/tmp/u-work", 1000)] {
        let file = format!("{dir}/app.conf");
        let (tmp, backup) = (format!("{file}.tmp"), format!("{file}.bak"));
        let base = lines.len() as u64 * 100;
        lines.push(event_line(
            Ev::new(base + 1, &file, &backup)
                .caller(30, fsuid)
                .exe("/usr/bin/dpkg")
                .at_ms(base),
        ));
        lines.push(context_line(
            Ev::context(base + 1, "rename", &tmp, Some(&file))
                .caller(30, fsuid)
                .at_ms(base + 1),
        ));
        lines.push(context_line(
            Ev::context(base + 2, "unlink", &backup, None)
                .caller(30, fsuid)
                .at_ms(base + 2),
        ));
    }
    let (alerts, out, summary) = run(&lines, false);
    assert!(alerts.is_empty(), "{out}");
    assert_eq!((summary.detect.events, summary.detect.context), (2, 4));
    assert_eq!(
        out.lines().count(),
        6,
        "context records are replayed and printed"
    );
}
