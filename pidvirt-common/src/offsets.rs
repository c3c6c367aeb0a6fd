//! Kernel structure offsets, resolved at start-up from the running kernel's BTF
//! (/sys/kernel/btf/vmlinux) and handed to the kernel programs as one read-only global.
//! Nothing here is hard-coded: a zeroed value means "not resolved", and the programs refuse
//! to read task structures until `magic` says the struct was filled in.

/// Value of [`KernelOffsets::magic`] once the daemon has filled the struct.
pub const OFFSETS_MAGIC: u32 = 0x7069_6476; // "pidv"

/// Layout of syscall tracepoint records (`struct syscall_trace_enter { struct trace_entry ent;
/// int nr; unsigned long args[]; }` and `struct syscall_trace_exit { ...; int nr; long ret; }`).
/// The programs read these fields straight from their context, which the verifier only allows at
/// offsets fixed at compile time; the daemon checks them against every hooked tracepoint's format
/// at start-up and refuses to run where they differ.
pub mod syscall_record {
    pub const NR: u32 = 8;
    pub const ARGS: u32 = 16;
    pub const RET: u32 = 16;
}

/// Byte offsets (and the few sizes and enum values the programs need).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    /// task_struct.pid (pid_t, host tid)
    pub task_pid: u32,
    /// task_struct.tgid (pid_t, host tgid)
    pub task_tgid: u32,
    /// task_struct.real_parent (struct task_struct *)
    pub task_real_parent: u32,
    /// task_struct.group_leader (struct task_struct *)
    pub task_group_leader: u32,
    /// task_struct.thread_pid (struct pid *)
    pub task_thread_pid: u32,
    /// task_struct.start_time (u64, ns, monotonic)
    pub task_start_time: u32,
    /// task_struct.comm (char[16])
    pub task_comm: u32,
    /// task_struct.signal (struct signal_struct *)
    pub task_signal: u32,
    /// task_struct.nsproxy (struct nsproxy *)
    pub task_nsproxy: u32,
    /// task_struct.cgroups (struct css_set *)
    pub task_cgroups: u32,
    /// task_struct.ptrace (unsigned int)
    pub task_ptrace: u32,
    /// task_struct.flags (unsigned int: PF_*)
    pub task_flags: u32,
    /// task_struct.stack (void *): the task's kernel stack, the key of its per-CPU copies
    /// (crate::CallerCache)
    pub task_stack: u32,
    /// signal_struct.live.counter (atomic_t: int): threads of the group not yet exited
    pub signal_live: u32,
    /// signal_struct.pids (struct pid *[PIDTYPE_MAX])
    pub signal_pids: u32,
    /// pid.level (unsigned int)
    pub pid_level: u32,
    /// pid.numbers (struct upid[])
    pub pid_numbers: u32,
    /// sizeof(struct upid)
    pub upid_size: u32,
    /// upid.nr (int)
    pub upid_nr: u32,
    /// upid.ns (struct pid_namespace *)
    pub upid_ns: u32,
    /// pid_namespace.level (unsigned int)
    pub pidns_level: u32,
    /// pid_namespace.parent (struct pid_namespace *)
    pub pidns_parent: u32,
    /// pid_namespace.ns.inum (unsigned int): offset of `ns` plus offset of `inum` in ns_common
    pub pidns_inum: u32,
    /// pid_namespace.child_reaper (struct task_struct *): the namespace's init
    pub pidns_child_reaper: u32,
    /// pt_regs.{di,si,dx,r10}: a syscall's arguments 0..=3 (x86-64 syscall ABI), for the fentry
    /// and fexit programs on `__x64_sys_*` and for clone's exit on the tracepoint (the caller's
    /// saved registers)
    pub pt_regs_di: u32,
    pub pt_regs_si: u32,
    pub pt_regs_dx: u32,
    pub pt_regs_r10: u32,
    /// task_struct.fs (struct fs_struct *)
    pub task_fs: u32,
    /// task_struct.files (struct files_struct *)
    pub task_files: u32,
    /// fs_struct.pwd.dentry (struct dentry *): the working directory
    pub fs_pwd_dentry: u32,
    /// files_struct.fdt (struct fdtable *)
    pub files_fdt: u32,
    /// fdtable.max_fds (unsigned int)
    pub fdtable_max_fds: u32,
    /// fdtable.fd (struct file **)
    pub fdtable_fd: u32,
    /// file.f_path.dentry (struct dentry *)
    pub file_dentry: u32,
    /// dentry.d_sb (struct super_block *)
    pub dentry_sb: u32,
    /// super_block.s_magic (unsigned long)
    pub sb_magic: u32,
    /// super_block.s_root (struct dentry *)
    pub sb_root: u32,
    /// super_block.s_fs_info (void *: a procfs's struct proc_fs_info)
    pub sb_fs_info: u32,
    /// proc_fs_info.pid_ns (struct pid_namespace *): whose numbers a procfs shows
    pub proc_fs_info_pid_ns: u32,
    /// nsproxy.mnt_ns (struct mnt_namespace *)
    pub nsproxy_mnt_ns: u32,
    /// mnt_namespace.ns.inum (unsigned int)
    pub mnt_ns_inum: u32,
    /// css_set.dfl_cgrp (struct cgroup *)
    pub css_set_dfl_cgrp: u32,
    /// cgroup.kn (struct kernfs_node *)
    pub cgroup_kn: u32,
    /// cgroup.level (int)
    pub cgroup_level: u32,
    /// cgroup.ancestors (struct cgroup *[])
    pub cgroup_ancestors: u32,
    /// kernfs_node.id (u64): the cgroup id
    pub kernfs_node_id: u32,
    /// enum pid_type: PIDTYPE_TGID, PIDTYPE_PGID, PIDTYPE_SID (indices into signal_struct.pids)
    pub pidtype_tgid: u32,
    pub pidtype_pgid: u32,
    pub pidtype_sid: u32,
    /// 1 when `pid.numbers` is a flexible array (`struct upid numbers[]`, 6.5 and later): the
    /// verifier then lets programs load `numbers[i]` for i > 0 straight through a BTF pointer.
    /// 0 where it is declared `numbers[1]` (6.1): levels above 0 are read with
    /// bpf_probe_read_kernel.
    pub pid_numbers_flexible: u32,
    /// Nanoseconds per clock tick of /proc/PID/stat start times (USER_HZ).
    pub tick_ns: u32,
    /// Possible CPUs (/sys/devices/system/cpu/possible): those whose per-CPU copies a task's
    /// exit looks at (crate::copies).
    pub possible_cpus: u32,
    /// [`OFFSETS_MAGIC`] once filled.
    pub magic: u32,

    // ---- pids inside structures (issue 15) ----
    /// pt_regs.r8: a syscall's argument 4 (perf_event_open's flags)
    pub pt_regs_r8: u32,
    /// file.private_data (void *): a socket's `struct socket`, a tty's `struct tty_file_private`
    pub file_private_data: u32,
    /// file.f_owner: a `struct fown_struct *` (6.12 and later) or the struct itself (before)
    pub file_f_owner: u32,
    /// 1 when file.f_owner is a pointer
    pub file_f_owner_is_ptr: u32,
    /// fown_struct.pid (struct pid *)
    pub fown_pid: u32,
    /// fown_struct.pid_type (enum pid_type)
    pub fown_pid_type: u32,
    /// pid.tasks (struct hlist_head[PIDTYPE_MAX]): whether a task still uses the pid
    pub pid_tasks: u32,
    /// socket.sk (struct sock *)
    pub socket_sk: u32,
    /// sock.sk_peer_pid (struct pid *)
    pub sock_peer_pid: u32,
    /// sock.__sk_common.skc_family (unsigned short)
    pub sock_family: u32,
    /// tty_file_private.tty (struct tty_struct *)
    pub tty_file_tty: u32,
    /// tty_struct.ctrl.pgrp and tty_struct.ctrl.session (struct pid *)
    pub tty_pgrp: u32,
    pub tty_session: u32,
    /// tty_struct.link (struct tty_struct *): the other side of a pty
    pub tty_link: u32,
    /// task_struct.ptraced (struct list_head): the tracer's tracees
    pub task_ptraced: u32,
    /// task_struct.ptrace_entry (struct list_head): a tracee's node in its tracer's list
    pub task_ptrace_entry: u32,
    /// task_struct.last_siginfo (kernel_siginfo_t *): a stopped tracee's stop
    pub task_last_siginfo: u32,
    /// kernel_siginfo.si_code (int)
    pub siginfo_code: u32,
    /// kernel_siginfo.si_signo (int) and its sender's pid (`_sifields._kill._pid`, which
    /// `_rt._pid` and `_sigchld._pid` share)
    pub siginfo_signo: u32,
    pub siginfo_pid: u32,
}

