//! The kernel's preemption model, as user space can read it. fentry/fexit programs run with
//! migration disabled but preemption enabled: on a fully preemptible kernel a task may be switched
//! out in the middle of one, and the kernel then skips that program's runs on the CPU until it
//! resumes (the program's recursion misses), and pidvirt's other programs there find the CPU's
//! state held (map_errors.preempted). Tracepoint programs run with preemption off. So where the
//! kernel is fully preemptible, `--attach auto` takes tracepoints.

use std::fmt;

/// How the kernel preempts kernel code (kernel/Kconfig.preempt; `preempt=` at boot where
/// CONFIG_PREEMPT_DYNAMIC).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Model {
    None,
    Voluntary,
    Full,
    Lazy,
    Rt,
}

impl Model {
    fn by_name(name: &str) -> Option<Model> {
        Some(match name {
            "none" => Model::None,
            "voluntary" => Model::Voluntary,
            "full" => Model::Full,
            "lazy" => Model::Lazy,
            "rt" => Model::Rt,
            _ => return None,
        })
    }

    /// Whether kernel code, a BPF program run from a trampoline among it, may be preempted
    /// anywhere (lazy preemption too: at the next tick at the latest).
    pub fn preemptible(self) -> bool {
        matches!(self, Model::Full | Model::Lazy | Model::Rt)
    }
}

impl fmt::Display for Model {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Model::None => "none",
            Model::Voluntary => "voluntary",
            Model::Full => "full",
            Model::Lazy => "lazy",
            Model::Rt => "rt",
        })
    }
}

/// The model and where it was read (None: unknown, with what was missing).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Preemption {
    pub model: Option<Model>,
    pub source: String,
}

impl fmt::Display for Preemption {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.model {
            Some(m) => write!(f, "{m} ({})", self.source),
            None => write!(f, "unknown ({})", self.source),
        }
    }
}

impl Preemption {
    pub fn preemptible(&self) -> bool {
        self.model.is_some_and(Model::preemptible)
    }
}

/// This kernel's preemption model: debugfs's `sched/preempt` where mounted (the running mode),
/// else the build (`uname -v`) and, for a kernel whose mode is chosen at boot, `preempt=` on its
/// command line or the build's default from its config (/boot/config-RELEASE, /proc/config.gz).
pub fn detect() -> Preemption {
    let read = |path: &str| std::fs::read_to_string(path).ok();
    let config = read(&format!("/boot/config-{}", crate::procscan::kernel_release())).or_else(|| {
        use std::io::Read as _;
        let mut text = String::new();
        let gz = std::fs::File::open("/proc/config.gz").ok()?;
        flate2::read::GzDecoder::new(gz).read_to_string(&mut text).ok()?;
        Some(text)
    });
    from_sources(
        read("/sys/kernel/debug/sched/preempt").as_deref(),
        read("/proc/sys/kernel/version").as_deref().unwrap_or(""),
        read("/proc/cmdline").as_deref().unwrap_or(""),
        config.as_deref(),
    )
}

/// [`detect`] over the files' contents.
pub fn from_sources(debugfs: Option<&str>, version: &str, cmdline: &str, config: Option<&str>) -> Preemption {
    let found = |model, source: &str| Preemption { model: Some(model), source: source.to_string() };
    // "none voluntary (full) lazy": the running mode in parentheses.
    if let Some(m) = debugfs
        .and_then(|s| s.split_whitespace().find_map(|w| w.strip_prefix('(')?.strip_suffix(')')))
        .and_then(Model::by_name)
    {
        return found(m, "/sys/kernel/debug/sched/preempt");
    }
    // UTS_VERSION names the build: "PREEMPT_RT", "PREEMPT_DYNAMIC", "PREEMPT_LAZY", "PREEMPT",
    // or nothing (no forced preemption).
    let words: Vec<&str> = version.split_whitespace().collect();
    if words.contains(&"PREEMPT_RT") {
        return found(Model::Rt, "uname -v: PREEMPT_RT");
    }
    if words.contains(&"PREEMPT_DYNAMIC") {
        if let Some(m) =
            cmdline.split_whitespace().find_map(|w| w.strip_prefix("preempt=")).and_then(Model::by_name)
        {
            return found(m, "/proc/cmdline: preempt=");
        }
        let default = config.and_then(|c| {
            [
                ("CONFIG_PREEMPT_NONE=y", Model::None),
                ("CONFIG_PREEMPT_VOLUNTARY=y", Model::Voluntary),
                ("CONFIG_PREEMPT=y", Model::Full),
                ("CONFIG_PREEMPT_LAZY=y", Model::Lazy),
            ]
            .into_iter()
            .find(|(line, _)| c.lines().any(|l| l.trim() == *line))
            .map(|(_, m)| m)
        });
        return match default {
            Some(m) => found(m, "the build's default (its config), no preempt= at boot"),
            None => Preemption {
                model: None,
                source: "a dynamic build (PREEMPT_DYNAMIC) with no preempt= at boot, no debugfs, no config in /boot or /proc".into(),
            },
        };
    }
    if words.contains(&"PREEMPT_LAZY") {
        return found(Model::Lazy, "uname -v: PREEMPT_LAZY");
    }
    if words.contains(&"PREEMPT") {
        return found(Model::Full, "uname -v: PREEMPT");
    }
    found(Model::Voluntary, "uname -v: no PREEMPT (none or voluntary)")
}

#[cfg(test)]
mod tests {
    use super::*;

    const DYNAMIC: &str = "#1 SMP PREEMPT_DYNAMIC Debian 6.12.118-1~deb12u1 (2026-10-01)";

    #[test]
    fn the_running_mode_in_debugfs_comes_first() {
        let p = from_sources(Some("none voluntary (full) lazy\n"), DYNAMIC, "preempt=voluntary", None);
        assert_eq!(p.model, Some(Model::Full));
        assert!(p.preemptible());
    }

    #[test]
    fn a_dynamic_build_takes_preempt_at_boot_then_its_config() {
        assert_eq!(from_sources(None, DYNAMIC, "console=ttyS0 preempt=full", None).model, Some(Model::Full));
        assert_eq!(from_sources(None, DYNAMIC, "preempt=lazy", None).model, Some(Model::Lazy));
        let config =
            "# CONFIG_PREEMPT_NONE is not set\nCONFIG_PREEMPT_VOLUNTARY=y\n# CONFIG_PREEMPT is not set\n";
        let p = from_sources(None, DYNAMIC, "console=ttyS0", Some(config));
        assert_eq!(p.model, Some(Model::Voluntary));
        assert!(!p.preemptible());
        let unknown = from_sources(None, "#1 SMP PREEMPT_DYNAMIC @0", "quiet", None);
        assert_eq!(unknown.model, None);
        assert!(!unknown.preemptible());
        assert!(unknown.to_string().starts_with("unknown"));
    }

    #[test]
    fn a_static_build_is_named_by_its_version() {
        assert_eq!(from_sources(None, "#1 SMP PREEMPT_RT Tue", "", None).model, Some(Model::Rt));
        assert_eq!(from_sources(None, "#1 SMP PREEMPT Tue", "", None).model, Some(Model::Full));
        assert_eq!(from_sources(None, "#1 SMP Tue", "preempt=full", None).model, Some(Model::Voluntary));
    }
}
