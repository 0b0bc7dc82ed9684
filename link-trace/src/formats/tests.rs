//! Every record kind rendered in each format, parsed back and checked
//! against the vendored excerpts of the standards (`spec/`), plus value
//! checks field by field and hostile paths.

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use super::{
    DocumentFormat, HostInfo,
    conformance::{ecs_violations, ocsf_violations},
    ecs, ocsf, render,
};
use crate::{
    event::{
        AlertRecord, FileInfo, LinkEvent, LossCount, LossReason, LossRecord, ProcessInfo, Record,
        StatsRecord, sample_event,
    },
    rules::Severity,
};

const CONTAINER: &str = "4b1c2f0e9d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";

fn host() -> HostInfo {
    HostInfo::new(
        "tracer-host".into(),
        Some("0123456789abcdef0123456789abcdef".into()),
        Some("90a39753-fffe-4cbc-b67d-58a23f541f5d".into()),
        Some("6.18.0".into()),
    )
}

/// A successful linkat with every context field known, in a container.
fn full_event() -> LinkEvent {
    let mut e = sample_event(Some(b"a"), Some(b"sub/b"), 0);
    e.time = "2026-11-21T22:15:01.386513266Z".into();
    e.oldpath.resolved = Some(b"/tmp/lt/a".to_vec());
    e.oldpath.resolution = "cwd";
    e.newpath.resolved = Some(b"/srv/base/sub/b".to_vec());
    e.newpath.canonical = Some(b"/srv/base/sub/b".to_vec());
    e.process = ProcessInfo {
        ppid: Some(6),
        euid: Some(0),
        egid: Some(10),
        fsuid: Some(0),
        fsgid: Some(10),
        auid: Some(1000),
        sessionid: Some(4),
        exe: Some("/usr/bin/ln".into()),
        exe_b64: None,
        cgroup_id: 9,
        cgroup_path: Some(format!("/system.slice/docker-{CONTAINER}.scope")),
        container_id: Some(CONTAINER.into()),
        mnt_ns: Some(4026531832),
        pid_ns: Some(4026531836),
    };
    let facts = FileInfo::new("stat", "254:0".into(), 10067978, 0o104755, 0, 0, 2);
    e.file = Some(facts.clone());
    e.new_file = Some(facts);
    e.inode_mismatch = Some(false);
    e
}

/// linkat refused with EEXIST; the source was stat'ed, the new name not.
fn failed_event() -> LinkEvent {
    let mut e = sample_event(Some(b"/etc/shadow"), Some(b"taken"), -17);
    e.oldpath.resolved = Some(b"/etc/shadow".to_vec());
    e.newpath.resolved = Some(b"/base/taken".to_vec());
    e.file = Some(FileInfo::new(
        "stat",
        "254:0".into(),
        77,
        0o100640,
        0,
        42,
        1,
    ));
    e
}

/// EFAULT: oldpath unreadable, so neither the source nor its name is known.
fn unreadable_event() -> LinkEvent {
    let mut e = sample_event(None, Some(b"b"), -14);
    e.file_error = Some("no_argument".into());
    e
}

/// A 4 KiB new name made of non-UTF-8 bytes, newlines and quotes.
fn hostile_path() -> Vec<u8> {
    let mut path = b"/tmp/\xff\xfe\nline2\"q\\".to_vec();
    while path.len() < 4095 {
        path.extend_from_slice(b"/x\n\xc3");
    }
    path.truncate(4095);
    path
}

fn hostile_event() -> LinkEvent {
    let mut e = sample_event(Some(b"/tmp/src"), Some(b"placeholder"), 0);
    let path = hostile_path();
    e.newpath.bytes = Some(path.clone());
    e.newpath.resolved = Some(path);
    e.comm = "l\u{fffd}n".into();
    e.comm_b64 = Some(STANDARD.encode(b"l\xffn"));
    e
}

fn alert() -> AlertRecord {
    AlertRecord {
        schema_version: 1,
        time: "2026-11-21T23:02:11.120334571Z".into(),
        rule_id: "sensitive-credentials-link".into(),
        title: "Hard link to an account database".into(),
        severity: Severity::Critical,
        mitre: vec!["T1003.008".into(), "T1003.001".into(), "T1548".into()],
        tags: vec!["credential-access".into(), "sensitive-file".into()],
        message: "ln (pid 7301, uid 1000) linked /etc/shadow -> /tmp/x/s: EPERM".into(),
        event_seqs: vec![11, 12],
        context_seqs: vec![],
        syscall: "linkat",
        pid: 7301,
        uid: 1000,
        comm: "ln".into(),
        oldpath_resolved: Some("/etc/shadow".into()),
        newpath_resolved: Some("/tmp/x/s".into()),
    }
}

