//! Pure decoding of ring buffer records: `&[u8] -> Result<Decoded, DecodeError>`
//! (`decode`), or of one record type (`decode_record`, `decode_context_record`).

use crate::{
    CONTEXT_HEADER_SIZE, CONTEXT_SEG_COUNT, ContextRecordHeader, LinkRecordHeader, PATH_KEEP_MAX,
    PATH_READ_FAILED, PathArg, RECORD_CONTEXT, RECORD_HEADER_SIZE, RECORD_LINK, SEG_COUNT,
    SEG_NEW_RAW, SEG_OLD_RAW, SyscallId,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short to hold a record type")]
    TooShort(usize),
    #[error("unknown record type {0}")]
    UnknownRecordType(u32),
    #[error("record of {actual} bytes is shorter than its {needed}-byte header")]
    HeaderTruncated { actual: usize, needed: usize },
    #[error("record declares {declared} bytes but {actual} arrived")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unknown syscall id {0}")]
    UnknownSyscall(u32),
    #[error("segment of {0} bytes exceeds the {PATH_KEEP_MAX}-byte limit")]
    PathTooLong(usize),
    #[error("path argument lengths disagree with their segments")]
    SegmentMismatch,
    #[error("syscall {0:?} does not belong in this record type")]
    WrongSyscall(SyscallId),
}

impl TryFrom<u32> for SyscallId {
    type Error = DecodeError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(SyscallId::Link),
            2 => Ok(SyscallId::Linkat),
            3 => Ok(SyscallId::Unlink),
            4 => Ok(SyscallId::Unlinkat),
            5 => Ok(SyscallId::Rename),
            6 => Ok(SyscallId::Renameat),
            7 => Ok(SyscallId::Renameat2),
            other => Err(DecodeError::UnknownSyscall(other)),
        }
    }
}

/// A decoded link record borrowing its variable parts from the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord<'a> {
    pub header: LinkRecordHeader,
    pub syscall: SyscallId,
    /// `None` when the kernel could not read the argument (see `header.call.old`).
    pub old_path: Option<&'a [u8]>,
    pub new_path: Option<&'a [u8]>,
    /// Every segment in SEG_* order (empty when absent).
    pub segments: [&'a [u8]; SEG_COUNT],
}

/// A decoded unlink or rename record, borrowing its paths from the ring.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContextRecord<'a> {
    pub header: ContextRecordHeader,
    pub syscall: SyscallId,
    /// The path (unlink) or old name (rename); `None` when unreadable.
    pub old_path: Option<&'a [u8]>,
    /// The new name of a rename; always `None` for unlink and unlinkat.
    pub new_path: Option<&'a [u8]>,
    /// SEG_OLD_RAW..=SEG_NEW_BASE (empty when absent).
    pub segments: [&'a [u8]; CONTEXT_SEG_COUNT],
}

/// Any record the kernel sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decoded<'a> {
    Link(LinkRecord<'a>),
    Context(ContextRecord<'a>),
}

fn record_type(bytes: &[u8]) -> Result<u32, DecodeError> {
    match bytes.get(..4) {
        Some(&[a, b, c, d]) => Ok(u32::from_ne_bytes([a, b, c, d])),
        _ => Err(DecodeError::TooShort(bytes.len())),
    }
}

/// Decodes a record of either type.
pub fn decode(bytes: &[u8]) -> Result<Decoded<'_>, DecodeError> {
    match record_type(bytes)? {
        RECORD_LINK => decode_record(bytes).map(Decoded::Link),
        RECORD_CONTEXT => decode_context_record(bytes).map(Decoded::Context),
        other => Err(DecodeError::UnknownRecordType(other)),
    }
}

/// Reads a fixed header of `size` bytes from the front of `bytes`.
fn header<T: Copy>(bytes: &[u8], size: usize) -> Result<T, DecodeError> {
    debug_assert_eq!(size, core::mem::size_of::<T>());
    if bytes.len() < size {
        return Err(DecodeError::HeaderTruncated {
            actual: bytes.len(),
            needed: size,
        });
    }
    // SAFETY: the length was checked above; both header types are plain
    // integers and arrays, valid for any bit pattern; read_unaligned does not
    // need the ring buffer's alignment.
    Ok(unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) })
}