impl KernelOffsets {
    pub const fn zeroed() -> Self {
        Self {
            task_pid: 0,
            task_tgid: 0,
            task_real_parent: 0,
            task_group_leader: 0,
            task_thread_pid: 0,
            task_start_time: 0,
            task_comm: 0,
            task_signal: 0,
            task_nsproxy: 0,
            task_cgroups: 0,
            task_ptrace: 0,
            task_flags: 0,
            task_stack: 0,
            signal_live: 0,
            signal_pids: 0,
            pid_level: 0,
            pid_numbers: 0,
            upid_size: 0,
            upid_nr: 0,
            upid_ns: 0,
            pidns_level: 0,
            pidns_parent: 0,
            pidns_inum: 0,
            pidns_child_reaper: 0,
            pt_regs_di: 0,
            pt_regs_si: 0,
            pt_regs_dx: 0,
            pt_regs_r10: 0,
            task_fs: 0,
            task_files: 0,
            fs_pwd_dentry: 0,
            files_fdt: 0,
            fdtable_max_fds: 0,
            fdtable_fd: 0,
            file_dentry: 0,
            dentry_sb: 0,
            sb_magic: 0,
            sb_root: 0,
            sb_fs_info: 0,
            proc_fs_info_pid_ns: 0,
            nsproxy_mnt_ns: 0,
            mnt_ns_inum: 0,
            css_set_dfl_cgrp: 0,
            cgroup_kn: 0,
            cgroup_level: 0,
            cgroup_ancestors: 0,
            kernfs_node_id: 0,
            pidtype_tgid: 0,
            pidtype_pgid: 0,
            pidtype_sid: 0,
            pid_numbers_flexible: 0,
            tick_ns: 0,
            possible_cpus: 0,
            magic: 0,
            pt_regs_r8: 0,
            file_private_data: 0,
            file_f_owner: 0,
            file_f_owner_is_ptr: 0,
            fown_pid: 0,
            fown_pid_type: 0,
            pid_tasks: 0,
            socket_sk: 0,
            sock_peer_pid: 0,
            sock_family: 0,
            tty_file_tty: 0,
            tty_pgrp: 0,
            tty_session: 0,
            tty_link: 0,
            task_ptraced: 0,
            task_ptrace_entry: 0,
            task_last_siginfo: 0,
            siginfo_code: 0,
            siginfo_signo: 0,
            siginfo_pid: 0,
        }
    }
}
