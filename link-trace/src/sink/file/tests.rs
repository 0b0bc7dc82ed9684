use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use super::*;
use crate::config::OutputFormat;

fn config(path: &Path, max_bytes: u64, keep: usize, fsync: FsyncPolicy) -> FileOutput {
    FileOutput {
        path: path.to_path_buf(),
        format: OutputFormat::Json,
        queue: 64,
        alerts_only: false,
        max_bytes,
        keep,
        fsync,
    }
}

/// Record `seq` as a JSON line of exactly `len` bytes, newline included.
fn record(seq: usize, len: usize) -> String {
    let head = format!("{{\"seq\":{seq},\"pad\":\"");
    let pad = len - head.len() - 3;
    format!("{head}{}\"}}\n", "x".repeat(pad))
}

fn batch(records: &[String]) -> Batch {
    let mut batch = Batch::default();
    for record in records {
        batch.bytes.extend_from_slice(record.as_bytes());
        batch.ends.push(batch.bytes.len());
        batch.is_event.push(true);
    }
    batch
}

/// The live file and the kept ones, oldest first.
fn files(path: &Path) -> Vec<(PathBuf, String)> {
    let mut found = Vec::new();
    for n in (1..=1000).rev() {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let numbered = PathBuf::from(name);
        if let Ok(text) = std::fs::read_to_string(&numbered) {
            found.push((numbered, text));
        }
    }
    if let Ok(text) = std::fs::read_to_string(path) {
        found.push((path.to_path_buf(), text));
    }
    found
}

fn seqs(text: &str) -> Vec<usize> {
    text.lines()
        .map(|line| {
            let value: serde_json::Value =
                serde_json::from_str(line).unwrap_or_else(|e| panic!("torn line {line:?}: {e}"));
            value["seq"].as_u64().expect("seq") as usize
        })
        .collect()
}

#[test]
fn rotation_keeps_records_whole_and_files_within_max_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.jsonl");
    let mut sink = FileSink::open(&config(&path, 1000, 1000, FsyncPolicy::Rotate)).unwrap();
    // Sizes and batch lengths that do not divide max_bytes evenly.
    let all: Vec<String> = (0..600)
        .map(|seq| record(seq, 40 + seq * 37 % 260))
        .collect();
    let mut sent = 0;
    for chunk_len in (1..).map(|i| 1 + i * 7 % 23) {
        if sent == all.len() {
            break;
        }
        let end = (sent + chunk_len).min(all.len());
        sink.deliver(&batch(&all[sent..end])).unwrap();
        sent = end;
    }
    sink.finish().unwrap();
    let found = files(&path);
    assert!(
        found.len() > 50,
        "expected many rotations, got {}",
        found.len()
    );
    let mut joined = String::new();
    for (name, text) in &found {
        assert!(
            text.len() <= 1000,
            "{} has {} bytes",
            name.display(),
            text.len()
        );
        assert!(text.ends_with('\n'), "{} ends mid-line", name.display());
        joined.push_str(text);
    }
    assert_eq!(joined, all.concat(), "every record once, in order");
    // A file is only rotated when the next record would not fit.
    for pair in found.windows(2) {
        let next_seq = seqs(&pair[1].1)[0];
        assert!(
            pair[0].1.len() + all[next_seq].len() > 1000,
            "{} was rotated with room left",
            pair[0].0.display()
        );
    }
}

#[test]
fn a_record_longer_than_max_bytes_goes_alone_into_a_fresh_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.jsonl");
    let mut sink = FileSink::open(&config(&path, 100, 10, FsyncPolicy::Never)).unwrap();
    let records = [record(1, 30), record(2, 250), record(3, 30), record(4, 30)];
    sink.deliver(&batch(&records)).unwrap();
    let found: Vec<Vec<usize>> = files(&path).iter().map(|(_, t)| seqs(t)).collect();
    assert_eq!(found, [vec![1], vec![2], vec![3, 4]]);
}

