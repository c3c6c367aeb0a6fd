//! Kernel structure offsets, read from the running kernel's BTF at start-up.
//!
//! Rust eBPF has no CO-RE, so every offset the programs use is computed here and handed to
//! them as the `OFFSETS` global ([`pidvirt_common::KernelOffsets`]). Fields nested in anonymous
//! structs/unions (e.g. `struct pid`'s pidfs union, randomized task_struct layouts) are found by
//! descending into the anonymous members. A missing type or field is an error naming it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;

use btf_rs::{Btf, BtfType, Type};
use pidvirt_common::{KernelOffsets, offsets::OFFSETS_MAGIC};

/// Where the running kernel exposes its BTF.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

#[derive(Debug, thiserror::Error)]
pub enum OffsetError {
    #[error(
        "kernel BTF not available at {path}: {source} (pidvirt needs a kernel built with \
         CONFIG_DEBUG_INFO_BTF=y)"
    )]
    NoBtf { path: String, source: std::io::Error },
    #[error("cannot parse kernel BTF: {0}")]
    Parse(String),
    #[error("kernel BTF has no type `{0}`")]
    MissingType(String),
    #[error("kernel BTF: `{ty}` has no field `{field}`")]
    MissingField { ty: String, field: String },
    #[error("kernel BTF: enum `{ty}` has no value `{name}`")]
    MissingEnumValue { ty: String, name: String },
    #[error("kernel BTF: `{ty}.{field}` is {found} bytes, pidvirt expects {expected}")]
    UnexpectedSize { ty: String, field: String, expected: usize, found: usize },
    #[error("kernel BTF: `{ty}.{field}` is a bitfield; pidvirt needs a byte-addressable field")]
    Bitfield { ty: String, field: String },
    #[error("kernel BTF: `{ty}.{field}` is at byte {found}, pidvirt expects {expected}")]
    Misplaced { ty: String, field: String, expected: u32, found: u32 },
}

/// A resolved struct member.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Field {
    /// Byte offset from the start of the outer struct.
    pub offset: u32,
    /// Size in bytes of the member's type (for a flexible array, of one element).
    pub size: usize,
    /// Type id of the member.
    pub type_id: u32,
}

/// Parsed kernel BTF with the look-ups pidvirt needs.
pub struct KernelBtf {
    btf: Btf,
    /// Type ids by name, for the names looked up so far: on the mapped file each look-up by name
    /// is a pass over all of the kernel's types, so [`KernelBtf::index`] finds many in one pass.
    ids: RefCell<HashMap<String, Vec<u32>>>,
    /// Passes over the types so far.
    passes: Cell<u32>,
}

impl KernelBtf {
    /// Maps the file rather than parsing all of it (a few look-ups need a fraction of the
    /// kernel's ~100k types); kernels older than 6.16 cannot mmap it: read and parse it all.
    pub fn from_file(path: &Path) -> Result<Self, OffsetError> {
        if let Err(source) = std::fs::metadata(path) {
            return Err(OffsetError::NoBtf { path: path.display().to_string(), source });
        }
        match Btf::from_file_with_backend(path, btf_rs::Backend::Mmap) {
            Ok(btf) => Ok(Self::new(btf)),
            Err(e) => {
                tracing::debug!("cannot mmap {} ({e}); reading it", path.display());
                let bytes = std::fs::read(path)
                    .map_err(|source| OffsetError::NoBtf { path: path.display().to_string(), source })?;
                Self::from_bytes(&bytes)
            }
        }
    }

    pub fn from_bytes(bytes: &[u8]) -> Result<Self, OffsetError> {
        let btf = Btf::from_bytes(bytes).map_err(|e| OffsetError::Parse(e.to_string()))?;
        Ok(Self::new(btf))
    }

    fn new(btf: Btf) -> Self {
        Self { btf, ids: RefCell::default(), passes: Cell::new(0) }
    }

