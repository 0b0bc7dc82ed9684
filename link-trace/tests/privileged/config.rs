//! The configuration file end to end: filters, several outputs at once,
//! SIGHUP reloading configuration and rules together, and `config check`.

use std::{path::Path, process::Command, time::Duration};

use serde_json::Value;

use crate::{
    AT_FDCWD,
    harness::{TestDir, Tracer, binary, my_pid, privileged, with_comm},
    linkat,
};

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

const RULE: &str = r#"
[[rule]]
id = "config-test"
title = "Name with the test prefix"
severity = "low"
condition = { field = "newpath_name", glob = "alert-*" }
"#;

/// Two stdout outputs, one of them alerts only: every event once, every
/// alert twice, and each output's counts in the final stats record.
fn config_text(pid: &str, comm: &str, rules: &Path, extra: &str) -> String {
    format!(
        r#"
pid = [{pid}]
comm = ["{comm}"]
no_builtin_rules = true
rules = ["{rules}"]
rules_dir = "/nonexistent"
stats_interval = 0

[[output]]
type = "stdout"
queue = 512

{extra}
"#,
        rules = s(rules)
    )
}

/// The thread names of each test's calls: with the pid, the tracer's
/// filter, so other tests of this process do not count.
const CALLER: &str = "lt-config-test";
const HUP_CALLER: &str = "lt-config-hup";

const ALERTS_TOO: &str = r#"
[[output]]
type = "stdout"
alerts_only = true
"#;

fn events_named<'a>(records: &'a [Value], dir: &TestDir, name: &str) -> Vec<&'a Value> {
    let path = dir.join(name);
    records
        .iter()
        .filter(|r| r["kind"] == "event" && r["newpath"] == s(&path))
        .collect()
}

fn alerts_for(records: &[Value], seq: &Value) -> usize {
    records
        .iter()
        .filter(|r| {
            r["kind"] == "alert" && r["event_seqs"].as_array().is_some_and(|s| s.contains(seq))
        })
        .count()
}

