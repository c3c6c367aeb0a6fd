//! Rendering: each section's tables and notes (plain text for the terminal, markdown for the
//! files), its goals, and its part of the JSON document.

use std::{collections::BTreeMap, fmt::Write as _};

use pidvirt_common::{INLINE_LEVELS, catalogue::map};
use serde_json::{Value, json};

use super::{
    Options,
    measure::{
        Attach, AttachRun, Bench, KernelTimes, LEAK_SYSCALL, LEAK_VERDICT, LeakRun, MAPS, Machine, Mode,
        ProgTime, Snapshot, SyscallRuns, WORKLOADS, workload_label,
    },
    stats::{self, MemoryPerTask, SyscallSummary, Throughput, ratio, spread},
};

/// Output: a plain-text report (stdout) and the same as markdown.
#[derive(Default)]
pub struct Report {
    pub text: String,
    pub md: String,
}

/// What a run in a VM of `bench --vm` measured.
const EMULATED: &str = "In a VM under QEMU's software emulation (`cargo xtask bench --vm`): every time is the \
emulator's, many times the hardware's; only the modes' costs against each other on this kernel mean something.";

impl Report {
    /// The first line: where it was measured.
    pub fn header(&mut self, m: &Machine, cpus: usize, cpu: usize) {
        let _ = writeln!(
            self.text,
            "pidvirt bench: kernel {}, {cpus} CPUs ({}), load generator pinned to CPU {cpu}",
            m.kernel, m.cpu_model
        );
        let _ = writeln!(
            self.md,
            "Measured by `cargo xtask bench` on kernel {}, {cpus} CPUs ({}); load generator pinned to CPU {cpu}.",
            m.kernel, m.cpu_model
        );
        if m.emulated {
            self.note(EMULATED);
        }
    }
    fn heading(&mut self, s: &str) {
        let _ = writeln!(self.text, "\n== {s}");
        let _ = writeln!(self.md, "\n#### {s}\n");
    }
    fn note(&mut self, s: &str) {
        let _ = writeln!(self.text, "{s}");
        let _ = writeln!(self.md, "{s}\n");
    }
    fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
        for r in rows {
            for (i, c) in r.iter().enumerate() {
                widths[i] = widths[i].max(c.len());
            }
        }
        // Numeric columns right-aligned, text left-aligned.
        let numeric: Vec<bool> = (0..header.len())
            .map(|i| {
                i > 0
                    && rows.iter().all(|r| {
                        r[i] == "n/a"
                            || r[i].starts_with(|c: char| c.is_ascii_digit() || c == '+' || c == '-')
                    })
            })
            .collect();
        let line = |cells: Vec<String>| -> String {
            cells
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    if numeric[i] {
                        format!("{c:>w$}", w = widths[i])
                    } else {
                        format!("{c:<w$}", w = widths[i])
                    }
                })
                .collect::<Vec<_>>()
                .join("  ")
        };
        let _ = writeln!(self.text, "{}", line(header.iter().map(ToString::to_string).collect()));
        for r in rows {
            let _ = writeln!(self.text, "{}", line(r.clone()));
        }
        let _ = writeln!(self.md, "| {} |", header.join(" | "));
        let _ = writeln!(
            self.md,
            "|{}",
            numeric.iter().map(|n| if *n { " ---: |" } else { " --- |" }).collect::<String>()
        );
        for r in rows {
            let _ = writeln!(self.md, "| {} |", r.join(" | "));
        }
        self.md.push('\n');
    }
}

/// A goal of the benchmark, met or not (`None`: not applicable).
pub struct Goal {
    name: String,
    measured: String,
    target: String,
    pass: Option<bool>,
    /// The number judged, where there is one: what the summary of several runs takes the median
    /// of.
    figure: Option<Figure>,
    /// A wall-time fork+exit+wait goal whose rounds scattered more widely than the effect it
    /// judges: the in-kernel section judges it again ([`Rejudge`]).
    rejudge: Option<Rejudge>,
}

/// A goal's number, its unit and its limit.
#[derive(Clone, Copy, Debug)]
pub struct Figure {
    pub value: f64,
    pub unit: &'static str,
    pub limit: Limit,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    AtMost(f64),
    Below(f64),
    AtLeast(f64),
}

impl Limit {
    fn holds(self, v: f64) -> bool {
        match self {
            Limit::AtMost(l) => v <= l,
            Limit::Below(l) => v < l,
            Limit::AtLeast(l) => v >= l,
        }
    }
}

impl Figure {
    fn show(self, v: f64) -> String {
        match self.unit {
            "x" => format!("{v:.3}x"),
            unit => format!("{v:.1}{unit}"),
        }
    }
}

/// What a wall-time fork+exit+wait goal compares, for its judgement by the in-kernel times.
#[derive(Clone, Copy, Debug)]
pub enum Rejudge {
    /// pidvirt's addition against 1.3x the floor's (`floor_added`, ns): the programs' bodies
    /// (pidvirt minus floor, in the kernel) against 0.3x the floor's addition.
    WithinFloor { attach: Attach, floor_added: f64 },
    /// pidvirt's addition against the peer's: their in-kernel times.
    BelowPeer { attach: Attach },
    /// The rate against 0.9x bare (`bare` and `floor_added`, ns): bare over bare + the floor's
    /// addition + the programs' bodies.
    Rate { attach: Attach, bare: f64, floor_added: f64 },
}

impl Goal {
    fn new(
        name: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        pass: Option<bool>,
    ) -> Self {
        Self {
            name: name.into(),
            measured: measured.into(),
            target: target.into(),
            pass,
            figure: None,
            rejudge: None,
        }
    }

    /// A goal judged by `value` against `limit` (`None`: not measured, not applicable).
    fn judged(
        name: impl Into<String>,
        measured: impl Into<String>,
        target: impl Into<String>,
        value: Option<f64>,
        unit: &'static str,
        limit: Limit,
    ) -> Self {
        let figure = value.filter(|v| v.is_finite()).map(|value| Figure { value, unit, limit });
        let mut g = Self::new(name, measured, target, figure.map(|f| f.limit.holds(f.value)));
        g.figure = figure;
        g
    }

    fn verdict(&self) -> &'static str {
        verdict(self.pass)
    }
    fn json(&self) -> Value {
        json!({ "goal": self.name, "measured": self.measured, "target": self.target, "verdict": self.verdict(),
                "value": self.figure.map(|f| f.value) })
    }
}

fn verdict(pass: Option<bool>) -> &'static str {
    match pass {
        Some(true) => "PASS",
        Some(false) => "FAIL",
        None => "N/A",
    }
}

fn fmt_opt(v: Option<f64>, prec: usize, prefix_plus: bool) -> String {
    match v {
        Some(x) if prefix_plus => format!("{x:+.prec$}"),
        Some(x) => format!("{x:.prec$}"),
        None => "n/a".into(),
    }
}

