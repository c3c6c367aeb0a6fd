//! Statistics: what the measurements of [`super::measure`] amount to. Pure functions, no I/O.

use std::collections::{BTreeMap, BTreeSet};

use pidvirt_common::INLINE_LEVELS;

use super::measure::{KernelTimes, LeakRun, MODES, Mode, Pass, Snapshot, SyscallRuns};

/// The median of the finite values of `v`.
pub fn median(v: &[f64]) -> Option<f64> {
    let s = finite_sorted(v);
    match s.len() {
        0 => None,
        n if n % 2 == 1 => Some(s[n / 2]),
        n => Some(f64::midpoint(s[n / 2 - 1], s[n / 2])),
    }
}

/// The q-quantile (0..=1) of the finite values of `v`, interpolated linearly.
pub fn quantile(v: &[f64], q: f64) -> Option<f64> {
    let s = finite_sorted(v);
    if s.is_empty() {
        return None;
    }
    let pos = q * (s.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    Some(s[lo] + (s[hi] - s[lo]) * (pos - lo as f64))
}

fn finite_sorted(v: &[f64]) -> Vec<f64> {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(f64::total_cmp);
    s
}

/// a / b, when b is a positive cost (an added cost at or below zero is noise: no ratio).
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// A sample's median and its 25th and 75th percentiles.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub p25: f64,
    pub p75: f64,
}

/// `None` for a sample with no finite value.
pub fn spread(v: &[f64]) -> Option<Spread> {
    Some(Spread { median: median(v)?, p25: quantile(v, 0.25)?, p75: quantile(v, 0.75)? })
}

// ---------------------------------------------------------------------------------------------
// Rounds

/// What one round measured: ns per call by mode and workload.
pub type RoundNs<M> = BTreeMap<M, BTreeMap<&'static str, f64>>;

/// The rounds a summary is made of. Modes are compared within a round (drift hits every mode
/// of a round alike), so the differences and ratios are taken per round.
pub struct Rounds<'a, M> {
    rounds: Vec<&'a RoundNs<M>>,
}

impl<'a, M: Ord + Copy> Rounds<'a, M> {
    pub fn new(rounds: impl IntoIterator<Item = &'a RoundNs<M>>) -> Self {
        Self { rounds: rounds.into_iter().collect() }
    }

    pub fn len(&self) -> usize {
        self.rounds.len()
    }

    fn value(round: &RoundNs<M>, m: M, w: &str) -> Option<f64> {
        round.get(&m)?.get(w).copied()
    }

    /// What mode `m` measured of workload `w`, round by round (rounds without it left out).
    pub fn values(&self, m: M, w: &str) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| Self::value(r, m, w)).collect()
    }

    pub fn median(&self, m: M, w: &str) -> Option<f64> {
        median(&self.values(m, w))
    }

    /// `a - b` of workload `w`, per round that measured both.
    pub fn differences(&self, a: M, b: M, w: &str) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| Some(Self::value(r, a, w)? - Self::value(r, b, w)?)).collect()
    }

    /// `a / b` of workload `w`, per round that measured both.
    pub fn ratios(&self, a: M, b: M, w: &str) -> Vec<f64> {
        self.rounds.iter().filter_map(|r| Some(Self::value(r, a, w)? / Self::value(r, b, w)?)).collect()
    }

    /// The modes that measured anything in these rounds.
    pub fn modes(&self) -> BTreeSet<M> {
        self.rounds
            .iter()
            .flat_map(|r| r.iter().filter(|(_, per)| !per.is_empty()).map(|(m, _)| *m))
            .collect()
    }
}

/// Whether a summary must use the perturbed rounds too: fewer than 3 (or than the rounds
/// wanted, if fewer) ran with no one else tracing.
pub fn use_all_rounds(clean: usize, wanted: usize) -> bool {
    clean < 3.min(wanted)
}

