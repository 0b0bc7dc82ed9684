//! Member offsets of kernel structs, read from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux), so no layout is hard-coded for one kernel.
//!
//! A small reader of its own: the programs need only named struct members
//! (through anonymous unions and structs), and the available BTF crates are
//! either LGPL or keep their type tables private. It is on the start-up
//! path, so it maps the file instead of reading it (1350 sysfs reads of
//! 4 KiB) where the kernel allows that (6.16+), indexes where each type
//! starts in one pass, and decodes only the types a lookup reaches: ~1 ms
//! where decoding every type took ~15 ms.

use std::{collections::HashMap, ops::Range};

use link_trace_common::{
    CTX_AUDIT, KernelOffsets, OPT_CGROUP_CHAIN, OPT_DENTRY_BLOCK, OPT_MOUNT_PAIR, OPT_PID_FLEX,
};

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed BTF: {0}")]
    Malformed(&'static str),
    #[error("kernel BTF has no struct {0}")]
    NoStruct(String),
    #[error("kernel BTF has no member {member} in struct {strukt}")]
    NoMember { strukt: String, member: String },
}

const BTF_MAGIC: u16 = 0xeb9f;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_TYPE_TAG: u32 = 18;
/// Bytes of a type record before its kind-specific data.
const TYPE_HEADER: usize = 12;
/// Bytes of one struct or union member.
const MEMBER_SIZE: usize = 12;

enum Bytes {
    Mapped(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn get(&self) -> &[u8] {
        match self {
            Bytes::Mapped(mapping) => mapping,
            Bytes::Owned(bytes) => bytes,
        }
    }
}

/// One type record, decoded on demand.
#[derive(Debug, Clone, Copy)]
struct Type<'a> {
    name_off: u32,
    kind: u32,
    vlen: usize,
    /// Struct and union members hold a bitfield size above bit 24.
    kind_flag: bool,
    /// size for structs and unions, referenced type for modifiers.
    size_or_type: u32,
    /// The kind-specific data after the header (members for structs).
    data: &'a [u8],
}

pub struct Btf {
    bytes: Bytes,
    types: Range<usize>,
    strings: Range<usize>,
    /// Where each type's record starts in the type section, by type id;
    /// id 0 (void) has no record and a placeholder.
    type_at: Vec<u32>,
    structs_by_name: HashMap<Box<str>, u32>,
}

fn u32_at(data: &[u8], at: usize) -> Result<u32, BtfError> {
    data.get(at..at + 4)
        .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(BtfError::Malformed("truncated"))
}

/// Bytes of kind-specific data after a type's header.
fn extra_len(kind: u32, vlen: usize) -> Result<usize, BtfError> {
    Ok(match kind {
        1 | 14 | 17 => 4, // INT, VAR, DECL_TAG
        3 => 12,          // ARRAY
        KIND_STRUCT | KIND_UNION => vlen * MEMBER_SIZE,
        6 | 13 => vlen * 8,   // ENUM, FUNC_PROTO
        15 | 19 => vlen * 12, // DATASEC, ENUM64
        2 | 7 | 8 | 9 | 10 | 11 | 12 | 16 | 18 => 0,
        _ => return Err(BtfError::Malformed("unknown type kind")),
    })
}

impl Btf {
    pub fn from_sys_fs() -> Result<Self, BtfError> {
        let path = "/sys/kernel/btf/vmlinux";
        let read_err = |source| BtfError::Read {
            path: path.into(),
            source,
        };
        let file = std::fs::File::open(path).map_err(read_err)?;
        // Private and read-only: the kernel refuses a shared mapping of it.
        // SAFETY: the kernel's BTF never changes while the system runs.
        let bytes = match unsafe { memmap2::MmapOptions::new().map_copy_read_only(&file) } {
            Ok(mapping) if !mapping.is_empty() => Bytes::Mapped(mapping),
            // Kernels before 6.16 do not map it.
            _ => Bytes::Owned(std::fs::read(path).map_err(read_err)?),
        };
        Self::index(bytes)
    }

    pub fn parse(data: &[u8]) -> Result<Self, BtfError> {
        Self::index(Bytes::Owned(data.to_vec()))
    }