/// "+median [p25..p75]" of per-round differences, `unit` after the median.
fn spread_cell(v: &[f64], unit: &str) -> String {
    match spread(v) {
        Some(s) => format!("{:+.1}{unit} [{:+.0}..{:+.0}]", s.median, s.p25, s.p75),
        None => "n/a".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Syscall overhead

pub fn syscalls(
    out: &mut Report,
    goals: &mut Vec<Goal>,
    b: &Bench,
    runs: &SyscallRuns,
    summary: &SyscallSummary,
) -> Value {
    out.heading("Syscall overhead (ns per call)");
    out.note(&overhead_note(b, runs, summary));
    let mut rows = Vec::new();
    let mut workloads = serde_json::Map::new();
    for (w, label, audited) in WORKLOADS {
        let (floor, ours, peer) = (
            summary.added_median(Mode::Floor, w),
            summary.added_median(Mode::Pidvirt, w),
            if summary.peer_ok { summary.added_median(Mode::Peer, w) } else { None },
        );
        let cell = |m| spread_cell(&summary.added(m, w), "");
        rows.push(vec![
            label.to_string(),
            fmt_opt(summary.rounds.median(Mode::Bare, w), 1, false),
            cell(Mode::Floor),
            cell(Mode::Pidvirt),
            if summary.peer_ok { cell(Mode::Peer) } else { "unavailable".into() },
            ratio(ours, floor).map_or("n/a".into(), |r| format!("{r:.2}x")),
            ratio(ours, peer).map_or("n/a".into(), |r| format!("{r:.2}x")),
        ]);
        workloads.insert(w.to_string(), workload_json(summary, w, label, audited));
    }
    out.note("Syscall programs on the syscall tracepoints (`--attach tracepoint`):");
    out.table(
        &["workload", "bare ns", "+floor ns", "+pidvirt ns", "+peer ns", "pidvirt/floor", "pidvirt/peer"],
        &rows,
    );
    fentry_table(out, b, summary);
    fork_notes(out, &b.opts, summary);
    for attach in Attach::ALL {
        match b.attach_measured(attach) {
            Ok(()) => attach_goals(goals, summary, attach),
            Err(why) => goals.push(Goal::new(
                format!("syscall overhead with the syscall programs on {}", attach_label(attach)),
                why,
                "measured",
                None,
            )),
        }
    }
    unaudited(out, goals, b, summary);
    if summary.perturbed_used() {
        out.note(&format!(
            "WARNING: {} of {} rounds ran while someone else had tracing programs attached: the numbers are \
             perturbed (bare then pays the tracepoint cost too). Rerun on a quiet machine.",
            summary.perturbed.len(),
            summary.run
        ));
    }
    out.note(&format!(
        "Time to attach (median): floor {} ms, pidvirt {} ms (until `status` answers), peer {} ms (until \
         bpftool perf show lists every probe){}.",
        fmt_opt(summary.attach_ms[&Mode::Floor], 0, false),
        fmt_opt(summary.attach_ms[&Mode::Pidvirt], 0, false),
        fmt_opt(summary.attach_ms[&Mode::Peer], 0, false),
        if b.fentry.is_ok() {
            format!(
                "; with fentry/fexit: floor {} ms, pidvirt {} ms",
                fmt_opt(summary.attach_ms[&Mode::FloorFentry], 0, false),
                fmt_opt(summary.attach_ms[&Mode::PidvirtFentry], 0, false)
            )
        } else {
            String::new()
        }
    ));
    syscalls_json(b, runs, summary, &workloads)
}

/// How an attach mode is named in the report.
fn attach_label(a: Attach) -> &'static str {
    match a {
        Attach::Tracepoint => "syscall tracepoints",
        Attach::Fentry => "fentry/fexit",
    }
}

/// The syscall overhead with the syscall programs on fentry/fexit, or why it was not measured.
fn fentry_table(out: &mut Report, b: &Bench, s: &SyscallSummary) {
    if let Err(why) = b.attach_measured(Attach::Fentry) {
        out.note(&format!("Syscall programs on fentry/fexit (`--attach fentry`): {why}."));
        return;
    }
    let (floor_m, ours_m) = Attach::Fentry.modes();
    let rows: Vec<Vec<String>> = WORKLOADS
        .iter()
        .map(|(w, label, _)| {
            let (floor, ours) = (s.added_median(floor_m, w), s.added_median(ours_m, w));
            vec![
                (*label).to_string(),
                fmt_opt(s.rounds.median(Mode::Bare, w), 1, false),
                spread_cell(&s.added(floor_m, w), ""),
                spread_cell(&s.added(ours_m, w), ""),
                ratio(ours, floor).map_or("n/a".into(), |r| format!("{r:.2}x")),
                spread_cell(&s.rounds.differences(ours_m, Mode::Pidvirt, w), ""),
            ]
        })
        .collect();
    out.note(
        "Syscall programs on fentry/fexit (`--attach fentry`; the lifecycle programs are the same tp_btf \
         programs in both modes), same rounds:",
    );
    out.table(
        &["workload", "bare ns", "+floor ns", "+pidvirt ns", "pidvirt/floor", "pidvirt: fentry - tracepoint"],
        &rows,
    );
}

/// The goals of one attach mode's syscall overhead.
fn attach_goals(goals: &mut Vec<Goal>, s: &SyscallSummary, attach: Attach) {
    let (floor_m, ours_m) = attach.modes();
    for (w, label, audited) in WORKLOADS {
        if !audited {
            continue;
        }
        let label = format!("{label}, {}", attach.name());
        let (floor, ours) = (s.added_median(floor_m, w), s.added_median(ours_m, w));
        let peer = if s.peer_ok { s.added_median(Mode::Peer, w) } else { None };
        let mut g = overhead_goals(&label, floor, ours, peer);
        if w == "fork" {
            // Per round: what each goal compares; noise when its spread is wider than its distance
            // from the limit.
            let within: Vec<f64> =
                s.added(ours_m, w).iter().zip(s.added(floor_m, w)).map(|(o, f)| o - 1.3 * f).collect();
            if let Some(floor_added) = floor {
                noisy(&mut g[0], &within, 0.0, Rejudge::WithinFloor { attach, floor_added });
            }
            if s.peer_ok {
                noisy(
                    &mut g[1],
                    &s.rounds.differences(ours_m, Mode::Peer, w),
                    0.0,
                    Rejudge::BelowPeer { attach },
                );
            }
        }
        goals.extend(g);
    }
    let rates = s.fork_rates(ours_m);
    let rate = stats::median(&rates);
    let mut g = Goal::judged(
        format!("fork+exit+wait rate with pidvirt ({}) >= 0.9x bare", attach.name()),
        match rate {
            Some(r) => format!("{r:.3}x [{}]", quartiles(&rates, 3)),
            None => "n/a".into(),
        },
        ">= 0.90x",
        rate,
        "x",
        Limit::AtLeast(0.9),
    );
    if let (Some(bare), Some(floor_added)) =
        (s.rounds.median(Mode::Bare, "fork"), s.added_median(floor_m, "fork"))
    {
        noisy(&mut g, &rates, 0.9, Rejudge::Rate { attach, bare, floor_added });
    }
    goals.push(g);
}

/// "p25..p75" of `v`.
fn quartiles(v: &[f64], prec: usize) -> String {
    match spread(v) {
        Some(s) => format!("{:.prec$}..{:.prec$}", s.p25, s.p75),
        None => "n/a".into(),
    }
}

/// Marks wall-time goal `g` for judgement by the in-kernel times when the per-round values `q`
/// of what it compares scatter (25th..75th percentile) more widely than their median is from
/// `limit`: the rounds then cannot tell which side of the limit the effect is on.
fn noisy(g: &mut Goal, q: &[f64], limit: f64, how: Rejudge) {
    let Some(sp) = spread(q) else { return };
    let (width, effect) = (sp.p75 - sp.p25, (sp.median - limit).abs());
    if width > effect {
        g.rejudge = Some(how);
        let _ = write!(
            g.measured,
            "; the rounds scatter over {width:.1} (25th..75th percentile), wider than the effect \
             ({effect:.1}): judged by the in-kernel times"
        );
    }
}

fn overhead_note(b: &Bench, runs: &SyscallRuns, s: &SyscallSummary) -> String {
    format!(
        "Every workload of every mode and round runs in ONE process pinned to CPU {}, the init of one pid \
         namespace (pidvirt-bench serve: a process's own layout, which fork copies, then weighs the same \
         on every mode); a round's value is the median of {} \
         batches' means of {} calls ({} batches of {} for fork+exit+wait, {} calls for the openat+close \
         workloads), timed with CLOCK_MONOTONIC. {} rounds ({}); the \
         modes alternate round by round (rotating order). bare: median ns per call with nothing attached; \
         +floor / +pidvirt / +peer: ns ADDED over bare (median of the per-round differences, \
         [25th..75th percentile] of them). floor = \
         EMPTY programs on exactly pidvirt's hooks; peer = bpftrace counting the same syscalls per \
         syscall and task, kill targets, fork/exit ({}).",
        b.cpu,
        b.opts.batches,
        b.opts.iters,
        b.opts.fork_batches,
        b.opts.fork_iters,
        b.opts.open_iters,
        s.rounds.len(),
        if s.perturbed_used() {
            format!("PERTURBED: only {} of {} ran with no one else tracing", s.clean, s.run)
        } else if s.perturbed.is_empty() {
            "no one else was tracing".to_string()
        } else {
            format!("{} perturbed round(s), when someone else was tracing, discarded", s.perturbed.len())
        },
        match (&b.peer, &runs.peer_error) {
            (Ok(script), None) => format!("{} tracepoints", script.tracepoints),
            (_, Some(e)) | (Err(e), _) => format!("UNAVAILABLE: {e}"),
        }
    )
}

/// The two goals of an audited workload: pidvirt's addition (`ours`) against the floor's and
/// the peer's.
fn overhead_goals(label: &str, floor: Option<f64>, ours: Option<f64>, peer: Option<f64>) -> [Goal; 2] {
    [
        within_floor(format!("{label}: pidvirt added <= 1.3x floor added"), ours, floor),
        Goal::judged(
            format!("{label}: pidvirt added below the peer's"),
            match (ours, peer) {
                (Some(p), Some(q)) if q > 0.0 => format!("{p:+.1} vs {q:+.1} ns"),
                (Some(p), Some(q)) => {
                    format!("no comparison: peer added {q:+.1} ns (noise), pidvirt {p:+.1}")
                }
                _ => "peer unavailable".into(),
            },
            "pidvirt < peer",
            // An addition at or below zero is noise (as for the ratios): nothing to compare.
            ratio(ours, peer),
            "x",
            Limit::Below(1.0),
        ),
    ]
}

/// The goal that pidvirt adds at most 1.3x what the floor adds (no ratio, and no verdict, when
/// the floor's addition is noise).
fn within_floor(name: String, ours: Option<f64>, floor: Option<f64>) -> Goal {
    let r = ratio(ours, floor);
    let (ours, floor) = (fmt_opt(ours, 1, true), fmt_opt(floor, 1, true));
    Goal::judged(
        name,
        match r {
            Some(r) => format!("{r:.2}x ({ours} vs {floor} ns)"),
            None => format!("no ratio: floor added {floor} ns (noise), pidvirt {ours} ns"),
        },
        "<= 1.30x",
        r,
        "x",
        Limit::AtMost(1.3),
    )
}

fn workload_json(summary: &SyscallSummary, w: &str, label: &str, audited: bool) -> Value {
    let (floor, ours) = (summary.added_median(Mode::Floor, w), summary.added_median(Mode::Pidvirt, w));
    let peer = if summary.peer_ok { summary.added_median(Mode::Peer, w) } else { None };
    let by_round: serde_json::Map<String, Value> = (summary.rounds.modes().into_iter())
        .map(|m| {
            let values = summary.rounds.values(m, w);
            (m.name().to_string(), if values.is_empty() { Value::Null } else { json!(values) })
        })
        .collect();
    let added = |m: &Mode| summary.added(*m, w);
    let others: Vec<Mode> = summary.rounds.modes().into_iter().filter(|m| *m != Mode::Bare).collect();
    let added_median: BTreeMap<&str, Option<f64>> =
        others.iter().map(|m| (m.name(), summary.added_median(*m, w))).collect();
    json!({
        "added_ns_median": added_median,
        "label": label, "audited": audited,
        "bare_ns": summary.rounds.median(Mode::Bare, w),
        "floor_ns": summary.rounds.median(Mode::Floor, w), "pidvirt_ns": summary.rounds.median(Mode::Pidvirt, w),
        "peer_ns": if summary.peer_ok { summary.rounds.median(Mode::Peer, w) } else { None },
        "floor_added_ns": floor, "pidvirt_added_ns": ours, "peer_added_ns": peer,
        "pidvirt_added_over_floor_added": ratio(ours, floor), "pidvirt_added_over_peer_added": ratio(ours, peer),
        "ns_per_call_by_round": by_round,
        "added_ns_by_round": others.iter().map(|m| (m.name(), added(m))).collect::<BTreeMap<_, _>>(),
        "added_ns_p25_p75": others.iter()
            .map(|m| (m.name(), [stats::quantile(&added(m), 0.25), stats::quantile(&added(m), 0.75)]))
            .collect::<BTreeMap<_, _>>(),
    })
}

/// How fork+exit+wait is measured, and its rate with pidvirt.
fn fork_notes(out: &mut Report, o: &Options, s: &SyscallSummary) {
    out.note(&format!(
        "fork+exit+wait: {} batches of {} per round, ~{:.0} ms each: long enough to hold the work the \
         kernel defers to RCU callbacks (freeing the task, and the programs on {}), short \
         enough that a burst of host noise spoils few of them; the median of their means is the round's \
         value. The in-kernel time of every program is broken down below (bpf_stats).",
        o.fork_batches,
        o.fork_iters,
        s.rounds.median(Mode::Bare, "fork").map_or(0.0, |ns| ns * o.fork_iters as f64 / 1e6),
        pidvirt_common::catalogue::Program::SchedProcessFree.name(),
    ));
    out.note(&format!(
        "fork+exit+wait rate with pidvirt: {} of bare (median of the rounds' ratios; {} vs {} per second)",
        s.fork_rate.map_or("n/a".into(), |r| format!("{r:.3}x")),
        fmt_opt(s.rounds.median(Mode::Pidvirt, "fork").map(|ns| 1e9 / ns), 0, false),
        fmt_opt(s.rounds.median(Mode::Bare, "fork").map(|ns| 1e9 / ns), 0, false),
    ));
}

/// Syscalls pidvirt does not audit: what the design taxes them with, against hooking them.
fn unaudited(out: &mut Report, goals: &mut Vec<Goal>, b: &Bench, s: &SyscallSummary) {
    out.heading("Syscalls pidvirt does not audit: what each design adds (ns per call)");
    out.note(
        "Per-syscall tracepoints (pidvirt's design) put a program on the audited syscalls only; every \
         other syscall pays just the kernel's slow path for traced syscalls. A design on the raw \
         sys_enter/sys_exit tracepoints runs a program on every syscall. Yardstick: EMPTY programs on \
         read's own sys_enter_read/sys_exit_read tracepoints, i.e. what hooking read would cost it. Same \
         rounds, same statistics as above.",
    );
    let cell = |m, w| spread_cell(&s.added(m, w), "");
    out.table(
        &["design (EMPTY programs unless pidvirt)", "+ns read (unaudited)", "+ns getpid (audited)"],
        &[
            vec![
                "per-syscall tracepoints: pidvirt's hooks (floor)".into(),
                cell(Mode::Floor, "read"),
                cell(Mode::Floor, "getpid"),
            ],
            vec!["pidvirt".into(), cell(Mode::Pidvirt, "read"), cell(Mode::Pidvirt, "getpid")],
            vec![
                "per-syscall tracepoints: read's own (read hooked)".into(),
                cell(Mode::ReadHooked, "read"),
                "-".into(),
            ],
            vec![
                "raw sys_enter/sys_exit (every syscall)".into(),
                cell(Mode::Raw, "read"),
                cell(Mode::Raw, "getpid"),
            ],
            if b.fentry.is_ok() {
                vec![
                    "fentry/fexit on pidvirt's syscall functions: pidvirt".into(),
                    cell(Mode::PidvirtFentry, "read"),
                    cell(Mode::PidvirtFentry, "getpid"),
                ]
            } else {
                vec![
                    "fentry/fexit on pidvirt's syscall functions: pidvirt".into(),
                    "unavailable".into(),
                    "unavailable".into(),
                ]
            },
        ],
    );
    let (p_read, f_read) = (s.added_median(Mode::Pidvirt, "read"), s.added_median(Mode::Floor, "read"));
    goals.push(within_floor(
        "read 1 B of /dev/zero (unaudited): pidvirt added <= 1.3x EMPTY programs on per-syscall tracepoints (floor)"
            .into(),
        p_read,
        f_read,
    ));
    out.note(&format!(
        "Neither pidvirt nor its floor attaches anything to read: what both add to it ({} and {} ns here) is \
         the kernel's slow path for syscalls while any syscall tracepoint is enabled, the same for both; their \
         difference per round is {}.",
        fmt_opt(p_read, 1, true),
        fmt_opt(f_read, 1, true),
        spread_cell(&s.rounds.differences(Mode::Pidvirt, Mode::Floor, "read"), " ns"),
    ));
    // With fentry/fexit no syscall tracepoint is enabled: an unaudited syscall should pay nothing,
    // i.e. a small part of what the tracepoints' slow path costs it.
    let name = "read 1 B of /dev/zero (unaudited), fentry: pidvirt added <= 0.1x what syscall tracepoints add (floor)";
    match b.attach_measured(Attach::Fentry) {
        Ok(()) => {
            let ours = s.added_median(Mode::PidvirtFentry, "read");
            let r = ratio(ours, f_read);
            goals.push(Goal::judged(
                name,
                format!("{} vs {} ns", fmt_opt(ours, 1, true), fmt_opt(f_read, 1, true)),
                "<= 0.10x",
                r,
                "x",
                Limit::AtMost(0.1),
            ));
        }
        Err(why) => goals.push(Goal::new(name, why, "<= 0.10x", None)),
    }
}

fn syscalls_json(
    b: &Bench,
    runs: &SyscallRuns,
    s: &SyscallSummary,
    workloads: &serde_json::Map<String, Value>,
) -> Value {
    let by_name = |m: &BTreeMap<Mode, f64>| m.iter().map(|(m, v)| (m.name(), *v)).collect::<BTreeMap<_, _>>();
    json!({
        "rounds_wanted": b.opts.rounds, "rounds_run": s.run, "rounds_used": s.rounds.len(),
        "clean_rounds": s.clean, "perturbed_rounds_used": s.perturbed_used(),
        "attach_ms_median": s.attach_ms.iter().map(|(m, v)| (m.name(), *v)).collect::<BTreeMap<_, _>>(),
        "all_rounds": runs.rounds.iter().enumerate().map(|(i, r)| json!({
            "round": i + 1, "foreign": r.foreign,
            "ns_per_call": r.ns.iter().map(|(m, v)| (m.name(), v)).collect::<BTreeMap<_, _>>(),
            "attach_ms": by_name(&r.attach_ms),
        })).collect::<Vec<_>>(),
        "batches": b.opts.batches, "iters": b.opts.iters, "fork_iters": b.opts.fork_iters,
        "fork_batches": b.opts.fork_batches, "open_iters": b.opts.open_iters,
        "cpu": b.cpu, "elapsed_s": runs.elapsed_s,
        "peer": { "available": s.peer_ok, "reason": runs.peer_error,
                  "tracepoints": b.peer.as_ref().ok().map(|p| p.tracepoints),
                  "script": b.peer.as_ref().ok().and_then(|p| std::fs::read_to_string(&p.path).ok()) },
        "workloads": workloads,
        "fork_rate_pidvirt_over_bare": s.fork_rate,
        "perturbed_rounds": s.perturbed.iter().map(|(round, foreign)| json!({ "round": round, "foreign": foreign }))
            .collect::<Vec<_>>(),
    })
}

// ---------------------------------------------------------------------------------------------
// 1b. In-kernel program time (bpf_stats)

pub fn kernel_time(
    out: &mut Report,
    goals: &mut Vec<Goal>,
    b: &Bench,
    k: &KernelTimes,
    per_run: f64,
) -> Value {
    out.heading("In-kernel program time per call (bpf_stats)");
    out.note(&format!(
        "The same workloads once more under each mode with the kernel's BPF run-time statistics on \
         (kernel.bpf_stats_enabled): the time spent INSIDE the programs, summed over every program run \
         during the workload, per call. It leaves out the hooks' own dispatch (which the floor's \
         added ns above is made of) and each run includes the statistics' own two clock reads: {per_run:.1} \
         ns per run, what the floor's EMPTY programs measure. pidvirt minus floor is what pidvirt's \
         program bodies cost: the part of its added ns above the floor's."
    ));
    let per_call = |m: Mode, w| k.pass(m, w).map(stats::per_call);
    let peer_ok = b.peer.is_ok();
    let mut header = vec!["workload", "floor ns", "pidvirt ns", "peer ns", "pidvirt - floor"];
    if b.fentry.is_ok() {
        header.extend(["floor ns (fentry)", "pidvirt ns (fentry)", "pidvirt - floor (fentry)"]);
    }
    let mut rows = Vec::new();
    for &(w, _) in &k.workloads {
        let cell = |m: Mode| match per_call(m, w) {
            Some((ns, runs)) => format!("{ns:.1} ({runs:.2} runs)"),
            None => "n/a".into(),
        };
        let bodies = |(floor, ours): (Mode, Mode)| match (per_call(ours, w), per_call(floor, w)) {
            (Some((p, _)), Some((f, _))) => format!("{:+.1}", p - f),
            _ => "n/a".into(),
        };
        let mut row = vec![
            workload_label(w).to_string(),
            cell(Mode::Floor),
            cell(Mode::Pidvirt),
            if peer_ok { cell(Mode::Peer) } else { "unavailable".into() },
            bodies(Attach::Tracepoint.modes()),
        ];
        if b.fentry.is_ok() {
            row.extend([cell(Mode::FloorFentry), cell(Mode::PidvirtFentry), bodies(Attach::Fentry.modes())]);
        }
        rows.push(row);
    }
    out.table(&header, &rows);
    if let Err(why) = b.attach_measured(Attach::Fentry) {
        out.note(&format!("Syscall programs on fentry/fexit: {why}."));
    }
    match &k.helper_call {
        Ok(c) => out.note(&format!(
            "One BPF helper call on this machine: {:+.1} ns per run (bpftrace on sys_exit_getpid, bpf_stats: \
             `{{ $t = curtask; }}` {:.1} ns against an empty probe's {:.1} ns). pidvirt's syscall programs \
             find their caller's copy by their context's stack, without one, once the caller has one on \
             the CPU (the workloads' callers do); a caller without makes one (bpf_get_current_task_btf).",
            c.one_call_ns - c.empty_ns,
            c.one_call_ns,
            c.empty_ns
        )),
        Err(why) => out.note(&format!("One BPF helper call's cost: not measured ({why}).")),
    }
    out.note("fork+exit+wait, program by program (runs per call, and ns per run with and without the statistics' own cost):");
    out.table(
        &["mode", "program", "runs/call", "ns/run", "ns/run - stats", "ns/call"],
        &fork_program_rows(k, per_run),
    );
    for attach in Attach::ALL {
        match b.attach_measured(attach) {
            Ok(()) => kernel_goals(goals, k, attach, peer_ok),
            Err(why) => goals.push(Goal::new(
                format!("in-kernel time with the syscall programs on {}", attach_label(attach)),
                why,
                "measured",
                None,
            )),
        }
    }

    let json_of = |pass: &super::measure::Pass| {
        json!({
            "calls": pass.calls,
            "programs": pass.progs.iter().map(|p| json!({ "name": p.name, "runs": p.runs, "run_time_ns": p.ns })).collect::<Vec<_>>(),
        })
    };
    json!({
        "stats_ns_per_run": per_run,
        "helper_call": match &k.helper_call {
            Ok(c) => json!({ "empty_ns_per_run": c.empty_ns, "one_call_ns_per_run": c.one_call_ns }),
            Err(why) => json!({ "error": why }),
        },
        "by_mode": k.modes.iter().map(|m| (m.name(), k.workloads.iter()
            .filter_map(|(w, _)| Some((w.to_string(), json_of(k.pass(*m, w)?))))
            .collect::<serde_json::Map<_, _>>())).collect::<BTreeMap<_, _>>(),
    })
}

/// The in-kernel goals of one attach mode (issue 18): the audited syscalls' program bodies near
/// the floor, the fork path at or below the peer; and the wall-time fork goals whose rounds
/// scattered more widely than their effect, judged again by these times.
fn kernel_goals(goals: &mut Vec<Goal>, k: &KernelTimes, attach: Attach, peer_ok: bool) {
    let (floor_m, ours_m) = attach.modes();
    let total = |m: Mode, w| k.pass(m, w).map(|p| stats::per_call(p).0);
    let body = |w| Some(total(ours_m, w)? - total(floor_m, w)?);
    for (w, limit) in [("getpid", 20.0), ("kill", 30.0)] {
        let v = body(w);
        goals.push(Goal::judged(
            format!(
                "{}, {}: pidvirt's program body in the kernel (pidvirt - floor, bpf_stats) <= {limit:.0} ns",
                workload_label(w),
                attach.name()
            ),
            fmt_opt(v, 1, true) + " ns",
            format!("<= {limit:.0} ns"),
            v,
            " ns",
            Limit::AtMost(limit),
        ));
    }
    let (ours, peer) = (total(ours_m, "fork"), if peer_ok { total(Mode::Peer, "fork") } else { None });
    goals.push(Goal::judged(
        format!("fork+exit+wait, {}: pidvirt's in-kernel time <= the peer's (bpf_stats)", attach.name()),
        match (ours, peer) {
            (Some(o), Some(p)) => format!("{o:.1} vs {p:.1} ns"),
            _ => "peer unavailable".into(),
        },
        "<= 1.00x",
        ratio(ours, peer),
        "x",
        Limit::AtMost(1.0),
    ));
    let bodies = body("fork");
    for g in goals.iter_mut() {
        let Some(how) = g.rejudge else { continue };
        let (figure, limit, text) = match how {
            Rejudge::WithinFloor { attach: a, floor_added } if a == attach => {
                let Some(bodies) = bodies else { continue };
                let r = (floor_added + bodies) / floor_added;
                (
                    r,
                    Limit::AtMost(1.3),
                    format!(
                        "in the kernel: {r:.2}x (the floor's {floor_added:+.1} ns + the programs' bodies {bodies:+.1} ns, vs \
                     {floor_added:+.1} ns)"
                    ),
                )
            }
            Rejudge::BelowPeer { attach: a } if a == attach => {
                let (Some(o), Some(p)) = (ours, peer) else { continue };
                (o / p, Limit::Below(1.0), format!("in the kernel: {o:.1} vs {p:.1} ns ({:.2}x)", o / p))
            }
            Rejudge::Rate { attach: a, bare, floor_added } if a == attach => {
                let Some(bodies) = bodies else { continue };
                let r = bare / (bare + floor_added + bodies);
                (
                    r,
                    Limit::AtLeast(0.9),
                    format!(
                        "in the kernel: {r:.3}x (bare {bare:.0} ns over bare + the floor's {floor_added:+.1} ns + the \
                     programs' bodies {bodies:+.1} ns)"
                    ),
                )
            }
            _ => continue,
        };
        g.measured = format!("{}; {text}", g.measured);
        g.figure = Some(Figure { value: figure, unit: "x", limit });
        g.pass = Some(limit.holds(figure));
        g.rejudge = None;
    }
}

/// Where fork+exit+wait goes, program by program, for every mode but the floors.
fn fork_program_rows(k: &KernelTimes, per_run: f64) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for &mode in k.modes.iter().filter(|m| !matches!(m, Mode::Floor | Mode::FloorFentry)) {
        let Some(pass) = k.pass(mode, "fork") else { continue };
        let mut progs: Vec<&ProgTime> = pass.progs.iter().collect();
        progs.sort_by_key(|p| std::cmp::Reverse(p.ns));
        let calls = pass.calls as f64;
        for p in progs {
            let runs = p.runs as f64 / calls;
            if runs < 0.01 {
                continue;
            }
            let ns_run = p.ns as f64 / p.runs as f64;
            rows.push(vec![
                mode.name().to_string(),
                p.name.clone(),
                format!("{runs:.2}"),
                format!("{ns_run:.1}"),
                format!("{:.1}", ns_run - per_run),
                format!("{:.1}", p.ns as f64 / calls),
            ]);
        }
    }
    rows
}

