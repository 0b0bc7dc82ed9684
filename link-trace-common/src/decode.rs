//! Pure decoding of ring buffer records: `&[u8] -> Result<LinkRecord, DecodeError>`.

use crate::{
    LINK_HEADER_SIZE, LinkEventHeader, PATH_KEEP_MAX, PATH_READ_FAILED, PathArg, RECORD_LINK,
    SyscallId,
};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("record of {0} bytes is too short to hold a record type")]
    TooShort(usize),
    #[error("unknown record type {0}")]
    UnknownRecordType(u32),
    #[error("link record of {actual} bytes is shorter than its {LINK_HEADER_SIZE}-byte header")]
    HeaderTruncated { actual: usize },
    #[error("record declares {declared} bytes but {actual} arrived")]
    LengthMismatch { declared: usize, actual: usize },
    #[error("unknown syscall id {0}")]
    UnknownSyscall(u32),
    #[error("path of {0} bytes exceeds the {PATH_KEEP_MAX}-byte limit")]
    PathTooLong(usize),
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

/// A decoded link record borrowing its path bytes from the ring buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkRecord<'a> {
    pub header: LinkEventHeader,
    pub syscall: SyscallId,
    /// `None` when the kernel could not read the argument (see `header.old`).
    pub old_path: Option<&'a [u8]>,
    pub new_path: Option<&'a [u8]>,
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
    if bytes.len() < LINK_HEADER_SIZE {
        return Err(DecodeError::HeaderTruncated {
            actual: bytes.len(),
        });
    }
    // SAFETY: the length was checked above; LinkEventHeader is plain
    // integers and arrays, valid for any bit pattern; read_unaligned does not
    // need the ring buffer's alignment.
    let header: LinkEventHeader =
        unsafe { core::ptr::read_unaligned(bytes.as_ptr().cast::<LinkEventHeader>()) };
    let syscall = SyscallId::try_from(header.syscall)?;
    let declared = header.record_len as usize;
    // The ring buffer may round a record up to 8 bytes, never down.
    if declared < LINK_HEADER_SIZE || declared > bytes.len() {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: bytes.len(),
        });
    }
    let (old_len, new_len) = (header.old.len as usize, header.new.len as usize);
    for len in [old_len, new_len] {
        if len > PATH_KEEP_MAX {
            return Err(DecodeError::PathTooLong(len));
        }
    }
    if LINK_HEADER_SIZE + old_len + new_len != declared {
        return Err(DecodeError::LengthMismatch {
            declared,
            actual: LINK_HEADER_SIZE + old_len + new_len,
        });
    }
    let body = &bytes[LINK_HEADER_SIZE..declared];
    let (old_bytes, new_bytes) = body.split_at(old_len);
    Ok(LinkRecord {
        header,
        syscall,
        old_path: readable(&header.old, old_bytes),
        new_path: readable(&header.new, new_bytes),
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

    fn record(old: &[u8], new: &[u8], tweak: impl FnOnce(&mut LinkEventHeader)) -> Vec<u8> {
        let mut header = LinkEventHeader {
            record_type: RECORD_LINK,
            record_len: (LINK_HEADER_SIZE + old.len() + new.len()) as u32,
            syscall: SyscallId::Linkat as u32,
            old: PathArg {
                len: old.len() as u16,
                ..Default::default()
            },
            new: PathArg {
                len: new.len() as u16,
                ..Default::default()
            },
            tgid: 42,
            ret: -17,
            ..Default::default()
        };
        tweak(&mut header);
        // SAFETY: LinkEventHeader is repr(C) plain data without padding.
        let raw = unsafe {
            core::slice::from_raw_parts(
                (&header as *const LinkEventHeader).cast::<u8>(),
                LINK_HEADER_SIZE,
            )
        };
        let mut bytes = raw.to_vec();
        bytes.extend_from_slice(old);
        bytes.extend_from_slice(new);
        bytes
    }

    #[test]
    fn decodes_both_paths() {
        let bytes = record(b"/tmp/a", b"/tmp/\xffb\n", |_| {});
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.syscall, SyscallId::Linkat);
        assert_eq!(rec.old_path, Some(&b"/tmp/a"[..]));
        assert_eq!(rec.new_path, Some(&b"/tmp/\xffb\n"[..]));
        assert_eq!(rec.header.tgid, 42);
        assert_eq!(rec.header.ret, -17);
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
            h.old.flags = PATH_READ_FAILED;
            h.old.read_error = -14;
        });
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.old_path, None);
        assert_eq!(rec.header.old.read_error, -14);
        assert_eq!(rec.new_path, Some(&b"x"[..]));
    }

    #[test]
    fn keeps_truncated_full_length_path() {
        let long = [b'a'; PATH_KEEP_MAX];
        let bytes = record(&long, b"b", |h| h.old.flags = PATH_TRUNCATED);
        let rec = decode_record(&bytes).unwrap();
        assert_eq!(rec.old_path.map(<[u8]>::len), Some(PATH_KEEP_MAX));
    }

    #[test]
    fn rejects_empty_and_short_input() {
        assert_eq!(decode_record(&[]), Err(DecodeError::TooShort(0)));
        assert_eq!(decode_record(&[1, 0]), Err(DecodeError::TooShort(2)));
        let bytes = record(b"a", b"b", |_| {});
        for cut in [4, 50, LINK_HEADER_SIZE - 1] {
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
        let bytes = record(b"a", b"b", |h| h.record_type = 99);
        assert_eq!(
            decode_record(&bytes),
            Err(DecodeError::UnknownRecordType(99))
        );
        let bytes = record(b"a", b"b", |h| h.syscall = 7);
        assert_eq!(decode_record(&bytes), Err(DecodeError::UnknownSyscall(7)));
        let bytes = record(b"a", b"b", |h| h.old.len = 5);
        assert!(matches!(
            decode_record(&bytes),
            Err(DecodeError::LengthMismatch { .. })
        ));
        let bytes = record(b"a", b"b", |h| h.new.len = 5000);
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
