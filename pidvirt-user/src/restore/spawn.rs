//! `pidvirt spawn`'s own logic: the `set_tid` array from `--vpid` and `--pid-at`, the task
//! that holds a chosen pid, and what the kernel's refusals mean.

use std::collections::BTreeMap;

use crate::procscan::{self, ChainCache};

/// Why the chosen numbers cannot be asked for.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PidsError {
    #[error("pid {0} is out of range: pids run from 1 to pid_max - 1 ({max})", max = .1 - 1)]
    OutOfRange(u32, u32),
    #[error(
        "--pid-at {level}={number}: the container's pid namespace is at level {container_level}, so it has \
         levels 0 (the host) to {container_level}; --pid-at takes the outer ones, 0 to {outer}",
        outer = container_level.saturating_sub(1)
    )]
    NoSuchLevel { level: u32, number: u32, container_level: u32 },
    #[error("--pid-at {level}=...: the container's own level is chosen with --vpid")]
    OwnLevel { level: u32 },
    #[error("--pid-at {0}=... is given twice")]
    Twice(u32),
    #[error("--pid-at needs --vpid: clone3 set_tid takes the pids from the innermost level outwards")]
    NoVpid,
    #[error(
        "--pid-at {given}=... needs --pid-at {missing}=... too: clone3 set_tid takes a pid at every level \
         from the container's outwards to the outermost one chosen"
    )]
    Gap { given: u32, missing: u32 },
}

/// `LEVEL=N` of `--pid-at`.
pub fn parse_pid_at(s: &str) -> Result<(u32, u32), String> {
    let (l, n) = s.split_once('=').ok_or_else(|| format!("expected LEVEL=PID, got {s:?}"))?;
    let level = l.trim().parse().map_err(|_| format!("level {l:?} is not a number"))?;
    let pid = n.trim().parse().map_err(|_| format!("pid {n:?} is not a number"))?;
    Ok((level, pid))
}

/// The `set_tid` array (innermost level first) for a container at `level`: `vpid` there, and
/// each `(level, pid)` of `pid_at` at an outer level; empty when nothing is chosen.
pub fn set_tid(
    level: u32,
    vpid: Option<u32>,
    pid_at: &[(u32, u32)],
    pid_max: u32,
) -> Result<Vec<u32>, PidsError> {
    let mut at = BTreeMap::new();
    for &(l, n) in pid_at {
        if l > level {
            return Err(PidsError::NoSuchLevel { level: l, number: n, container_level: level });
        }
        if l == level {
            return Err(PidsError::OwnLevel { level: l });
        }
        if at.insert(l, n).is_some() {
            return Err(PidsError::Twice(l));
        }
    }
    let Some(vpid) = vpid else {
        return if at.is_empty() { Ok(vec![]) } else { Err(PidsError::NoVpid) };
    };
    at.insert(level, vpid);
    if let Some(&n) = at.values().find(|&&n| n == 0 || n >= pid_max) {
        return Err(PidsError::OutOfRange(n, pid_max));
    }
    let outermost = *at.keys().next().unwrap_or(&level);
    let mut out = Vec::new();
    for l in (outermost..=level).rev() {
        match at.get(&l) {
            Some(&n) => out.push(n),
            None => return Err(PidsError::Gap { given: outermost, missing: l }),
        }
    }
    Ok(out)
}

/// The tasks that hold the numbers of `set_tid` (innermost first, the innermost at `level`) in
/// the namespaces of `chain` (pid namespace inodes, outermost first, up to `level`): one line
/// each, naming the task.
pub fn holders(set_tid: &[u32], level: u32, chain: &[u32]) -> Vec<String> {
    let mut cache = ChainCache::default();
    let mut out = Vec::new();
    for t in procscan::scan() {
        let Some(levels) = cache.levels(&t) else { continue };
        for (i, &n) in set_tid.iter().enumerate() {
            let Some(l) = (level as usize).checked_sub(i) else { continue };
            if t.nspid.get(l) == Some(&n) && levels.get(l).is_some_and(|ns| chain.get(l) == Some(ns)) {
                let kind = if t.host_tid == t.host_pid { "process" } else { "thread" };
                out.push(format!(
                    "pid {n} at level {l} (pid namespace {}) is taken by {kind} `{}` (host pid {}, host tid {}, NSpid {})",
                    chain[l],
                    t.comm,
                    t.host_pid,
                    t.host_tid,
                    t.nspid.iter().map(u32::to_string).collect::<Vec<_>>().join(" ")
                ));
            }
        }
    }
    out
}