    fn index(bytes: Bytes) -> Result<Self, BtfError> {
        let data = bytes.get();
        if data.len() < 24 || u16::from_le_bytes([data[0], data[1]]) != BTF_MAGIC {
            return Err(BtfError::Malformed(
                "bad magic (only little-endian BTF is supported)",
            ));
        }
        let hdr_len = u32_at(data, 4)? as usize;
        let (type_off, type_len) = (u32_at(data, 8)? as usize, u32_at(data, 12)? as usize);
        let (str_off, str_len) = (u32_at(data, 16)? as usize, u32_at(data, 20)? as usize);
        let types = hdr_len + type_off..hdr_len + type_off + type_len;
        let strings = hdr_len + str_off..hdr_len + str_off + str_len;
        let types_data = data
            .get(types.clone())
            .ok_or(BtfError::Malformed("type section out of bounds"))?;
        let string_data = data
            .get(strings.clone())
            .ok_or(BtfError::Malformed("string section out of bounds"))?;

        let mut type_at = vec![0];
        let mut structs_by_name = HashMap::new();
        let mut at = 0;
        while at < types_data.len() {
            let name_off = u32_at(types_data, at)?;
            let info = u32_at(types_data, at + 4)?;
            let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
            let id = type_at.len() as u32;
            type_at.push(u32::try_from(at).map_err(|_| BtfError::Malformed("too large"))?);
            at += TYPE_HEADER + extra_len(kind, vlen)?;
            if at > types_data.len() {
                return Err(BtfError::Malformed("truncated"));
            }
            if kind == KIND_STRUCT && name_off != 0 {
                // Keep the first (the complete definition comes first in vmlinux).
                structs_by_name
                    .entry(name_at(string_data, name_off).into())
                    .or_insert(id);
            }
        }
        Ok(Btf {
            bytes,
            types,
            strings,
            type_at,
            structs_by_name,
        })
    }

    fn name(&self, off: u32) -> &str {
        name_at(&self.bytes.get()[self.strings.clone()], off)
    }

    fn ty(&self, id: u32) -> Option<Type<'_>> {
        let types = &self.bytes.get()[self.types.clone()];
        let at = *self.type_at.get(id as usize).filter(|_| id != 0)? as usize;
        let info = u32_at(types, at + 4).ok()?;
        let (kind, vlen) = ((info >> 24) & 0x1f, (info & 0xffff) as usize);
        let data_start = at + TYPE_HEADER;
        Some(Type {
            name_off: u32_at(types, at).ok()?,
            kind,
            vlen,
            kind_flag: info >> 31 == 1,
            size_or_type: u32_at(types, at + 8).ok()?,
            data: types.get(data_start..data_start + extra_len(kind, vlen).ok()?)?,
        })
    }

    /// Follows typedefs and qualifiers to the underlying type.
    fn resolve(&self, mut id: u32) -> Option<Type<'_>> {
        for _ in 0..32 {
            let ty = self.ty(id)?;
            match ty.kind {
                KIND_TYPEDEF | KIND_VOLATILE | KIND_CONST | KIND_RESTRICT | KIND_TYPE_TAG => {
                    id = ty.size_or_type
                }
                _ => return Some(ty),
            }
        }
        None
    }

    /// Bit offset of a named member, looking inside anonymous structs and
    /// unions; returns the member's type id too.
    fn find_member(&self, ty: Type<'_>, name: &str) -> Option<(u32, u32)> {
        if !matches!(ty.kind, KIND_STRUCT | KIND_UNION) {
            return None;
        }
        for i in 0..ty.vlen {
            let m = i * MEMBER_SIZE;
            let (name_off, type_id, offset) = (
                u32_at(ty.data, m).ok()?,
                u32_at(ty.data, m + 4).ok()?,
                u32_at(ty.data, m + 8).ok()?,
            );
            let bit_offset = if ty.kind_flag {
                offset & 0xff_ffff
            } else {
                offset
            };
            let member_name = self.name(name_off);
            if member_name == name {
                return Some((bit_offset, type_id));
            }
            if member_name.is_empty()
                && let Some(inner) = self.resolve(type_id)
                && let Some((bits, id)) = self.find_member(inner, name)
            {
                return Some((bit_offset + bits, id));
            }
        }
        None
    }

    /// Byte offset of `strukt.a.b.c` (a chain of embedded members).
    pub fn offset(&self, strukt: &str, chain: &[&str]) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        let mut ty = self
            .resolve(id)
            .ok_or(BtfError::Malformed("dangling struct id"))?;
        let mut bits = 0;
        for (i, member) in chain.iter().enumerate() {
            let (member_bits, member_type) =
                self.find_member(ty, member)
                    .ok_or_else(|| BtfError::NoMember {
                        strukt: strukt.into(),
                        member: chain[..=i].join("."),
                    })?;
            bits += member_bits;
            if i + 1 < chain.len() {
                ty = self
                    .resolve(member_type)
                    .ok_or(BtfError::Malformed("dangling member type"))?;
            }
        }
        if bits % 8 != 0 {
            return Err(BtfError::Malformed("member is a bitfield"));
        }
        Ok(bits / 8)
    }

    /// Type id of the kernel function `name` (a FUNC), the id fentry and
    /// LSM programs are loaded against.
    pub fn func_id(&self, name: &str) -> Option<u32> {
        (1..self.type_at.len() as u32).find(|&id| {
            self.ty(id)
                .is_some_and(|ty| ty.kind == KIND_FUNC && self.name(ty.name_off) == name)
        })
    }

    /// Number of types, void included.
    pub fn type_count(&self) -> usize {
        self.type_at.len()
    }

    pub fn struct_size(&self, strukt: &str) -> Result<u32, BtfError> {
        let id = *self
            .structs_by_name
            .get(strukt)
            .ok_or_else(|| BtfError::NoStruct(strukt.into()))?;
        Ok(self.resolve(id).map_or(0, |ty| ty.size_or_type))
    }
}