fn loss() -> LossRecord {
    LossRecord {
        schema_version: 1,
        time: "2026-11-21T22:15:02.000000000Z".into(),
        reason: LossReason::RingFull,
        count: 3,
        total: 5,
        record_kind: crate::event::RecordKind::Event,
    }
}

fn stats() -> StatsRecord {
    StatsRecord {
        schema_version: 1,
        time: "2026-11-21T22:16:00.000000000Z".into(),
        kernel_submitted: 10,
        events_decoded: 9,
        decode_errors: 1,
        losses: vec![LossCount {
            reason: LossReason::RingFull,
            total: 5,
            per_cpu: vec![2, 3],
        }],
        context_submitted: 4,
        context_decoded: 4,
        context_losses: vec![],
        inflight_release_failed: 0,
        sinks: vec![crate::sink::SinkReport {
            name: "file:/var/log/link-trace/events.jsonl".into(),
            queue_capacity: 4096,
            delivered_records: 9,
            delivered_events: 8,
            ..Default::default()
        }],
    }
}

fn event(e: LinkEvent) -> Record {
    Record::Event(Box::new(e))
}

/// One of every record kind, and the event variants.
fn all_records() -> Vec<(&'static str, Record)> {
    vec![
        ("full event", event(full_event())),
        ("failed event", event(failed_event())),
        ("unreadable event", event(unreadable_event())),
        ("hostile event", event(hostile_event())),
        ("alert", Record::Alert(Box::new(alert()))),
        ("loss", Record::Loss(Box::new(loss()))),
        ("stats", Record::Stats(Box::new(stats()))),
        ("unlink context", context("unlinkat")),
        ("rename context", context("renameat2")),
    ]
}

/// An unlink or rename (`--context-events`), from the full event's caller.
fn context(syscall: &'static str) -> Record {
    let mut e = full_event();
    e.syscall = syscall;
    Record::Context(Box::new(crate::event::ContextEvent(e)))
}

#[test]
fn context_records_map_to_delete_and_rename() {
    let unlink = ecs_doc(&context("unlinkat"));
    assert_eq!(unlink["event"]["type"], serde_json::json!(["deletion"]));
    assert_eq!(unlink["event"]["action"], "unlinkat");
    assert_eq!(unlink["event"]["dataset"], "link_trace.context");
    let rename = ecs_doc(&context("renameat2"));
    assert_eq!(rename["event"]["type"], serde_json::json!(["change"]));
    let unlink = ocsf_doc(&context("unlinkat"));
    assert_eq!(
        (unlink["activity_id"].as_u64(), unlink["type_uid"].as_u64()),
        (Some(4), Some(100104))
    );
    assert!(unlink.get("file_result").is_none());
    let rename = ocsf_doc(&context("renameat2"));
    assert_eq!(
        (rename["activity_id"].as_u64(), rename["type_uid"].as_u64()),
        (Some(5), Some(100105))
    );
    assert_eq!(rename["activity_name"], "Rename");
}

/// Renders one record and parses it back; it must be exactly one line.
fn document(format: DocumentFormat, record: &Record) -> Value {
    document_on(format, record, &host())
}

