//! The file and Unix socket outputs, end to end: the real tracer with
//! `--output file:…` and `--output unix:…`, real link calls, and what
//! arrives in the files and at the subscribers checked record by record.
//! Each test gives its thread a comm of its own and traces only that comm
//! in this process (another suite run at the same time uses the same
//! names), so the counts are exactly this test's calls.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Read},
    os::unix::{
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::UnixStream,
    },
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering::SeqCst},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::harness::{
    Run, TestDir, Tracer, caller_fields, expect_fields, linkat, my_pid, privileged,
    record_from_line, with_comm,
};

const AT_FDCWD: i32 = libc::AT_FDCWD;

fn s(path: &Path) -> &str {
    path.to_str().expect("UTF-8 test path")
}

/// `count` successful links of `src` to `dir/PREFIX-i`.
fn links(src: &Path, dir: &Path, prefix: &str, count: usize) {
    for i in 0..count {
        linkat(
            AT_FDCWD,
            src,
            AT_FDCWD,
            &dir.join(format!("{prefix}-{i}")),
            0,
        )
        .unwrap_or_else(|e| panic!("linkat {prefix}-{i}: errno {e}"));
    }
}

/// The records of a file written by a file output: every line whole (the
/// file ends with a newline) and valid against the schema.
fn file_records(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    assert!(
        text.is_empty() || text.ends_with('\n'),
        "{} ends in a torn line",
        path.display()
    );
    text.lines().map(record_from_line).collect()
}

/// `PATH` and its rotated files `PATH.N`, oldest first; panics on a gap in
/// the numbers or a stray name.
fn rotation_set(path: &Path) -> Vec<PathBuf> {
    let dir = path.parent().unwrap();
    let name = path.file_name().unwrap().to_str().unwrap();
    let mut numbers: Vec<usize> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|entry| {
            let entry = entry.unwrap().file_name();
            let suffix = entry.to_str()?.strip_prefix(name)?.strip_prefix('.')?;
            Some(
                suffix
                    .parse()
                    .unwrap_or_else(|_| panic!("stray file {entry:?}")),
            )
        })
        .collect();
    numbers.sort_unstable();
    assert!(
        numbers.iter().copied().eq(1..=numbers.len()),
        "rotated files are numbered 1..=N: {numbers:?}"
    );
    let mut set: Vec<PathBuf> = numbers
        .iter()
        .rev()
        .map(|n| dir.join(format!("{name}.{n}")))
        .collect();
    set.push(path.to_path_buf());
    set
}

fn event_seqs<'a>(records: impl IntoIterator<Item = &'a Value>) -> Vec<u64> {
    records
        .into_iter()
        .filter(|r| r["kind"] == "event")
        .map(|r| r["seq"].as_u64().expect("seq"))
        .collect()
}

/// What the exit summary says about one output:
/// (delivered, dropped queue full, dropped output failed) events.
fn output_summary(run: &Run, name: &str) -> (u64, u64, u64) {
    let prefix = format!("link-trace: output {name}: ");
    let line = run
        .stderr
        .iter()
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .filter(|rest| rest.contains("delivered"))
        })
        .unwrap_or_else(|| panic!("no summary line for {name}: {:?}", run.stderr));
    let numbers: Vec<u64> = line
        .split(", ")
        .take(3)
        .map(|part| part.split(' ').next().unwrap().parse().expect("a count"))
        .collect();
    (numbers[0], numbers[1], numbers[2])
}

/// What the exit summary says about a socket output's subscribers:
/// (served, dropped for falling behind, events missed, events with no subscriber).
fn subscriber_summary(run: &Run, name: &str) -> (u64, u64, u64, u64) {
    let prefix = format!("link-trace: output {name}: ");
    let line = run
        .stderr
        .iter()
        .find_map(|l| {
            l.strip_prefix(&prefix)
                .filter(|rest| rest.contains("subscribers served"))
        })
        .unwrap_or_else(|| panic!("no subscriber line for {name}: {:?}", run.stderr));
    let numbers: Vec<u64> = line
        .split(", ")
        .map(|part| part.split(' ').next().unwrap().parse().expect("a count"))
        .collect();
    (numbers[0], numbers[1], numbers[2], numbers[3])
}