/// The NUL-terminated string at `off` in a string section ("" if invalid).
fn name_at(strings: &[u8], off: u32) -> &str {
    let rest = strings.get(off as usize..).unwrap_or_default();
    let end = memchr::memchr(0, rest).unwrap_or(rest.len());
    std::str::from_utf8(&rest[..end]).unwrap_or("")
}

/// Everything the programs read, from this kernel's BTF. Audit fields are
/// optional (CONFIG_AUDIT); anything else missing is an error.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets, BtfError> {
    let o = |strukt: &str, chain: &[&str]| btf.offset(strukt, chain);
    let mut offsets = KernelOffsets {
        ready: 1,
        task_real_parent: o("task_struct", &["real_parent"])?,
        task_tgid: o("task_struct", &["tgid"])?,
        task_fs: o("task_struct", &["fs"])?,
        task_files: o("task_struct", &["files"])?,
        task_mm: o("task_struct", &["mm"])?,
        task_cred: o("task_struct", &["cred"])?,
        task_nsproxy: o("task_struct", &["nsproxy"])?,
        task_thread_pid: o("task_struct", &["thread_pid"])?,
        cred_euid: o("cred", &["euid"])?,
        cred_egid: o("cred", &["egid"])?,
        cred_fsuid: o("cred", &["fsuid"])?,
        cred_fsgid: o("cred", &["fsgid"])?,
        fs_root: o("fs_struct", &["root"])?,
        fs_pwd: o("fs_struct", &["pwd"])?,
        path_mnt: o("path", &["mnt"])?,
        path_dentry: o("path", &["dentry"])?,
        files_fdt: o("files_struct", &["fdt"])?,
        fdt_max_fds: o("fdtable", &["max_fds"])?,
        fdt_fd: o("fdtable", &["fd"])?,
        file_f_path: o("file", &["f_path"])?,
        file_f_inode: o("file", &["f_inode"])?,
        dentry_d_parent: o("dentry", &["d_parent"])?,
        dentry_d_name_len: o("dentry", &["d_name", "len"])?,
        dentry_d_name_name: o("dentry", &["d_name", "name"])?,
        dentry_d_hash_pprev: o("dentry", &["d_hash", "pprev"])?,
        mount_mnt_parent: o("mount", &["mnt_parent"])?,
        mount_mnt_mountpoint: o("mount", &["mnt_mountpoint"])?,
        mount_mnt: o("mount", &["mnt"])?,
        vfsmount_mnt_root: o("vfsmount", &["mnt_root"])?,
        inode_i_mode: o("inode", &["i_mode"])?,
        inode_i_uid: o("inode", &["i_uid"])?,
        inode_i_gid: o("inode", &["i_gid"])?,
        inode_i_ino: o("inode", &["i_ino"])?,
        inode_i_nlink: o("inode", &["__i_nlink"]).or_else(|_| o("inode", &["i_nlink"]))?,
        inode_i_sb: o("inode", &["i_sb"])?,
        sb_s_dev: o("super_block", &["s_dev"])?,
        mm_exe_file: o("mm_struct", &["exe_file"])?,
        nsproxy_mnt_ns: o("nsproxy", &["mnt_ns"])?,
        mnt_ns_inum: o("mnt_namespace", &["ns", "inum"])?,
        pid_level: o("pid", &["level"])?,
        pid_numbers: o("pid", &["numbers"])?,
        upid_size: btf.struct_size("upid")?,
        upid_ns: o("upid", &["ns"])?,
        pid_ns_inum: o("pid_namespace", &["ns", "inum"])?,
        task_pid: o("task_struct", &["pid"])?,
        task_comm: o("task_struct", &["comm"])?,
        ..Default::default()
    };
    if let (Ok(loginuid), Ok(sessionid)) = (
        o("task_struct", &["loginuid"]),
        o("task_struct", &["sessionid"]),
    ) {
        offsets.task_loginuid = loginuid;
        offsets.task_sessionid = sessionid;
        offsets.optional |= CTX_AUDIT;
    }
    if let (Ok(cgroups), Ok(dfl_cgrp), Ok(kn), Ok(id)) = (
        o("task_struct", &["cgroups"]),
        o("css_set", &["dfl_cgrp"]),
        o("cgroup", &["kn"]),
        o("kernfs_node", &["id"]),
    ) {
        (
            offsets.task_cgroups,
            offsets.css_set_dfl_cgrp,
            offsets.cgroup_kn,
            offsets.kernfs_node_id,
        ) = (cgroups, dfl_cgrp, kn, id);
        offsets.optional |= OPT_CGROUP_CHAIN;
    }
    // d_name is a qstr { u32 hash; u32 len; (little-endian hash_len) const
    // unsigned char *name; } right after d_parent on every kernel seen so far.
    if offsets.dentry_d_name_len == offsets.dentry_d_parent + 12
        && offsets.dentry_d_name_name == offsets.dentry_d_parent + 16
    {
        offsets.optional |= OPT_DENTRY_BLOCK;
    }
    // numbers[] declared with no size (6.5+) rather than numbers[1].
    if btf.struct_size("pid")? < offsets.pid_numbers + offsets.upid_size {
        offsets.optional |= OPT_PID_FLEX;
    }
    if offsets.mount_mnt_mountpoint == offsets.mount_mnt_parent + 8 {
        offsets.optional |= OPT_MOUNT_PAIR;
    }
    Ok(offsets)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny BTF blob: struct outer { int a; union { int b; struct inner c; }; }
    /// with struct inner { int x; int y; }.
    fn blob() -> Vec<u8> {
        let strings = b"\0int\0outer\0a\0b\0c\0inner\0x\0y\0do_thing\0".to_vec();
        let s = |name: &str| {
            let needle = format!("\0{name}\0");
            strings
                .windows(needle.len())
                .position(|w| w == needle.as_bytes())
                .unwrap() as u32
                + 1
        };
        let mut types = Vec::new();
        let mut push = |words: &[u32]| {
            words
                .iter()
                .for_each(|w| types.extend_from_slice(&w.to_le_bytes()))
        };
        // 1: int (INT, size 4, encoding word)
        push(&[s("int"), 1 << 24, 4, 32]);
        // 2: struct inner { int x @0; int y @32 }
        push(&[
            s("inner"),
            (KIND_STRUCT << 24) | 2,
            8,
            s("x"),
            1,
            0,
            s("y"),
            1,
            32,
        ]);
        // 3: anonymous union { int b; struct inner c; }
        push(&[0, (KIND_UNION << 24) | 2, 8, s("b"), 1, 0, s("c"), 2, 0]);
        // 4: struct outer { int a @0; union @64 }
        push(&[
            s("outer"),
            (KIND_STRUCT << 24) | 2,
            16,
            s("a"),
            1,
            0,
            0,
            3,
            64,
        ]);
        // 5: FUNC do_thing (its prototype is not needed here)
        push(&[s("do_thing"), KIND_FUNC << 24, 0]);
        let mut data = Vec::new();
        data.extend_from_slice(&BTF_MAGIC.to_le_bytes());
        data.extend_from_slice(&[1, 0]);
        for word in [
            24u32,
            0,
            types.len() as u32,
            types.len() as u32,
            strings.len() as u32,
        ] {
            data.extend_from_slice(&word.to_le_bytes());
        }
        data.extend_from_slice(&types);
        data.extend_from_slice(&strings);
        data
    }

    #[test]
    fn finds_members_through_anonymous_unions_and_chains() {
        let btf = Btf::parse(&blob()).unwrap();
        assert_eq!(btf.offset("outer", &["a"]).unwrap(), 0);
        assert_eq!(btf.offset("outer", &["b"]).unwrap(), 8);
        assert_eq!(btf.offset("outer", &["c", "y"]).unwrap(), 12);
        assert_eq!(btf.struct_size("inner").unwrap(), 8);
        assert_eq!(btf.func_id("do_thing"), Some(5));
        assert_eq!(btf.func_id("outer"), None, "a struct is not a function");
        assert_eq!(btf.type_count(), 6);
        assert!(matches!(
            btf.offset("outer", &["zz"]),
            Err(BtfError::NoMember { .. })
        ));
        assert!(matches!(
            btf.offset("nope", &["a"]),
            Err(BtfError::NoStruct(_))
        ));
    }

    #[test]
    fn rejects_garbage() {
        assert!(Btf::parse(b"").is_err());
        assert!(
            Btf::parse(&[
                0x9f, 0xeb, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0
            ])
            .is_err()
        );
        let mut truncated = blob();
        truncated.truncate(40);
        assert!(Btf::parse(&truncated).is_err());
    }

    #[test]
    fn reads_this_kernels_btf() {
        // Every machine this project runs on has BTF (the loader needs it).
        let btf = Btf::from_sys_fs().expect("/sys/kernel/btf/vmlinux");
        let offsets = kernel_offsets(&btf).expect("all members present");
        assert_eq!(offsets.ready, 1);
        assert!(
            offsets.task_real_parent > 0 && offsets.dentry_d_name_name > offsets.dentry_d_name_len
        );
        assert!(offsets.upid_size >= 12);
        // The walk's one-read layouts hold on this kernel (else the walk
        // is correct but slower: see OPT_DENTRY_BLOCK, OPT_MOUNT_PAIR).
        assert_ne!(offsets.optional & OPT_DENTRY_BLOCK, 0, "{offsets:?}");
        assert_ne!(offsets.optional & OPT_MOUNT_PAIR, 0, "{offsets:?}");
        assert_ne!(offsets.optional & OPT_PID_FLEX, 0, "6.18 has numbers[]");
        assert!(btf.func_id("vfs_link").is_some());
        assert!(btf.func_id("no_such_kernel_function").is_none());
    }

    #[test]
    fn the_mapped_kernel_btf_reads_as_the_file_does() {
        let mapped = Btf::from_sys_fs().expect("/sys/kernel/btf/vmlinux");
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut version = release.split(|c: char| !c.is_ascii_digit());
        let (major, minor): (u32, u32) = (
            version.next().unwrap().parse().unwrap(),
            version.next().unwrap().parse().unwrap(),
        );
        if (major, minor) >= (6, 16) {
            assert!(
                matches!(mapped.bytes, Bytes::Mapped(_)),
                "Linux {release} maps vmlinux BTF"
            );
        }
        let read = Btf::parse(&std::fs::read("/sys/kernel/btf/vmlinux").unwrap()).unwrap();
        assert_eq!(mapped.type_count(), read.type_count());
        assert_eq!(
            kernel_offsets(&mapped).unwrap(),
            kernel_offsets(&read).unwrap()
        );
    }
}