/// The syscall rounds, summarised.
pub struct SyscallSummary<'a> {
    /// The rounds used: the clean ones, or all if too few were clean.
    pub rounds: Rounds<'a, Mode>,
    /// Rounds run, and how many of them were clean.
    pub run: usize,
    pub clean: usize,
    pub use_all: bool,
    /// Every perturbed round run: its number (from 1) and who else was tracing.
    pub perturbed: Vec<(usize, &'a str)>,
    /// Median time to attach, of every mode but bare.
    pub attach_ms: BTreeMap<Mode, Option<f64>>,
    /// fork+exit+wait rate with pidvirt over bare's (median of the rounds' ratios).
    pub fork_rate: Option<f64>,
    pub peer_ok: bool,
}

impl<'a> SyscallSummary<'a> {
    pub fn of(runs: &'a SyscallRuns, wanted: usize) -> Self {
        let clean = runs.clean();
        let use_all = use_all_rounds(clean, wanted);
        let used: Vec<_> = runs.rounds.iter().filter(|r| use_all || r.is_clean()).collect();
        let attach_ms = MODES[1..]
            .iter()
            .map(|m| {
                (*m, median(&used.iter().filter_map(|r| r.attach_ms.get(m).copied()).collect::<Vec<_>>()))
            })
            .collect();
        let rounds = Rounds::new(used.iter().map(|r| &r.ns));
        let fork_rate = median(&rounds.ratios(Mode::Bare, Mode::Pidvirt, "fork"));
        Self {
            rounds,
            run: runs.rounds.len(),
            clean,
            use_all,
            perturbed: (runs.rounds.iter().enumerate())
                .filter(|(_, r)| !r.is_clean())
                .map(|(i, r)| (i + 1, r.foreign.as_str()))
                .collect(),
            attach_ms,
            fork_rate,
            peer_ok: runs.peer_error.is_none(),
        }
    }

    /// fork+exit+wait rate with mode `m` over bare's, round by round.
    pub fn fork_rates(&self, m: Mode) -> Vec<f64> {
        self.rounds.ratios(Mode::Bare, m, "fork")
    }

    /// What mode `m` added to workload `w` over bare, round by round.
    pub fn added(&self, m: Mode, w: &str) -> Vec<f64> {
        self.rounds.differences(m, Mode::Bare, w)
    }

    /// The median of [`Self::added`].
    pub fn added_median(&self, m: Mode, w: &str) -> Option<f64> {
        median(&self.added(m, w))
    }

    /// Whether perturbed rounds were used (too few clean ones).
    pub fn perturbed_used(&self) -> bool {
        self.use_all && !self.perturbed.is_empty()
    }
}

// ---------------------------------------------------------------------------------------------
// In-kernel program time

/// The statistics' own cost per program run: what EMPTY programs (the floor's) measure, ns per
/// run (NaN if none ran).
pub fn stats_cost_per_run(k: &KernelTimes) -> f64 {
    let (ns, runs) = (k.passes.iter())
        .filter(|((m, _), _)| *m == Mode::Floor)
        .flat_map(|(_, pass)| pass.progs.iter())
        .fold((0u64, 0u64), |(ns, runs), p| (ns + p.ns, runs + p.runs));
    if runs > 0 { ns as f64 / runs as f64 } else { f64::NAN }
}

/// ns inside the programs per call of the workload, and program runs per call.
pub fn per_call(pass: &Pass) -> (f64, f64) {
    let ns: u64 = pass.progs.iter().map(|p| p.ns).sum();
    let runs: u64 = pass.progs.iter().map(|p| p.runs).sum();
    (ns as f64 / pass.calls as f64, runs as f64 / pass.calls as f64)
}

// ---------------------------------------------------------------------------------------------
// P4

/// P4's rates, per second.
pub struct Throughput {
    /// Delivered over the time until the sink stopped growing.
    pub sink_rate: f64,
    /// Delivered over the generation time alone.
    pub delivered_per_generation_s: f64,
    pub generation_rate: f64,
    /// Delivered + dropped (every anomaly accounted for if it equals the generated count).
    pub accounted: Option<u64>,
}

pub fn throughput(r: &LeakRun) -> Throughput {
    Throughput {
        sink_rate: r.delivered as f64 / r.sink_s,
        delivered_per_generation_s: r.delivered as f64 / r.generation_s,
        generation_rate: r.generated as f64 / r.generation_s,
        accounted: r.drops.map(|d| r.delivered + d),
    }
}