// ---------------------------------------------------------------------------------------------
// 2. P4: anomaly throughput

pub fn leak_throughput(
    out: &mut Report,
    goals: &mut Vec<Goal>,
    o: &Options,
    r: &LeakRun,
    t: &Throughput,
) -> Value {
    let (sys, verdict) = (LEAK_SYSCALL, LEAK_VERDICT);
    let counter = format!("crossings.{sys}.{verdict}");
    let or_na = |v: Option<u64>| v.map_or("n/a".into(), |v| v.to_string());
    out.heading(&format!("P4: anomaly throughput ({verdict} crossings into the JSON sink)"));
    out.note(&format!(
        "A process in a fresh pid namespace ({}) calls {sys}(H, 0) in a tight loop for {:.1} s, H the \
         host pid of a sibling that is no vpid inside (ESRCH), while `pidvirt run --audit-log FILE \
         --audit-log-max-bytes 0` runs (one file, never rotated). \
         delivered = audit-log lines of that container with verdict {verdict}; counted = stats {counter}; \
         dropped = stats ringbuf_drops of the container. Sink rate = delivered / time from the start of \
         generation until the sink stopped growing.",
        r.container, o.leak_seconds
    ));
    let rows = vec![
        vec![format!("generated ({sys} calls, all ESRCH)"), format!("{} ({} ESRCH)", r.generated, r.esrch)],
        vec!["generation rate".into(), format!("{:.0} /s", t.generation_rate)],
        vec![format!("counted by pidvirt ({counter})"), or_na(r.counted)],
        vec!["delivered to the JSON sink".into(), r.delivered.to_string()],
        vec!["dropped (ringbuf_drops)".into(), or_na(r.drops)],
        vec!["delivered + dropped".into(), or_na(t.accounted)],
        vec![
            "sink rate (until the sink caught up)".into(),
            format!("{:.0} events/s over {:.2} s", t.sink_rate, r.sink_s),
        ],
        vec!["delivered / generation time".into(), format!("{:.0} events/s", t.delivered_per_generation_s)],
        vec!["audit log written".into(), format!("{:.1} MiB", r.log_bytes as f64 / 1048576.0)],
    ];
    out.table(&["P4", "value"], &rows);
    goals.push(Goal::judged(
        format!("P4: {verdict} events reaching the JSON sink"),
        format!("{:.0} /s", t.sink_rate),
        ">= 200000 /s",
        Some(t.sink_rate),
        " /s",
        Limit::AtLeast(200_000.0),
    ));
    goals.push(Goal::new(
        "P4: every drop counted (generated == delivered + dropped)",
        format!("{} == {}", r.generated, or_na(t.accounted)),
        "equal",
        Some(t.accounted == Some(r.generated)),
    ));
    goals.push(Goal::new(
        "P4: every crossing counted (counted == generated)",
        format!("{} vs {}", or_na(r.counted), r.generated),
        "equal",
        Some(r.counted == Some(r.generated)),
    ));
    json!({
        "container": r.container, "target_host_pid": r.leak["target_host_pid"], "seconds": r.generation_s,
        "generated": r.generated, "esrch": r.esrch, "generated_per_s": t.generation_rate,
        format!("counted_{sys}_{verdict}"): r.counted, "delivered": r.delivered, "ringbuf_drops": r.drops,
        "delivered_plus_dropped": t.accounted,
        "sink_caught_up_after_s": r.sink_s, "delivered_per_s_until_caught_up": t.sink_rate,
        "delivered_per_generation_s": t.delivered_per_generation_s,
        "audit_log_lines": r.audit_count["lines"], "audit_log_bytes": r.log_bytes,
    })
}