#[test]
fn a_config_file_sets_filters_and_several_outputs() {
    if !privileged("a_config_file_sets_filters_and_several_outputs") {
        return;
    }
    let dir = TestDir::new("/tmp", "config-outputs");
    let src = dir.file("src");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULE).unwrap();
    let config = dir.join("config.toml");
    std::fs::write(&config, config_text(&my_pid(), CALLER, &rules, ALERTS_TOO)).unwrap();
    let tracer = Tracer::start(&["--config", s(&config)]);
    with_comm(CALLER, || {
        linkat(AT_FDCWD, &src, AT_FDCWD, &dir.join("plain"), 0).expect("linkat");
        linkat(AT_FDCWD, &src, AT_FDCWD, &dir.join("alert-1"), 0).expect("linkat");
        // Another process with the same comm (ln run by that name) is
        // filtered out by the file's pid list.
        let ln = dir.join(CALLER);
        std::os::unix::fs::symlink("/bin/ln", &ln).expect("symlink ln");
        let status = Command::new(&ln)
            .arg(&src)
            .arg(dir.join("other-pid"))
            .status()
            .unwrap();
        assert!(status.success());
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    assert_eq!(events_named(&run.records, &dir, "plain").len(), 1);
    assert!(
        events_named(&run.records, &dir, "other-pid").is_empty(),
        "pid filter from the file"
    );
    let alerted = events_named(&run.records, &dir, "alert-1");
    assert_eq!(alerted.len(), 1, "events go to the first output only");
    assert_eq!(
        alerts_for(&run.records, &alerted[0]["seq"]),
        2,
        "the alert reaches both outputs"
    );
    let stats = run.final_stats();
    let sinks = stats["sinks"].as_array().expect("sinks in stats");
    assert_eq!(sinks.len(), 2, "{sinks:?}");
    assert_eq!(sinks[0]["name"], "stdout");
    assert_eq!(sinks[0]["queue_capacity"], 512);
    assert_eq!(sinks[1]["queue_capacity"], 4096);
    // Everything before the stats record is delivered or still queued:
    // 2 events and an alert on the first output, the alert on the second.
    let handed = |sink: &Value| {
        sink["delivered_records"].as_u64().unwrap() + sink["queue_depth"].as_u64().unwrap()
    };
    assert_eq!(handed(&sinks[0]), 3, "{sinks:?}");
    assert_eq!(handed(&sinks[1]), 1, "{sinks:?}");
    for sink in sinks {
        assert_eq!(sink["dropped_queue_full_records"], 0);
        assert_eq!(sink["dropped_failed_records"], 0);
    }
    assert!(
        run.stderr
            .iter()
            .any(|l| l.contains("output stdout: 2 events delivered, 0 dropped")),
        "{:?}",
        run.stderr
    );
}

#[test]
fn sighup_applies_a_new_configuration_and_refuses_a_broken_one() {
    if !privileged("sighup_applies_a_new_configuration_and_refuses_a_broken_one") {
        return;
    }
    let dir = TestDir::new("/tmp", "config-hup");
    let src = dir.file("src");
    let rules = dir.join("rules.toml");
    std::fs::write(&rules, RULE).unwrap();
    let config = dir.join("config.toml");
    let pid = my_pid();
    std::fs::write(&config, config_text(&pid, HUP_CALLER, &rules, "")).unwrap();
    let tracer = Tracer::start(&["--config", s(&config)]);
    let link = |name: &str| {
        with_comm(HUP_CALLER, || {
            linkat(AT_FDCWD, &src, AT_FDCWD, &dir.join(name), 0).expect("linkat")
        });
    };
    let wait = |text: &str| {
        tracer
            .wait_for_stderr(text, Duration::from_secs(10))
            .unwrap_or_else(|| panic!("no stderr line with {text:?}"))
    };
    link("alert-before");
    // Add an alerts-only output; a changed pid list needs a restart.
    std::fs::write(
        &config,
        config_text(&pid, HUP_CALLER, &rules, ALERTS_TOO)
            .replace(&format!("pid = [{pid}]"), &format!("pid = [{pid}, 1]")),
    )
    .unwrap();
    tracer.signal(libc::SIGHUP);
    wait("reloaded: 1 rules in force; outputs: stdout (json), stdout (json)");
    let warning = wait("takes a restart");
    assert!(warning.contains("pid changed"), "{warning}");
    link("alert-after");
    // A broken file: nothing changes, the error names the line.
    std::fs::write(
        &config,
        config_text(&pid, HUP_CALLER, &rules, ALERTS_TOO) + "\nbogus_key = 1\n",
    )
    .unwrap();
    tracer.signal(libc::SIGHUP);
    let error = wait("reload failed");
    assert!(
        error.contains(s(&config)) && error.contains("line ") && error.contains("bogus_key"),
        "{error}"
    );
    link("alert-still");
    let run = tracer.stop();
    run.assert_clean_exit();
    let alerts = |name: &str| {
        let events = events_named(&run.records, &dir, name);
        assert_eq!(events.len(), 1, "{name}: one event");
        alerts_for(&run.records, &events[0]["seq"])
    };
    // Outputs change as soon as the new file is loaded; an event captured
    // just before the signal may still be on its way and reach both.
    assert!((1..=2).contains(&alerts("alert-before")));
    assert_eq!(alerts("alert-after"), 2, "the added output gets alerts");
    assert_eq!(alerts("alert-still"), 2, "the broken file changed nothing");
}

#[test]
fn config_check_names_the_line_and_loads_nothing() {
    if !privileged("config_check_names_the_line_and_loads_nothing") {
        return;
    }
    let dir = TestDir::new("/tmp", "config-check");
    let config = dir.join("config.toml");
    // Writes the file, runs the binary with `args` then the file's path.
    let run = |text: &str, args: &[&str]| {
        std::fs::write(&config, text).unwrap();
        let out = Command::new(binary())
            .args(args)
            .arg(&config)
            .output()
            .unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.code(), text(&out.stdout), text(&out.stderr))
    };
    let (code, _, stderr) = run(
        "stats_interval = 5\n\n[[output]]\ntype = \"file\"\npath = \"/var/log/x.jsonl\"\nmax_bytes = 10\n",
        &["config", "check"],
    );
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("line 6") && stderr.contains("max_bytes must be at least 4096"),
        "{stderr}"
    );
    let (code, stdout, _) = run(
        "stats_interval = 5\n[[output]]\ntype = \"stdout\"\nformat = \"text\"\n",
        &["config", "check"],
    );
    assert_eq!(code, Some(0), "{stdout}");
    assert!(
        stdout.contains("stats_interval 5 s") && stdout.contains("output stdout: format text"),
        "{stdout}"
    );
    // The service's starting point checks clean.
    let packaged = Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/config.toml");
    let out = Command::new(binary())
        .args(["config", "check"])
        .arg(&packaged)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("output file:/var/log/link-trace/events.jsonl: format json")
            && stdout.contains("output syslog+unix:/dev/log: format json, queue 4096, alerts only"),
        "{stdout}"
    );
    // The tracer refuses to start on a broken file, before attaching.
    let (code, _, stderr) = run("ring_bytes = 1000\n", &["--config"]);
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("line 1") && stderr.contains("power of two"),
        "{stderr}"
    );
    assert!(!stderr.contains("tracing link"), "{stderr}");
}