fn kernel_lost(run: &Run) -> u64 {
    run.final_stats()["losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["total"].as_u64().unwrap())
        .sum()
}

/// Reads a subscriber's stream to its end on a thread of its own.
fn subscribe(path: &Path) -> JoinHandle<Vec<u8>> {
    let mut stream =
        UnixStream::connect(path).unwrap_or_else(|e| panic!("connect to {}: {e}", path.display()));
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        stream.read_to_end(&mut bytes).expect("read the socket");
        bytes
    })
}

/// A subscriber's stream as records; a last line without a newline (cut
/// off when it was dropped) is returned apart.
fn stream_records(bytes: &[u8]) -> (Vec<Value>, Vec<u8>) {
    let whole = bytes
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |at| at + 1);
    let records = BufReader::new(&bytes[..whole])
        .lines()
        .map(|line| record_from_line(&line.expect("UTF-8 line")))
        .collect();
    (records, bytes[whole..].to_vec())
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn file_rotation_under_load_keeps_every_event_whole_and_once() {
    if !privileged("file_rotation_under_load_keeps_every_event_whole_and_once") {
        return;
    }
    const CALLS: usize = 5000;
    const MAX_BYTES: u64 = 65536;
    let dir = TestDir::new("/tmp", "sink-rotate");
    let src = dir.file("src");
    let (all, few) = (dir.join("all.jsonl"), dir.join("few.jsonl"));
    let comm = "lt-sinkrotate";
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout,queue=65536",
        "--output",
        &format!(
            "file:{},max_bytes={MAX_BYTES},keep=1000,queue=65536",
            s(&all)
        ),
        "--output",
        &format!(
            "file:{},max_bytes={MAX_BYTES},keep=3,queue=65536,fsync=batch",
            s(&few)
        ),
    ]);
    with_comm(comm, || links(&src, &dir.path, "l", CALLS));
    let run = tracer.stop();
    run.assert_clean_exit();
    let decoded = run.final_stats()["events_decoded"].as_u64().unwrap();
    assert_eq!(
        decoded + kernel_lost(&run),
        CALLS as u64,
        "calls = captured + lost"
    );

    // All files kept: every event exactly once, in order, no file too big.
    let set = rotation_set(&all);
    assert!(set.len() > 20, "only {} files: no rotation load", set.len());
    let mut records = Vec::new();
    for path in &set {
        let file = file_records(path);
        let bytes = std::fs::metadata(path).unwrap().len();
        assert!(
            bytes <= MAX_BYTES || file.len() == 1,
            "{} has {bytes} bytes in {} records",
            path.display(),
            file.len()
        );
        assert!(!file.is_empty(), "{} is empty", path.display());
        records.extend(file);
    }
    let seqs = event_seqs(&records);
    assert!(
        seqs.iter().copied().eq(1..=decoded),
        "every event seq 1..={decoded} once, in order across the files"
    );
    assert_eq!(
        output_summary(&run, &format!("file:{}", s(&all))),
        (decoded, 0, 0)
    );

    // keep = 3: at most 4 files, holding the newest events without a gap.
    let set = rotation_set(&few);
    assert_eq!(set.len(), 4, "{set:?}");
    let records: Vec<Value> = set.iter().flat_map(|p| file_records(p)).collect();
    let seqs = event_seqs(&records);
    let first = seqs[0];
    assert!(first > 1, "the oldest files were dropped");
    assert!(
        seqs.iter().copied().eq(first..=decoded),
        "the kept files hold the newest events, each once"
    );
    assert_eq!(
        output_summary(&run, &format!("file:{}", s(&few))),
        (decoded, 0, 0)
    );
}

