//! The event fields a rule can name, and their values read straight from a
//! typed `LinkEvent` without allocating.
//!
//! Names are the JSON names (`oldpath_resolved`, `fsuid`, `file.uid`, …)
//! plus a few derived fields: `oldpath_dir`/`newpath_dir` (the resolved
//! path's parent directory), `oldpath_name`/`newpath_name` (its last
//! component), `result` (`"ok"` or the errno name) and `target_resolved`
//! (the name the call creates or removes).
//!
//! Context records (unlink, rename) are read through the same fields; what
//! they do not carry (file facts, exe, cgroup, TOCTOU evidence, unlink's
//! new path) is null there, so no operator but `exists` matches it.

use std::borrow::Cow;

use crate::event::{FileInfo, LinkEvent, PathField};

/// The type of a field's value; a field that is null or absent in an event
/// matches no operator but `exists`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Int,
    Str,
    /// A list of strings (`flag_names`): operators match any element.
    List,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Bool => "a boolean",
            Kind::Int => "an integer",
            Kind::Str => "a string",
            Kind::List => "a list of strings",
        }
    }
}

/// One field's value in one event, borrowed from it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Null,
    Bool(bool),
    Int(i128),
    Str(&'a [u8]),
    List(&'a [Cow<'static, str>]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Side {
    Old,
    New,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PathAttr {
    Path,
    Truncated,
    Error,
    Resolved,
    Resolution,
    ResolutionError,
    AtExit,
    Canonical,
    /// Derived: the resolved path without its last component.
    Dir,
    /// Derived: the resolved path's last component.
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FileAttr {
    FactsFrom,
    Dev,
    Ino,
    Type,
    Mode,
    Permissions,
    Setuid,
    Setgid,
    Uid,
    Gid,
    Nlink,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Seq,
    Time,
    BootNs,
    DurationNs,
    Syscall,
    OldDirfd,
    NewDirfd,
    Path(Side, PathAttr),
    Flags,
    FlagNames,
    Ret,
    Success,
    Errno,
    /// Derived: "ok" or the errno name.
    Result,
    /// Derived: the name the call creates or removes: `newpath_resolved`
    /// for link and rename, `oldpath_resolved` for unlink.
    TargetResolved,
    Pid,
    Tid,
    Uid,
    Gid,
    Comm,
    ArgsChanged,
    Ppid,
    Euid,
    Egid,
    Fsuid,
    Fsgid,
    Auid,
    SessionId,
    Exe,
    CgroupId,
    CgroupPath,
    ContainerId,
    MntNs,
    PidNs,
    /// `file` (the source) when false, `new_file` when true.
    File(bool, FileAttr),
    FileError,
    NewFileError,
    InodeMismatch,
    /// `inode_mismatch_explained_by.seq`: the explaining rename's `seq`.
    ExplainedBySeq,
    /// `inode_mismatch_explained_by.pid`: its caller's tgid.
    ExplainedByPid,
}

const PATH_ATTRS: [(&str, PathAttr); 10] = [
    ("", PathAttr::Path),
    ("_truncated", PathAttr::Truncated),
    ("_error", PathAttr::Error),
    ("_resolved", PathAttr::Resolved),
    ("_resolution", PathAttr::Resolution),
    ("_resolution_error", PathAttr::ResolutionError),
    ("_at_exit", PathAttr::AtExit),
    ("_canonical", PathAttr::Canonical),
    ("_dir", PathAttr::Dir),
    ("_name", PathAttr::Name),
];

const FILE_ATTRS: [(&str, FileAttr); 11] = [
    ("facts_from", FileAttr::FactsFrom),
    ("dev", FileAttr::Dev),
    ("ino", FileAttr::Ino),
    ("type", FileAttr::Type),
    ("mode", FileAttr::Mode),
    ("permissions", FileAttr::Permissions),
    ("setuid", FileAttr::Setuid),
    ("setgid", FileAttr::Setgid),
    ("uid", FileAttr::Uid),
    ("gid", FileAttr::Gid),
    ("nlink", FileAttr::Nlink),
];

const SCALARS: [(&str, Field); 38] = [
    ("seq", Field::Seq),
    ("time", Field::Time),
    ("boot_ns", Field::BootNs),
    ("duration_ns", Field::DurationNs),
    ("syscall", Field::Syscall),
    ("olddirfd", Field::OldDirfd),
    ("newdirfd", Field::NewDirfd),
    ("flags", Field::Flags),
    ("flag_names", Field::FlagNames),
    ("ret", Field::Ret),
    ("success", Field::Success),
    ("errno", Field::Errno),
    ("result", Field::Result),
    ("target_resolved", Field::TargetResolved),
    ("pid", Field::Pid),
    ("tid", Field::Tid),
    ("uid", Field::Uid),
    ("gid", Field::Gid),
    ("comm", Field::Comm),
    ("args_changed", Field::ArgsChanged),
    ("ppid", Field::Ppid),
    ("euid", Field::Euid),
    ("egid", Field::Egid),
    ("fsuid", Field::Fsuid),
    ("fsgid", Field::Fsgid),
    ("auid", Field::Auid),
    ("sessionid", Field::SessionId),
    ("exe", Field::Exe),
    ("cgroup_id", Field::CgroupId),
    ("cgroup_path", Field::CgroupPath),
    ("container_id", Field::ContainerId),
    ("mnt_ns", Field::MntNs),
    ("pid_ns", Field::PidNs),
    ("file_error", Field::FileError),
    ("new_file_error", Field::NewFileError),
    ("inode_mismatch", Field::InodeMismatch),
    ("inode_mismatch_explained_by.seq", Field::ExplainedBySeq),
    ("inode_mismatch_explained_by.pid", Field::ExplainedByPid),
];

/// Reads one field of an event (a context record when the flag says so):
/// `Field::get_in` with the field fixed, so a compiled test reads its field
/// without the match over all fields.
pub type Getter = for<'e> fn(&'e LinkEvent, bool) -> Value<'e>;

/// A `Getter` for the constant field `$field`.
macro_rules! getter {
    ($field:expr) => {{
        fn get(e: &LinkEvent, context: bool) -> Value<'_> {
            $field.value_in(e, context)
        }
        get as Getter
    }};
}

/// `match $field` with an arm per field (scalars, then each path and file
/// attribute on both sides), each arm the `getter!` of that field. The
/// compiler checks the lists are complete: a field left out is a
/// non-exhaustive match.
macro_rules! getters {
    ($field:expr; $($scalar:ident),*; paths: $($path:ident),*; files: $($file:ident),*) => {
        match $field {
            $(Field::$scalar => getter!(Field::$scalar),)*
            $(Field::Path(Side::Old, PathAttr::$path) => getter!(Field::Path(Side::Old, PathAttr::$path)),)*
            $(Field::Path(Side::New, PathAttr::$path) => getter!(Field::Path(Side::New, PathAttr::$path)),)*
            $(Field::File(false, FileAttr::$file) => getter!(Field::File(false, FileAttr::$file)),)*
            $(Field::File(true, FileAttr::$file) => getter!(Field::File(true, FileAttr::$file)),)*
        }
    };
}

impl Field {
    /// The field a rule names, or None.
    pub fn parse(name: &str) -> Option<Field> {
        if let Some((_, field)) = SCALARS.iter().find(|(n, _)| *n == name) {
            return Some(*field);
        }
        for (prefix, side) in [("oldpath", Side::Old), ("newpath", Side::New)] {
            if let Some(rest) = name.strip_prefix(prefix) {
                return PATH_ATTRS
                    .iter()
                    .find(|(suffix, _)| *suffix == rest)
                    .map(|(_, attr)| Field::Path(side, *attr));
            }
        }
        for (prefix, new) in [("file.", false), ("new_file.", true)] {
            if let Some(rest) = name.strip_prefix(prefix) {
                return FILE_ATTRS
                    .iter()
                    .find(|(n, _)| *n == rest)
                    .map(|(_, attr)| Field::File(new, *attr));
            }
        }
        None
    }

    /// Every field name, for error messages and documentation.
    pub fn names() -> Vec<String> {
        let mut names: Vec<String> = SCALARS.iter().map(|(n, _)| (*n).to_owned()).collect();
        for side in ["oldpath", "newpath"] {
            names.extend(PATH_ATTRS.iter().map(|(s, _)| format!("{side}{s}")));
        }
        for prefix in ["file.", "new_file."] {
            names.extend(FILE_ATTRS.iter().map(|(n, _)| format!("{prefix}{n}")));
        }
        names
    }

    pub fn kind(self) -> Kind {
        use Field::*;
        match self {
            Seq | BootNs | DurationNs | OldDirfd | NewDirfd | Flags | Ret | Pid | Tid | Uid
            | Gid | Ppid | Euid | Egid | Fsuid | Fsgid | Auid | SessionId | CgroupId | MntNs
            | PidNs | ExplainedBySeq | ExplainedByPid => Kind::Int,
            Success | ArgsChanged | InodeMismatch => Kind::Bool,
            FlagNames => Kind::List,
            Time | Syscall | Errno | Result | TargetResolved | Comm | Exe | CgroupPath
            | ContainerId | FileError | NewFileError => Kind::Str,
            Path(_, PathAttr::Truncated) => Kind::Bool,
            Path(..) => Kind::Str,
            File(_, FileAttr::Ino | FileAttr::Mode | FileAttr::Uid | FileAttr::Gid) => Kind::Int,
            File(_, FileAttr::Nlink) => Kind::Int,
            File(_, FileAttr::Setuid | FileAttr::Setgid) => Kind::Bool,
            File(..) => Kind::Str,
        }
    }

    /// Whether a context record (unlink, rename) lacks this field; the
    /// fields it lacks are null in it (see `event::ContextEvent`).
    fn absent_in_context(self, e: &LinkEvent) -> bool {
        use Field::*;
        match self {
            ArgsChanged | CgroupId => true,
            NewDirfd | Path(Side::New, _) => !e.has_newpath(),
            _ => false,
        }
    }

    /// This field's value in `e`.
    pub fn get(self, e: &LinkEvent) -> Value<'_> {
        self.get_in(e, e.is_context())
    }

    /// This field's value in `e`, which is a context record when `context`
    /// (`e.is_context()`, worked out once per event by the caller: it is a
    /// string compare, and the rules read dozens of fields per event).
    #[inline]
    pub fn get_in(self, e: &LinkEvent, context: bool) -> Value<'_> {
        self.value_in(e, context)
    }

    /// A function that reads this field, made for it (see `Getter`).
    pub fn getter(self) -> Getter {
        getters!(
            self;
            Seq, Time, BootNs, DurationNs, Syscall, OldDirfd, NewDirfd, Flags, FlagNames, Ret,
            Success, Errno, Result, TargetResolved, Pid, Tid, Uid, Gid, Comm, ArgsChanged,
            Ppid, Euid, Egid, Fsuid, Fsgid, Auid, SessionId, Exe, CgroupId, CgroupPath,
            ContainerId, MntNs, PidNs, FileError, NewFileError, InodeMismatch, ExplainedBySeq,
            ExplainedByPid;
            paths: Path, Truncated, Error, Resolved, Resolution, ResolutionError, AtExit,
            Canonical, Dir, Name;
            files: FactsFrom, Dev, Ino, Type, Mode, Permissions, Setuid, Setgid, Uid, Gid,
            Nlink
        )
    }

    /// `get_in`'s body, inlined where the field is a constant (`getter`)
    /// so that the match on it folds away.
    #[inline(always)]
    fn value_in(self, e: &LinkEvent, context: bool) -> Value<'_> {
        use Field::*;
        if context && self.absent_in_context(e) {
            return Value::Null;
        }
        let int = |v: u64| Value::Int(i128::from(v));
        let opt = |v: Option<u32>| v.map_or(Value::Null, |v| Value::Int(i128::from(v)));
        match self {
            Seq => int(e.seq),
            Time => Value::Str(e.time.as_bytes()),
            BootNs => int(e.boot_ns),
            DurationNs => int(e.duration_ns),
            Syscall => Value::Str(e.syscall.as_bytes()),
            OldDirfd => Value::Int(i128::from(e.olddirfd)),
            NewDirfd => Value::Int(i128::from(e.newdirfd)),
            Path(Side::Old, attr) => path_value(&e.oldpath, attr),
            Path(Side::New, attr) => path_value(&e.newpath, attr),
            Flags => int(u64::from(e.flags)),
            FlagNames => Value::List(&e.flag_names),
            Ret => Value::Int(i128::from(e.ret)),
            Success => Value::Bool(e.success),
            Errno => text_value(e.errno.as_deref()),
            Result => text_value(Some(e.errno.as_deref().unwrap_or("ok"))),
            TargetResolved => {
                let target = if e.has_newpath() {
                    &e.newpath.resolved
                } else {
                    &e.oldpath.resolved
                };
                bytes(target.as_deref())
            }
            Pid => int(u64::from(e.pid)),
            Tid => int(u64::from(e.tid)),
            Uid => int(u64::from(e.uid)),
            Gid => int(u64::from(e.gid)),
            Comm => Value::Str(e.comm.as_bytes()),
            ArgsChanged => Value::Bool(e.args_changed),
            Ppid => opt(e.process.ppid),
            Euid => opt(e.process.euid),
            Egid => opt(e.process.egid),
            Fsuid => opt(e.process.fsuid),
            Fsgid => opt(e.process.fsgid),
            Auid => opt(e.process.auid),
            SessionId => opt(e.process.sessionid),
            Exe => text_value(e.process.exe.as_deref()),
            CgroupId => int(e.process.cgroup_id),
            CgroupPath => text_value(e.process.cgroup_path.as_deref()),
            ContainerId => text_value(e.process.container_id.as_deref()),
            MntNs => opt(e.process.mnt_ns),
            PidNs => opt(e.process.pid_ns),
            File(new, attr) => {
                let file = if new { &e.new_file } else { &e.file };
                file.as_ref().map_or(Value::Null, |f| file_value(f, attr))
            }
            FileError => text_value(e.file_error.as_deref()),
            NewFileError => text_value(e.new_file_error.as_deref()),
            InodeMismatch => e.inode_mismatch.map_or(Value::Null, Value::Bool),
            ExplainedBySeq => e
                .inode_mismatch_explained_by
                .as_ref()
                .map_or(Value::Null, |why| int(why.seq)),
            ExplainedByPid => e
                .inode_mismatch_explained_by
                .as_ref()
                .map_or(Value::Null, |why| int(u64::from(why.pid))),
        }
    }
}

