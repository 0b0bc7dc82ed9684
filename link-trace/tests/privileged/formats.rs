//! ECS and OCSF documents of a real recording: link calls made here, traced
//! by the real tracer, replayed with `replay --format ecs|ocsf`, and every
//! document checked against the standards' excerpts and against this
//! test's own ground truth (pid, thread, paths, inodes, errno).

use std::{
    ffi::OsStr,
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, PermissionsExt},
    },
    path::{Path, PathBuf},
    process::Command,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use serde_json::{Value, json};

use crate::harness::{Run, TestDir, Tracer, binary, gettid, linkat, my_pid, privileged};

#[path = "../../src/formats/conformance.rs"]
mod conformance;

const AT_FDCWD: i32 = libc::AT_FDCWD;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// `replay FILE ARGS` (no built-in rules): its stdout lines, parsed.
fn replay(recording: &Path, args: &[&str]) -> Vec<Value> {
    let out = Command::new(binary())
        .arg("replay")
        .arg(recording)
        .arg("--no-builtin-rules")
        .args(args)
        .output()
        .expect("run replay");
    assert!(
        out.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("documents are UTF-8")
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// The one document for which `pick` gives true.
fn one<'a>(docs: &'a [Value], what: &str, pick: impl Fn(&Value) -> bool) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| pick(d)).collect();
    assert_eq!(found.len(), 1, "one {what} in {docs:#?}");
    found[0]
}

fn expect(doc: &Value, fields: &[(&str, Value)]) {
    for (pointer, want) in fields {
        assert_eq!(doc.pointer(pointer), Some(want), "{pointer} of {doc:#}");
    }
}

fn device(path: &Path) -> String {
    let dev = std::fs::metadata(path).expect("stat").dev();
    format!("{}:{}", libc::major(dev), libc::minor(dev))
}

struct Recording {
    _dir: TestDir,
    file: PathBuf,
    rules: PathBuf,
    run: Run,
    src: PathBuf,
    dst: PathBuf,
    taken: PathBuf,
    odd: PathBuf,
}

/// Three real calls: a link, one refused with EEXIST, and a link to a name
/// with a newline and a byte that is not UTF-8.
fn record() -> Recording {
    let dir = TestDir::new("/tmp", "formats");
    let src = dir.file("src");
    std::fs::set_permissions(&src, std::fs::Permissions::from_mode(0o640)).unwrap();
    let dst = dir.join("dst");
    let taken = dir.file("taken");
    let odd = dir.path.join(OsStr::from_bytes(b"odd\xff\nname"));
    let tracer = Tracer::start(&["--pid", &my_pid()]);
    linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("link");
    assert_eq!(
        linkat(AT_FDCWD, &src, AT_FDCWD, &taken, 0),
        Err(libc::EEXIST)
    );
    linkat(AT_FDCWD, &src, AT_FDCWD, &odd, 0).expect("link to an odd name");
    let run = tracer.stop();
    run.assert_clean_exit();
    let file = dir.join("recording.jsonl");
    let lines: Vec<String> = run.records.iter().map(Value::to_string).collect();
    std::fs::write(&file, lines.join("\n") + "\n").unwrap();
    let rules = dir.join("rules.toml");
    std::fs::write(
        &rules,
        format!(
            r#"[[rule]]
id = "formats-test-link"
title = "Link to the formats test name"
severity = "high"
mitre = ["T1003.008"]
tags = ["test"]
message = "{{comm}} linked {{oldpath_resolved}} -> {{newpath_resolved}}"
condition = {{ field = "newpath_resolved", glob = "{}" }}
"#,
            s(&dst)
        ),
    )
    .unwrap();
    Recording {
        _dir: dir,
        file,
        rules,
        run,
        src,
        dst,
        taken,
        odd,
    }
}