// ---------------------------------------------------------------------------------------------
// 3 and 4. P5 attach time, P6 memory per task

pub fn attach_memory(out: &mut Report, goals: &mut Vec<Goal>, r: &AttachRun, m: &MemoryPerTask) -> Value {
    let attach_ok = r.attach["ok"].as_bool() == Some(true);
    let seed_ms = r.status["seed"]["elapsed"].as_f64();
    attach_section(out, goals, r, attach_ok, seed_ms);
    memory_section(out, goals, r, m);
    json!({
        "namespaces": r.namespaces, "extra_processes": r.total, "spawn_s": r.spawn_s,
        "p5": { "attach_ms": r.attach_s * 1e3, "listed_all": attach_ok, "ps_check": r.attach,
                "seed_elapsed_ms": seed_ms, "seed": r.status["seed"] },
        "p6": { "before": snapshot_json(&r.before), "after": snapshot_json(&r.after),
                "after_seeded_daemon": snapshot_json(&r.seeded),
                "tracked_by_fork_program": r.live,
                "value_bytes_level1_task": m.level1, "value_bytes_avg_nested": m.avg_nested,
                "value_bytes_avg_all": m.avg_all, "memlock_delta_per_task": m.memlock_per_task,
                "task_delta": m.task_delta },
    })
}

