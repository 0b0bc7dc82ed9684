//! Turns a raw path argument plus the base the kernel walked (cwd, dirfd
//! directory, chroot root or the fd's own file) into an absolute path.

use link_trace_common::{
    BASE_ABSOLUTE, BASE_CWD, BASE_DIRFD, BASE_FD_FILE, BASE_NONE, BASE_ROOT, BaseInfo,
    RESOLVE_BAD_FD, RESOLVE_DELETED, RESOLVE_DEPTH_LIMIT, RESOLVE_NO_ARGUMENT, RESOLVE_NO_OFFSETS,
    RESOLVE_NOT_A_DIRECTORY, RESOLVE_OK, RESOLVE_READ_FAILED, RESOLVE_TOO_LONG,
};

pub struct Resolution {
    pub path: Option<Vec<u8>>,
    pub how: &'static str,
    pub error: Option<&'static str>,
}

pub fn resolution_name(kind: u8) -> &'static str {
    match kind {
        BASE_ABSOLUTE => "absolute",
        BASE_CWD => "cwd",
        BASE_DIRFD => "dirfd",
        BASE_ROOT => "chroot",
        BASE_FD_FILE => "fd",
        _ => "none",
    }
}

pub fn error_name(error: u8) -> Option<&'static str> {
    match error {
        RESOLVE_OK => None,
        RESOLVE_DEPTH_LIMIT => Some("depth_limit"),
        RESOLVE_DELETED => Some("deleted_directory"),
        RESOLVE_BAD_FD => Some("bad_fd"),
        RESOLVE_NOT_A_DIRECTORY => Some("not_a_directory"),
        RESOLVE_TOO_LONG => Some("too_long"),
        RESOLVE_READ_FAILED => Some("read_failed"),
        RESOLVE_NO_OFFSETS => Some("no_btf"),
        RESOLVE_NO_ARGUMENT => Some("no_argument"),
        _ => Some("unknown"),
    }
}

/// `raw`: the argument (None if unreadable); `base`: the walked base segment.
pub fn resolve(info: &BaseInfo, raw: Option<&[u8]>, base: &[u8]) -> Resolution {
    let how = resolution_name(info.kind);
    let fail = |error| Resolution {
        path: None,
        how,
        error,
    };
    let Some(raw) = raw else {
        return fail(Some("no_argument"));
    };
    if info.error != RESOLVE_OK {
        return fail(error_name(info.error));
    }
    let path = match info.kind {
        BASE_ABSOLUTE => normalize(raw),
        BASE_FD_FILE => normalize(base),
        BASE_CWD | BASE_DIRFD | BASE_ROOT => {
            if base.is_empty() {
                return fail(Some("read_failed"));
            }
            // Allocated once at its final size, and kept when already
            // clean rather than copied again by `normalize`.
            let mut joined = Vec::with_capacity(base.len() + 1 + raw.len());
            joined.extend_from_slice(base);
            joined.push(b'/');
            joined.extend_from_slice(raw);
            if is_clean(&joined) {
                joined
            } else {
                normalize(&joined)
            }
        }
        BASE_NONE => return fail(Some("no_btf")),
        _ => return fail(Some("unknown")),
    };
    Resolution {
        path: Some(path),
        how,
        error: None,
    }
}

