use super::*;

const STATUS: &str = "Name:\tcat\nUmask:\t0022\nCapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\nCapBnd:\t000001fffeffffff\n";

#[test]
fn reads_the_effective_capability_set() {
    assert_eq!(parse_cap_eff(STATUS), Some(0x1ff_feff_ffff));
    assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
    assert_eq!(parse_cap_eff("CapPrm:\t00000000000000ff\n"), None);
    assert_eq!(parse_cap_eff("CapEff:\tzz\n"), None);
}

#[test]
fn capabilities_decide_whether_programs_can_load() {
    // Root's usual set (here without CAP_SYS_RESOURCE, bit 24).
    let root = capabilities_check(parse_cap_eff(STATUS));
    assert_eq!(root.status, Status::Ok, "{}", root.detail);
    assert_eq!(root.value["missing"], json!([]));

    let nobody = capabilities_check(Some(0));
    assert_eq!(nobody.status, Status::Fail);
    assert!(
        nobody
            .detail
            .contains("CAP_BPF and CAP_PERFMON, or CAP_SYS_ADMIN")
    );

    // CAP_BPF + CAP_PERFMON load programs; without the /proc and stat
    // capabilities enrichment degrades.
    let bpf_only = capabilities_check(Some((1 << 39) | (1 << 38)));
    assert_eq!(bpf_only.status, Status::Warn, "{}", bpf_only.detail);
    assert_eq!(
        bpf_only.value["missing"],
        json!(["CAP_SYS_ADMIN", "CAP_DAC_READ_SEARCH", "CAP_SYS_PTRACE"])
    );
    assert_eq!(
        capabilities_check(Some(1 << 39)).status,
        Status::Fail,
        "CAP_BPF alone cannot attach tracing programs"
    );
    assert_eq!(capabilities_check(None).status, Status::Warn);
}

#[test]
fn privileges_need_euid_zero() {
    assert_eq!(privileges_check(0).status, Status::Ok);
    let nobody = privileges_check(65534);
    assert_eq!(nobody.status, Status::Fail);
    assert!(nobody.detail.starts_with("euid 65534, not 0"));
    assert_eq!(nobody.value, json!({ "euid": 65534 }));
}

#[test]
fn lsm_lists_parse_and_ids_are_named() {
    assert_eq!(
        parse_lsm_list("lockdown,capability,landlock,bpf"),
        ["lockdown", "capability", "landlock", "bpf"]
    );
    assert_eq!(
        parse_lsm_list("capability,selinux\n"),
        ["capability", "selinux"]
    );
    assert!(parse_lsm_list("").is_empty());
    // The ids lsm_list_modules returns on this project's CI host, in its order.
    let names: Vec<String> = [108, 100, 110, 109].into_iter().map(lsm_name).collect();
    assert_eq!(names, ["lockdown", "capability", "landlock", "bpf"]);
    assert_eq!(lsm_name(101), "selinux");
    assert_eq!(lsm_name(999), "lsm-999");
}

#[test]
fn tracefs_mount_points_come_from_mountinfo() {
    let mountinfo = "\
22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
31 22 0:12 / /sys/kernel/tracing rw,relatime shared:9 - tracefs tracefs rw
40 22 0:12 / /mnt/my\\040trace rw,relatime - tracefs tracefs rw
41 22 0:7 / /sys/kernel/debug rw,relatime - debugfs debugfs rw
";
    assert_eq!(
        mount_points(mountinfo, "tracefs"),
        [
            PathBuf::from("/sys/kernel/tracing"),
            PathBuf::from("/mnt/my trace")
        ]
    );
    assert_eq!(
        mount_points(mountinfo, "debugfs"),
        [PathBuf::from("/sys/kernel/debug")]
    );
    assert!(mount_points(mountinfo, "securityfs").is_empty());
    assert!(mount_points("garbage\n\n", "tracefs").is_empty());
}

#[test]
fn sysctl_meanings() {
    assert_eq!(protected_hardlinks_meaning(1).0, Status::Ok);
    assert_eq!(protected_hardlinks_meaning(0).0, Status::Warn);
    assert!(protected_hardlinks_meaning(1).1.contains("EPERM"));
    assert_eq!(protected_symlinks_meaning(1).0, Status::Ok);
    assert_eq!(protected_symlinks_meaning(0).0, Status::Warn);
    assert_eq!(bpf_stats_meaning(0).0, Status::Ok);
    assert_eq!(bpf_stats_meaning(1).0, Status::Warn);
    for value in [0, 1, 2] {
        assert_eq!(unprivileged_bpf_meaning(value).0, Status::Ok);
    }
    assert_eq!(perf_event_paranoid_meaning(4).0, Status::Ok);
}