#[test]
fn retention_keeps_the_newest_files_under_logrotate_names() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.jsonl");
    let mut sink = FileSink::open(&config(&path, 100, 3, FsyncPolicy::Rotate)).unwrap();
    for seq in 0..10 {
        // One record per file.
        sink.deliver(&batch(&[record(seq, 60)])).unwrap();
    }
    let numbered = |n: usize| dir.path().join(format!("r.jsonl.{n}"));
    assert_eq!(seqs(&std::fs::read_to_string(&path).unwrap()), [9]);
    for (n, seq) in [(1, 8), (2, 7), (3, 6)] {
        assert_eq!(
            seqs(&std::fs::read_to_string(numbered(n)).unwrap()),
            [seq],
            ".{n}"
        );
    }
    assert!(!numbered(4).exists(), "only 3 rotated files are kept");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 4);
}

#[test]
fn keep_zero_keeps_only_the_live_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("z.jsonl");
    let mut sink = FileSink::open(&config(&path, 100, 0, FsyncPolicy::Never)).unwrap();
    for seq in 0..5 {
        sink.deliver(&batch(&[record(seq, 60)])).unwrap();
    }
    assert_eq!(seqs(&std::fs::read_to_string(&path).unwrap()), [4]);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

#[test]
fn an_interrupted_rotation_loses_nothing_and_the_next_one_completes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.jsonl");
    let numbered = |n: usize| dir.path().join(format!("c.jsonl.{n}"));
    std::fs::write(numbered(2), record(1, 60)).unwrap();
    std::fs::write(numbered(1), record(2, 60)).unwrap();
    std::fs::write(&path, record(3, 60)).unwrap();
    // A non-empty directory where the oldest file must go: the very first
    // rename of the rotation fails, as if the rotation had been cut short.
    std::fs::create_dir(numbered(3)).unwrap();
    std::fs::write(numbered(3).join("x"), "x").unwrap();
    let mut sink = FileSink::open(&config(&path, 100, 3, FsyncPolicy::Rotate)).unwrap();
    let error = sink
        .deliver(&batch(&[record(4, 60), record(5, 60)]))
        .unwrap_err();
    assert_eq!(error.delivered, 0, "nothing could be written");
    assert!(matches!(error.error, SinkError::Failed(_)));
    let before: Vec<Vec<usize>> = [numbered(2), numbered(1), path.clone()]
        .iter()
        .map(|p| seqs(&std::fs::read_to_string(p).unwrap()))
        .collect();
    assert_eq!(before, [vec![1], vec![2], vec![3]], "nothing moved or lost");

    std::fs::remove_dir_all(numbered(3)).unwrap();
    sink.deliver(&batch(&[record(6, 60)])).unwrap();
    let after: Vec<Vec<usize>> = files(&path).iter().map(|(_, t)| seqs(t)).collect();
    assert_eq!(after, [vec![1], vec![2], vec![3], vec![6]]);
}

#[test]
fn a_gap_left_by_a_crash_mid_rotation_keeps_the_order() {
    // A crash after `.2 -> .3` and before `.1 -> .2` leaves no `.2`.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.jsonl");
    let numbered = |n: usize| dir.path().join(format!("g.jsonl.{n}"));
    std::fs::write(numbered(3), record(1, 60)).unwrap();
    std::fs::write(numbered(1), record(2, 60)).unwrap();
    std::fs::write(&path, record(3, 60)).unwrap();
    let mut sink = FileSink::open(&config(&path, 100, 3, FsyncPolicy::Never)).unwrap();
    sink.deliver(&batch(&[record(4, 60)])).unwrap();
    let after: Vec<Vec<usize>> = files(&path).iter().map(|(_, t)| seqs(t)).collect();
    assert_eq!(after, [vec![1], vec![2], vec![3], vec![4]]);
    assert!(numbered(2).exists() && numbered(3).exists());
}

#[test]
fn a_moved_deleted_or_truncated_file_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.jsonl");
    let mut sink = FileSink::open(&config(&path, 1000, 5, FsyncPolicy::Never)).unwrap();
    sink.deliver(&batch(&[record(1, 100)])).unwrap();
    // logrotate's default: rename, then the program reopens.
    std::fs::rename(&path, dir.path().join("m.jsonl.moved")).unwrap();
    sink.idle();
    sink.deliver(&batch(&[record(2, 100)])).unwrap();
    assert_eq!(seqs(&std::fs::read_to_string(&path).unwrap()), [2]);
    let moved = std::fs::read_to_string(dir.path().join("m.jsonl.moved")).unwrap();
    assert_eq!(seqs(&moved), [1]);
    // rm.
    std::fs::remove_file(&path).unwrap();
    sink.idle();
    sink.deliver(&batch(&[record(3, 100)])).unwrap();
    assert_eq!(seqs(&std::fs::read_to_string(&path).unwrap()), [3]);
    // copytruncate: the same file, cut to zero; the size limit counts anew.
    sink.deliver(&batch(&[record(4, 700)])).unwrap();
    File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(0)
        .unwrap();
    sink.idle();
    sink.deliver(&batch(&[record(5, 700)])).unwrap();
    assert_eq!(seqs(&std::fs::read_to_string(&path).unwrap()), [5]);
    assert!(
        !dir.path().join("m.jsonl.1").exists(),
        "no rotation: the file was truncated"
    );
}