    /// Finds the types named `names` in one pass over the kernel's types.
    pub fn index(&self, names: &[&str]) -> Result<(), OffsetError> {
        if names.is_empty() {
            return Ok(());
        }
        let alternatives: Vec<String> = names.iter().map(|n| regex::escape(n)).collect();
        let re = regex::Regex::new(&format!("^(?:{})$", alternatives.join("|")))
            .map_err(|e| OffsetError::Parse(format!("type names {names:?}: {e}")))?;
        self.passes.set(self.passes.get() + 1);
        let found = self.btf.resolve_ids_by_regex(&re).map_err(|e| OffsetError::Parse(e.to_string()))?;
        let mut ids = self.ids.borrow_mut();
        for name in names {
            ids.insert((*name).to_string(), Vec::new());
        }
        // Each name's ids in id order, as a look-up by name answers (the pass goes in id order on
        // the mapped file; in name order, each name's ids in id order, on a parsed one).
        for id in found {
            let ty = self.btf.resolve_type_by_id(id).map_err(|e| OffsetError::Parse(e.to_string()))?;
            let Some(name) = ty.as_btf_type().and_then(|t| self.btf.resolve_name(t).ok()) else { continue };
            if let Some(list) = ids.get_mut(&name) {
                list.push(id);
            }
        }
        Ok(())
    }

    /// The types named `name`, in id order.
    fn types_named(&self, name: &str) -> Result<Vec<Type>, OffsetError> {
        let parse = |e: btf_rs::Error| OffsetError::Parse(format!("type `{name}`: {e}"));
        let known = self.ids.borrow().get(name).cloned();
        let ids = if let Some(ids) = known {
            ids
        } else {
            self.passes.set(self.passes.get() + 1);
            let ids = self.btf.resolve_ids_by_name(name).map_err(parse)?;
            self.ids.borrow_mut().insert(name.to_string(), ids.clone());
            ids
        };
        ids.into_iter().map(|id| self.btf.resolve_type_by_id(id).map_err(parse)).collect()
    }

    /// The (complete, not forward-declared) struct or union named `name`, or that a typedef
    /// named `name` stands for (`atomic_t`).
    fn composite(&self, name: &str) -> Result<btf_rs::Struct, OffsetError> {
        self.types_named(name)?
            .into_iter()
            .find_map(|t| match self.strip(t) {
                Type::Struct(s) | Type::Union(s) => Some(s),
                _ => None,
            })
            .ok_or_else(|| OffsetError::MissingType(name.to_string()))
    }

    fn member_name(&self, m: &btf_rs::Member) -> String {
        self.btf.resolve_name(m).unwrap_or_default()
    }

    /// Skips typedefs and qualifiers.
    fn strip(&self, mut ty: Type) -> Type {
        for _ in 0..32 {
            match &ty {
                Type::Typedef(_)
                | Type::Volatile(_)
                | Type::Const(_)
                | Type::Restrict(_)
                | Type::TypeTag(_) => match self.btf.resolve_chained_type(ty.as_btf_type().unwrap()) {
                    Ok(next) => ty = next,
                    Err(_) => return ty,
                },
                _ => return ty,
            }
        }
        ty
    }

    /// Size in bytes of type `id` (arrays: element size times length; flexible arrays: one element).
    fn size_of(&self, id: u32) -> usize {
        let Ok(ty) = self.btf.resolve_type_by_id(id) else {
            return 0;
        };
        match self.strip(ty) {
            Type::Int(i) => i.size(),
            Type::Ptr(_) => 8,
            Type::Enum(e) => e.size(),
            Type::Enum64(e) => e.size(),
            Type::Struct(s) | Type::Union(s) => s.size(),
            Type::Array(a) => {
                let elem = a.get_type_id().map_or(0, |t| self.size_of(t));
                if a.len() == 0 { elem } else { elem * a.len() }
            }
            Type::Float(f) => f.size(),
            _ => 0,
        }
    }

    /// Whether type `id` is a flexible array (`T name[]`, no element count).
    pub fn is_flexible_array(&self, id: u32) -> bool {
        match self.btf.resolve_type_by_id(id).map(|t| self.strip(t)) {
            Ok(Type::Array(a)) => a.len() == 0,
            _ => false,
        }
    }