/// Lexical clean-up of an absolute path: drops empty and "." components and
/// applies ".." (never above "/"). Symlinks are not followed: the kernel
/// walked the base, and the daemon does not look the rest up.
pub fn normalize(path: &[u8]) -> Vec<u8> {
    if is_clean(path) {
        return path.to_vec();
    }
    let mut parts: Vec<&[u8]> = Vec::new();
    for part in path.split(|&b| b == b'/') {
        match part {
            b"" | b"." => {}
            b".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    let mut out = Vec::with_capacity(path.len() + 1);
    for part in &parts {
        out.push(b'/');
        out.extend_from_slice(part);
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// Already absolute with no empty, "." or ".." component and no trailing
/// slash: the common case, copied as it is. Looks only at what follows
/// each '/' instead of splitting into components: this runs for every
/// path of every event (a plain loop: memchr's per-call cost is more than
/// the few bytes between slashes).
fn is_clean(path: &[u8]) -> bool {
    if path.first() != Some(&b'/') {
        return false;
    }
    if path.len() == 1 {
        return true;
    }
    // Every unclean path has a trailing '/', "//" or "/.": without those
    // (most paths) it is clean. The pairs are folded without an early exit
    // so that the loop compiles to vector compares; a path with "/." (as
    // "/.ssh") is looked at component by component below.
    let suspect = path.iter().zip(&path[1..]).fold(false, |any, (&a, &b)| {
        any | ((a == b'/') & ((b == b'/') | (b == b'.')))
    });
    if !suspect && path.last() != Some(&b'/') {
        return true;
    }
    (0..path.len()).filter(|&at| path[at] == b'/').all(|at| {
        // The component after this slash: empty, "." and ".." are unclean.
        !matches!(
            &path[at + 1..],
            [] | [b'/', ..] | [b'.'] | [b'.', b'/', ..] | [b'.', b'.'] | [b'.', b'.', b'/', ..]
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: u8, error: u8) -> BaseInfo {
        BaseInfo {
            kind,
            error,
            ..Default::default()
        }
    }

    #[test]
    fn normalizes_lexically() {
        assert_eq!(normalize(b"/a//b/./c/../d/"), b"/a/b/d");
        assert_eq!(normalize(b"/../../etc/shadow"), b"/etc/shadow");
        assert_eq!(normalize(b"////"), b"/");
        assert_eq!(normalize(b"/tmp/\xff\n"), b"/tmp/\xff\n");
        assert_eq!(normalize(b"/"), b"/");
        assert_eq!(normalize(b"/a/.b/..c"), b"/a/.b/..c");
        assert_eq!(normalize(b"/a/b/."), b"/a/b");
    }

    /// The component-splitting definition `is_clean` replaced.
    fn clean_by_components(path: &[u8]) -> bool {
        path.first() == Some(&b'/')
            && (path.len() == 1 || path.last() != Some(&b'/'))
            && path[1..]
                .split(|&b| b == b'/')
                .all(|part| !matches!(part, b"" | b"." | b"..") || path.len() == 1)
    }

    #[test]
    fn clean_paths_are_recognised_as_by_components() {
        // Every path of up to 6 bytes over an alphabet that makes every
        // kind of component, plus random longer ones.
        let alphabet = b"/.a";
        let mut checked = 0;
        for len in 0..=6u32 {
            for mut n in 0..3usize.pow(len) {
                let mut path = Vec::new();
                for _ in 0..len {
                    path.push(alphabet[n % 3]);
                    n /= 3;
                }
                assert_eq!(is_clean(&path), clean_by_components(&path), "{path:?}");
                checked += 1;
            }
        }
        let mut rng = fastrand::Rng::with_seed(5);
        for _ in 0..20_000 {
            let path: Vec<u8> = (0..rng.usize(0..40))
                .map(|_| *rng.choice(b"//..ab\xff").unwrap_or(&b'a'))
                .collect();
            assert_eq!(is_clean(&path), clean_by_components(&path), "{path:?}");
            checked += 1;
        }
        assert!(checked > 20_000);
    }

    #[test]
    fn joins_relative_arguments_to_their_base() {
        let r = resolve(&info(BASE_CWD, 0), Some(b"../etc/./shadow"), b"/home/user");
        assert_eq!(r.path.as_deref(), Some(&b"/home/etc/shadow"[..]));
        assert_eq!((r.how, r.error), ("cwd", None));
        let r = resolve(&info(BASE_DIRFD, 0), Some(b"x"), b"/");
        assert_eq!(r.path.as_deref(), Some(&b"/x"[..]));
        let r = resolve(&info(BASE_ROOT, 0), Some(b"/etc/passwd"), b"/srv/jail");
        assert_eq!(r.path.as_deref(), Some(&b"/srv/jail/etc/passwd"[..]));
        assert_eq!(r.how, "chroot");
        let r = resolve(&info(BASE_FD_FILE, 0), Some(b""), b"/tmp/#123");
        assert_eq!((r.path.as_deref(), r.how), (Some(&b"/tmp/#123"[..]), "fd"));
        let r = resolve(&info(BASE_ABSOLUTE, 0), Some(b"/etc/../etc/shadow"), b"");
        assert_eq!(
            (r.path.as_deref(), r.how),
            (Some(&b"/etc/shadow"[..]), "absolute")
        );
    }

    #[test]
    fn says_why_it_could_not_resolve() {
        let r = resolve(&info(BASE_DIRFD, RESOLVE_DELETED), Some(b"x"), b"");
        assert_eq!(
            (r.path, r.how, r.error),
            (None, "dirfd", Some("deleted_directory"))
        );
        let r = resolve(&info(BASE_DIRFD, RESOLVE_BAD_FD), Some(b"x"), b"");
        assert_eq!(r.error, Some("bad_fd"));
        let r = resolve(&info(BASE_CWD, RESOLVE_DEPTH_LIMIT), Some(b"x"), b"");
        assert_eq!(r.error, Some("depth_limit"));
        let r = resolve(&info(BASE_NONE, RESOLVE_NO_ARGUMENT), None, b"");
        assert_eq!(r.error, Some("no_argument"));
    }
}