/// Checks the declared length and the segment lengths against the bytes
/// that arrived, and splits the segments.
fn segments<'a, const N: usize>(
    bytes: &'a [u8],
    header_size: usize,
    declared: usize,
    seg_len: [u16; N],
    args: (&PathArg, &PathArg),
) -> Result<[&'a [u8]; N], DecodeError> {
    // The ring buffer may round a record up to 8 bytes, never down.
    if declared < header_size || declared > bytes.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    let mut total = 0;
    for len in seg_len {
        if len as usize > PATH_KEEP_MAX {
            return Err(DecodeError::PathTooLong(len as usize));
        }
        total += len as usize;
    }
    if header_size + total != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: header_size + total,
        });
    }
    if seg_len[SEG_OLD_RAW] != args.0.len || seg_len[SEG_NEW_RAW] != args.1.len {
        return Err(DecodeError::SegmentMismatch);
    }
    let mut segments: [&[u8]; N] = [&[]; N];
    let mut rest = &bytes[header_size..declared];
    for (segment, len) in segments.iter_mut().zip(seg_len) {
        let (head, tail) = rest.split_at(len as usize);
        *segment = head;
        rest = tail;
    }
    Ok(segments)
}

pub fn decode_record(bytes: &[u8]) -> Result<LinkRecord<'_>, DecodeError> {
    let record_type = record_type(bytes)?;
    if record_type != RECORD_LINK {
        return Err(DecodeError::UnknownRecordType(record_type));
    }
    let header: LinkRecordHeader = header(bytes, RECORD_HEADER_SIZE)?;
    let syscall = SyscallId::try_from(header.call.syscall)?;
    if syscall.is_context() {
        return Err(DecodeError::WrongSyscall(syscall));
    }
    let segments = segments(
        bytes,
        RECORD_HEADER_SIZE,
        header.call.record_len as usize,
        header.seg_len,
        (&header.call.old, &header.call.new),
    )?;
    Ok(LinkRecord {
        header,
        syscall,
        old_path: readable(&header.call.old, segments[SEG_OLD_RAW]),
        new_path: readable(&header.call.new, segments[SEG_NEW_RAW]),
        segments,
    })
}

pub fn decode_context_record(bytes: &[u8]) -> Result<ContextRecord<'_>, DecodeError> {
    let record_type = record_type(bytes)?;
    if record_type != RECORD_CONTEXT {
        return Err(DecodeError::UnknownRecordType(record_type));
    }
    let header: ContextRecordHeader = header(bytes, CONTEXT_HEADER_SIZE)?;
    let syscall = SyscallId::try_from(header.call.syscall)?;
    if !syscall.is_context() {
        return Err(DecodeError::WrongSyscall(syscall));
    }
    let segments = segments(
        bytes,
        CONTEXT_HEADER_SIZE,
        header.call.record_len as usize,
        header.seg_len,
        (&header.call.old, &header.call.new),
    )?;
    // unlink has one path: a second one is a malformed record.
    if !syscall.has_new_path() && (header.call.new != PathArg::default()) {
        return Err(DecodeError::SegmentMismatch);
    }
    Ok(ContextRecord {
        header,
        syscall,
        old_path: readable(&header.call.old, segments[SEG_OLD_RAW]),
        new_path: if syscall.has_new_path() {
            readable(&header.call.new, segments[SEG_NEW_RAW])
        } else {
            None
        },
        segments,
    })
}

fn readable<'a>(arg: &PathArg, bytes: &'a [u8]) -> Option<&'a [u8]> {
    (arg.flags & PATH_READ_FAILED == 0).then_some(bytes)
}

#[cfg(test)]
mod tests {
    extern crate std;
    use std::vec::Vec;

    use super::*;
    use crate::{PATH_TRUNCATED, SyscallId};

    fn record(old: &[u8], new: &[u8], tweak: impl FnOnce(&mut LinkRecordHeader)) -> Vec<u8> {
        record_with_base(old, new, b"", tweak)
    }

    fn record_with_base(
        old: &[u8],
        new: &[u8],
        base: &[u8],
        tweak: impl FnOnce(&mut LinkRecordHeader),
    ) -> Vec<u8> {
        let mut header = LinkRecordHeader::default();
        header.call.record_type = RECORD_LINK;
        header.call.record_len = (RECORD_HEADER_SIZE + old.len() + new.len() + base.len()) as u32;
        header.call.syscall = SyscallId::Linkat as u32;
        header.call.old = PathArg {
            len: old.len() as u16,
            ..Default::default()
        };
        header.call.new = PathArg {
            len: new.len() as u16,
            ..Default::default()
        };
        header.call.tgid = 42;
        header.call.ret = -17;
        header.seg_len[SEG_OLD_RAW] = old.len() as u16;
        header.seg_len[SEG_NEW_RAW] = new.len() as u16;
        header.seg_len[crate::SEG_OLD_BASE] = base.len() as u16;
        tweak(&mut header);
        wire(&header, &[old, new, base])
    }

    /// A header's bytes followed by the segments, as the ring holds them.
    fn wire<T: Copy>(header: &T, segments: &[&[u8]]) -> Vec<u8> {
        // SAFETY: both header types are repr(C) plain data without padding.
        let raw = unsafe {
            core::slice::from_raw_parts(
                (header as *const T).cast::<u8>(),
                core::mem::size_of::<T>(),
            )
        };
        let mut bytes = raw.to_vec();
        for segment in segments {
            bytes.extend_from_slice(segment);
        }
        bytes
    }