fn attach_section(
    out: &mut Report,
    goals: &mut Vec<Goal>,
    r: &AttachRun,
    attach_ok: bool,
    seed_ms: Option<f64>,
) {
    let (total, attach_ms) = (r.total, r.attach_s * 1e3);
    out.heading("P5: attach to a running host");
    out.note(&format!(
        "{total} extra sleeping processes in {} pid namespaces (spawned in {:.2} s). Time from \
         spawning `pidvirt run` until `pidvirt ps --json` lists every one of them with nspid equal to \
         /proc/PID/status NSpid ({} polls of ps).",
        r.namespaces, r.spawn_s, r.attach["polls"]
    ));
    out.table(
        &["P5", "value"],
        &[
            vec![
                "attach: spawn of pidvirt run -> ps lists all".into(),
                if attach_ok {
                    format!("{attach_ms:.0} ms")
                } else {
                    format!("FAILED after {attach_ms:.0} ms: {}", r.attach)
                },
            ],
            vec![
                "  of which: until the socket existed / the last ps --json call".into(),
                format!(
                    "{} ms / {} ms",
                    fmt_opt(r.attach["socket_seen_ms"].as_f64(), 0, false),
                    fmt_opt(r.attach["last_ps_call_ms"].as_f64(), 0, false)
                ),
            ],
            vec![
                "the daemon's /proc walk after the iterator (status seed.elapsed; may end after ps lists all)"
                    .into(),
                fmt_opt(seed_ms, 1, false) + " ms",
            ],
            vec!["tasks tracked after the seed".into(), r.seeded.tasks().to_string()],
        ],
    );
    let mut g = Goal::judged(
        format!("P5: attach with {total} extra processes"),
        format!("{attach_ms:.0} ms"),
        "< 1000 ms",
        Some(attach_ms),
        " ms",
        Limit::Below(1000.0),
    );
    if !attach_ok {
        // ps never listed them all: no time to judge.
        g.pass = Some(false);
        g.figure = None;
    }
    goals.push(g);
}