#[test]
fn unix_socket_is_0600_and_two_subscribers_get_the_events_field_by_field() {
    if !privileged("unix_socket_is_0600_and_two_subscribers_get_the_events_field_by_field") {
        return;
    }
    let dir = TestDir::new("/tmp", "sink-unix");
    let src = dir.file("src");
    let socket = dir.join("events.sock");
    let comm = "lt-sinkunix";
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout",
        "--output",
        &format!("unix:{}", s(&socket)),
    ]);
    let meta = std::fs::symlink_metadata(&socket).expect("the socket file");
    assert!(meta.file_type().is_socket(), "{meta:?}");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600, "mode 0600");
    let (a, b) = (subscribe(&socket), subscribe(&socket));
    let dst = dir.join("dst");
    let fields = with_comm(comm, || {
        linkat(AT_FDCWD, &src, AT_FDCWD, &dst, 0).expect("linkat");
        caller_fields()
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    assert!(!socket.exists(), "the socket file is removed at exit");
    let on_stdout = run.event_for(&dst);
    for (name, subscriber) in [("a", a), ("b", b)] {
        let (records, torn) = stream_records(&subscriber.join().unwrap());
        assert!(torn.is_empty(), "subscriber {name} got a torn line");
        let events: Vec<&Value> = records.iter().filter(|r| r["kind"] == "event").collect();
        assert_eq!(events.len(), 1, "subscriber {name}: {records:#?}");
        let event = events[0];
        expect_fields(
            event,
            &[
                ("syscall", "linkat".into()),
                ("oldpath", s(&src).into()),
                ("newpath", s(&dst).into()),
                ("ret", 0.into()),
                ("success", true.into()),
                ("errno", Value::Null),
            ],
        );
        expect_fields(event, &fields);
        assert_eq!(event, on_stdout, "subscriber {name} and stdout agree");
        assert!(
            records.iter().any(|r| r["kind"] == "stats"),
            "subscriber {name} got the final stats record"
        );
    }
    let name = format!("unix:{}", s(&socket));
    assert_eq!(output_summary(&run, &name), (1, 0, 0));
    assert_eq!(subscriber_summary(&run, &name), (2, 0, 0, 0));
}

#[test]
fn a_subscriber_that_stops_reading_is_dropped_and_counted_while_the_other_keeps_up() {
    if !privileged(
        "a_subscriber_that_stops_reading_is_dropped_and_counted_while_the_other_keeps_up",
    ) {
        return;
    }
    const BURSTS: usize = 30;
    const PER_BURST: usize = 100;
    let dir = TestDir::new("/tmp", "sink-slow");
    let src = dir.file("src");
    let socket = dir.join("slow.sock");
    let comm = "lt-sinkslow";
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout,queue=65536",
        "--output",
        &format!(
            "unix:{},mode=0660,subscriber_buffer=262144,queue=65536",
            s(&socket)
        ),
    ]);
    let meta = std::fs::symlink_metadata(&socket).expect("the socket file");
    assert_eq!(
        meta.permissions().mode() & 0o777,
        0o660,
        "mode from the flag"
    );
    // Connected, never read until the tracer has stopped.
    let stalled = UnixStream::connect(&socket).unwrap();
    let reader = subscribe(&socket);
    with_comm(comm, || {
        for burst in 0..BURSTS {
            links(&src, &dir.path, &format!("b{burst}"), PER_BURST);
            std::thread::sleep(Duration::from_millis(10));
        }
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    let calls = (BURSTS * PER_BURST) as u64;
    let decoded = run.final_stats()["events_decoded"].as_u64().unwrap();
    assert_eq!(decoded + kernel_lost(&run), calls);

    let name = format!("unix:{}", s(&socket));
    let (served, dropped_slow, missed_events, without) = subscriber_summary(&run, &name);
    assert_eq!(
        (served, dropped_slow, without),
        (2, 1, 0),
        "the stalled subscriber, and only it, was dropped"
    );
    let reader_bytes = reader.join().unwrap();
    let (reader_records, torn) = stream_records(&reader_bytes);
    assert!(torn.is_empty(), "the reader got a torn line");
    let reader_seqs = event_seqs(&reader_records);
    assert!(
        reader_seqs.iter().copied().eq(1..=decoded),
        "the reader got every event: {} of {decoded}",
        reader_seqs.len()
    );

    let mut stalled_bytes = Vec::new();
    BufReader::new(stalled)
        .read_to_end(&mut stalled_bytes)
        .expect("read the stalled subscriber");
    // Byte for byte the start of the same stream; a last line cut off by
    // the disconnection is the start of the next record, not garbage.
    assert!(
        reader_bytes.starts_with(&stalled_bytes),
        "the stalled subscriber got a prefix of the stream"
    );
    let (stalled_records, _torn) = stream_records(&stalled_bytes);
    // Every event handed to it was received whole or is counted as missed:
    // it was handed the first `whole + missed` events of the stream, all of
    // them before the reader's last.
    let whole = event_seqs(&stalled_records).len() as u64;
    assert!(missed_events > 0);
    assert!(
        whole + missed_events <= decoded,
        "{whole} received + {missed_events} missed > {decoded} events"
    );
    assert!(
        whole < decoded / 2,
        "a stalled subscriber cannot hold {whole} events"
    );
    assert_eq!(output_summary(&run, &name), (decoded, 0, 0));
}

/// A tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    path: PathBuf,
}