fn probe_failure(step: &'static str, errno: i32) -> sys::Failure {
    sys::Failure {
        step,
        errno,
        log: None,
    }
}

fn healthy_host() -> Vec<Check> {
    [
        "kernel",
        "privileges",
        "capabilities",
        "btf",
        "btf_offsets",
        "tracefs",
        "tracepoints",
        "bpf_ringbuf",
        "bpf_tracepoint",
        "bpf_helpers",
        "programs",
        "lsm_list",
    ]
    .into_iter()
    .map(|name| Check::ok(name, "fine"))
    .chain([
        Check::failed(
            "fentry",
            Status::Warn,
            "fentry",
            &probe_failure("load", libc::EPERM),
        ),
        Check::failed(
            "bpf_lsm",
            Status::Warn,
            "lsm",
            &probe_failure("attach", libc::EPERM),
        ),
        Check::warn("kprobes", "none"),
    ])
    .collect()
}

#[test]
fn failed_probes_name_step_and_errno() {
    let check = Check::failed(
        "fentry",
        Status::Warn,
        "a trivial fentry program on vfs_link",
        &sys::Failure {
            step: "load",
            errno: libc::EPERM,
            log: Some("attach to unsupported member".into()),
        },
    );
    assert_eq!(
        check.detail,
        "a trivial fentry program on vfs_link: load failed: EPERM (verifier: attach to unsupported member)"
    );
    assert_eq!(
        (check.step, check.errno.as_deref()),
        (Some("load"), Some("EPERM"))
    );
}

#[test]
fn capture_works_when_nothing_failed() {
    let checks = healthy_host();
    let (capture, summary) = summarize(&checks);
    assert!(capture);
    let verdict = |feature: &str| summary.iter().find(|v| v.feature == feature).unwrap();
    assert!(verdict("capture").available);
    assert!(verdict("kernel_context").available);
    let facts = verdict("call_time_inode_facts");
    assert!(!facts.available);
    assert!(
        facts
            .detail
            .contains("fentry on vfs_link: load refused, EPERM")
            && facts
                .detail
                .contains("BPF LSM on path_link: attach refused, EPERM"),
        "{}",
        facts.detail
    );
    assert!(facts.detail.starts_with("need fentry or BPF LSM"));
}

#[test]
fn any_failure_stops_capture_and_is_named() {
    let mut checks = healthy_host();
    for check in &mut checks {
        if ["privileges", "programs"].contains(&check.name) {
            check.status = Status::Fail;
        }
    }
    let (capture, summary) = summarize(&checks);
    assert!(!capture);
    assert_eq!(summary[0].feature, "capture");
    assert!(!summary[0].available);
    assert_eq!(summary[0].detail, "blocked by: privileges, programs");
    assert!(!summary[1].available, "no context without capture");
    assert!(summary.iter().any(|v| v.feature == "rules" && v.available));
}

#[test]
fn context_needs_btf_offsets_and_allowed_hooks_are_reported_unused() {
    let mut checks = healthy_host();
    for check in &mut checks {
        match check.name {
            "btf_offsets" => check.status = Status::Warn,
            "fentry" => *check = Check::ok("fentry", "loads and attaches"),
            _ => {}
        }
    }
    let (capture, summary) = summarize(&checks);
    assert!(capture, "missing BTF degrades, it does not stop capture");
    assert!(!summary[1].available);
    assert!(summary[1].detail.contains("no_btf"));
    assert!(summary[2].detail.starts_with("this kernel allows a hook"));
    assert!(summary[2].detail.contains("fentry on vfs_link: allowed"));
}

#[test]
fn text_report_has_one_line_per_check_then_the_summary() {
    let checks = healthy_host();
    let (capture, summary) = summarize(&checks);
    let report = Report {
        kind: "doctor",
        kernel_release: "6.18.0".into(),
        arch: "x86_64".into(),
        capture,
        checks,
        summary,
    };
    let mut out = Vec::new();
    write_text(&report, &mut out).unwrap();
    let text = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "ok    kernel: fine");
    assert!(lines.contains(&"warn  kprobes: none"));
    assert!(lines.contains(&"warn  fentry: fentry: load failed: EPERM"));
    assert!(lines.contains(&"What will work on this host:"));
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  yes  capture of link(2) and linkat(2): "))
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("  no   call-time inode facts"))
    );
    assert_eq!(lines.last(), Some(&"link-trace doctor: capture will work"));

    let json: Value = serde_json::to_value(&report).unwrap();
    assert_eq!(json["kind"], "doctor");
    assert_eq!(json["capture"], true);
    let fentry = json["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "fentry")
        .unwrap();
    assert_eq!(fentry["status"], "warn");
    assert_eq!(fentry["step"], "load");
    assert_eq!(fentry["errno"], "EPERM");
}