fn document_on(format: DocumentFormat, record: &Record, host: &HostInfo) -> Value {
    let mut out = Vec::new();
    render(format, record, host, &mut out);
    let text = String::from_utf8(out).expect("documents are UTF-8");
    assert!(text.ends_with('\n'), "one line ending in a newline: {text}");
    assert_eq!(text.matches('\n').count(), 1, "exactly one line: {text}");
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn ecs_doc(record: &Record) -> Value {
    document(DocumentFormat::Ecs, record)
}

fn ocsf_doc(record: &Record) -> Value {
    document(DocumentFormat::Ocsf, record)
}

fn ecs_doc_on(record: &Record, host: &HostInfo) -> Value {
    document_on(DocumentFormat::Ecs, record, host)
}

fn ocsf_doc_on(record: &Record, host: &HostInfo) -> Value {
    document_on(DocumentFormat::Ocsf, record, host)
}

#[test]
fn every_ecs_field_is_in_ecs_with_its_type() {
    for (what, record) in all_records() {
        let doc = ecs_doc(&record);
        let errors = ecs_violations(&doc);
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
    }
}

#[test]
fn the_ecs_checker_catches_what_it_should() {
    let mut doc = ecs_doc(&event(full_event()));
    doc["file"]["inodes"] = json!("1"); // no such field
    doc["process"]["pid"] = json!("7"); // a long, not a string
    doc["event"]["kind"] = json!("happening"); // not allowed
    doc["event"]["category"] = json!(["process"]); // creation is not a process type
    doc["event"]["action"] = json!(["a", "b"]); // not an array field
    doc.as_object_mut().unwrap().remove("@timestamp");
    let errors = ecs_violations(&doc);
    for needle in [
        "file.inodes",
        "process.pid",
        "event.kind",
        "category process",
        "event.action: an array",
        "@timestamp: required",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no error about {needle}: {errors:#?}"
        );
    }
}

#[test]
fn ecs_link_event_fields() {
    let doc = ecs_doc(&event(full_event()));
    let expect = |pointer: &str, want: Value| {
        assert_eq!(doc.pointer(pointer), Some(&want), "{pointer} in {doc:#}");
    };
    expect("/@timestamp", json!("2026-11-21T22:15:01.386513266Z"));
    expect("/ecs/version", json!(ecs::ECS_VERSION));
    expect("/event/kind", json!("event"));
    expect("/event/category", json!(["file"]));
    expect("/event/type", json!(["creation"]));
    expect("/event/action", json!("linkat"));
    expect("/event/outcome", json!("success"));
    expect("/event/sequence", json!(3));
    expect("/event/duration", json!(250));
    expect("/event/module", json!("link_trace"));
    expect("/event/dataset", json!("link_trace.link"));
    expect("/process/pid", json!(7));
    expect("/process/thread/id", json!(8));
    expect("/process/name", json!("ln"));
    expect("/process/executable", json!("/usr/bin/ln"));
    expect("/process/parent/pid", json!(6));
    expect("/process/user/id", json!("0"));
    expect("/process/real_user/id", json!("1000"));
    expect("/process/group/id", json!("10"));
    expect("/process/real_group/id", json!("100"));
    expect("/user/id", json!("1000"));
    expect("/user/effective/id", json!("0"));
    expect("/group/id", json!("100"));
    // The new name is the file; the existing file it names is the target.
    expect("/file/path", json!("/srv/base/sub/b"));
    expect("/file/name", json!("b"));
    expect("/file/directory", json!("/srv/base/sub"));
    expect("/file/target_path", json!("/tmp/lt/a"));
    expect("/file/inode", json!("10067978"));
    expect("/file/device", json!("254:0"));
    expect("/file/uid", json!("0"));
    expect("/file/gid", json!("0"));
    expect("/file/mode", json!("4755"));
    expect("/file/type", json!("file"));
    expect("/container/id", json!(CONTAINER));
    expect("/host/hostname", json!("tracer-host"));
    expect("/host/id", json!("0123456789abcdef0123456789abcdef"));
    expect(
        "/host/boot/id",
        json!("90a39753-fffe-4cbc-b67d-58a23f541f5d"),
    );
    expect("/host/os/kernel", json!("6.18.0"));
    expect(
        "/message",
        json!("ln (pid 7, uid 1000) linkat /tmp/lt/a -> /srv/base/sub/b: ok"),
    );
    assert!(doc.get("error").is_none(), "no error on success");
    // link-trace's own fields.
    expect("/link_trace/seq", json!(3));
    expect("/link_trace/flags", json!(0x1400));
    expect(
        "/link_trace/flag_names",
        json!(["AT_SYMLINK_FOLLOW", "AT_EMPTY_PATH"]),
    );
    expect("/link_trace/oldpath/dirfd", json!(-100));
    expect("/link_trace/oldpath/arg", json!("a"));
    expect("/link_trace/oldpath/resolution", json!("cwd"));
    expect("/link_trace/newpath/dirfd", json!(5));
    expect("/link_trace/newpath/arg", json!("sub/b"));
    expect("/link_trace/newpath/canonical", json!("/srv/base/sub/b"));
    expect("/link_trace/args_changed", json!(false));
    expect("/link_trace/inode_mismatch", json!(false));
    expect("/link_trace/file/setuid", json!(true));
    expect("/link_trace/auid", json!(1000));
    expect("/link_trace/sessionid", json!(4));
    expect("/link_trace/fsgid", json!(10));
    expect("/link_trace/mnt_ns", json!(4026531832u32));
}

#[test]
fn ecs_failure_has_error_and_no_facts_for_the_name_not_made() {
    let doc = ecs_doc(&event(failed_event()));
    assert_eq!(doc["event"]["outcome"], "failure");
    assert_eq!(doc["error"]["code"], "EEXIST");
    assert_eq!(doc["error"]["message"], "File exists");
    assert_eq!(doc["file"]["path"], "/base/taken");
    assert_eq!(doc["file"]["target_path"], "/etc/shadow");
    // The new name's inode is unknown: the source's facts stay with the source.
    assert!(doc["file"].get("inode").is_none(), "{doc:#}");
    assert_eq!(doc["link_trace"]["file"]["ino"], 77);
    assert_eq!(doc["link_trace"]["errno"], "EEXIST");
    assert_eq!(doc["link_trace"]["ret"], -17);

    let doc = ecs_doc(&event(unreadable_event()));
    assert_eq!(doc["error"]["code"], "EFAULT");
    assert!(doc["file"].get("target_path").is_none(), "{doc:#}");
    assert_eq!(doc["link_trace"]["oldpath"]["error"], "EFAULT");
    assert!(doc["link_trace"]["oldpath"].get("arg").is_none());
    assert_eq!(doc["link_trace"]["file_error"], "no_argument");
}

/// The rename that explains a mismatch rides along in both formats'
/// link-trace extras; without one, the field is left out.
#[test]
fn an_explained_mismatch_keeps_its_rename_in_ecs_and_ocsf() {
    let mut e = full_event();
    e.inode_mismatch = Some(true);
    e.inode_mismatch_explained_by = Some(Box::new(crate::event::MismatchExplanation {
        seq: 12,
        pid: 7,
        tid: 8,
        syscall: "rename",
        boot_ns: 5,
        oldpath_resolved: Some(b"/tmp/lt/a.new".to_vec()),
        newpath_resolved: Some(b"/tmp/lt/a".to_vec()),
    }));
    let want = json!({
        "seq": 12, "pid": 7, "tid": 8, "syscall": "rename", "boot_ns": 5,
        "oldpath_resolved": "/tmp/lt/a.new", "newpath_resolved": "/tmp/lt/a",
    });
    let record = event(e);
    assert_eq!(
        ecs_doc(&record)["link_trace"]["inode_mismatch_explained_by"],
        want
    );
    assert_eq!(
        ocsf_doc(&record)["unmapped"]["link_trace"]["inode_mismatch_explained_by"],
        want
    );
    assert_eq!(ecs_doc(&record)["link_trace"]["inode_mismatch"], true);
    let plain = ecs_doc(&event(full_event()));
    assert!(
        plain["link_trace"]
            .get("inode_mismatch_explained_by")
            .is_none()
    );
}

#[test]
fn ecs_alert_fields() {
    let doc = ecs_doc(&Record::Alert(Box::new(alert())));
    assert_eq!(doc["event"]["kind"], "alert");
    assert_eq!(doc["event"]["severity"], 5);
    assert_eq!(doc["event"]["dataset"], "link_trace.alert");
    assert_eq!(doc["rule"]["id"], "sensitive-credentials-link");
    assert_eq!(doc["rule"]["name"], "Hard link to an account database");
    assert_eq!(doc["rule"]["ruleset"], "link-trace");
    assert_eq!(doc["threat"]["framework"], "MITRE ATT&CK");
    assert_eq!(doc["threat"]["technique"]["id"], json!(["T1003", "T1548"]));
    assert_eq!(
        doc["threat"]["technique"]["subtechnique"]["id"],
        json!(["T1003.008", "T1003.001"])
    );
    assert_eq!(doc["message"], alert().message);
    assert_eq!(doc["tags"], json!(["credential-access", "sensitive-file"]));
    assert_eq!(doc["file"]["path"], "/tmp/x/s");
    assert_eq!(doc["file"]["target_path"], "/etc/shadow");
    assert_eq!(doc["process"]["pid"], 7301);
    assert_eq!(doc["user"]["id"], "1000");
    assert_eq!(doc["link_trace"]["event_seqs"], json!([11, 12]));
    assert_eq!(doc["link_trace"]["severity"], "critical");
    assert_eq!(doc["@timestamp"], "2026-11-21T23:02:11.120334571Z");
}

#[test]
fn ecs_loss_and_stats_are_metrics() {
    let doc = ecs_doc(&Record::Loss(Box::new(loss())));
    assert_eq!(doc["event"]["kind"], "metric");
    assert_eq!(doc["event"]["dataset"], "link_trace.loss");
    assert_eq!(doc["link_trace"]["reason"], "ring_full");
    assert_eq!(
        (
            doc["link_trace"]["count"].clone(),
            doc["link_trace"]["total"].clone()
        ),
        (json!(3), json!(5))
    );
    assert_eq!(
        doc["message"],
        "3 event(s) not delivered: ring_full (5 since start)"
    );
    let doc = ecs_doc(&Record::Stats(Box::new(stats())));
    assert_eq!(doc["event"]["kind"], "metric");
    assert_eq!(doc["event"]["dataset"], "link_trace.stats");
    assert_eq!(doc["link_trace"]["losses"][0]["per_cpu"], json!([2, 3]));
    assert_eq!(doc["link_trace"]["decode_errors"], 1);
}

#[test]
fn every_ocsf_event_follows_its_class() {
    let classes = [
        ("full event", 1001),
        ("failed event", 1001),
        ("unreadable event", 1001),
        ("hostile event", 1001),
        ("alert", 2004),
        ("loss", 6008),
        ("stats", 0),
    ];
    for ((what, record), (name, class_uid)) in all_records().into_iter().zip(classes) {
        assert_eq!(what, name);
        let doc = ocsf_doc(&record);
        assert_eq!(doc["class_uid"], class_uid, "{what}");
        let errors = ocsf_violations(&doc);
        assert!(errors.is_empty(), "{what}: {errors:#?}\n{doc:#}");
    }
}

#[test]
fn the_ocsf_checker_catches_what_it_should() {
    let mut doc = ocsf_doc(&event(full_event()));
    let root = doc.as_object_mut().unwrap();
    root.remove("actor"); // required by System Activity
    root.insert("activity_id".into(), json!(1)); // type_uid no longer agrees
    root.insert("severity_id".into(), json!(7)); // not in the enum
    doc["file"].as_object_mut().unwrap().remove("type_id"); // required by file
    doc["file"]["owner"]["uid"] = json!(0); // a string_t
    doc["file_result"]["path"] = json!(["/a"]); // not an array
    doc["device"]["bogus"] = json!(1); // no such attribute
    doc["metadata"]["profiles"] = json!(["host"]); // drops linux/linux_users
    doc["status"] = json!("Failure"); // status_id 1 is Success
    let errors = ocsf_violations(&doc);
    for needle in [
        "file_activity.actor: required",
        "type_uid",
        "severity_id: 7",
        "file.type_id: required",
        "owner.uid",
        "file_result.path",
        "device.bogus",
        "status_id: 1 is Success",
    ] {
        assert!(
            errors.iter().any(|e| e.contains(needle)),
            "no error about {needle}: {errors:#?}"
        );
    }
    let mut doc = ocsf_doc(&event(full_event()));
    doc["metadata"]["profiles"] = json!(["host"]);
    let errors = ocsf_violations(&doc);
    assert!(
        errors
            .iter()
            .any(|e| e.contains("euid: belongs to profile")),
        "linux profile attributes need the profile: {errors:#?}"
    );
}

#[test]
fn ocsf_link_event_fields() {
    let doc = ocsf_doc(&event(full_event()));
    let expect = |pointer: &str, want: Value| {
        assert_eq!(doc.pointer(pointer), Some(&want), "{pointer} in {doc:#}");
    };
    expect("/class_uid", json!(1001));
    expect("/category_uid", json!(1));
    expect("/activity_id", json!(99));
    expect("/activity_name", json!("Link"));
    expect("/type_uid", json!(100199));
    expect("/time", json!(1795299301386i64));
    expect("/severity_id", json!(1));
    expect("/status_id", json!(1));
    expect("/status", json!("Success"));
    expect("/metadata/version", json!(ocsf::OCSF_VERSION));
    expect("/metadata/product/name", json!("link-trace"));
    expect("/metadata/sequence", json!(3));
    expect(
        "/metadata/original_time",
        json!("2026-11-21T22:15:01.386513266Z"),
    );
    expect(
        "/metadata/profiles",
        json!(["container", "host", "linux/linux_users"]),
    );
    expect("/actor/process/pid", json!(7));
    expect("/actor/process/tid", json!(8));
    expect("/actor/process/name", json!("ln"));
    expect("/actor/process/file/path", json!("/usr/bin/ln"));
    expect("/actor/process/file/name", json!("ln"));
    expect("/actor/process/parent_process/pid", json!(6));
    expect("/actor/process/euid", json!(0));
    expect("/actor/process/egid", json!(10));
    expect("/actor/process/auid", json!(1000));
    expect("/actor/process/group/uid", json!("100"));
    expect("/actor/process/container/uid", json!(CONTAINER));
    expect("/actor/user/uid", json!("1000"));
    expect("/device/hostname", json!("tracer-host"));
    expect("/device/uid", json!("0123456789abcdef0123456789abcdef"));
    expect("/device/os/type_id", json!(200));
    // The existing file is the target of the activity; the new name its result.
    expect("/file/path", json!("/tmp/lt/a"));
    expect("/file/name", json!("a"));
    expect("/file/parent_folder", json!("/tmp/lt"));
    expect("/file/type_id", json!(1));
    expect("/file/uid", json!("10067978"));
    expect("/file/owner/uid", json!("0"));
    expect("/file/xattributes/hard_link_count", json!(2));
    expect("/file/xattributes/setuid", json!(true));
    expect("/file/xattributes/permissions", json!("4755"));
    expect("/file_result/path", json!("/srv/base/sub/b"));
    expect("/file_result/name", json!("b"));
    expect("/file_result/uid", json!("10067978"));
    expect("/unmapped/link_trace/newpath/arg", json!("sub/b"));
    expect("/unmapped/link_trace/flags", json!(0x1400));
    expect("/unmapped/link_trace/duration_ns", json!(250));
}

#[test]
fn ocsf_failure_has_status_and_no_result() {
    let doc = ocsf_doc(&event(failed_event()));
    assert_eq!(doc["status_id"], 2);
    assert_eq!(doc["status"], "Failure");
    assert_eq!(doc["status_code"], "EEXIST");
    assert_eq!(doc["status_detail"], "File exists");
    assert_eq!(doc["file"]["path"], "/etc/shadow");
    assert_eq!(doc["file"]["uid"], "77");
    assert_eq!(doc["file"]["xattributes"]["gid"], 42);
    assert!(doc.get("file_result").is_none(), "{doc:#}");
    assert_eq!(
        doc["unmapped"]["link_trace"]["newpath"]["resolved"],
        "/base/taken"
    );
    // Without a container the container profile is not claimed.
    assert_eq!(
        doc["metadata"]["profiles"],
        json!(["host", "linux/linux_users"])
    );

    let doc = ocsf_doc(&event(unreadable_event()));
    assert_eq!(doc["status_code"], "EFAULT");
    assert_eq!(
        doc["file"]["name"], "",
        "name is required even when unknown"
    );
    assert_eq!(doc["file"]["type_id"], 0);
    assert!(doc["file"].get("path").is_none());
}

#[test]
fn ocsf_alert_is_a_detection_finding() {
    let doc = ocsf_doc(&Record::Alert(Box::new(alert())));
    assert_eq!(doc["class_uid"], 2004);
    assert_eq!(doc["type_uid"], 200401);
    assert_eq!(doc["severity_id"], 5);
    assert_eq!(doc["severity"], "Critical");
    assert_eq!(doc["is_alert"], true);
    assert_eq!(doc["message"], alert().message);
    let info = &doc["finding_info"];
    assert_eq!(info["analytic"]["uid"], "sensitive-credentials-link");
    assert_eq!(info["analytic"]["type_id"], 1);
    assert_eq!(info["title"], "Hard link to an account database");
    assert_eq!(
        info["uid"],
        "sensitive-credentials-link:12:2026-11-21T23:02:11.120334571Z"
    );
    assert_eq!(info["attacks"][0]["technique"]["uid"], "T1003");
    assert_eq!(info["attacks"][0]["sub_technique"]["uid"], "T1003.008");
    assert_eq!(info["attacks"][2]["technique"]["uid"], "T1548");
    assert!(info["attacks"][2].get("sub_technique").is_none());
    assert_eq!(
        info["types"],
        json!(["credential-access", "sensitive-file"])
    );
    assert_eq!(info["related_events"][1]["uid"], "12");
    assert_eq!(info["related_events"][1]["type_uid"], 100199);
    assert_eq!(doc["evidences"][0]["actor"]["process"]["pid"], 7301);
    assert_eq!(doc["evidences"][0]["file"]["path"], "/etc/shadow");
    assert_eq!(
        doc["unmapped"]["link_trace"]["newpath_resolved"],
        "/tmp/x/s"
    );
}

#[test]
fn ocsf_loss_is_an_application_error_and_stats_a_base_event() {
    let doc = ocsf_doc(&Record::Loss(Box::new(loss())));
    assert_eq!(
        (doc["class_uid"].clone(), doc["type_uid"].clone()),
        (json!(6008), json!(600801))
    );
    assert_eq!(doc["severity_id"], 4);
    assert_eq!(doc["unmapped"]["link_trace"]["count"], 3);
    assert_eq!(doc["time"], 1795299302000i64);
    let doc = ocsf_doc(&Record::Stats(Box::new(stats())));
    assert_eq!(
        (doc["class_uid"].clone(), doc["type_uid"].clone()),
        (json!(0), json!(99))
    );
    assert_eq!(doc["activity_name"], "Stats");
    assert_eq!(doc["unmapped"]["link_trace"]["kernel_submitted"], 10);
}

// ------------------------------------------------------ both formats ---

#[test]
fn hostile_paths_survive_in_both_formats() {
    let path = hostile_path();
    assert_eq!(path.len(), 4095);
    let record = event(hostile_event());
    let lossy = String::from_utf8_lossy(&path).into_owned();
    for (doc, file, extras) in [
        (ecs_doc(&record), "/file/path", "/link_trace"),
        (
            ocsf_doc(&record),
            "/file_result/path",
            "/unmapped/link_trace",
        ),
    ] {
        assert_eq!(doc.pointer(file), Some(&json!(lossy)), "lossy text");
        for field in ["arg", "resolved"] {
            let b64 = doc
                .pointer(&format!("{extras}/newpath/{field}_b64"))
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("{field}_b64 in {doc:#}"));
            assert_eq!(
                STANDARD.decode(b64).unwrap(),
                path,
                "exact bytes of {field}"
            );
        }
        assert_eq!(
            STANDARD
                .decode(
                    doc.pointer(&format!("{extras}/comm_b64"))
                        .and_then(Value::as_str)
                        .unwrap()
                )
                .unwrap(),
            b"l\xffn"
        );
        // Valid UTF-8 needs no base64.
        assert!(doc.pointer(&format!("{extras}/oldpath/arg_b64")).is_none());
    }
}