impl SmallDisk {
    fn mount(path: PathBuf, size: &str) -> SmallDisk {
        std::fs::create_dir(&path).unwrap();
        nix::mount::mount(
            Some("tmpfs"),
            &path,
            Some("tmpfs"),
            nix::mount::MsFlags::empty(),
            Some(format!("size={size},mode=0755").as_str()),
        )
        .unwrap_or_else(|e| panic!("mount a tmpfs on {}: {e}", path.display()));
        SmallDisk { path }
    }

    fn resize(&self, size: &str) {
        nix::mount::mount(
            None::<&str>,
            &self.path,
            None::<&str>,
            nix::mount::MsFlags::MS_REMOUNT,
            Some(format!("size={size}").as_str()),
        )
        .unwrap_or_else(|e| panic!("remount {} with size={size}: {e}", self.path.display()));
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.path, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn a_full_disk_drops_and_counts_whole_records_and_the_file_output_comes_back() {
    if !privileged("a_full_disk_drops_and_counts_whole_records_and_the_file_output_comes_back") {
        return;
    }
    let dir = TestDir::new("/tmp", "sink-full");
    let src = dir.file("src");
    let disk = SmallDisk::mount(dir.join("small"), "1m");
    let path = disk.path.join("events.jsonl");
    let comm = "lt-sinkfull";
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout,queue=65536",
        "--output",
        &format!("file:{},max_bytes=104857600,queue=65536", s(&path)),
    ]);
    // About 2 MiB of events for a 1 MiB disk.
    with_comm(comm, || links(&src, &dir.path, "full", 1500));
    let mut last = (0, Instant::now());
    wait_until("the file stops growing", Duration::from_secs(60), || {
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        if size != last.0 {
            last = (size, Instant::now());
        }
        size > 512 * 1024 && last.1.elapsed() > Duration::from_secs(1)
    });
    disk.resize("16m");
    with_comm(comm, || links(&src, &dir.path, "after", 200));
    let run = tracer.stop();
    run.assert_clean_exit();
    let decoded = run.final_stats()["events_decoded"].as_u64().unwrap();
    assert_eq!(decoded + kernel_lost(&run), 1700);

    let records = file_records(&path);
    let seqs = event_seqs(&records);
    let unique: BTreeSet<u64> = seqs.iter().copied().collect();
    assert_eq!(unique.len(), seqs.len(), "no event twice");
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "in order, with a gap for the drops"
    );
    let (delivered, queue_full, failed) = output_summary(&run, &format!("file:{}", s(&path)));
    assert!(failed > 0, "the full disk cost events, counted");
    assert_eq!(
        delivered + queue_full + failed,
        decoded,
        "every event delivered or counted"
    );
    assert_eq!(
        seqs.len() as u64,
        delivered,
        "the file holds exactly the delivered events"
    );
    let after = records
        .iter()
        .filter(|r| {
            r["kind"] == "event" && r["newpath"].as_str().is_some_and(|p| p.contains("/after-"))
        })
        .count();
    assert_eq!(after, 200, "with room again, every later event is written");
    drop(disk);
}