#[test]
fn a_real_recording_replays_as_ecs_and_ocsf() {
    if !privileged("a_real_recording_replays_as_ecs_and_ocsf") {
        return;
    }
    let r = record();
    let native_dst = r.run.event_for(&r.dst);
    let seq = native_dst["seq"].clone();
    let inode = std::fs::metadata(&r.dst).unwrap().ino();
    let src_dev = device(&r.src);
    // SAFETY: getuid/getgid have no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (pid, tid) = (std::process::id(), gettid());
    let rules = ["--rules", s(&r.rules)];

    // ECS.
    let docs = replay(&r.file, &[&["--format", "ecs"][..], &rules].concat());
    for doc in &docs {
        let errors = conformance::ecs_violations(doc);
        assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
    }
    let events = r.run.events().count();
    assert_eq!(
        docs.iter()
            .filter(|d| d["event"]["kind"] == "event")
            .count(),
        events,
        "one ECS document per recorded event"
    );
    let doc = one(&docs, "ECS link to dst", |d| {
        d["event"]["kind"] == "event" && d["file"]["path"] == s(&r.dst)
    });
    expect(
        doc,
        &[
            ("/event/action", json!("linkat")),
            ("/event/outcome", json!("success")),
            ("/event/sequence", seq.clone()),
            ("/process/pid", json!(pid)),
            ("/process/thread/id", json!(tid)),
            ("/user/id", json!(uid.to_string())),
            ("/group/id", json!(gid.to_string())),
            ("/file/name", json!("dst")),
            ("/file/directory", json!(s(r.dst.parent().unwrap()))),
            ("/file/target_path", json!(s(&r.src))),
            ("/file/inode", json!(inode.to_string())),
            ("/file/device", json!(src_dev)),
            ("/file/mode", json!("0640")),
            ("/file/type", json!("file")),
            ("/link_trace/oldpath/arg", json!(s(&r.src))),
        ],
    );
    let doc = one(&docs, "ECS refused link", |d| {
        d["event"]["kind"] == "event" && d["file"]["path"] == s(&r.taken)
    });
    expect(
        doc,
        &[
            ("/event/outcome", json!("failure")),
            ("/error/code", json!("EEXIST")),
            ("/error/message", json!("File exists")),
            ("/file/target_path", json!(s(&r.src))),
            ("/link_trace/ret", json!(-libc::EEXIST)),
            ("/link_trace/file/ino", json!(inode)),
        ],
    );
    assert!(
        doc["file"].get("inode").is_none(),
        "no new name, no facts: {doc:#}"
    );
    let odd = r.odd.as_os_str().as_bytes();
    let doc = one(&docs, "ECS link to the odd name", |d| {
        d["link_trace"]["newpath"]["arg_b64"]
            .as_str()
            .is_some_and(|b| STANDARD.decode(b).ok().as_deref() == Some(odd))
    });
    expect(
        doc,
        &[
            ("/file/path", json!(String::from_utf8_lossy(odd))),
            ("/file/inode", json!(inode.to_string())),
        ],
    );
    let alert = one(&docs, "ECS alert", |d| d["event"]["kind"] == "alert");
    expect(
        alert,
        &[
            ("/rule/id", json!("formats-test-link")),
            ("/event/severity", json!(4)),
            ("/threat/technique/id", json!(["T1003"])),
            ("/threat/technique/subtechnique/id", json!(["T1003.008"])),
            ("/link_trace/event_seqs", json!([seq.clone()])),
            ("/process/pid", json!(pid)),
            ("/file/path", json!(s(&r.dst))),
        ],
    );

    // OCSF.
    let docs = replay(&r.file, &[&["--format", "ocsf"][..], &rules].concat());
    for doc in &docs {
        let errors = conformance::ocsf_violations(doc);
        assert!(errors.is_empty(), "{errors:#?}\n{doc:#}");
    }
    assert_eq!(
        docs.iter().filter(|d| d["class_uid"] == 1001).count(),
        events,
        "one File System Activity per recorded event"
    );
    let doc = one(&docs, "OCSF link to dst", |d| {
        d["file_result"]["path"] == s(&r.dst)
    });
    expect(
        doc,
        &[
            ("/type_uid", json!(100199)),
            ("/activity_name", json!("Link")),
            ("/status_id", json!(1)),
            ("/metadata/sequence", seq.clone()),
            ("/actor/process/pid", json!(pid)),
            ("/actor/process/tid", json!(tid)),
            ("/actor/user/uid", json!(uid.to_string())),
            ("/actor/process/group/uid", json!(gid.to_string())),
            ("/file/path", json!(s(&r.src))),
            ("/file/uid", json!(inode.to_string())),
            ("/file/type_id", json!(1)),
            ("/file/xattributes/device", json!(src_dev)),
            ("/file_result/name", json!("dst")),
            ("/file_result/uid", json!(inode.to_string())),
        ],
    );
    let doc = one(&docs, "OCSF refused link", |d| {
        d["unmapped"]["link_trace"]["newpath"]["arg"] == s(&r.taken)
    });
    expect(
        doc,
        &[
            ("/status_id", json!(2)),
            ("/status_code", json!("EEXIST")),
            ("/status_detail", json!("File exists")),
            ("/file/path", json!(s(&r.src))),
        ],
    );
    assert!(doc.get("file_result").is_none(), "{doc:#}");
    let finding = one(&docs, "OCSF finding", |d| d["class_uid"] == 2004);
    expect(
        finding,
        &[
            ("/finding_info/analytic/uid", json!("formats-test-link")),
            ("/severity_id", json!(4)),
            (
                "/finding_info/attacks/0/sub_technique/uid",
                json!("T1003.008"),
            ),
            ("/finding_info/related_events/0/uid", json!(seq.to_string())),
        ],
    );

    // --format native is --json.
    let native = replay(&r.file, &[&["--format", "native"][..], &rules].concat());
    assert_eq!(native, replay(&r.file, &[&["--json"][..], &rules].concat()));
    let passed_through = r
        .run
        .records
        .iter()
        .filter(|r| r["kind"] != "alert")
        .count();
    assert_eq!(
        native.len(),
        passed_through + 1,
        "the records and the new alert"
    );
}
