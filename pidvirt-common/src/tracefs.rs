//! tracefs: where the syscall tracepoints live, and the layout of their records.
//!
//! Every syscalls:sys_enter_* record stores the syscall's arguments as 8-byte slots after
//! `__syscall_nr`, every sys_exit_* record its `ret`. The offsets are read from the format files
//! (not assumed) and checked for every tracepoint pidvirt hooks.

use std::{
    format,
    path::{Path, PathBuf},
    string::{String, ToString},
    vec::Vec,
};

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted and mounting it at {path} failed: {source}")]
    Mount { path: String, source: std::io::Error },
    #[error("tracepoint {0} does not exist on this kernel")]
    Missing(String),
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {msg}")]
    Format { path: String, msg: String },
}

/// A field of a tracepoint format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatField {
    pub name: String,
    /// The declaration without the name and any array suffix (`const char *`, `pid_t`).
    pub ty: String,
    pub offset: u32,
    pub size: u32,
}

/// Parses the `field:` lines of a tracepoint `format` file.
pub fn parse_format(text: &str) -> Vec<FormatField> {
    text.lines()
        .filter_map(|line| {
            let line = line.trim();
            let decl = line.strip_prefix("field:")?;
            let mut parts = decl.split(';').map(str::trim);
            let decl = parts.next()?;
            let mut offset = None;
            let mut size = None;
            for p in parts {
                if let Some(v) = p.strip_prefix("offset:") {
                    offset = v.parse().ok();
                } else if let Some(v) = p.strip_prefix("size:") {
                    size = v.parse().ok();
                }
            }
            // The name is the last identifier of the declaration, before any array suffix.
            let decl = decl.split('[').next()?;
            let name = decl.rsplit(|c: char| c.is_whitespace() || c == '*').next()?;
            let ty = decl[..decl.len() - name.len()].trim_end();
            Some(FormatField { name: name.to_string(), ty: ty.to_string(), offset: offset?, size: size? })
        })
        .collect()
}

/// The mounted tracefs, mounting it if needed (as any tracer would).
pub fn tracefs_root() -> Result<PathBuf, TracefsError> {
    for p in ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"] {
        if Path::new(p).join("events").is_dir() {
            return Ok(PathBuf::from(p));
        }
    }
    let path = "/sys/kernel/tracing";
    let target = std::ffi::CString::new(path).expect("no NUL");
    let fstype = c"tracefs";
    // SAFETY: NUL-terminated strings, no mount data.
    let rc = unsafe { libc::mount(fstype.as_ptr(), target.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
    if rc != 0 {
        return Err(TracefsError::Mount { path: path.into(), source: std::io::Error::last_os_error() });
    }
    tracing::info!("mounted tracefs at {path}");
    Ok(PathBuf::from(path))
}

/// The directory of syscall tracepoint `event` (`sys_enter_kill`), whether it exists or not.
pub fn syscall_event(root: &Path, event: &str) -> PathBuf {
    root.join("events/syscalls").join(event)
}

/// The fields of syscall tracepoint `event`'s records.
pub fn read_format(root: &Path, event: &str) -> Result<Vec<FormatField>, TracefsError> {
    let dir = syscall_event(root, event);
    if !dir.is_dir() {
        return Err(TracefsError::Missing(format!("syscalls:{event}")));
    }
    let path = dir.join("format");
    let text = std::fs::read_to_string(&path)
        .map_err(|source| TracefsError::Read { path: path.display().to_string(), source })?;
    Ok(parse_format(&text))
}

/// Where the fields of syscall tracepoint records are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SyscallLayout {
    /// `__syscall_nr` (4 bytes) in sys_enter and sys_exit records.
    pub nr: u32,
    /// `args[0]` in sys_enter records (8 bytes per argument).
    pub args: u32,
    /// `ret` in sys_exit records (8 bytes).
    pub ret: u32,
}