fn text_value(v: Option<&str>) -> Value<'_> {
    v.map_or(Value::Null, |s| Value::Str(s.as_bytes()))
}

fn bytes(v: Option<&[u8]>) -> Value<'_> {
    v.map_or(Value::Null, Value::Str)
}

fn path_value<P>(p: &PathField<P>, attr: PathAttr) -> Value<'_> {
    match attr {
        PathAttr::Path => bytes(p.bytes.as_deref()),
        PathAttr::Truncated => Value::Bool(p.truncated),
        PathAttr::Error => bytes(p.error.as_deref().map(str::as_bytes)),
        PathAttr::Resolved => bytes(p.resolved.as_deref()),
        PathAttr::Resolution => Value::Str(p.resolution.as_bytes()),
        PathAttr::ResolutionError => bytes(p.resolution_error.map(str::as_bytes)),
        PathAttr::AtExit => bytes(p.at_exit.as_deref()),
        PathAttr::Canonical => bytes(p.canonical.as_deref()),
        PathAttr::Dir => bytes(p.resolved.as_deref().map(|r| split_last(r).0)),
        PathAttr::Name => bytes(p.resolved.as_deref().map(|r| split_last(r).1)),
    }
}

/// "/a/b/c" → ("/a/b", "c"); "/c" → ("/", "c"); "/" → ("/", "").
pub fn split_last(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(0) => (&path[..1], &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    }
}