// ---------------------------------------------------------------------------------------------
// P6

/// Value sizes (bytes) of the maps a tracked task takes room in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ValueSizes {
    pub tasks: u64,
    pub virt: u64,
    pub deep: u64,
}

impl ValueSizes {
    /// A task at pid namespace `level`: a TASKS value, a reverse entry's value (a VIRT value, in
    /// a VIRT_FRONT slot or in VIRT) per non-host level, and a
    /// DEEP value when it is nested deeper than the levels TASKS holds.
    pub fn of_task(&self, level: u64) -> u64 {
        self.tasks + level * self.virt + if level >= INLINE_LEVELS as u64 { self.deep } else { 0 }
    }

    /// Every task of `levels` (tasks by level).
    pub fn of_tasks(&self, levels: &BTreeMap<u64, u64>) -> u64 {
        levels.iter().map(|(l, n)| n * self.of_task(*l)).sum()
    }
}

/// P6: kernel memory per tracked task, from a daemon's view before and after the extra tasks.
pub struct MemoryPerTask {
    pub sizes: ValueSizes,
    /// Tracked tasks after minus before.
    pub task_delta: u64,
    pub memlock_delta: i64,
    pub memlock_per_task: f64,
    /// Value bytes of a level-1 task (TASKS + one VIRT).
    pub level1: u64,
    /// Value bytes per task, over all tasks, and over nested ones (TASKS and VIRT values only).
    pub avg_all: f64,
    pub avg_nested: f64,
}

pub fn memory_per_task(before: &Snapshot, after: &Snapshot) -> MemoryPerTask {
    let task_delta = after.tasks().saturating_sub(before.tasks());
    let memlock_delta = after.memlock() as i64 - before.memlock() as i64;
    let sizes = after.value_sizes();
    let nested: u64 = after
        .levels()
        .iter()
        .filter(|(l, _)| **l >= 1)
        .map(|(l, n)| n * (sizes.tasks + l * sizes.virt))
        .sum();
    MemoryPerTask {
        sizes,
        task_delta,
        memlock_delta,
        memlock_per_task: (after.memlock() as f64 - before.memlock() as f64) / task_delta.max(1) as f64,
        level1: sizes.tasks + sizes.virt,
        avg_all: after.value_bytes() as f64 / after.tasks().max(1) as f64,
        avg_nested: nested as f64 / after.nested().max(1) as f64,
    }
}

#[cfg(test)]
mod tests {
    use pidvirt_common::catalogue::map;
    use serde_json::{Value, json};