    #[test]
    fn decodes_segments_in_order() {
        let bytes = record_with_base(b"a", b"bc", b"/work/dir", |_| {});
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.segments[SEG_OLD_RAW], b"a");
        assert_eq!(rec.segments[SEG_NEW_RAW], b"bc");
        assert_eq!(rec.segments[crate::SEG_OLD_BASE], b"/work/dir");
        assert!(rec.segments[crate::SEG_EXE].is_empty());
    }

    #[test]
    fn decodes_both_paths() {
        let bytes = record(b"/tmp/a", b"/tmp/\xffb\n", |_| {});
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.syscall, SyscallId::Linkat);
        assert_eq!(rec.old_path, Some(&b"/tmp/a"[..]));
        assert_eq!(rec.new_path, Some(&b"/tmp/\xffb\n"[..]));
        assert_eq!(rec.header.call.tgid, 42);
        assert_eq!(rec.header.call.ret, -17);
    }

    #[test]
    fn accepts_ring_padding_after_record() {
        let mut bytes = record(b"a", b"b", |_| {});
        bytes.extend_from_slice(&[0; 6]);
        assert!(decode_record(&bytes).is_ok());
    }

    #[test]
    fn read_failure_yields_no_path() {
        let bytes = record(b"", b"x", |h| {
            h.call.old.flags = PATH_READ_FAILED;
            h.call.old.read_error = -14;
        });
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.old_path, None);
        assert_eq!(rec.header.call.old.read_error, -14);
        assert_eq!(rec.new_path, Some(&b"x"[..]));
    }

    #[test]
    fn keeps_truncated_full_length_path() {
        let long = [b'a'; PATH_KEEP_MAX];
        let bytes = record(&long, b"b", |h| h.call.old.flags = PATH_TRUNCATED);
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.old_path.map(<[u8]>::len), Some(PATH_KEEP_MAX));
    }

    #[test]
    fn rejects_empty_and_short_input() {
        assert_eq!(decode_record(&[]), Err(DecodeError::TooShort(0)));
        assert_eq!(decode_record(&[1, 0]), Err(DecodeError::TooShort(2)));
        let bytes = record(b"a", b"b", |_| {});
        for cut in [4, 50, RECORD_HEADER_SIZE - 1] {
            assert_eq!(
                decode_record(&bytes[..cut]),
                Err(DecodeError::HeaderTruncated {
                    actual: cut,
                    needed: RECORD_HEADER_SIZE
                })
            );
        }
    }

    #[test]
    fn rejects_truncated_body() {
        let bytes = record(b"abc", b"def", |_| {});
        let err = decode_record(&bytes[..bytes.len() - 1]).unwrap_err();
        assert!(matches!(err, DecodeError::LengthMismatch { .. }), "{err:?}");
    }

    #[test]
    fn rejects_unknown_tags_and_inconsistent_lengths() {
        let bytes = record(b"a", b"b", |h| h.call.record_type = 99);
        assert_eq!(
            decode_record(&bytes),
            Err(DecodeError::UnknownRecordType(99))
        );
        let bytes = record(b"a", b"b", |h| h.call.syscall = 99);
        assert_eq!(decode_record(&bytes), Err(DecodeError::UnknownSyscall(99)));
        let bytes = record(b"a", b"b", |h| h.call.old.len = 5);
        assert_eq!(decode_record(&bytes), Err(DecodeError::SegmentMismatch));
        let bytes = record(b"a", b"b", |h| h.seg_len[SEG_OLD_RAW] = 5);
        assert!(matches!(
            decode_record(&bytes),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let bytes = record(b"a", b"b", |h| h.seg_len[SEG_NEW_RAW] = 5000);
        assert_eq!(decode_record(&bytes), Err(DecodeError::PathTooLong(5000)));
    }

    #[test]
    fn garbage_never_panics() {
        // A deterministic pseudo-random byte soup, including a valid type tag.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        for len in 0..400 {
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                bytes.push(state as u8);
            }
            if len >= 4 {
                let tag = [RECORD_LINK, RECORD_CONTEXT, 0][len % 3];
                bytes[..4].copy_from_slice(&tag.to_ne_bytes());
            }
            let _ = decode_record(&bytes);
            let _ = decode_context_record(&bytes);
            let _ = decode(&bytes);
        }
    }

    /// A context record as the kernel writes it: header, both raw paths,
    /// then the old path's base.
    fn context_record(
        syscall: SyscallId,
        old: &[u8],
        new: &[u8],
        base: &[u8],
        tweak: impl FnOnce(&mut ContextRecordHeader),
    ) -> Vec<u8> {
        let mut header = ContextRecordHeader::default();
        header.call.record_type = RECORD_CONTEXT;
        header.call.record_len = (CONTEXT_HEADER_SIZE + old.len() + new.len() + base.len()) as u32;
        header.call.syscall = syscall as u32;
        header.call.old.len = old.len() as u16;
        header.call.new.len = new.len() as u16;
        header.call.tgid = 9;
        header.fsuid = 65534;
        header.creds_valid = 1;
        header.seg_len[SEG_OLD_RAW] = old.len() as u16;
        header.seg_len[SEG_NEW_RAW] = new.len() as u16;
        header.seg_len[crate::SEG_OLD_BASE] = base.len() as u16;
        tweak(&mut header);
        wire(&header, &[old, new, base])
    }

    #[test]
    fn decodes_an_unlink_with_one_path_and_its_base() {
        let bytes = context_record(SyscallId::Unlinkat, b"victim", b"", b"/tmp", |h| {
            h.call.flags = 0x200;
        });
        let Ok(Decoded::Context(rec)) = decode(&bytes) else {
            panic!("{:?}", decode(&bytes));
        };
        assert_eq!(rec.syscall, SyscallId::Unlinkat);
        assert_eq!(rec.old_path, Some(&b"victim"[..]));
        assert_eq!(rec.new_path, None);
        assert_eq!(rec.segments[crate::SEG_OLD_BASE], b"/tmp");
        assert_eq!((rec.header.fsuid, rec.header.call.flags), (65534, 0x200));
        assert_eq!(rec.header.call.tgid, 9);
    }

    #[test]
    fn decodes_a_rename_with_both_paths() {
        let bytes = context_record(SyscallId::Renameat2, b"/tmp/a", b"/tmp/\xffb", b"", |h| {
            h.call.flags = 1;
        });
        let rec = decode_context_record(&bytes).unwrap();
        assert_eq!(rec.old_path, Some(&b"/tmp/a"[..]));
        assert_eq!(rec.new_path, Some(&b"/tmp/\xffb"[..]));
        assert_eq!(rec.header.call.flags, 1);
        let mut padded = bytes.clone();
        padded.extend_from_slice(&[0; 4]);
        assert!(decode_context_record(&padded).is_ok(), "ring padding");
    }

    #[test]
    fn context_record_with_unreadable_path_has_none() {
        let bytes = context_record(SyscallId::Unlink, b"", b"", b"", |h| {
            h.call.old.flags = PATH_READ_FAILED;
            h.call.old.read_error = -14;
        });
        let rec = decode_context_record(&bytes).unwrap();
        assert_eq!((rec.old_path, rec.header.call.old.read_error), (None, -14));
    }

    #[test]
    fn record_types_and_syscalls_must_agree() {
        let bytes = context_record(SyscallId::Linkat, b"a", b"b", b"", |_| {});
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::WrongSyscall(SyscallId::Linkat))
        );
        let bytes = record(b"a", b"b", |h| h.call.syscall = SyscallId::Rename as u32);
        assert_eq!(
            decode(&bytes),
            Err(DecodeError::WrongSyscall(SyscallId::Rename))
        );
        let bytes = context_record(SyscallId::Unlink, b"a", b"b", b"", |_| {});
        assert_eq!(decode(&bytes), Err(DecodeError::SegmentMismatch));
        let bytes = context_record(SyscallId::Rename, b"a", b"b", b"", |h| h.call.syscall = 8);
        assert_eq!(decode(&bytes), Err(DecodeError::UnknownSyscall(8)));
        assert_eq!(
            decode_context_record(&record(b"a", b"b", |_| {})),
            Err(DecodeError::UnknownRecordType(RECORD_LINK))
        );
    }

    #[test]
    fn truncated_context_records_are_refused() {
        let bytes = context_record(SyscallId::Rename, b"old", b"new", b"/base", |_| {});
        for cut in [0, 3] {
            assert_eq!(decode(&bytes[..cut]), Err(DecodeError::TooShort(cut)));
        }
        for cut in [4, CONTEXT_HEADER_SIZE - 1] {
            assert_eq!(
                decode(&bytes[..cut]),
                Err(DecodeError::HeaderTruncated {
                    actual: cut,
                    needed: CONTEXT_HEADER_SIZE
                })
            );
        }
        for cut in [CONTEXT_HEADER_SIZE, bytes.len() - 1] {
            let err = decode(&bytes[..cut]).unwrap_err();
            assert!(matches!(err, DecodeError::LengthMismatch { .. }), "{err:?}");
        }
        let bytes = context_record(SyscallId::Rename, b"old", b"new", b"", |h| {
            h.seg_len[crate::SEG_NEW_BASE] = 4097;
        });
        assert_eq!(decode(&bytes), Err(DecodeError::PathTooLong(4097)));
    }
}
