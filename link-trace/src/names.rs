//! Names for the flags of linkat, unlinkat and renameat2, errno values and
//! dirfds.

use std::borrow::Cow;

use link_trace_common::SyscallId;

pub const AT_SYMLINK_FOLLOW: u32 = libc::AT_SYMLINK_FOLLOW as u32;
pub const AT_EMPTY_PATH: u32 = libc::AT_EMPTY_PATH as u32;

const LINKAT_FLAGS: &[(u32, &str)] = &[
    (AT_SYMLINK_FOLLOW, "AT_SYMLINK_FOLLOW"),
    (AT_EMPTY_PATH, "AT_EMPTY_PATH"),
];
const UNLINKAT_FLAGS: &[(u32, &str)] = &[(libc::AT_REMOVEDIR as u32, "AT_REMOVEDIR")];
const RENAMEAT2_FLAGS: &[(u32, &str)] = &[
    (libc::RENAME_NOREPLACE, "RENAME_NOREPLACE"),
    (libc::RENAME_EXCHANGE, "RENAME_EXCHANGE"),
    (libc::RENAME_WHITEOUT, "RENAME_WHITEOUT"),
];

/// Decoded linkat flag names; bits link-trace has no name for are kept as one
/// hex entry (`"0x8"`), so nothing the caller passed disappears.
pub fn flag_names(flags: u32) -> Vec<Cow<'static, str>> {
    named_bits(flags, LINKAT_FLAGS)
}

/// The flag names of `syscall`'s flags argument (the syscalls without one
/// report 0, hence no names).
pub fn flag_names_of(syscall: SyscallId, flags: u32) -> Vec<Cow<'static, str>> {
    let table = match syscall {
        SyscallId::Unlinkat => UNLINKAT_FLAGS,
        SyscallId::Renameat2 => RENAMEAT2_FLAGS,
        _ => LINKAT_FLAGS,
    };
    named_bits(flags, table)
}

fn named_bits(flags: u32, table: &[(u32, &'static str)]) -> Vec<Cow<'static, str>> {
    let mut names = Vec::new();
    let mut rest = flags;
    for &(bit, name) in table {
        if rest & bit != 0 {
            names.push(Cow::Borrowed(name));
            rest &= !bit;
        }
    }
    if rest != 0 {
        names.push(Cow::Owned(format!("{rest:#x}")));
    }
    names
}

/// Errno values below this are named from a table built once.
const ERRNO_TABLE: i32 = 256;

/// The symbolic name of a positive errno value, such as "EEXIST". On the hot
/// path, so names come from a table built once rather than a format per call.
pub fn errno_name(code: i32) -> Cow<'static, str> {
    static NAMES: std::sync::OnceLock<Vec<Option<String>>> = std::sync::OnceLock::new();
    let names = NAMES.get_or_init(|| {
        (0..ERRNO_TABLE)
            .map(|code| {
                let errno = nix::errno::Errno::from_raw(code);
                // nix's Debug output is the variant name, the C macro name.
                (code > 0 && errno != nix::errno::Errno::UnknownErrno).then(|| format!("{errno:?}"))
            })
            .collect()
    });
    match usize::try_from(code)
        .ok()
        .and_then(|i| names.get(i))
        .and_then(Option::as_deref)
    {
        Some(name) => Cow::Borrowed(name),
        None => Cow::Owned(format!("E{code}")),
    }
}

/// "AT_FDCWD" for -100, else the number.
pub fn dirfd_label(fd: i32) -> Cow<'static, str> {
    if fd == libc::AT_FDCWD {
        Cow::Borrowed("AT_FDCWD")
    } else {
        Cow::Owned(fd.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_known_flags_and_keeps_unknown_bits() {
        assert!(flag_names(0).is_empty());
        assert_eq!(flag_names(0x400), ["AT_SYMLINK_FOLLOW"]);
        assert_eq!(flag_names(0x1400), ["AT_SYMLINK_FOLLOW", "AT_EMPTY_PATH"]);
        assert_eq!(flag_names(0x1008), ["AT_EMPTY_PATH", "0x8"]);
        assert_eq!(flag_names(0x8000_0000), ["0x80000000"]);
    }

    #[test]
    fn names_unlinkat_and_renameat2_flags() {
        assert_eq!(flag_names_of(SyscallId::Unlinkat, 0x200), ["AT_REMOVEDIR"]);
        assert_eq!(
            flag_names_of(SyscallId::Renameat2, 0x3),
            ["RENAME_NOREPLACE", "RENAME_EXCHANGE"]
        );
        assert_eq!(
            flag_names_of(SyscallId::Renameat2, 0x4 | 0x10),
            ["RENAME_WHITEOUT", "0x10"]
        );
        assert_eq!(flag_names_of(SyscallId::Linkat, 0x400), flag_names(0x400));
    }

    #[test]
    fn names_link_errnos() {
        for (code, name) in [
            (libc::EEXIST, "EEXIST"),
            (libc::EPERM, "EPERM"),
            (libc::EXDEV, "EXDEV"),
            (libc::ENOENT, "ENOENT"),
            (libc::ENAMETOOLONG, "ENAMETOOLONG"),
            (libc::EFAULT, "EFAULT"),
            (libc::EMLINK, "EMLINK"),
            (libc::EACCES, "EACCES"),
            (libc::EBADF, "EBADF"),
            (libc::ELOOP, "ELOOP"),
            (libc::ENOTDIR, "ENOTDIR"),
            (libc::EINVAL, "EINVAL"),
        ] {
            assert_eq!(errno_name(code), name);
        }
        assert_eq!(errno_name(4000), "E4000");
    }

    #[test]
    fn labels_dirfds() {
        assert_eq!(dirfd_label(-100), "AT_FDCWD");
        assert_eq!(dirfd_label(3), "3");
    }
}