#[test]
fn an_existing_file_is_appended_to_and_a_cut_off_line_is_ended() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.jsonl");
    std::fs::write(&path, "{\"seq\":1}\n{\"se").unwrap();
    let mut sink = FileSink::open(&config(&path, 4096, 1, FsyncPolicy::Never)).unwrap();
    sink.deliver(&batch(&[record(2, 50)])).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(text, format!("{{\"seq\":1}}\n{{\"se\n{}", record(2, 50)));
}

#[test]
fn a_new_file_is_mode_0640_and_a_missing_directory_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("p.jsonl");
    FileSink::open(&config(&path, 4096, 1, FsyncPolicy::Never)).unwrap();
    let umask = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Umask:"))
        .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        .expect("Umask in /proc/self/status");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640 & !umask);
    let missing = dir.path().join("nope/p.jsonl");
    let Err(e) = FileSink::open(&config(&missing, 4096, 1, FsyncPolicy::Never)) else {
        panic!("opened a file in a missing directory")
    };
    assert!(e.to_string().contains("does not exist"), "{e}");
    assert!(!dir.path().join("nope").exists(), "no directory created");
}

/// Environment variable that turns the test below into its child half.
const SHORT_WRITE_CHILD: &str = "LINK_TRACE_SHORT_WRITE_CHILD";

/// A file size limit (RLIMIT_FSIZE) makes the kernel write part of a batch
/// and then refuse the rest, as a full disk does. The limit is per process,
/// so the test runs itself again as a child and sets it there.
#[test]
fn a_short_write_is_cut_back_to_whole_records_and_counted() {
    if let Some(dir) = std::env::var_os(SHORT_WRITE_CHILD) {
        short_write_child(Path::new(&dir));
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sink::file::tests::a_short_write_is_cut_back_to_whole_records_and_counted",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(SHORT_WRITE_CHILD, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

fn set_file_size_limit(bytes: libc::rlim_t) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain get/setrlimit with a valid struct, in the child process.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut limit), 0);
        limit.rlim_cur = bytes.min(limit.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &limit), 0);
    }
}

fn short_write_child(dir: &Path) {
    // Past the limit the kernel sends SIGXFSZ; ignored, the write fails with EFBIG.
    // SAFETY: setting a signal to SIG_IGN.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    for fsync in [FsyncPolicy::Rotate, FsyncPolicy::Batch] {
        let path = dir.join(format!("short-{fsync:?}.jsonl"));
        let mut sink = FileSink::open(&config(&path, 1 << 20, 1, fsync)).unwrap();
        let records: Vec<String> = (0..20).map(|seq| record(seq, 100)).collect();
        // 10.5 records' worth of room: the 11th is written in part.
        set_file_size_limit(1050);
        let error = sink.deliver(&batch(&records[..15])).unwrap_err();
        assert_eq!(error.delivered, 10, "{fsync:?}: ten whole records");
        assert!(
            matches!(&error.error, SinkError::Failed(e) if e.raw_os_error() == Some(libc::EFBIG))
        );
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000, "cut back");
        // Still no room: nothing gets through, nothing is torn.
        let error = sink.deliver(&batch(&records[15..17])).unwrap_err();
        assert_eq!(error.delivered, 0);
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 1000);
        // Room again: the sink carries on.
        set_file_size_limit(libc::RLIM_INFINITY);
        sink.deliver(&batch(&records[17..])).unwrap();
        let written = seqs(&std::fs::read_to_string(&path).unwrap());
        let expected: Vec<usize> = (0..10).chain(17..20).collect();
        assert_eq!(written, expected, "{fsync:?}");
        sink.finish().unwrap();
    }
}