    use super::*;
    use crate::bench::measure::{ProgTime, Round};

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn median_and_quantiles_ignore_what_is_not_finite() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median(&[1.0, f64::NAN, 5.0, f64::INFINITY]), Some(3.0));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.25), Some(1.75));
        assert_eq!(quantile(&[1.0, 2.0, 3.0, 4.0], 0.75), Some(3.25));
        assert_eq!(quantile(&[7.0], 0.25), Some(7.0));
        assert_eq!(quantile(&[2.0, 1.0], 0.0), Some(1.0));
        assert_eq!(quantile(&[2.0, 1.0], 1.0), Some(2.0));
        assert_eq!(spread(&[]), None);
        assert_eq!(spread(&[5.0, 1.0, 3.0]), Some(Spread { median: 3.0, p25: 2.0, p75: 4.0 }));
    }

    #[test]
    fn a_ratio_needs_a_positive_denominator() {
        assert_eq!(ratio(Some(3.0), Some(2.0)), Some(1.5));
        assert_eq!(ratio(Some(3.0), Some(0.0)), None);
        assert_eq!(ratio(Some(3.0), Some(-1.0)), None);
        assert_eq!(ratio(None, Some(1.0)), None);
        assert_eq!(ratio(Some(1.0), None), None);
    }

    fn round(values: &[(Mode, &'static str, f64)], foreign: &str) -> Round {
        let mut ns = RoundNs::new();
        let mut attach_ms = BTreeMap::new();
        for &(m, w, v) in values {
            ns.entry(m).or_insert_with(BTreeMap::new).insert(w, v);
            attach_ms.insert(m, 10.0 * v);
        }
        Round { ns, attach_ms, foreign: foreign.to_string() }
    }

    #[test]
    fn rounds_compare_modes_within_each_round() {
        let r1 = round(&[(Mode::Bare, "getpid", 100.0), (Mode::Floor, "getpid", 150.0)], "");
        let r2 = round(&[(Mode::Bare, "getpid", 110.0), (Mode::Pidvirt, "getpid", 170.0)], "");
        let r3 = round(
            &[(Mode::Bare, "getpid", 90.0), (Mode::Floor, "getpid", 130.0), (Mode::Raw, "read", 1.0)],
            "",
        );
        let rounds = Rounds::new([&r1.ns, &r2.ns, &r3.ns]);
        assert_eq!(rounds.len(), 3);
        assert_eq!(rounds.values(Mode::Bare, "getpid"), [100.0, 110.0, 90.0]);
        assert_eq!(rounds.median(Mode::Bare, "getpid"), Some(100.0));
        assert_eq!(rounds.median(Mode::Peer, "getpid"), None);
        // Round 2 has no floor: no difference from it.
        assert_eq!(rounds.differences(Mode::Floor, Mode::Bare, "getpid"), [50.0, 40.0]);
        assert_eq!(rounds.ratios(Mode::Bare, Mode::Floor, "getpid"), [100.0 / 150.0, 90.0 / 130.0]);
        assert_eq!(rounds.modes(), BTreeSet::from([Mode::Bare, Mode::Floor, Mode::Pidvirt, Mode::Raw]));
    }

    #[test]
    fn perturbed_rounds_are_used_only_when_too_few_ran_clean() {
        assert!(!use_all_rounds(3, 15));
        assert!(use_all_rounds(2, 15));
        assert!(!use_all_rounds(1, 1));
        assert!(use_all_rounds(0, 1));

        let fork = |bare: f64, pidvirt: f64, foreign: &str| {
            round(&[(Mode::Bare, "fork", bare), (Mode::Pidvirt, "fork", pidvirt)], foreign)
        };
        let runs = SyscallRuns {
            rounds: vec![
                fork(100.0, 110.0, ""),
                fork(100.0, 500.0, "1 tracing link"),
                fork(100.0, 120.0, ""),
                fork(100.0, 125.0, ""),
            ],
            peer_error: Some("skipped".into()),
            elapsed_s: 1.0,
        };
        let s = SyscallSummary::of(&runs, 3);
        assert_eq!((s.run, s.clean, s.use_all, s.rounds.len()), (4, 3, false, 3));
        assert_eq!(s.perturbed, [(2, "1 tracing link")]);
        assert!(!s.perturbed_used() && !s.peer_ok);
        assert_eq!(s.added(Mode::Pidvirt, "fork"), [10.0, 20.0, 25.0]);
        assert_eq!(s.added_median(Mode::Pidvirt, "fork"), Some(20.0));
        assert_eq!(s.fork_rate, Some(100.0 / 120.0));
        assert_eq!(s.attach_ms[&Mode::Pidvirt], Some(1200.0));
        assert_eq!(s.attach_ms[&Mode::Floor], None);
        assert!(!s.attach_ms.contains_key(&Mode::Bare));

        // Four wanted, three clean: the perturbed round counts too, flagged.
        let s = SyscallSummary::of(&runs, 4);
        assert!(!s.use_all);
        let runs = SyscallRuns { rounds: runs.rounds.into_iter().take(2).collect(), ..runs };
        let s = SyscallSummary::of(&runs, 4);
        assert!(s.use_all && s.perturbed_used());
        assert_eq!(s.rounds.len(), 2);
        assert_eq!(s.added(Mode::Pidvirt, "fork"), [10.0, 400.0]);
    }

    fn pass(progs: &[(u64, u64)], calls: u64) -> Pass {
        let progs = progs.iter().map(|&(runs, ns)| ProgTime { name: "p".into(), runs, ns }).collect();
        Pass { progs, calls }
    }

    #[test]
    fn in_kernel_time_per_call_and_the_statistics_own_cost() {
        let (ns, runs) = per_call(&pass(&[(100, 5000), (200, 3000)], 100));
        assert_eq!((ns, runs), (80.0, 3.0));
        let mut k = KernelTimes {
            modes: vec![Mode::Floor, Mode::Pidvirt],
            workloads: vec![("getpid", 10), ("kill", 10), ("fork", 10)],
            passes: BTreeMap::new(),
            helper_call: Err("not measured".into()),
        };
        assert!(stats_cost_per_run(&k).is_nan());
        k.passes.insert((Mode::Floor, "getpid"), pass(&[(10, 400)], 10));
        k.passes.insert((Mode::Floor, "fork"), pass(&[(20, 1100), (10, 500)], 10));
        k.passes.insert((Mode::Pidvirt, "getpid"), pass(&[(10, 9000)], 10));
        assert!(close(stats_cost_per_run(&k), 50.0));
        assert!(k.pass(Mode::Floor, "fork").is_some() && k.pass(Mode::Pidvirt, "fork").is_none());
    }

    #[test]
    fn throughput_accounts_for_every_anomaly() {
        let run = LeakRun {
            container: "pidns-1".into(),
            leak: json!({}),
            generated: 1000,
            esrch: 1000,
            generation_s: 2.0,
            counted: Some(1000),
            drops: Some(400),
            delivered: 600,
            audit_count: json!({}),
            log_bytes: 0,
            sink_s: 3.0,
        };
        let t = throughput(&run);
        assert_eq!((t.sink_rate, t.delivered_per_generation_s, t.generation_rate), (200.0, 300.0, 500.0));
        assert_eq!(t.accounted, Some(1000));
        assert_eq!(throughput(&LeakRun { drops: None, ..run }).accounted, None);
    }

    fn snapshot(levels: &Value, memlock: u64) -> Snapshot {
        let value = |bytes: u64, memlock: u64| json!({ "bytes_value": bytes, "bytes_memlock": memlock });
        let maps = BTreeMap::from([
            (map::TASKS.to_string(), value(56, memlock)),
            (map::VIRT.to_string(), value(8, 1000)),
            (map::DEEP.to_string(), value(264, 0)),
        ]);
        let tasks: u64 = levels.as_object().into_iter().flatten().filter_map(|(_, n)| n.as_u64()).sum();
        Snapshot { maps, ps: json!({ "tasks": tasks, "levels": levels }) }
    }

    #[test]
    fn map_bytes_per_task_by_level() {
        let sizes = ValueSizes { tasks: 56, virt: 8, deep: 264 };
        assert_eq!(sizes.of_task(0), 56);
        assert_eq!(sizes.of_task(1), 64);
        assert_eq!(sizes.of_task(3), 80);
        assert_eq!(sizes.of_task(4), 56 + 32 + 264);
        assert_eq!(sizes.of_tasks(&BTreeMap::from([(0, 2), (1, 3)])), 2 * 56 + 3 * 64);

        let before = snapshot(&json!({ "0": 80, "1": 0 }), 5000);
        let after = snapshot(&json!({ "0": 80, "1": 100, "4": 10 }), 7200);
        let m = memory_per_task(&before, &after);
        assert_eq!(m.sizes, sizes);
        assert_eq!((m.task_delta, m.memlock_delta, m.level1), (110, 2200, 64));
        assert!(close(m.memlock_per_task, 20.0));
        assert!(close(m.avg_all, (80.0 * 56.0 + 100.0 * 64.0 + 10.0 * (56.0 + 32.0 + 264.0)) / 190.0));
        // The nested average counts TASKS and VIRT values only.
        assert!(close(m.avg_nested, (100.0 * 64.0 + 10.0 * (56.0 + 32.0)) / 110.0));
        let none = memory_per_task(&after, &before);
        assert_eq!((none.task_delta, none.memlock_delta), (0, -2200));
    }
}