#[test]
fn sighup_adds_a_file_output_and_removes_the_socket_without_losing_events_on_the_kept_file() {
    if !privileged(
        "sighup_adds_a_file_output_and_removes_the_socket_without_losing_events_on_the_kept_file",
    ) {
        return;
    }
    let dir = TestDir::new("/tmp", "sink-hup");
    let src = dir.file("src");
    let (kept, added, socket) = (
        dir.join("kept.jsonl"),
        dir.join("added.jsonl"),
        dir.join("hup.sock"),
    );
    let config = dir.join("config.toml");
    let stdout = "[[output]]\ntype = \"stdout\"\nqueue = 65536\n";
    let kept_output = format!(
        "[[output]]\ntype = \"file\"\npath = \"{}\"\nmax_bytes = 262144\nkeep = 100\nqueue = 65536\n",
        s(&kept)
    );
    std::fs::write(
        &config,
        format!(
            "{stdout}{kept_output}[[output]]\ntype = \"unix\"\npath = \"{}\"\n",
            s(&socket)
        ),
    )
    .unwrap();
    let comm = "lt-sinkhup";
    let pid = my_pid();
    let tracer = Tracer::start(&["--pid", &pid, "--comm", comm, "--config", s(&config)]);
    let subscriber = subscribe(&socket);
    with_comm(comm, || links(&src, &dir.path, "before", 300));

    std::fs::write(
        &config,
        format!(
            "{stdout}{kept_output}[[output]]\ntype = \"file\"\npath = \"{}\"\n",
            s(&added)
        ),
    )
    .unwrap();
    // Links keep coming while the reload happens.
    let stop = Arc::new(AtomicBool::new(false));
    let during = {
        let (stop, src, dir) = (stop.clone(), src.clone(), dir.path.clone());
        std::thread::spawn(move || {
            with_comm(comm, || {
                let mut i = 0;
                while !stop.load(SeqCst) {
                    links(&src, &dir, &format!("during{i}"), 1);
                    i += 1;
                }
                i
            })
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    tracer.signal(libc::SIGHUP);
    tracer
        .wait_for_stderr("link-trace: reloaded", Duration::from_secs(20))
        .expect("the reload is reported");
    std::thread::sleep(Duration::from_millis(100));
    stop.store(true, SeqCst);
    let during_calls = during.join().unwrap();
    wait_until(
        "the removed socket output closes",
        Duration::from_secs(20),
        || subscriber.is_finished() && !socket.exists(),
    );
    with_comm(comm, || links(&src, &dir.path, "after", 300));
    let run = tracer.stop();
    run.assert_clean_exit();
    let decoded = run.final_stats()["events_decoded"].as_u64().unwrap();
    assert_eq!(
        decoded + kernel_lost(&run),
        600 + during_calls as u64,
        "calls = captured + lost"
    );

    let kept_records: Vec<Value> = rotation_set(&kept)
        .iter()
        .flat_map(|p| file_records(p))
        .collect();
    assert!(
        event_seqs(&kept_records).iter().copied().eq(1..=decoded),
        "the kept output has every event once, across the reload"
    );
    assert_eq!(
        output_summary(&run, &format!("file:{}", s(&kept))),
        (decoded, 0, 0)
    );
    let newpaths = |records: &[Value], part: &str| {
        records
            .iter()
            .filter(|r| {
                r["kind"] == "event"
                    && r["newpath"]
                        .as_str()
                        .is_some_and(|p| p.contains(&format!("/{part}")))
            })
            .count()
    };
    let added_records = file_records(&added);
    assert_eq!(
        newpaths(&added_records, "after-"),
        300,
        "the added output has every event after the reload"
    );
    assert_eq!(newpaths(&added_records, "before-"), 0);
    let (socket_records, torn) = stream_records(&subscriber.join().unwrap());
    assert!(torn.is_empty());
    assert_eq!(
        newpaths(&socket_records, "before-"),
        300,
        "the socket output served its subscriber until it was removed"
    );
    assert_eq!(newpaths(&socket_records, "after-"), 0);
    let socket_name = format!("unix:{}", s(&socket));
    let (delivered, queue_full, failed) = output_summary(&run, &socket_name);
    assert_eq!((queue_full, failed), (0, 0));
    assert_eq!(
        event_seqs(&socket_records).len() as u64,
        delivered,
        "the subscriber got every event the socket output delivered"
    );
    assert_eq!(subscriber_summary(&run, &socket_name), (1, 0, 0, 0));
}

/// Live ECS and OCSF outputs beside the native stream: the same call, the
/// fields those standards define, against what the test did.
#[test]
fn ecs_and_ocsf_outputs_describe_the_live_call() {
    if !privileged("ecs_and_ocsf_outputs_describe_the_live_call") {
        return;
    }
    let dir = TestDir::new("/tmp", "sinks-formats");
    let src = dir.file("src");
    let (ecs_path, ocsf_path) = (dir.join("ecs.jsonl"), dir.join("ocsf.jsonl"));
    let comm = "lt-fmt-sink";
    let pid = my_pid();
    let tracer = Tracer::start(&[
        "--pid",
        &pid,
        "--comm",
        comm,
        "--output",
        "stdout",
        "--output",
        &format!("file:{},format=ecs", s(&ecs_path)),
        "--output",
        &format!("file:{},format=ocsf", s(&ocsf_path)),
    ]);
    let new = dir.join("made-by-link");
    let taken = dir.file("taken");
    with_comm(comm, || {
        linkat(AT_FDCWD, &src, AT_FDCWD, &new, 0).expect("linkat");
        assert_eq!(
            linkat(AT_FDCWD, &src, AT_FDCWD, &taken, 0),
            Err(libc::EEXIST)
        );
    });
    let run = tracer.stop();
    run.assert_clean_exit();
    let native = run.event_for(&new);
    let inode = std::fs::metadata(&new).unwrap().ino();
    let lines = |path: &Path| -> Vec<Value> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).expect("one JSON document per line"))
            .collect()
    };
    let ecs = lines(&ecs_path);
    let doc = ecs
        .iter()
        .find(|d| d["file"]["path"] == s(&new))
        .unwrap_or_else(|| panic!("no ECS document for {}: {ecs:?}", new.display()));
    assert!(
        doc["ecs"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("9."))
    );
    assert_eq!(doc["event"]["kind"], "event");
    assert_eq!(doc["event"]["category"], serde_json::json!(["file"]));
    assert_eq!(doc["event"]["action"], "linkat");
    assert_eq!(doc["event"]["outcome"], "success");
    assert_eq!(doc["event"]["sequence"], native["seq"]);
    assert_eq!(doc["file"]["target_path"], s(&src));
    assert_eq!(doc["file"]["inode"], inode.to_string());
    assert_eq!(doc["process"]["pid"], std::process::id());
    assert_eq!(doc["process"]["name"], comm);
    let failed = ecs
        .iter()
        .find(|d| d["file"]["path"] == s(&taken))
        .expect("ECS document for the EEXIST call");
    assert_eq!(failed["event"]["outcome"], "failure");
    assert_eq!(failed["error"]["code"], "EEXIST");

    let ocsf = lines(&ocsf_path);
    let doc = ocsf
        .iter()
        .find(|d| d["file_result"]["path"] == s(&new))
        .unwrap_or_else(|| panic!("no OCSF event for {}: {ocsf:?}", new.display()));
    assert_eq!(doc["class_uid"], 1001);
    assert_eq!(doc["category_uid"], 1);
    assert_eq!(doc["type_uid"], 100199);
    assert_eq!(doc["status_id"], 1);
    assert_eq!(doc["file"]["path"], s(&src));
    assert_eq!(doc["actor"]["process"]["pid"], std::process::id());
    assert!(
        doc["metadata"]["version"]
            .as_str()
            .is_some_and(|v| v.starts_with("1."))
    );
    let failed = ocsf
        .iter()
        .find(|d| d["class_uid"] == 1001 && d["status_code"] == "EEXIST")
        .expect("OCSF event for the EEXIST call");
    assert_eq!(failed["status_id"], 2);
}