/// What a refusal of clone3 with `set_tid` means, in words (`holders` for EEXIST).
pub fn explain(errno: i32, set_tid: &[u32], holders: &[String]) -> String {
    let asked = format!("clone3 with set_tid {set_tid:?}");
    match errno {
        libc::ENOSYS => {
            format!("{asked}: this kernel has no clone3 (ENOSYS; clone3 is Linux 5.3, set_tid 5.5)")
        }
        libc::E2BIG => format!("{asked}: this kernel's clone3 has no set_tid (E2BIG; set_tid is Linux 5.5)"),
        libc::EEXIST if !holders.is_empty() => format!("a chosen pid is in use: {}", holders.join("; ")),
        libc::EEXIST => format!(
            "{asked}: a chosen pid is in use (EEXIST) though no task has it: a process group or session whose \
             leader exited still holds it, or its task just ended"
        ),
        libc::EINVAL => format!(
            "{asked} was refused (EINVAL): each pid must be below its namespace's pid_max, given at every \
             level from the innermost outwards, in a namespace that still has an init; a kernel whose clone3 \
             lacks set_tid (before 5.5) answers so too"
        ),
        libc::EPERM => format!(
            "{asked} was refused (EPERM): choosing pids needs CAP_SYS_ADMIN (or CAP_CHECKPOINT_RESTORE) over \
             the user namespace that owns each pid namespace a pid is chosen in"
        ),
        libc::ENOMEM => format!(
            "{asked}: the pid namespace takes no new task (ENOMEM): its init has exited and the namespace is \
             ending"
        ),
        libc::EAGAIN => {
            format!("{asked}: a limit on tasks was reached (EAGAIN: pids.max, RLIMIT_NPROC, threads-max)")
        }
        e => format!("{asked}: {}", std::io::Error::from_raw_os_error(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pids_run_from_the_container_outwards() {
        assert_eq!(set_tid(2, None, &[], 32768), Ok(vec![]));
        assert_eq!(set_tid(2, Some(7), &[], 32768), Ok(vec![7]));
        assert_eq!(set_tid(2, Some(7), &[(1, 77)], 32768), Ok(vec![7, 77]));
        assert_eq!(set_tid(2, Some(7), &[(0, 9000), (1, 77)], 32768), Ok(vec![7, 77, 9000]));
        assert_eq!(set_tid(0, Some(9000), &[], 32768), Ok(vec![9000]));
        assert_eq!(set_tid(2, Some(7), &[(0, 9000)], 32768), Err(PidsError::Gap { given: 0, missing: 1 }));
        assert_eq!(set_tid(2, None, &[(1, 77)], 32768), Err(PidsError::NoVpid));
        assert_eq!(
            set_tid(1, Some(7), &[(2, 5)], 32768),
            Err(PidsError::NoSuchLevel { level: 2, number: 5, container_level: 1 })
        );
        assert_eq!(set_tid(1, Some(7), &[(1, 5)], 32768), Err(PidsError::OwnLevel { level: 1 }));
        assert_eq!(set_tid(2, Some(7), &[(1, 5), (1, 6)], 32768), Err(PidsError::Twice(1)));
        assert_eq!(set_tid(1, Some(0), &[], 32768), Err(PidsError::OutOfRange(0, 32768)));
        assert_eq!(set_tid(1, Some(7), &[(0, 32768)], 32768), Err(PidsError::OutOfRange(32768, 32768)));
        assert_eq!(set_tid(1, Some(32767), &[], 32768), Ok(vec![32767]));
        let msg = PidsError::NoSuchLevel { level: 3, number: 5, container_level: 1 }.to_string();
        assert!(msg.contains("levels 0 (the host) to 1"), "{msg}");
        assert!(PidsError::OutOfRange(0, 32768).to_string().contains("1 to pid_max - 1 (32767)"));
    }

    #[test]
    fn pid_at_parses() {
        assert_eq!(parse_pid_at("0=4242"), Ok((0, 4242)));
        assert!(parse_pid_at("0:4242").is_err());
        assert!(parse_pid_at("x=1").is_err());
        assert!(parse_pid_at("1=-3").is_err());
    }

    #[test]
    fn refusals_say_what_the_kernel_lacks_or_who_holds_the_pid() {
        assert!(explain(libc::ENOSYS, &[5], &[]).contains("this kernel has no clone3"));
        assert!(explain(libc::E2BIG, &[5], &[]).contains("has no set_tid"));
        let held = explain(libc::EEXIST, &[5], &["pid 5 at level 1 ... is taken by process `sleep`".into()]);
        assert!(held.starts_with("a chosen pid is in use: pid 5 at level 1"), "{held}");
        assert!(explain(libc::EEXIST, &[5], &[]).contains("leader exited"));
        assert!(explain(libc::EPERM, &[5], &[]).contains("CAP_SYS_ADMIN"));
        assert!(explain(libc::ENOMEM, &[5], &[]).contains("its init has exited"));
        assert!(explain(libc::ESRCH, &[5], &[]).contains("No such process"));
    }

    #[test]
    fn finds_the_holder_of_our_own_pid() {
        let me = std::process::id();
        let chain: Vec<u32> = procscan::pidns_chain(me).unwrap().into_iter().rev().collect();
        let level = chain.len() as u32 - 1;
        let mut own_nspid = procscan::read_task(me, me, None).unwrap().nspid;
        own_nspid.reverse();
        let lines = holders(&own_nspid, level, &chain);
        assert!(lines.iter().any(|l| l.contains(&format!("host pid {me},"))), "{lines:?}");
    }
}