#[test]
fn native_format_is_the_json_of_output() {
    let record = event(full_event());
    let mut native = Vec::new();
    crate::output::render(crate::output::Format::Json, &record, &mut native);
    let mut out = Vec::new();
    render(DocumentFormat::Native, &record, &host(), &mut out);
    assert_eq!(out, native);
}

#[test]
fn paths_split_into_name_and_directory() {
    use super::{file_name, parent_directory};
    assert_eq!(file_name("/a/b"), Some("b"));
    assert_eq!(parent_directory("/a/b"), Some("/a"));
    assert_eq!(parent_directory("/b"), Some("/"));
    assert_eq!(file_name("b"), Some("b"));
    assert_eq!(parent_directory("b"), None);
    assert_eq!(file_name("/a/b//"), Some("b"));
    assert_eq!(parent_directory("/a/b//"), Some("/a"));
    assert_eq!(file_name("/"), None);
    assert_eq!(parent_directory("/"), None);
    assert_eq!(file_name(""), None);
}

#[test]
fn host_info_reads_this_machine() {
    let host = HostInfo::read();
    assert!(!host.hostname().is_empty());
    let uname = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    assert_eq!(host.kernel_release(), Some(uname.trim()));
    let doc = ecs_doc_on(&event(full_event()), &host);
    assert_eq!(doc["host"]["hostname"], host.hostname());
    assert_eq!(doc["host"]["architecture"], std::env::consts::ARCH);
    let doc = ocsf_doc_on(&event(full_event()), &host);
    assert_eq!(doc["device"]["hostname"], host.hostname());
}
