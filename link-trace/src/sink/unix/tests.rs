use std::{
    io::Read,
    os::unix::fs::PermissionsExt,
    sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst},
    thread::JoinHandle,
};

use super::*;
use crate::config::OutputFormat;

fn config(path: &Path, mode: u32, subscriber_buffer: usize) -> UnixOutput {
    UnixOutput {
        path: path.to_path_buf(),
        format: OutputFormat::Json,
        queue: 64,
        alerts_only: false,
        mode,
        subscriber_buffer,
    }
}

/// `count` records of `len` bytes (newline included), numbered from `first`.
fn batch(first: usize, count: usize, len: usize) -> Batch {
    let mut batch = Batch::default();
    for seq in first..first + count {
        let head = format!("{{\"seq\":{seq},\"pad\":\"");
        let line = format!("{head}{}\"}}\n", "x".repeat(len - head.len() - 3));
        batch.bytes.extend_from_slice(line.as_bytes());
        batch.ends.push(batch.bytes.len());
        // Every third record is something other than an event.
        batch.is_event.push(seq % 3 != 0);
    }
    batch
}

fn read_all(mut stream: UnixStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    stream.read_to_end(&mut bytes).expect("read subscriber");
    bytes
}

fn umask_now() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .expect("Umask in /proc/self/status")
}

#[test]
fn every_subscriber_gets_every_record_and_the_socket_goes_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 1 << 20)).unwrap();
    let counters = sink.subscriber_counters().unwrap();
    let (a, b) = (
        UnixStream::connect(&path).unwrap(),
        UnixStream::connect(&path).unwrap(),
    );
    let mut expected = Vec::new();
    for first in (0..100).step_by(10) {
        let batch = batch(first, 10, 100);
        sink.deliver(&batch).unwrap();
        expected.extend_from_slice(&batch.bytes);
    }
    sink.finish().unwrap();
    drop(sink);
    assert_eq!(read_all(a), expected);
    assert_eq!(read_all(b), expected);
    assert!(!path.exists(), "socket file removed at the end");
    let report = counters.report();
    assert_eq!(
        (report.accepted, report.connected, report.missed_records),
        (2, 0, 0)
    );
    assert_eq!(report.records_without_subscriber, 0);
}

#[test]
fn the_socket_has_its_mode_and_the_process_umask_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let umask = umask_now();
    for mode in [0o600, 0o660, 0o666] {
        let path = dir.path().join(format!("m{mode:o}.sock"));
        let sink = UnixSink::open(&config(&path, mode, 1 << 20)).unwrap();
        let meta = std::fs::symlink_metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o777, mode, "{mode:o}");
        assert_eq!(umask_now(), umask, "the process umask is unchanged");
        drop(sink);
    }
}

#[test]
fn a_slow_subscriber_is_dropped_and_counted_while_the_other_gets_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("slow.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 256 * 1024)).unwrap();
    let counters = sink.subscriber_counters().unwrap();
    let slow = UnixStream::connect(&path).unwrap();
    let fast = UnixStream::connect(&path).unwrap();
    let received = Arc::new(AtomicUsize::new(0));
    let reader: JoinHandle<Vec<u8>> = {
        let received = received.clone();
        std::thread::spawn(move || {
            let mut fast = fast;
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 65536];
            loop {
                match fast.read(&mut chunk) {
                    Ok(0) | Err(_) => return bytes,
                    Ok(n) => {
                        bytes.extend_from_slice(&chunk[..n]);
                        received.store(bytes.len(), SeqCst);
                    }
                }
            }
        })
    };
    let mut expected = Vec::new();
    let mut ends = Vec::new();
    // Records handed to the slow subscriber: all up to the batch it was dropped in.
    let mut handed_to_slow = None;
    for first in (0..3000).step_by(50) {
        let batch = batch(first, 50, 1000);
        sink.deliver(&batch).unwrap();
        ends.extend(batch.ends.iter().map(|end| expected.len() + end));
        expected.extend_from_slice(&batch.bytes);
        if handed_to_slow.is_none() && counters.report().dropped_slow == 1 {
            handed_to_slow = Some(first + 50);
        }
        // Let the fast subscriber keep up, as a reader that is not slow does.
        let deadline = Instant::now() + Duration::from_secs(20);
        while received.load(SeqCst) < expected.len() {
            assert!(Instant::now() < deadline, "fast subscriber starved");
            sink.idle();
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    sink.finish().unwrap();
    drop(sink);
    assert_eq!(
        reader.join().unwrap(),
        expected,
        "the fast subscriber got all"
    );
    let handed = handed_to_slow.expect("the slow subscriber was dropped");
    let got = read_all(slow);
    let whole = ends.iter().take_while(|&&end| end <= got.len()).count();
    assert_eq!(&got[..], &expected[..got.len()], "a prefix of the stream");
    assert!(whole < handed);
    let report = counters.report();
    assert_eq!(report.dropped_slow, 1);
    assert_eq!(
        whole as u64 + report.missed_records,
        handed as u64,
        "every record handed to it was received whole or counted"
    );
    let missed_events = (whole..handed).filter(|seq| seq % 3 != 0).count();
    assert_eq!(report.missed_events, missed_events as u64);
    assert_eq!((report.accepted, report.connected), (2, 0));
}

#[test]
fn records_with_no_subscriber_are_counted_apart_and_later_subscribers_start_there() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 1 << 20)).unwrap();
    let counters = sink.subscriber_counters().unwrap();
    sink.deliver(&batch(0, 6, 100)).unwrap();
    let late = UnixStream::connect(&path).unwrap();
    let later = batch(6, 4, 100);
    sink.deliver(&later).unwrap();
    sink.finish().unwrap();
    drop(sink);
    assert_eq!(read_all(late), later.bytes);
    let report = counters.report();
    assert_eq!(
        (
            report.records_without_subscriber,
            report.events_without_subscriber
        ),
        (6, 4)
    );
    assert_eq!(report.missed_records, 0);
}