/// The layout of syscall tracepoint records, checked on every hooked tracepoint (`enter` and
/// `exit` name the syscalls hooked at each side).
pub fn syscall_layout<'a>(
    root: &Path,
    enter: impl IntoIterator<Item = &'a str>,
    exit: impl IntoIterator<Item = &'a str>,
) -> Result<SyscallLayout, TracefsError> {
    let mut nr_offset = None;
    let mut check_nr = |event: &str, fields: &[FormatField]| -> Result<usize, TracefsError> {
        let bad = |msg: String| TracefsError::Format { path: format!("syscalls:{event}"), msg };
        let i = fields
            .iter()
            .position(|f| f.name == "__syscall_nr")
            .ok_or_else(|| bad("no __syscall_nr".into()))?;
        let f = &fields[i];
        if *nr_offset.get_or_insert(f.offset) != f.offset || f.size != 4 {
            return Err(bad(format!("__syscall_nr at offset {} size {}", f.offset, f.size)));
        }
        Ok(i)
    };
    let mut args_offset = None;
    for name in enter {
        let event = format!("sys_enter_{name}");
        let fields = read_format(root, &event)?;
        let nr = check_nr(&event, &fields)?;
        let bad = |msg: String| TracefsError::Format { path: format!("syscalls:{event}"), msg };
        let args = &fields[nr + 1..];
        let first = args.first().ok_or_else(|| bad("no argument".into()))?.offset;
        let expected = *args_offset.get_or_insert(first);
        for (i, f) in args.iter().enumerate() {
            if f.offset != expected + 8 * i as u32 || f.size != 8 {
                return Err(bad(format!(
                    "argument {i} `{}` at offset {} size {}, expected offset {} size 8",
                    f.name,
                    f.offset,
                    f.size,
                    expected + 8 * i as u32
                )));
            }
        }
    }
    let mut ret_offset = None;
    for name in exit {
        let event = format!("sys_exit_{name}");
        let fields = read_format(root, &event)?;
        check_nr(&event, &fields)?;
        let ret = fields.iter().find(|f| f.name == "ret").ok_or_else(|| TracefsError::Format {
            path: format!("syscalls:{event}"),
            msg: "no `ret` field".into(),
        })?;
        if *ret_offset.get_or_insert(ret.offset) != ret.offset || ret.size != 8 {
            return Err(TracefsError::Format {
                path: format!("syscalls:{event}"),
                msg: format!("`ret` at offset {} size {}", ret.offset, ret.size),
            });
        }
    }
    Ok(SyscallLayout {
        nr: nr_offset.unwrap_or(0),
        args: args_offset.unwrap_or(0),
        ret: ret_offset.unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KILL: &str = "name: sys_enter_kill\nID: 251\nformat:\n\
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;\n\
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;\n\
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;\n\n\
\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;\n\
\tfield:pid_t pid;\toffset:16;\tsize:8;\tsigned:0;\n\
\tfield:int sig;\toffset:24;\tsize:8;\tsigned:0;\n\n\
print fmt: \"pid: 0x%08lx, sig: 0x%08lx\", ((unsigned long)(REC->pid)), ((unsigned long)(REC->sig))\n";

    #[test]
    fn parses_a_syscall_format() {
        let f = parse_format(KILL);
        let names: Vec<&str> = f.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "__syscall_nr",
                "pid",
                "sig"
            ]
        );
        assert_eq!(f[5], FormatField { name: "pid".into(), ty: "pid_t".into(), offset: 16, size: 8 });
        let f = parse_format(
            "\tfield:struct siginfo * infop;\toffset:32;\tsize:8;\tsigned:0;\n\tfield:char comm[16];\toffset:8;\tsize:16;\tsigned:0;",
        );
        assert_eq!((f[0].name.as_str(), f[0].ty.as_str()), ("infop", "struct siginfo *"));
        assert_eq!(f[1], FormatField { name: "comm".into(), ty: "char".into(), offset: 8, size: 16 });
        let f = parse_format("\tfield:const char * filename;\toffset:24;\tsize:8;\tsigned:0;");
        assert_eq!((f[0].name.as_str(), f[0].ty.as_str()), ("filename", "const char *"));
    }

    #[test]
    fn layout_of_the_running_kernel() {
        let root = tracefs_root().expect("tracefs");
        let l = syscall_layout(&root, ["kill", "waitid", "capget"], ["getpid", "wait4"]).unwrap();
        assert_eq!((l.nr, l.args, l.ret), (8, 16, 16));
        let e = syscall_layout(&root, ["no_such_syscall"], []).unwrap_err();
        assert!(e.to_string().contains("syscalls:sys_enter_no_such_syscall does not exist"), "{e}");
    }
}