fn file_value(f: &FileInfo, attr: FileAttr) -> Value<'_> {
    match attr {
        FileAttr::FactsFrom => Value::Str(f.facts_from.as_bytes()),
        FileAttr::Dev => Value::Str(f.dev.as_bytes()),
        FileAttr::Ino => Value::Int(i128::from(f.ino)),
        FileAttr::Type => Value::Str(f.file_type.as_bytes()),
        FileAttr::Mode => Value::Int(i128::from(f.mode)),
        FileAttr::Permissions => Value::Str(f.permissions.as_bytes()),
        FileAttr::Setuid => Value::Bool(f.setuid),
        FileAttr::Setgid => Value::Bool(f.setgid),
        FileAttr::Uid => Value::Int(i128::from(f.uid)),
        FileAttr::Gid => Value::Int(i128::from(f.gid)),
        FileAttr::Nlink => Value::Int(i128::from(f.nlink)),
    }
}

/// A value as text, for alert messages: strings lossily, lists joined by
/// "|", null as "null".
pub fn render(value: Value<'_>, out: &mut String) {
    use std::fmt::Write as _;
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        Value::Int(i) => {
            let _ = write!(out, "{i}");
        }
        Value::Str(s) => out.push_str(&String::from_utf8_lossy(s)),
        Value::List(items) => {
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push('|');
                }
                out.push_str(item);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::sample_event;

    #[test]
    fn every_listed_name_parses_back_to_a_field_with_that_name() {
        let names = Field::names();
        assert!(names.len() > 60);
        for name in &names {
            assert!(Field::parse(name).is_some(), "{name}");
        }
        for bad in [
            "",
            "oldpath_x",
            "file",
            "file.",
            "new_file.size",
            "Pid",
            "flag",
        ] {
            assert_eq!(Field::parse(bad), None, "{bad}");
        }
    }

    #[test]
    fn values_come_from_the_typed_event() {
        let mut e = sample_event(Some(b"/etc/shadow"), Some(b"x"), -1);
        e.oldpath.resolved = Some(b"/etc/shadow".to_vec());
        let get = |name: &str| Field::parse(name).unwrap().get(&e);
        assert_eq!(get("oldpath_resolved"), Value::Str(b"/etc/shadow"));
        assert_eq!(get("oldpath_dir"), Value::Str(b"/etc"));
        assert_eq!(get("oldpath_name"), Value::Str(b"shadow"));
        assert_eq!(get("newpath_resolved"), Value::Str(b"/base/x"));
        assert_eq!(get("errno"), Value::Str(b"EPERM"));
        assert_eq!(get("result"), Value::Str(b"EPERM"));
        assert_eq!(get("success"), Value::Bool(false));
        assert_eq!(get("pid"), Value::Int(7));
        assert_eq!(get("ret"), Value::Int(-1));
        assert_eq!(get("fsuid"), Value::Null);
        assert_eq!(get("file.uid"), Value::Null);
        assert!(matches!(get("flag_names"), Value::List(l) if l.len() == 2));
    }

    #[test]
    fn context_records_read_null_where_they_carry_nothing() {
        let mut unlink = sample_event(Some(b"/tmp/x"), None, 0);
        unlink.syscall = "unlinkat";
        unlink.oldpath.resolved = Some(b"/tmp/x".to_vec());
        unlink.newpath = crate::event::PathField::new(None, false, None);
        let get = |name: &str| Field::parse(name).unwrap().get(&unlink);
        assert_eq!(get("target_resolved"), Value::Str(b"/tmp/x"));
        for absent in [
            "newpath_truncated",
            "newpath_resolution",
            "newdirfd",
            "args_changed",
            "cgroup_id",
        ] {
            assert_eq!(get(absent), Value::Null, "{absent}");
        }
        assert_eq!(get("oldpath_truncated"), Value::Bool(false));

        let mut rename = sample_event(Some(b"/tmp/a"), Some(b"/tmp/b"), 0);
        rename.syscall = "renameat2";
        rename.newpath.resolved = Some(b"/tmp/b".to_vec());
        let get = |name: &str| Field::parse(name).unwrap().get(&rename);
        assert_eq!(get("target_resolved"), Value::Str(b"/tmp/b"));
        assert_eq!(get("newdirfd"), Value::Int(5));
        assert_eq!(get("args_changed"), Value::Null);

        let mut link = sample_event(Some(b"/a"), Some(b"b"), 0);
        link.newpath.resolved = Some(b"/base/b".to_vec());
        let get = |name: &str| Field::parse(name).unwrap().get(&link);
        assert_eq!(get("target_resolved"), Value::Str(b"/base/b"));
        assert_eq!(get("args_changed"), Value::Bool(false));
    }

    #[test]
    fn every_getter_reads_its_own_field() {
        let mut e = sample_event(Some(b"/etc/shadow"), Some(b"x"), -1);
        e.oldpath.resolved = Some(b"/etc/shadow".to_vec());
        e.process.fsuid = Some(1000);
        e.file = Some(crate::event::FileInfo::new(
            "stat",
            "8:1".into(),
            42,
            0o104755,
            3,
            4,
            2,
        ));
        let mut unlink = e.clone();
        unlink.syscall = "unlinkat";
        for name in Field::names() {
            let field = Field::parse(&name).unwrap();
            for (event, context) in [(&e, false), (&unlink, true)] {
                assert_eq!(
                    field.getter()(event, context),
                    field.get_in(event, context),
                    "{name}"
                );
            }
        }
    }

    #[test]
    fn splits_paths() {
        assert_eq!(split_last(b"/a/b/c"), (&b"/a/b"[..], &b"c"[..]));
        assert_eq!(split_last(b"/c"), (&b"/"[..], &b"c"[..]));
        assert_eq!(split_last(b"/"), (&b"/"[..], &b""[..]));
    }
}