#[test]
fn a_subscriber_that_hangs_up_is_let_go() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("h.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 1 << 20)).unwrap();
    let counters = sink.subscriber_counters().unwrap();
    let gone = UnixStream::connect(&path).unwrap();
    sink.idle();
    assert_eq!(counters.report().connected, 1);
    drop(gone);
    sink.idle();
    assert_eq!(counters.report().connected, 0);
    // Its leaving is not a loss: nothing was pending for it.
    sink.deliver(&batch(0, 3, 100)).unwrap();
    assert_eq!(counters.report().missed_records, 0);
    assert_eq!(counters.report().records_without_subscriber, 3);
}

#[test]
fn stale_sockets_are_replaced_other_files_and_live_listeners_are_not() {
    let dir = tempfile::tempdir().unwrap();
    // A stale socket: bound, then its listener closed.
    let stale = dir.path().join("stale.sock");
    drop(UnixListener::bind(&stale).unwrap());
    let sink = UnixSink::open(&config(&stale, 0o600, 1 << 20)).unwrap();
    UnixStream::connect(&stale).expect("the new listener answers");
    drop(sink);

    let regular = dir.path().join("regular");
    std::fs::write(&regular, "keep me").unwrap();
    let Err(e) = UnixSink::open(&config(&regular, 0o600, 1 << 20)) else {
        panic!("replaced a regular file")
    };
    assert!(e.to_string().contains("not a socket"), "{e}");
    assert_eq!(std::fs::read_to_string(&regular).unwrap(), "keep me");

    let live = dir.path().join("live.sock");
    let _other = UnixListener::bind(&live).unwrap();
    let Err(e) = UnixSink::open(&config(&live, 0o600, 1 << 20)) else {
        panic!("took over another listener's socket")
    };
    assert!(e.to_string().contains("another process"), "{e}");

    let missing = dir.path().join("no/such/dir.sock");
    let Err(e) = UnixSink::open(&config(&missing, 0o600, 1 << 20)) else {
        panic!("bound in a missing directory")
    };
    assert!(e.to_string().contains("does not exist"), "{e}");
}

#[test]
fn a_reopened_output_takes_over_its_own_socket_and_the_old_one_leaves_it() {
    // A reload that changes a socket output opens the new one first.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.sock");
    let mut old = UnixSink::open(&config(&path, 0o600, 1 << 20)).unwrap();
    let mut new = UnixSink::open(&config(&path, 0o660, 1 << 20)).unwrap();
    // Even finding no file there, the old output does not take the path back.
    std::fs::remove_file(&path).unwrap();
    old.idle();
    assert!(!path.exists(), "the old output bound the path again");
    new.idle();
    let meta = std::fs::symlink_metadata(&path).expect("the new output bound it again");
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    drop(old);
    assert!(path.exists(), "the old output left the new socket alone");
    UnixStream::connect(&path).expect("the new listener answers");
    drop(new);
    assert!(!path.exists());
}

#[test]
fn a_removed_socket_file_is_bound_again() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gone.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 1 << 20)).unwrap();
    std::fs::remove_file(&path).unwrap();
    sink.idle();
    let meta = std::fs::symlink_metadata(&path).expect("bound again");
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    let subscriber = UnixStream::connect(&path).unwrap();
    let records = batch(0, 2, 100);
    sink.deliver(&records).unwrap();
    sink.finish().unwrap();
    drop(sink);
    assert_eq!(read_all(subscriber), records.bytes);
}

#[test]
fn finish_waits_a_little_for_a_subscriber_that_is_behind() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("f.sock");
    let mut sink = UnixSink::open(&config(&path, 0o600, 4 << 20)).unwrap();
    let counters = sink.subscriber_counters().unwrap();
    let subscriber = UnixStream::connect(&path).unwrap();
    // More than a socket buffer holds, read only once finish has begun.
    let records = batch(0, 1000, 1000);
    sink.deliver(&records).unwrap();
    let started = Arc::new(AtomicBool::new(false));
    let reader = {
        let started = started.clone();
        std::thread::spawn(move || {
            while !started.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            read_all(subscriber)
        })
    };
    started.store(true, SeqCst);
    sink.finish().unwrap();
    drop(sink);
    assert_eq!(reader.join().unwrap(), records.bytes);
    assert_eq!(counters.report().missed_records, 0);
}
