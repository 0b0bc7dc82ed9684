//! Pure decoding of ring buffer records: `&[u8] -> Result<LinkRecord, DecodeError>`.

use crate::{
    LinkRecordHeader, PATH_KEEP_MAX, PATH_READ_FAILED, PathArg, RECORD_HEADER_SIZE, RECORD_LINK,
    SEG_COUNT, SEG_NEW_RAW, SEG_OLD_RAW, SyscallId,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short to hold a record type")]
    TooShort(usize),
    #[error("unknown record type {0}")]
    UnknownRecordType(u32),
    #[error("link record of {actual} bytes is shorter than its {RECORD_HEADER_SIZE}-byte header")]
    HeaderTruncated { actual: usize },
    #[error("record declares {declared} bytes but {actual} arrived")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unknown syscall id {0}")]
    UnknownSyscall(u32),
    #[error("segment of {0} bytes exceeds the {PATH_KEEP_MAX}-byte limit")]
    PathTooLong(usize),
    #[error("path argument lengths disagree with their segments")]
    SegmentMismatch,
}

impl TryFrom<u32> for SyscallId {
    type Error = DecodeError;
    fn try_from(value: u32) -> Result<Self, Self::Error> {
        match value {
            1 => Ok(SyscallId::Link),
            2 => Ok(SyscallId::Linkat),
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

pub fn decode_record(bytes: &[u8]) -> Result<LinkRecord<'_>, DecodeError> {
    let Some(type_bytes) = bytes.get(..4) else {
        return Err(DecodeError::TooShort(bytes.len()));
    };
    let record_type =
        u32::from_ne_bytes([type_bytes[0], type_bytes[1], type_bytes[2], type_bytes[3]]);
    if record_type != RECORD_LINK {
        return Err(DecodeError::UnknownRecordType(record_type));
    }
    if bytes.len() < RECORD_HEADER_SIZE {
        return Err(DecodeError::HeaderTruncated {
            actual: bytes.len(),
        });
    }
    // SAFETY: the length was checked above; LinkRecordHeader is plain
    // integers and arrays, valid for any bit pattern; read_unaligned does not
    // need the ring buffer's alignment.
    let header: LinkRecordHeader =
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<LinkRecordHeader>()) };
    let syscall = SyscallId::try_from(header.call.syscall)?;
    let declared = header.call.record_len as usize;
    // The ring buffer may round a record up to 8 bytes, never down.
    if declared < RECORD_HEADER_SIZE || declared > bytes.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    let mut total = 0;
    for len in header.seg_len {
        if len as usize > PATH_KEEP_MAX {
            return Err(DecodeError::PathTooLong(len as usize));
        }
        total += len as usize;
    }
    if RECORD_HEADER_SIZE + total != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: RECORD_HEADER_SIZE + total,
        });
    }
    if header.seg_len[SEG_OLD_RAW] != header.call.old.len
        || header.seg_len[SEG_NEW_RAW] != header.call.new.len
    {
        return Err(DecodeError::SegmentMismatch);
    }
    let mut segments: [&[u8]; SEG_COUNT] = [&[]; SEG_COUNT];
    let mut rest = &bytes[RECORD_HEADER_SIZE..declared];
    for (segment, len) in segments.iter_mut().zip(header.seg_len) {
        let (head, tail) = rest.split_at(len as usize);
        *segment = head;
        rest = tail;
    }
    Ok(LinkRecord {
        header,
        syscall,
        old_path: readable(&header.call.old, segments[SEG_OLD_RAW]),
        new_path: readable(&header.call.new, segments[SEG_NEW_RAW]),
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
        // SAFETY: LinkRecordHeader is repr(C) plain data without padding.
        let raw = unsafe {
            core::slice::from_raw_parts(
                (&header as *const LinkRecordHeader).cast::<u8>(),
                RECORD_HEADER_SIZE,
            )
        };
        let mut bytes = raw.to_vec();
        bytes.extend_from_slice(old);
        bytes.extend_from_slice(new);
        bytes.extend_from_slice(base);
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
                Err(DecodeError::HeaderTruncated { actual: cut })
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
        let bytes = record(b"a", b"b", |h| h.call.syscall = 7);
        assert_eq!(decode_record(&bytes), Err(DecodeError::UnknownSyscall(7)));
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
            if len >= 4 && len % 2 == 0 {
                bytes[..4].copy_from_slice(&RECORD_LINK.to_ne_bytes());
            }
            let _ = decode_record(&bytes);
        }
    }
}
