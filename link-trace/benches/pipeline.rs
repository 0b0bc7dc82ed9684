//! Userspace pipeline throughput: raw ring record → `decode_record` →
//! `LinkEvent::from_record` → JSON line, per event, on one core.
//!
//! `cargo bench -p link-trace --bench pipeline`; `cargo xtask bench` runs it
//! and reads the events/s figure from criterion's estimates.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use link_trace::{
    clock::WallClock,
    detect::Detector,
    event::{LinkEvent, Record},
    formats::{self, DocumentFormat, HostInfo},
    output::{Format, render},
    rules::{Engine, RuleSet},
};
use link_trace_common::{
    BASE_ABSOLUTE, BASE_CWD, BASE_SAME_AS_OLD, BaseInfo, CTX_AUDIT, CTX_CREDS, CTX_EXE, CTX_MNT_NS,
    CTX_PID_NS, CTX_PPID, LinkEventHeader, LinkRecordHeader, PathArg, ProcessContext,
    RECORD_HEADER_SIZE, RECORD_LINK, SEG_COUNT, SEG_EXE, SEG_NEW_RAW, SEG_OLD_BASE, SEG_OLD_RAW,
    SyscallId, TASK_COMM_LEN, decode::decode_record,
};

/// Records decoded per benchmark iteration.
const RECORDS: usize = 1024;
/// The output thread writes a batch once it holds this much (as output.rs does).
const BATCH_BYTES: usize = 64 * 1024;

/// Boot-clock nanoseconds between two calls.
const RECORD_SPACING_NS: u64 = 7_919;

/// Moves a raw record's entry and exit times `by_ns` later.
fn advance_clock(raw: &mut [u8], by_ns: u64) {
    for offset in [
        std::mem::offset_of!(LinkRecordHeader, call.enter_boot_ns),
        std::mem::offset_of!(LinkRecordHeader, call.exit_boot_ns),
    ] {
        let field = &mut raw[offset..offset + 8];
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(field);
        field.copy_from_slice(&(u64::from_le_bytes(bytes) + by_ns).to_le_bytes());
    }
}

/// One call as a program on the host would make it.
struct Call {
    syscall: SyscallId,
    old: Vec<u8>,
    new: Vec<u8>,
    ret: i64,
    /// The caller's working directory, when the paths are relative to it.
    cwd: Option<&'static [u8]>,
    exe: &'static [u8],
    comm: &'static [u8],
}

/// The raw ring record the kernel sends for `call`, laid out as
/// link-trace-common/src/decode.rs's tests do: the header, then the
/// segments in SEG_* order (old and new path, the old path's base when it
/// is relative — the new one shares it — and the executable).
fn raw_record(call: &Call, index: u64) -> Vec<u8> {
    let mut segments: [&[u8]; SEG_COUNT] = [&[]; SEG_COUNT];
    segments[SEG_OLD_RAW] = &call.old;
    segments[SEG_NEW_RAW] = &call.new;
    segments[SEG_OLD_BASE] = call.cwd.unwrap_or_default();
    segments[SEG_EXE] = call.exe;
    let mut comm = [0u8; TASK_COMM_LEN];
    let len = call.comm.len().min(TASK_COMM_LEN - 1);
    comm[..len].copy_from_slice(&call.comm[..len]);
    let enter = 1_000_000_000_000 + index * RECORD_SPACING_NS;
    let pid = 4_000 + (index % 37) as u32;
    let base = |kind, flags| BaseInfo {
        kind,
        flags,
        ..Default::default()
    };
    let (old_base, new_base) = match call.cwd {
        Some(_) => (base(BASE_CWD, 0), base(BASE_CWD, BASE_SAME_AS_OLD)),
        None => (base(BASE_ABSOLUTE, 0), base(BASE_ABSOLUTE, 0)),
    };
    let mut header = LinkRecordHeader {
        call: LinkEventHeader {
            record_type: RECORD_LINK,
            record_len: (RECORD_HEADER_SIZE + segments.iter().map(|s| s.len()).sum::<usize>())
                as u32,
            enter_boot_ns: enter,
            exit_boot_ns: enter + 2_500 + index % 1_000,
            ret: call.ret,
            tgid: pid,
            tid: pid,
            uid: 1_000,
            gid: 1_000,
            syscall: call.syscall as u32,
            flags: 0,
            olddirfd: -100,
            newdirfd: -100,
            old: PathArg {
                len: call.old.len() as u16,
                ..Default::default()
            },
            new: PathArg {
                len: call.new.len() as u16,
                ..Default::default()
            },
            comm,
        },
        process: ProcessContext {
            ppid: 1_000,
            euid: 1_000,
            egid: 1_000,
            fsuid: 1_000,
            fsgid: 1_000,
            auid: 1_000,
            sessionid: 3,
            valid: CTX_PPID | CTX_CREDS | CTX_AUDIT | CTX_MNT_NS | CTX_PID_NS | CTX_EXE,
            cgroup_id: 8_812,
            mnt_ns: 4_026_531_841,
            pid_ns: 4_026_531_836,
        },
        old_base,
        new_base,
        ..Default::default()
    };
    for (index, segment) in segments.iter().enumerate() {
        header.seg_len[index] = segment.len() as u16;
    }
    for index in [SEG_OLD_BASE, SEG_EXE] {
        header.walked_len[index] = header.seg_len[index];
    }
    // SAFETY: LinkRecordHeader is #[repr(C)] plain integers and byte arrays
    // without padding (its size is pinned to RECORD_HEADER_SIZE).
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&header as *const LinkRecordHeader).cast::<u8>(),
            RECORD_HEADER_SIZE,
        )
    };
    let mut bytes = raw.to_vec();
    for segment in segments {
        bytes.extend_from_slice(segment);
    }
    bytes
}