fn memory_section(out: &mut Report, goals: &mut Vec<Goal>, r: &AttachRun, m: &MemoryPerTask) {
    let (before, after, seeded) = (&r.before, &r.after, &r.seeded);
    let (tasks, virt, deep, front) = (map::TASKS, map::VIRT, map::DEEP, map::VIRT_FRONT);
    let task_front = map::TASK_FRONT;
    out.heading("P6: kernel memory per tracked task");
    out.note(&format!(
        "Maps of the running daemon (bpftool map show --json), before and after the {} extra processes \
         (tracked by the fork program; `ps` listed them all: {}). Value bytes per task = {tasks} value + a reverse \
         entry's value per non-host level (+ {deep} for levels >= {INLINE_LEVELS}); keys are not counted: a task's \
         entry is in a slot of {task_front} (its tid and the entry) or, when its slot holds another tid, in {tasks}; \
         a reverse entry is an 8-B key and a {virt} value, in a slot of {front} or, when its slot holds another key, \
         in {virt}. \
         memlock = bytes_memlock summed over {}.",
        r.total,
        r.live["ok"],
        MAPS.join(", ")
    ));
    let rows: Vec<Vec<String>> = MAPS
        .iter()
        .map(|&name| {
            vec![
                name.to_string(),
                after.field(name, "bytes_key").to_string(),
                after.field(name, "bytes_value").to_string(),
                after.field(name, "max_entries").to_string(),
                before.field(name, "bytes_memlock").to_string(),
                after.field(name, "bytes_memlock").to_string(),
                seeded.field(name, "bytes_memlock").to_string(),
            ]
        })
        .collect();
    out.table(
        &["map", "key B", "value B", "max_entries", "memlock before", "memlock after", "after (seeded)"],
        &rows,
    );
    out.table(
        &["P6", "value"],
        &[
            vec![
                "tracked tasks before -> after (level >= 1)".into(),
                format!("{} ({}) -> {} ({})", before.tasks(), before.nested(), after.tasks(), after.nested()),
            ],
            vec![
                format!("map value bytes per level-1 task ({tasks} + 1 {virt})"),
                format!("{} B ({} + {})", m.level1, m.sizes.tasks, m.sizes.virt),
            ],
            vec![
                "map value bytes per task, average over nested tasks".into(),
                format!("{:.1} B", m.avg_nested),
            ],
            vec!["map value bytes per task, average over all tasks".into(), format!("{:.1} B", m.avg_all)],
            vec![
                "memlock delta / task delta".into(),
                format!("{:.0} B ({} B / {})", m.memlock_per_task, m.memlock_delta, m.task_delta),
            ],
        ],
    );
    goals.push(Goal::new(
        "P6: map value bytes per (level-1) task",
        format!(
            "{} B (nested average {:.1} B; memlock {:.0} B/task)",
            m.level1, m.avg_nested, m.memlock_per_task
        ),
        "<= 64 B",
        Some(m.level1 <= 64 && m.avg_nested <= 64.0),
    ));
}

fn snapshot_json(s: &Snapshot) -> Value {
    json!({ "tasks": s.tasks(), "tasks_by_level": s.ps["levels"], "tasks_level_ge_1": s.nested(),
            "maps": s.maps, "memlock_bytes": s.memlock(), "map_value_bytes": s.value_bytes() })
}

// ---------------------------------------------------------------------------------------------
// The whole run

/// A section that failed: its error in the report, and a failed goal.
pub fn section_failed(out: &mut Report, goals: &mut Vec<Goal>, label: &str, e: &anyhow::Error) -> Value {
    out.heading(&format!("{label}: FAILED"));
    out.note(&format!("{e:#}"));
    goals.push(Goal::new(format!("{label} ran"), format!("error: {e:#}"), "no error", Some(false)));
    json!({ "error": format!("{e:#}") })
}

/// The goals table, and how many passed.
pub fn goals(out: &mut Report, goals: &mut [Goal]) {
    for g in goals.iter_mut().filter(|g| g.rejudge.is_some()) {
        // The in-kernel section did not run (--only): the wall-time verdict stands, flagged.
        g.measured.push_str(" (not measured in this run: judged by wall time)");
        g.rejudge = None;
    }
    out.heading("Goals");
    let rows: Vec<Vec<String>> = goals
        .iter()
        .map(|g| vec![g.verdict().to_string(), g.name.clone(), g.measured.clone(), g.target.clone()])
        .collect();
    out.table(&["result", "goal", "measured", "target"], &rows);
    let passed = goals.iter().filter(|g| g.pass == Some(true)).count();
    let failed = goals.iter().filter(|g| g.pass == Some(false)).count();
    out.note(&format!("{passed} passed, {failed} failed, {} not applicable", goals.len() - passed - failed));
}

// ---------------------------------------------------------------------------------------------
// Several runs

/// The summary of several runs (`--repeat N`).
pub struct Summary {
    pub text: String,
    pub md: String,
    pub json: Value,
}

/// "median [min..max]" of `v`, each with `show`.
fn median_range(v: &[f64], show: impl Fn(f64) -> String) -> String {
    match (stats::median(v), v.iter().copied().reduce(f64::min), v.iter().copied().reduce(f64::max)) {
        (Some(m), Some(lo), Some(hi)) => format!("{} [{}..{}]", show(m), show(lo), show(hi)),
        _ => "n/a".into(),
    }
}

