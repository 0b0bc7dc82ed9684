//! Userspace pipeline throughput: raw ring record → `decode_record` →
//! `LinkEvent::from_record` → JSON line, per event, on one core.
//!
//! `cargo bench -p link-trace --bench pipeline`; `cargo xtask bench` runs it
//! and reads the events/s figure from criterion's estimates.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use link_trace::{
    clock::WallClock,
    event::{LinkEvent, Record},
    output::{Format, render},
};
use link_trace_common::{
    LINK_HEADER_SIZE, LinkEventHeader, PathArg, RECORD_LINK, SyscallId, decode::decode_record,
};

/// Records decoded per benchmark iteration.
const RECORDS: usize = 1024;
/// The output thread writes a batch once it holds this much (as output.rs does).
const BATCH_BYTES: usize = 64 * 1024;

/// One raw ring record laid out as the kernel sends it: the header, then the
/// old path's bytes, then the new path's.
fn raw_record(
    old: &[u8],
    new: &[u8],
    syscall: SyscallId,
    ret: i64,
    index: u64,
    comm: &[u8],
) -> Vec<u8> {
    let mut comm_bytes = [0u8; 16];
    let len = comm.len().min(15);
    comm_bytes[..len].copy_from_slice(&comm[..len]);
    let enter = 1_000_000_000_000 + index * 7_919;
    let header = LinkEventHeader {
        record_type: RECORD_LINK,
        record_len: (LINK_HEADER_SIZE + old.len() + new.len()) as u32,
        enter_boot_ns: enter,
        exit_boot_ns: enter + 2_500 + index % 1_000,
        ret,
        tgid: 4_000 + (index % 37) as u32,
        tid: 4_000 + (index % 41) as u32,
        uid: 1_000,
        gid: 1_000,
        syscall: syscall as u32,
        flags: 0,
        olddirfd: -100,
        newdirfd: -100,
        old: PathArg {
            len: old.len() as u16,
            ..Default::default()
        },
        new: PathArg {
            len: new.len() as u16,
            ..Default::default()
        },
        comm: comm_bytes,
    };
    // SAFETY: LinkEventHeader is #[repr(C)] plain integers and byte arrays
    // without padding (its size is pinned to LINK_HEADER_SIZE).
    let raw = unsafe {
        std::slice::from_raw_parts(
            (&header as *const LinkEventHeader).cast::<u8>(),
            LINK_HEADER_SIZE,
        )
    };
    let mut bytes = raw.to_vec();
    bytes.extend_from_slice(old);
    bytes.extend_from_slice(new);
    bytes
}

/// A mix like a busy build host's: mostly successful linkat calls on long
/// absolute paths, some link(2) with relative names, some EEXIST failures,
/// and one path in 16 that is not UTF-8 (so it also gets base64).
fn records() -> Vec<Vec<u8>> {
    (0..RECORDS as u64)
        .map(|i| match i % 16 {
            0 => raw_record(
                format!("/var/cache/apt/archives/partial/pkg-{i}.deb").as_bytes(),
                &[
                    format!("/var/cache/apt/archives/pkg-{i}-").as_bytes(),
                    b"\xff\xfe\n.deb",
                ]
                .concat(),
                SyscallId::Linkat,
                0,
                i,
                b"dpkg",
            ),
            1..=3 => raw_record(
                format!("file-{i}.txt").as_bytes(),
                format!("file-{i}.txt.bak").as_bytes(),
                SyscallId::Link,
                0,
                i,
                b"ln",
            ),
            4 | 5 => raw_record(
                format!("/srv/data/incoming/batch-{}/part-{i:06}.parquet", i / 64).as_bytes(),
                format!("/srv/data/published/part-{i:06}.parquet").as_bytes(),
                SyscallId::Linkat,
                -17,
                i,
                b"rsync",
            ),
            _ => raw_record(
                format!(
                    "/home/builder/src/project/target/release/deps/liblink_trace-{i:016x}.rlib"
                )
                .as_bytes(),
                format!("/home/builder/src/project/target/release/liblink_trace-{i}.rlib")
                    .as_bytes(),
                SyscallId::Linkat,
                0,
                i,
                b"cargo",
            ),
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
    group.bench_function("decode_event_render_json", |b| {
        b.iter(|| {
            for raw in &records {
                let Ok(record) = decode_record(black_box(raw)) else {
                    continue;
                };
                seq += 1;
                let event = LinkEvent::from_record(&record, seq, &clock);
                render(Format::Json, &Record::Event(Box::new(event)), &mut out);
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
