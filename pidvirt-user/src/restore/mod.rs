//! Restore with chosen pids (issue 16; seeds 000 and 004: OpenVZ's chosen vpids, clone_with_pids'
//! pids "per nesting level, the array works upwards from the deepest namespace", today clone3
//! `set_tid`).
//!
//! - `snapshot`: the format of a container's process tree, and its validation;
//! - `capture`: a snapshot from the daemon's rows and /proc;
//! - `schedule`: the fork schedule that remakes a tree (parents first, leaders before members);
//! - `compare`: the differences between two trees;
//! - `spawn`: the pids `pidvirt spawn` asks for, and what the kernel's refusals mean;
//! - `protocol`, `helper`, `sys`: the single-threaded helper process that forks (spawn and
//!   restore), how the CLI drives it, and the system calls it makes.

pub mod capture;
pub mod compare;
pub mod helper;
pub mod protocol;
pub mod schedule;
pub mod snapshot;
pub mod spawn;
pub mod sys;