/// A mix like a busy build host's: mostly successful linkat calls on long
/// absolute paths, some link(2) with names relative to the working
/// directory, some EEXIST failures, and one path in 16 that is not UTF-8
/// (so it also gets base64).
fn records() -> Vec<Vec<u8>> {
    (0..RECORDS as u64)
        .map(|i| {
            let call = match i % 16 {
                0 => Call {
                    syscall: SyscallId::Linkat,
                    old: format!("/var/cache/apt/archives/partial/pkg-{i}.deb").into_bytes(),
                    new: [
                        format!("/var/cache/apt/archives/pkg-{i}-").as_bytes(),
                        b"\xff\xfe\n.deb",
                    ]
                    .concat(),
                    ret: 0,
                    cwd: None,
                    exe: b"/usr/bin/dpkg",
                    comm: b"dpkg",
                },
                1..=3 => Call {
                    syscall: SyscallId::Link,
                    old: format!("file-{i}.txt").into_bytes(),
                    new: format!("file-{i}.txt.bak").into_bytes(),
                    ret: 0,
                    cwd: Some(b"/home/builder/notes"),
                    exe: b"/usr/bin/ln",
                    comm: b"ln",
                },
                4 | 5 => Call {
                    syscall: SyscallId::Linkat,
                    old: format!("/srv/data/incoming/batch-{}/part-{i:06}.parquet", i / 64)
                        .into_bytes(),
                    new: format!("/srv/data/published/part-{i:06}.parquet").into_bytes(),
                    ret: -17,
                    cwd: None,
                    exe: b"/usr/bin/rsync",
                    comm: b"rsync",
                },
                _ => Call {
                    syscall: SyscallId::Linkat,
                    old: format!(
                        "/home/builder/src/project/target/release/deps/liblink_trace-{i:016x}.rlib"
                    )
                    .into_bytes(),
                    new: format!("/home/builder/src/project/target/release/liblink_trace-{i}.rlib")
                        .into_bytes(),
                    ret: 0,
                    cwd: None,
                    exe: b"/home/builder/.cargo/bin/cargo",
                    comm: b"cargo",
                },
            };
            raw_record(&call, i)
        })
        .collect()
}

fn pipeline(c: &mut Criterion) {
    let records = records();
    let clock = WallClock::sample();
    let decodable = records
        .iter()
        .filter(|raw| decode_record(raw).is_ok())
        .count();
    assert_eq!(decodable, RECORDS, "every benchmark record must decode");

    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(RECORDS as u64));
    let mut out = Vec::with_capacity(2 * BATCH_BYTES);
    let mut seq = 0u64;
    // Native JSON (the figure `cargo xtask bench` reports), then the same
    // events as ECS and as OCSF documents (formats/).
    let host = HostInfo::read();
    for (name, format) in [
        ("decode_event_render_json", DocumentFormat::Native),
        ("decode_event_render_ecs", DocumentFormat::Ecs),
        ("decode_event_render_ocsf", DocumentFormat::Ocsf),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| {
                for raw in &records {
                    let Ok(record) = decode_record(black_box(raw)) else {
                        continue;
                    };
                    seq += 1;
                    let event = LinkEvent::from_record(&record, seq, &clock);
                    formats::render(format, &Record::Event(Box::new(event)), &host, &mut out);
                    if out.len() >= BATCH_BYTES {
                        black_box(&out);
                        out.clear();
                    }
                }
            });
        });
    }
    // The same with the built-in detection rules evaluated on every event
    // (as the daemon's detect stage does), alerts rendered into the stream.
    // The stateful rules time their windows by boot_ns, so the records'
    // clocks move on at every pass as a live stream's would (the records
    // span 8 ms), rather than the same instants replayed again and again.
    let mut records = records;
    let span_ns = RECORDS as u64 * RECORD_SPACING_NS;
    let mut detector = Detector::new(Engine::new(RuleSet::builtin().expect("rules")), false);
    group.bench_function("decode_event_rules_render_json", |b| {
        b.iter(|| {
            for raw in &mut records {
                advance_clock(raw, span_ns);
            }
            for raw in &records {
                let Ok(record) = decode_record(black_box(raw)) else {
                    continue;
                };
                seq += 1;
                let event = LinkEvent::from_record(&record, seq, &clock);
                detector.process(Record::Event(Box::new(event)), |r| {
                    render(Format::Json, &r, &mut out);
                    true
                });
                if out.len() >= BATCH_BYTES {
                    black_box(&out);
                    out.clear();
                }
            }
        });
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