/// The goals, wall-time and in-kernel figures of every run, summarised: every goal judged on the
/// median of the runs' figures, with their spread (min..max). None for a single run.
pub fn across_runs(
    start: &Machine,
    end: &Machine,
    b: &Bench,
    runs: &[(&[Goal], &serde_json::Map<String, Value>)],
) -> Option<Summary> {
    if runs.len() < 2 {
        return None;
    }
    let n = runs.len();
    let mut out = Report::default();
    let _ = writeln!(
        out.md,
        "Measured by `cargo xtask bench --repeat {n}` on kernel {}, {} CPUs ({}); load generator pinned to CPU {}; \
         load average {} at the start, {} at the end.",
        start.kernel, b.cpus, start.cpu_model, b.cpu, start.loadavg, end.loadavg
    );
    out.heading(&format!("Across {n} runs"));
    out.note(&format!(
        "{n} runs of the benchmark one after the other. Each figure below is the MEDIAN of the {n} runs' \
         figures, then [min..max] of them: the spread between runs, which on a shared machine is wider \
         than the spread within one run. Every goal is judged on the median of its runs' figures (a goal \
         without a figure, on every run). The last run follows in full."
    ));
    let mut names: Vec<&str> = Vec::new();
    for (goals, _) in runs {
        for g in *goals {
            if !names.contains(&g.name.as_str()) {
                names.push(&g.name);
            }
        }
    }
    let mut rows = Vec::new();
    let mut goals_json = Vec::new();
    for name in names {
        let of_runs: Vec<&Goal> =
            runs.iter().filter_map(|(g, _)| g.iter().find(|g| g.name == name)).collect();
        let figures: Vec<Figure> = of_runs.iter().filter_map(|g| g.figure).collect();
        let values: Vec<f64> = figures.iter().map(|f| f.value).collect();
        let (pass, measured, per_run) = if let Some(&f) = figures.first() {
            let m = stats::median(&values);
            (
                m.map(|m| f.limit.holds(m)),
                median_range(&values, |v| f.show(v)),
                values.iter().map(|v| f.show(*v)).collect::<Vec<_>>().join(", "),
            )
        } else {
            let passed = of_runs.iter().filter(|g| g.pass == Some(true)).count();
            let judged = of_runs.iter().filter(|g| g.pass.is_some()).count();
            (
                (judged > 0).then_some(passed == judged),
                format!("{passed} of {} runs pass", of_runs.len()),
                of_runs.iter().map(|g| g.verdict()).collect::<Vec<_>>().join(", "),
            )
        };
        let target = of_runs.first().map_or(String::new(), |g| g.target.clone());
        goals_json.push(json!({ "goal": name, "verdict": verdict(pass), "median": stats::median(&values),
            "min": values.iter().copied().reduce(f64::min), "max": values.iter().copied().reduce(f64::max),
            "by_run": of_runs.iter().map(|g| g.json()).collect::<Vec<_>>(), "target": target }));
        rows.push(vec![verdict(pass).to_string(), name.to_string(), measured, per_run, target]);
    }
    out.table(&["result", "goal", "median [min..max]", "runs", "target"], &rows);
    let passed = rows.iter().filter(|r| r[0] == "PASS").count();
    let failed = rows.iter().filter(|r| r[0] == "FAIL").count();
    out.note(&format!(
        "{passed} passed, {failed} failed, {} not applicable (on the medians)",
        rows.len() - passed - failed
    ));
    let wall = wall_across_runs(&mut out, runs);
    let kernel = kernel_across_runs(&mut out, runs);
    Some(Summary {
        text: out.text,
        md: out.md,
        json: json!({ "runs": n, "goals": goals_json, "wall_added_ns": wall, "in_kernel_ns_per_call": kernel }),
    })
}

/// Wall-time additions over bare, per workload and mode: each run's median, across runs.
fn wall_across_runs(out: &mut Report, runs: &[(&[Goal], &serde_json::Map<String, Value>)]) -> Value {
    let modes: Vec<Mode> = super::measure::MODES[1..].to_vec();
    let added = |w: &str, m: Mode| -> Vec<f64> {
        runs.iter()
            .filter_map(|(_, s)| s.get("syscalls")?["workloads"][w]["added_ns_median"][m.name()].as_f64())
            .collect()
    };
    let shown: Vec<Mode> =
        modes.into_iter().filter(|m| WORKLOADS.iter().any(|(w, _, _)| !added(w, *m).is_empty())).collect();
    if shown.is_empty() {
        return Value::Null;
    }
    let mut header = vec!["workload".to_string()];
    header.extend(shown.iter().map(|m| format!("+{} ns", m.name())));
    let mut rows = Vec::new();
    let mut json = serde_json::Map::new();
    for (w, label, _) in WORKLOADS {
        let mut row = vec![label.to_string()];
        let mut per = serde_json::Map::new();
        for &m in &shown {
            let v = added(w, m);
            row.push(median_range(&v, |x| format!("{x:+.1}")));
            per.insert(m.name().into(), json!(v));
        }
        rows.push(row);
        json.insert(w.into(), Value::Object(per));
    }
    out.note("Wall time: ns added over bare per call (each run's median over its rounds), median [min..max] of the runs:");
    out.table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    Value::Object(json)
}

/// One helper call's cost (report::kernel_time's `helper_call`), across runs: noted, and
/// answered run by run.
fn helper_call_across_runs(
    out: &mut Report,
    runs: &[(&[Goal], &serde_json::Map<String, Value>)],
) -> Vec<f64> {
    let helper_calls: Vec<f64> = runs
        .iter()
        .filter_map(|(_, s)| {
            let c = s.get("kernel_time")?.get("helper_call")?;
            Some(c["one_call_ns_per_run"].as_f64()? - c["empty_ns_per_run"].as_f64()?)
        })
        .collect();
    if !helper_calls.is_empty() {
        out.note(&format!(
            "One BPF helper call (bpftrace on sys_exit_getpid, one curtask against none): {} ns per run, \
             median [min..max] of {} runs.",
            median_range(&helper_calls, |x| format!("{x:+.1}")),
            helper_calls.len()
        ));
    }
    helper_calls
}