    /// Finds `field` in struct `ty`, descending into anonymous struct/union members.
    pub fn field(&self, ty: &str, field: &str) -> Result<Field, OffsetError> {
        let s = self.composite(ty)?;
        self.find_in(&s, field, 0, 0)?
            .ok_or_else(|| OffsetError::MissingField { ty: ty.to_string(), field: field.to_string() })
    }

    fn find_in(
        &self,
        s: &btf_rs::Struct,
        field: &str,
        base_bits: u32,
        depth: u32,
    ) -> Result<Option<Field>, OffsetError> {
        if depth > 8 {
            return Ok(None);
        }
        for m in &s.members {
            let name = self.member_name(m);
            let bits = base_bits + m.bit_offset();
            let type_id = m.get_type_id().unwrap_or(0);
            if name == field {
                if m.bitfield_size().unwrap_or(0) != 0 || !bits.is_multiple_of(8) {
                    return Err(OffsetError::Bitfield { ty: String::new(), field: field.into() });
                }
                return Ok(Some(Field { offset: bits / 8, size: self.size_of(type_id), type_id }));
            }
            if name.is_empty()
                && let Ok(t) = self.btf.resolve_type_by_id(type_id)
                && let Type::Struct(inner) | Type::Union(inner) = self.strip(t)
                && let Some(found) = self.find_in(&inner, field, bits, depth + 1)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Offset of `ty.field`, checking the field's size.
    pub fn offset(&self, ty: &str, field: &str, size: usize) -> Result<u32, OffsetError> {
        let f = self.field(ty, field).map_err(|e| match e {
            OffsetError::Bitfield { field, .. } => OffsetError::Bitfield { ty: ty.into(), field },
            other => other,
        })?;
        if f.size != size {
            return Err(OffsetError::UnexpectedSize {
                ty: ty.into(),
                field: field.into(),
                expected: size,
                found: f.size,
            });
        }
        Ok(f.offset)
    }

    /// Size of struct `ty`.
    pub fn struct_size(&self, ty: &str) -> Result<usize, OffsetError> {
        Ok(self.composite(ty)?.size())
    }

    /// Value of enumerator `name` of enum `ty`.
    pub fn enum_value(&self, ty: &str, name: &str) -> Result<u32, OffsetError> {
        let missing = || OffsetError::MissingEnumValue { ty: ty.into(), name: name.into() };
        let e = self
            .types_named(ty)?
            .into_iter()
            .find_map(|t| match t {
                Type::Enum(e) => Some(e),
                _ => None,
            })
            .ok_or_else(|| OffsetError::MissingType(ty.into()))?;
        e.members
            .iter()
            .find(|m| self.btf.resolve_name(*m).is_ok_and(|n| n == name))
            .map(btf_rs::EnumMember::val)
            .ok_or_else(missing)
    }
}

// ---- pids inside structures (issue 15) ----

impl KernelBtf {
    /// Offset of a member reached through named members: `path[0]` in struct `ty`, then each
    /// next name in the (possibly anonymous) struct type of the previous member
    /// (`tty_struct.ctrl.pgrp`, `sock.__sk_common.skc_family`), checking the last one's size.
    pub fn path_offset(&self, ty: &str, path: &[&str], size: usize) -> Result<u32, OffsetError> {
        let missing = |i: usize| OffsetError::MissingField { ty: ty.into(), field: path[..=i].join(".") };
        let mut f = self.field(ty, path[0])?;
        let mut offset = f.offset;
        for (i, name) in path.iter().enumerate().skip(1) {
            let Ok(Type::Struct(inner) | Type::Union(inner)) =
                self.btf.resolve_type_by_id(f.type_id).map(|t| self.strip(t))
            else {
                return Err(missing(i));
            };
            f = self.find_in(&inner, name, 0, 0)?.ok_or_else(|| missing(i))?;
            offset += f.offset;
        }
        if f.size != size {
            return Err(OffsetError::UnexpectedSize {
                ty: ty.into(),
                field: path.join("."),
                expected: size,
                found: f.size,
            });
        }
        Ok(offset)
    }

    /// Whether member `ty.field` is a pointer.
    pub fn is_pointer(&self, ty: &str, field: &str) -> Result<bool, OffsetError> {
        let f = self.field(ty, field)?;
        Ok(matches!(self.btf.resolve_type_by_id(f.type_id).map(|t| self.strip(t)), Ok(Type::Ptr(_))))
    }
}

/// The offsets of the crossings inside structures (file owners, sockets, ttys, tracees; the file
/// table itself is resolved with the /proc paths' offsets), filled into `o`.
fn resolve_structures(btf: &KernelBtf, o: &mut KernelOffsets) -> Result<(), OffsetError> {
    let f_owner_is_ptr = btf.is_pointer("file", "f_owner")?;
    let fown_size = btf.struct_size("fown_struct")?;
    o.pt_regs_r8 = btf.offset("pt_regs", "r8", 8)?;
    o.file_private_data = btf.offset("file", "private_data", PTR)?;
    o.file_f_owner = btf.offset("file", "f_owner", if f_owner_is_ptr { PTR } else { fown_size })?;
    o.file_f_owner_is_ptr = u32::from(f_owner_is_ptr);
    o.fown_pid = btf.offset("fown_struct", "pid", PTR)?;
    o.fown_pid_type = btf.offset("fown_struct", "pid_type", 4)?;
    o.pid_tasks = btf.field("pid", "tasks")?.offset;
    o.socket_sk = btf.offset("socket", "sk", PTR)?;
    o.sock_peer_pid = btf.offset("sock", "sk_peer_pid", PTR)?;
    o.sock_family = btf.path_offset("sock", &["__sk_common", "skc_family"], 2)?;
    o.tty_file_tty = btf.offset("tty_file_private", "tty", PTR)?;
    o.tty_pgrp = btf.path_offset("tty_struct", &["ctrl", "pgrp"], PTR)?;
    o.tty_session = btf.path_offset("tty_struct", &["ctrl", "session"], PTR)?;
    o.tty_link = btf.offset("tty_struct", "link", PTR)?;
    o.task_ptraced = btf.offset("task_struct", "ptraced", 2 * PTR)?;
    o.task_ptrace_entry = btf.offset("task_struct", "ptrace_entry", 2 * PTR)?;
    o.task_last_siginfo = btf.offset("task_struct", "last_siginfo", PTR)?;
    o.siginfo_code = btf.offset("kernel_siginfo", "si_code", 4)?;
    o.siginfo_signo = btf.offset("kernel_siginfo", "si_signo", 4)?;
    o.siginfo_pid = btf.path_offset("kernel_siginfo", &["_sifields", "_kill", "_pid"], 4)?;
    // The programs read every sender's pid there, whichever member of the union carries it.
    for shared in [["_sifields", "_rt", "_pid"], ["_sifields", "_sigchld", "_pid"]] {
        let found = btf.path_offset("kernel_siginfo", &shared, 4)?;
        if found != o.siginfo_pid {
            let field = shared.join(".");
            return Err(OffsetError::Misplaced {
                ty: "kernel_siginfo".into(),
                field,
                expected: o.siginfo_pid,
                found,
            });
        }
    }
    Ok(())
}

const PTR: usize = 8;

/// Every kernel type [`resolve`] reads, found in one pass.
const TYPES_READ: &[&str] = &[
    "atomic_t",
    "cgroup",
    "css_set",
    "dentry",
    "fdtable",
    "file",
    "files_struct",
    "fown_struct",
    "fs_struct",
    "kernel_siginfo",
    "kernfs_node",
    "mnt_namespace",
    "ns_common",
    "nsproxy",
    "path",
    "pid",
    "pid_namespace",
    "pid_type",
    "proc_fs_info",
    "pt_regs",
    "signal_struct",
    "sock",
    "socket",
    "super_block",
    "task_struct",
    "tty_file_private",
    "tty_struct",
    "upid",
];

/// Computes every offset the kernel programs need. `tick_ns` is the length of a /proc clock tick.
pub fn resolve(btf: &KernelBtf, tick_ns: u32) -> Result<KernelOffsets, OffsetError> {
    btf.index(TYPES_READ)?;
    let pid_type_max = btf.enum_value("pid_type", "PIDTYPE_MAX")? as usize;
    let signal_pids = btf.field("signal_struct", "pids")?;
    if signal_pids.size != PTR * pid_type_max {
        return Err(OffsetError::UnexpectedSize {
            ty: "signal_struct".into(),
            field: "pids".into(),
            expected: PTR * pid_type_max,
            found: signal_pids.size,
        });
    }
    let ns = btf.field("pid_namespace", "ns")?;
    let inum = btf.offset("ns_common", "inum", 4)?;
    let path_dentry = btf.offset("path", "dentry", PTR)?;
    let upid_size = btf.struct_size("upid")?;
    // The programs read a whole `struct upid { int nr; struct pid_namespace *ns; }` at once.
    if upid_size != 16 {
        return Err(OffsetError::UnexpectedSize {
            ty: "upid".into(),
            field: "(whole struct)".into(),
            expected: 16,
            found: upid_size,
        });
    }
    let numbers = btf.field("pid", "numbers")?;
    if numbers.size != upid_size {
        return Err(OffsetError::UnexpectedSize {
            ty: "pid".into(),
            field: "numbers".into(),
            expected: upid_size,
            found: numbers.size,
        });
    }
    let mut o = KernelOffsets {
        task_pid: btf.offset("task_struct", "pid", 4)?,
        task_tgid: btf.offset("task_struct", "tgid", 4)?,
        task_real_parent: btf.offset("task_struct", "real_parent", PTR)?,
        task_group_leader: btf.offset("task_struct", "group_leader", PTR)?,
        task_thread_pid: btf.offset("task_struct", "thread_pid", PTR)?,
        task_start_time: btf.offset("task_struct", "start_time", 8)?,
        task_comm: btf.offset("task_struct", "comm", 16)?,
        task_signal: btf.offset("task_struct", "signal", PTR)?,
        task_nsproxy: btf.offset("task_struct", "nsproxy", PTR)?,
        task_cgroups: btf.offset("task_struct", "cgroups", PTR)?,
        task_ptrace: btf.offset("task_struct", "ptrace", 4)?,
        task_flags: btf.offset("task_struct", "flags", 4)?,
        task_stack: btf.offset("task_struct", "stack", PTR)?,
        signal_live: btf.offset("signal_struct", "live", 4)? + btf.offset("atomic_t", "counter", 4)?,
        signal_pids: signal_pids.offset,
        pid_level: btf.offset("pid", "level", 4)?,
        pid_numbers: numbers.offset,
        upid_size: upid_size as u32,
        upid_nr: btf.offset("upid", "nr", 4)?,
        upid_ns: btf.offset("upid", "ns", PTR)?,
        pidns_level: btf.offset("pid_namespace", "level", 4)?,
        pidns_parent: btf.offset("pid_namespace", "parent", PTR)?,
        pidns_inum: ns.offset + inum,
        pidns_child_reaper: btf.offset("pid_namespace", "child_reaper", PTR)?,
        pt_regs_di: btf.offset("pt_regs", "di", 8)?,
        pt_regs_si: btf.offset("pt_regs", "si", 8)?,
        pt_regs_dx: btf.offset("pt_regs", "dx", 8)?,
        pt_regs_r10: btf.offset("pt_regs", "r10", 8)?,
        task_fs: btf.offset("task_struct", "fs", PTR)?,
        task_files: btf.offset("task_struct", "files", PTR)?,
        fs_pwd_dentry: btf.field("fs_struct", "pwd")?.offset + path_dentry,
        files_fdt: btf.offset("files_struct", "fdt", PTR)?,
        fdtable_max_fds: btf.offset("fdtable", "max_fds", 4)?,
        fdtable_fd: btf.offset("fdtable", "fd", PTR)?,
        file_dentry: btf.field("file", "f_path")?.offset + path_dentry,
        dentry_sb: btf.offset("dentry", "d_sb", PTR)?,
        sb_magic: btf.offset("super_block", "s_magic", 8)?,
        sb_root: btf.offset("super_block", "s_root", PTR)?,
        sb_fs_info: btf.offset("super_block", "s_fs_info", PTR)?,
        proc_fs_info_pid_ns: btf.offset("proc_fs_info", "pid_ns", PTR)?,
        nsproxy_mnt_ns: btf.offset("nsproxy", "mnt_ns", PTR)?,
        mnt_ns_inum: btf.field("mnt_namespace", "ns")?.offset + inum,
        css_set_dfl_cgrp: btf.offset("css_set", "dfl_cgrp", PTR)?,
        cgroup_kn: btf.offset("cgroup", "kn", PTR)?,
        cgroup_level: btf.offset("cgroup", "level", 4)?,
        cgroup_ancestors: btf.offset("cgroup", "ancestors", PTR)?,
        kernfs_node_id: btf.offset("kernfs_node", "id", 8)?,
        pidtype_tgid: btf.enum_value("pid_type", "PIDTYPE_TGID")?,
        pidtype_pgid: btf.enum_value("pid_type", "PIDTYPE_PGID")?,
        pidtype_sid: btf.enum_value("pid_type", "PIDTYPE_SID")?,
        pid_numbers_flexible: u32::from(btf.is_flexible_array(numbers.type_id)),
        tick_ns,
        magic: OFFSETS_MAGIC,
        ..KernelOffsets::zeroed()
    };
    resolve_structures(btf, &mut o)?;
    Ok(o)
}

/// Reads the running kernel's BTF and resolves the offsets.
pub fn resolve_running_kernel(tick_ns: u32) -> Result<KernelOffsets, OffsetError> {
    resolve(&KernelBtf::from_file(Path::new(VMLINUX_BTF))?, tick_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal BTF blob builder for the error paths (the kernel's own BTF is tested below).
    #[derive(Default)]
    struct Builder {
        types: Vec<u8>,
        strings: Vec<u8>,
        next_id: u32,
    }

    impl Builder {
        fn new() -> Self {
            Self { types: vec![], strings: vec![0], next_id: 1 }
        }
        fn s(&mut self, name: &str) -> u32 {
            if name.is_empty() {
                return 0;
            }
            let off = self.strings.len() as u32;
            self.strings.extend_from_slice(name.as_bytes());
            self.strings.push(0);
            off
        }
        fn push_u32(&mut self, v: u32) {
            self.types.extend_from_slice(&v.to_le_bytes());
        }
        fn int(&mut self, name: &str, size: u32) -> u32 {
            let n = self.s(name);
            self.push_u32(n);
            self.push_u32(1 << 24); // BTF_KIND_INT
            self.push_u32(size);
            self.push_u32(size * 8); // encoding 0, offset 0, bits
            self.id()
        }
        fn ptr(&mut self, to: u32) -> u32 {
            self.push_u32(0);
            self.push_u32(2 << 24); // BTF_KIND_PTR
            self.push_u32(to);
            self.id()
        }
        /// BTF_KIND_ARRAY of `len` elements of `elem` (0: a flexible array).
        fn array(&mut self, elem: u32, index: u32, len: u32) -> u32 {
            self.push_u32(0);
            self.push_u32(3 << 24);
            self.push_u32(0);
            self.push_u32(elem);
            self.push_u32(index);
            self.push_u32(len);
            self.id()
        }
        /// kind 4 = struct, 5 = union; members: (name, type, byte offset).
        fn composite(&mut self, kind: u32, name: &str, size: u32, members: &[(&str, u32, u32)]) -> u32 {
            let n = self.s(name);
            self.push_u32(n);
            self.push_u32((kind << 24) | members.len() as u32);
            self.push_u32(size);
            for (mname, ty, off) in members {
                let mn = self.s(mname);
                self.push_u32(mn);
                self.push_u32(*ty);
                self.push_u32(off * 8);
            }
            self.id()
        }
        fn id(&mut self) -> u32 {
            self.next_id += 1;
            self.next_id - 1
        }
        fn build(&self) -> Vec<u8> {
            let mut out = vec![];
            out.extend_from_slice(&0xEB9F_u16.to_le_bytes());
            out.push(1); // version
            out.push(0); // flags
            out.extend_from_slice(&24u32.to_le_bytes()); // hdr_len
            out.extend_from_slice(&0u32.to_le_bytes()); // type_off
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes());
            out.extend_from_slice(&(self.types.len() as u32).to_le_bytes()); // str_off
            out.extend_from_slice(&(self.strings.len() as u32).to_le_bytes());
            out.extend_from_slice(&self.types);
            out.extend_from_slice(&self.strings);
            out
        }
    }

    fn synthetic() -> KernelBtf {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let ulong = b.int("long unsigned int", 8);
        // struct pid { int count; int level; union { long unsigned int ino; int x; }; struct upid numbers[]; }
        let upid = b.composite(4, "upid", 16, &[("nr", int, 0), ("ns", ulong, 8)]);
        let anon = b.composite(5, "", 8, &[("ino", ulong, 0), ("x", int, 0)]);
        let anon_struct = b.composite(4, "", 8, &[("stashed", ulong, 0)]);
        b.composite(
            4,
            "pid",
            40,
            &[
                ("count", int, 0),
                ("level", int, 4),
                ("", anon, 8),
                ("", anon_struct, 16),
                ("numbers", upid, 24),
            ],
        );
        let _ = b.ptr(upid);
        KernelBtf::from_bytes(&b.build()).expect("synthetic BTF parses")
    }

    #[test]
    fn finds_direct_and_anonymous_members() {
        let btf = synthetic();
        assert_eq!(btf.offset("pid", "level", 4).unwrap(), 4);
        // Inside an anonymous union, then an anonymous struct: offsets add up.
        assert_eq!(btf.offset("pid", "ino", 8).unwrap(), 8);
        assert_eq!(btf.offset("pid", "stashed", 8).unwrap(), 16);
        assert_eq!(btf.field("pid", "numbers").unwrap().offset, 24);
        assert_eq!(btf.field("pid", "numbers").unwrap().size, 16);
        assert_eq!(btf.struct_size("upid").unwrap(), 16);
    }

    /// `struct pid`'s `numbers` as 6.5+ declares it (`numbers[]`) and as 6.1 does (`numbers[1]`):
    /// only the first lets the programs load numbers[i > 0] directly.
    #[test]
    fn flexible_array_is_told_from_one_element_array() {
        let mut b = Builder::new();
        let int = b.int("int", 4);
        let upid = b.composite(4, "upid", 16, &[("nr", int, 0), ("ns", int, 8)]);
        let flexible = b.array(upid, int, 0);
        let one = b.array(upid, int, 1);
        b.composite(4, "pid", 24, &[("level", int, 4), ("numbers", flexible, 8)]);
        b.composite(4, "pid_61", 24, &[("level", int, 4), ("numbers", one, 8)]);
        let btf = KernelBtf::from_bytes(&b.build()).expect("parses");
        let f = btf.field("pid", "numbers").unwrap();
        assert_eq!((f.offset, f.size), (8, 16));
        assert!(btf.is_flexible_array(f.type_id));
        let f = btf.field("pid_61", "numbers").unwrap();
        assert_eq!((f.offset, f.size), (8, 16));
        assert!(!btf.is_flexible_array(f.type_id));
        assert!(!btf.is_flexible_array(int));
    }

    #[test]
    fn missing_type_and_field_are_named() {
        let btf = synthetic();
        let e = btf.field("task_struct", "pid").unwrap_err();
        assert_eq!(e.to_string(), "kernel BTF has no type `task_struct`");
        let e = btf.field("pid", "tasks").unwrap_err();
        assert_eq!(e.to_string(), "kernel BTF: `pid` has no field `tasks`");
        let e = btf.offset("pid", "level", 8).unwrap_err();
        assert!(matches!(e, OffsetError::UnexpectedSize { expected: 8, found: 4, .. }), "{e}");
        // The full resolution fails on the first missing piece, by name.
        let e = resolve(&btf, 10_000_000).unwrap_err();
        assert!(e.to_string().contains("pid_type"), "{e}");
    }

    #[test]
    fn garbage_is_a_parse_error() {
        assert!(matches!(KernelBtf::from_bytes(b"not btf"), Err(OffsetError::Parse(_))));
        let e = KernelBtf::from_file(Path::new("/nonexistent/vmlinux")).err().unwrap();
        assert!(e.to_string().contains("/nonexistent/vmlinux"), "{e}");
    }

    /// The running kernel's BTF: every offset resolves, and the layout facts every 6.x kernel
    /// shares hold (pid and tgid are adjacent, a upid is {int nr; struct pid_namespace *ns}).
    #[test]
    fn running_kernel_offsets_resolve() {
        let btf = KernelBtf::from_file(Path::new(VMLINUX_BTF)).expect("read /sys/kernel/btf/vmlinux");
        let o = resolve(&btf, 10_000_000).expect("resolve offsets from /sys/kernel/btf/vmlinux");
        // Every type read was found by the one pass of TYPES_READ, none by a pass of its own.
        assert_eq!(btf.passes.get(), 1);
        assert_eq!(o.magic, OFFSETS_MAGIC);
        assert_eq!(o.task_tgid, o.task_pid + 4);
        assert_eq!((o.upid_size, o.upid_nr, o.upid_ns), (16, 0, 8));
        assert_eq!((o.pidtype_tgid, o.pidtype_pgid, o.pidtype_sid), (1, 2, 3));
        assert!(o.pid_numbers > o.pid_level);
        assert!(o.task_thread_pid > 0 && o.task_signal > 0 && o.task_start_time > 0);
        // signal_struct begins { refcount_t sigcnt; atomic_t live; ... } on every 6.x kernel.
        assert_eq!(o.signal_live, 4);
        assert!(o.task_ptrace > 0);
        assert!(o.pidns_child_reaper > 0);
        // Issue 15: the structures behind pids handed out.
        assert_eq!(o.pt_regs_r8, 72);
        assert!(o.task_files > 0 && o.fdtable_fd > 0 && o.file_private_data > 0 && o.sock_peer_pid > 0);
        assert!(o.tty_pgrp > 0 && o.tty_session == o.tty_pgrp + 8 && o.tty_link > o.tty_session);
        // kernel_siginfo begins { int si_signo; int si_errno; int si_code; ... }.
        assert_eq!(o.siginfo_code, 8);
        // ... then the union, whose members begin with the sender's pid where they carry one.
        assert_eq!((o.siginfo_signo, o.siginfo_pid), (0, 16));
        // struct pt_regs of x86-64: r15 first, then ... r10 at 56, dx 96, si 104, di 112.
        assert_eq!((o.pt_regs_r10, o.pt_regs_dx, o.pt_regs_si, o.pt_regs_di), (56, 96, 104, 112));
        // struct path is { struct vfsmount *mnt; struct dentry *dentry; }; fdtable begins with
        // max_fds; proc_fs_info with pid_ns; mnt_namespace with its ns_common.
        assert!(o.fs_pwd_dentry > 0 && o.file_dentry > 0 && o.task_fs > 0 && o.task_files > 0);
        assert_eq!((o.fdtable_max_fds, o.fdtable_fd, o.proc_fs_info_pid_ns), (0, 8, 0));
        assert!(o.sb_magic > 0 && o.sb_root > 0 && o.sb_fs_info > 0 && o.dentry_sb > 0);
        assert!(o.nsproxy_mnt_ns > 0);
        // Cross-check with the offsets read independently (pahole/bpftool) on this very build,
        // recorded in ../shared/reference/pid-crossings.md; other kernels only get the invariants.
        if crate::procscan::kernel_release() == "6.18.44-fc-v769" {
            assert_eq!((o.pid_level, o.pid_numbers), (4, 144));
            assert_eq!((o.pidns_level, o.pidns_parent, o.pidns_inum), (64, 72, 136));
            assert_eq!((o.task_pid, o.task_tgid, o.task_thread_pid, o.task_signal), (1264, 1268, 1368, 1848));
            assert_eq!(o.signal_pids, 360);
        }
    }
}