/// In-kernel time per call (bpf_stats), per workload and mode, and program by program for
/// fork+exit+wait, across runs.
fn kernel_across_runs(out: &mut Report, runs: &[(&[Goal], &serde_json::Map<String, Value>)]) -> Value {
    // (mode, workload) -> per run: (total ns per call, program -> ns per call)
    let mut totals: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    let mut progs: BTreeMap<(String, String), Vec<f64>> = BTreeMap::new();
    for (_, s) in runs {
        let Some(by_mode) = s.get("kernel_time").and_then(|k| k["by_mode"].as_object()) else { continue };
        for (mode, workloads) in by_mode {
            for (w, pass) in workloads.as_object().into_iter().flatten() {
                let calls = pass["calls"].as_f64().unwrap_or(f64::NAN);
                let mut total = 0.0;
                // The kernel keeps 15 characters of a program's name, so two programs may share one
                // (the peer's sys_enter_clone and sys_enter_clone3): the second of a name (in the
                // order of their ids, the same in every run) is "name (2)", and so on.
                let mut seen: BTreeMap<String, usize> = BTreeMap::new();
                for p in pass["programs"].as_array().into_iter().flatten() {
                    let ns = p["run_time_ns"].as_f64().unwrap_or(0.0) / calls;
                    total += ns;
                    if w == "fork" {
                        let name = p["name"].as_str().unwrap_or("?").to_string();
                        let n = seen.entry(name.clone()).or_default();
                        *n += 1;
                        let label = if *n == 1 { name } else { format!("{name} ({n})") };
                        progs.entry((mode.clone(), label)).or_default().push(ns);
                    }
                }
                totals.entry((mode.clone(), w.clone())).or_default().push(total);
            }
        }
    }
    if totals.is_empty() {
        return Value::Null;
    }
    let modes: Vec<String> = totals
        .keys()
        .map(|(m, _)| m.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut header = vec!["workload".to_string()];
    header.extend(modes.iter().map(|m| format!("{m} ns")));
    let bodies: Vec<(Mode, Mode)> = Attach::ALL.iter().map(|a| a.modes()).collect();
    for (floor, ours) in &bodies {
        if modes.iter().any(|m| m == ours.name()) {
            header.push(format!("{} - {}", ours.name(), floor.name()));
        }
    }
    let mut rows = Vec::new();
    for (w, label, _) in WORKLOADS {
        if !totals.keys().any(|(_, x)| x == w) {
            continue;
        }
        let mut row = vec![label.to_string()];
        for m in &modes {
            row.push(median_range(
                totals.get(&(m.clone(), w.to_string())).map_or(&[][..], Vec::as_slice),
                |x| format!("{x:.1}"),
            ));
        }
        for (floor, ours) in &bodies {
            let (Some(o), Some(f)) = (
                totals.get(&(ours.name().to_string(), w.to_string())),
                totals.get(&(floor.name().to_string(), w.to_string())),
            ) else {
                continue;
            };
            // Per run: the bodies of that run.
            let d: Vec<f64> = o.iter().zip(f).map(|(o, f)| o - f).collect();
            row.push(median_range(&d, |x| format!("{x:+.1}")));
        }
        rows.push(row);
    }
    out.note("In the kernel (bpf_stats): ns per call, median [min..max] of the runs:");
    out.table(&header.iter().map(String::as_str).collect::<Vec<_>>(), &rows);
    let helper_calls = helper_call_across_runs(out, runs);
    let mut prog_rows: Vec<(f64, Vec<String>)> = progs
        .iter()
        .filter(|((m, _), _)| !m.starts_with("floor"))
        .map(|((m, p), v)| {
            (
                stats::median(v).unwrap_or(0.0),
                vec![m.clone(), p.clone(), median_range(v, |x| format!("{x:.1}"))],
            )
        })
        .collect();
    prog_rows.sort_by(|a, b| a.1[0].cmp(&b.1[0]).then(b.0.total_cmp(&a.0)));
    out.note("fork+exit+wait in the kernel, program by program: ns per call, median [min..max] of the runs:");
    out.table(
        &["mode", "program", "ns per call"],
        &prog_rows.into_iter().map(|(_, r)| r).collect::<Vec<_>>(),
    );
    json!({
        "totals": totals.iter().map(|((m, w), v)| json!({ "mode": m, "workload": w, "by_run": v })).collect::<Vec<_>>(),
        "fork_programs": progs.iter().map(|((m, p), v)| json!({ "mode": m, "program": p, "by_run": v })).collect::<Vec<_>>(),
        "helper_call_by_run": helper_calls,
    })
}

/// The JSON document of the run (target/bench/bench.json).
pub fn document(
    m: &Machine,
    b: &Bench,
    elapsed_s: f64,
    sections: &serde_json::Map<String, Value>,
    goals: &[Goal],
) -> Value {
    let o = &b.opts;
    json!({
        "machine": { "kernel": m.kernel, "cpus": b.cpus, "cpu_model": m.cpu_model,
                     "loadavg_start": m.loadavg, "loadavg_end": super::measure::loadavg(),
                     "foreign_tracing_at_start": m.foreign, "emulated": m.emulated },
        "options": { "rounds": o.rounds, "iters": o.iters, "fork_iters": o.fork_iters, "fork_batches": o.fork_batches,
                     "batches": o.batches, "cpu": b.cpu, "leak_seconds": o.leak_seconds,
                     "namespaces": o.namespaces, "tasks": o.tasks },
        "elapsed_s": elapsed_s,
        "results": sections,
        "goals": goals.iter().map(Goal::json).collect::<Vec<_>>(),
    })
}

/// docs/benchmarks.md: the markdown report under a header that says where it comes from.
/// The heading of the part of docs/benchmarks.md kept by hand: measurements of designs tried
/// (what paid, what did not, with its number), which every run carries over.
pub const EXPERIMENTS: &str = "## Experiments";

/// docs/benchmarks.md: the report under a header, then the experiments section of `previous`
/// (the file as it was), if it had one.
pub fn benchmarks_doc(md: &str, previous: Option<&str>) -> String {
    let kept = previous
        .and_then(|p| p.find(&format!("\n{EXPERIMENTS}\n")).map(|at| &p[at + 1..]))
        .map_or(String::new(), |e| format!("\n{e}"));
    format!(
        "# Benchmarks\n\n\
         The latest run of `cargo xtask bench` (root, nothing else tracing; see [Performance]\
         (../README.md#performance)). Every run that is not interrupted writes this file again, as well as \
         `target/bench/bench.md` and `target/bench/bench.json`: edit the benchmark, not this file (but for \
         its last section, {EXPERIMENTS}, which is kept by hand and carried over by every run).\n\n\
         {md}{kept}"
    )
}

/// The Docker section where it cannot run.
pub fn engine_unavailable(out: &mut Report, goals: &mut Vec<Goal>, why: &str) -> Value {
    out.heading("Docker run/exec latency: unavailable");
    out.note(why);
    goals.push(Goal::new(
        "Docker run/exec latency with pidvirt",
        format!("unavailable: {why}"),
        "<= 1.02x",
        None,
    ));
    json!({ "unavailable": why })
}

/// `docker run --rm` and `docker exec` with pidvirt attached and without (issue 13: under 2%).
pub fn engine_latency(out: &mut Report, goals: &mut Vec<Goal>, r: &super::engine::EngineRun) -> Value {
    out.heading(&format!("Docker run/exec latency (Docker {})", r.docker_version));
    out.note(&format!(
        "`docker run --rm IMAGE true` and `docker exec C true` (C a running container), timed by the \
         client, on a dockerd of the bench's own; {} rounds, each running {} of both with pidvirt \
         attached (started afresh, {}) and without, the order alternating. Figures: median \
         [p25..p75] ms over every sample of a mode; ratio = median attached / median bare.",
        r.rounds,
        r.per_round,
        if r.proc_paths { "with --proc-paths" } else { "without --proc-paths, its default" }
    ));
    let quartiles = |v: &[f64]| {
        let q = |x| stats::quantile(v, x).unwrap_or(f64::NAN);
        format!("{:.1} [{:.1}..{:.1}]", q(0.5), q(0.25), q(0.75))
    };
    let over = |a: &[f64], b: &[f64]| match (stats::median(a), stats::median(b)) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    };
    let mut rows = Vec::new();
    let mut figures = serde_json::Map::new();
    for (op, bare, attached) in
        [("docker run --rm", &r.bare.run, &r.pidvirt.run), ("docker exec", &r.bare.exec, &r.pidvirt.exec)]
    {
        let x = over(attached, bare);
        rows.push(vec![
            op.to_string(),
            quartiles(bare),
            quartiles(attached),
            x.map_or("n/a".into(), |x| format!("{x:.3}x")),
        ]);
        figures.insert(
            op.into(),
            json!({ "bare_ms": bare, "pidvirt_ms": attached, "ratio": x, "proc_paths": r.proc_paths }),
        );
        goals.push(Goal::judged(
            format!(
                "{op} latency with pidvirt attached{}",
                if r.proc_paths { "" } else { " (no --proc-paths)" }
            ),
            x.map_or("n/a".into(), |x| format!("{x:.3}x of bare")),
            "<= 1.02x",
            x,
            "x",
            Limit::AtMost(1.02),
        ));
    }
    out.table(&["operation", "bare ms", "pidvirt ms", "ratio"], &rows);
    out.note(&format!(
        "Audit records written while pidvirt was attached (routine operations): {}.",
        r.records
    ));
    goals.push(Goal::judged(
        "Docker run/exec with pidvirt: audit records",
        r.records.to_string(),
        "0",
        Some(r.records as f64),
        "",
        Limit::AtMost(0.0),
    ));
    figures.insert("records".into(), json!(r.records));
    Value::Object(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_benchmarks_doc_is_the_report_under_a_header() {
        let doc = benchmarks_doc("Measured by `cargo xtask bench` on kernel X.\n", None);
        assert!(doc.starts_with("# Benchmarks\n\nThe latest run of `cargo xtask bench` (root"), "{doc}");
        assert!(doc.contains("[Performance](../README.md#performance)"), "{doc}");
        assert!(doc.ends_with("by every run).\n\nMeasured by `cargo xtask bench` on kernel X.\n"), "{doc}");
        let again = benchmarks_doc("New run.\n", Some(&format!("{doc}\n{EXPERIMENTS}\n\nEXITS: +3 ns.\n")));
        assert!(
            again.ends_with("by every run).\n\nNew run.\n\n## Experiments\n\nEXITS: +3 ns.\n"),
            "{again}"
        );
    }
}
