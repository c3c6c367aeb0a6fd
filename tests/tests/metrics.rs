//! Prometheus metrics (`pidvirt run --metrics`): scraped by Debian's real Prometheus server and
//! checked by promtool; the listener's address read from the kernel (/proc/net/tcp); counters
//! compared with `pidvirt stats` and with what the kernel's syscalls answered.
//!
//! Where the loopback interface cannot be bound (a VM without networking), the tests say so and
//! check that `--metrics` then refuses to start, naming the listener.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
    time::Duration,
};

use tests::{
    Daemon, Fixture, eventually, note_unavailable,
    prometheus::{self, Prometheus, get},
};

const FIXTURE: &str = env!("CARGO_BIN_EXE_pidvirt-fixture");
const ESRCH: i64 = -3;

/// A series: metric name and labels.
type Series = (String, BTreeMap<String, String>);

/// The samples of a Prometheus text exposition (0.0.4), parsed here: `name{k="v",...} value`.
fn parse_exposition(text: &str) -> BTreeMap<Series, f64> {
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("sample line {line:?}"));
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("value of {line:?}"));
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').unwrap_or_else(|| panic!("labels of {line:?}"));
                let labels = body
                    .split("\",")
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) =
                            kv.split_once("=\"").unwrap_or_else(|| panic!("label {kv:?} of {line:?}"));
                        (k.to_string(), v.trim_end_matches('"').to_string())
                    })
                    .collect();
                (name.to_string(), labels)
            }
            None => (series.to_string(), BTreeMap::new()),
        };
        assert!(out.insert((name, labels), value).is_none(), "a series twice: {line}");
    }
    out
}

fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect()
}

/// The daemon's metrics URL, as its status gives it.
fn metrics_url(d: &Daemon) -> String {
    d.status()["metrics"].as_str().expect("status names the metrics URL").to_string()
}

/// One scrape in the Prometheus text format.
fn scrape(url: &str) -> BTreeMap<Series, f64> {
    let a = get(url, None).expect("scrape");
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.content_type.starts_with("text/plain; version=0.0.4"), "{}", a.content_type);
    parse_exposition(&a.body)
}

fn value(m: &BTreeMap<Series, f64>, name: &str, l: &[(&str, &str)]) -> f64 {
    *m.get(&(name.to_string(), labels(l))).unwrap_or_else(|| panic!("no series {name}{l:?}"))
}

/// Whether 127.0.0.1 can be bound here; if not, notes it for `test` and checks that the
/// daemon refuses `--metrics` naming the listener.
fn loopback_or_unavailable(test: &str) -> bool {
    match prometheus::free_loopback_port() {
        Ok(_) => true,
        Err(e) => {
            note_unavailable(test, &format!("no loopback network: {e}"));
            let dir = tempfile::tempdir().unwrap();
            let sock = dir.path().join("s.sock");
            let out =
                tests::pidvirt(&["run", "--metrics", "127.0.0.1:0", "--socket", sock.to_str().unwrap()]);
            assert_eq!(out.code, 1, "{out:?}");
            assert!(out.stderr.contains("metrics listener on 127.0.0.1:0"), "{out:?}");
            false
        }
    }
}

#[test]
fn prometheus_scrapes_exactly_the_leaks_a_namespace_made_and_promtool_finds_no_problem() {
    let test = "prometheus_scrapes_exactly_the_leaks_a_namespace_made_and_promtool_finds_no_problem";
    if !loopback_or_unavailable(test) {
        return;
    }
    let d = Daemon::start_with(&["--metrics", "127.0.0.1:0"]);
    let url = metrics_url(&d);
    let target = url.trim_start_matches("http://").trim_end_matches("/metrics").to_string();
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    let query = r#"pidvirt_crossings_total{syscall="kill",verdict="leak"}"#;
    let direct =
        || value(&scrape(&url), "pidvirt_crossings_total", &[("syscall", "kill"), ("verdict", "leak")]);
    let k = 25u32;
    let prom = match Prometheus::start(&target) {
        Ok(p) => Some(p),
        Err(why) => {
            note_unavailable(
                test,
                &format!("Prometheus does not run here: {}", why.lines().next().unwrap_or("")),
            );
            None
        }
    };
    let Some(prom) = prom else {
        // Without the server: the scrape itself counts the leaks.
        let before = direct();
        assert_eq!(f.num(&format!("repeat {k} kill {host} 0")), ESRCH);
        assert_eq!(direct(), before + f64::from(k));
        return;
    };
    eventually(tests::settle() * 6, "Prometheus scraping pidvirt (up == 1)", || {
        let up = prom.query(r#"up{job="pidvirt"}"#);
        (up.len() == 1 && up[0].value == 1.0).then_some(())
    });
    // What the host did before: the daemon's value, once Prometheus has it.
    let before = direct();
    eventually(tests::settle() * 2, "Prometheus has the value before the workload", || {
        let s = prom.query(query);
        (s.len() == 1 && s[0].value == before).then_some(())
    });
    assert_eq!(
        f.num(&format!("repeat {k} kill {host} 0")),
        ESRCH,
        "the kernel: the host pid names nothing there"
    );
    let expected = before + f64::from(k);
    let got = eventually(tests::settle() * 2, "Prometheus has the leaks", || {
        let s = prom.query(query);
        (s.len() == 1 && s[0].value >= expected).then(|| s[0].clone())
    });
    assert_eq!(got.value, expected, "exactly the {k} leaks: {got:?}");
    eprintln!("Prometheus: {query} = {} ({before} before, {k} leaks made)", got.value);
    assert_eq!(got.labels.get("job").map(String::as_str), Some("pidvirt"));
    // Still exactly that a few scrapes later (nothing counted twice).
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(prom.query(query)[0].value, expected);
    // The per-container view of stats agrees on the fixture's part.
    let (c, _) = d.container_crossings(&f.container());
    assert_eq!(c["kill"]["leak"], u64::from(k));
    // Prometheus took the OpenMetrics exposition (it asks for it): the family's type is known.
    let meta = get(&format!("{}/api/v1/metadata", prom.url), None).unwrap();
    let meta: serde_json::Value = serde_json::from_str(&meta.body).unwrap();
    let family = &meta["data"]["pidvirt_crossings"];
    assert_eq!(family[0]["type"], "counter", "{}", meta["data"]);

    // promtool on a scrape in the text format: no problem. And it does find problems: a
    // counter without `_total`.
    let text = get(&url, None).unwrap().body;
    let said = prometheus::promtool_check_metrics(&text).unwrap_or_else(|e| panic!("promtool: {e}"));
    assert!(said.trim().is_empty(), "promtool said: {said}");
    eprintln!(
        "promtool check metrics: no problem in {} sample lines",
        text.lines().filter(|l| !l.starts_with('#')).count()
    );
    let bad = "# HELP bad_counter A counter.\n# TYPE bad_counter counter\nbad_counter 1\n";
    assert!(prometheus::promtool_check_metrics(bad).is_err(), "promtool lints");
    // The OpenMetrics flavour ends as the format requires.
    let om = get(&url, Some("application/openmetrics-text;version=1.0.0")).unwrap();
    assert!(om.content_type.starts_with("application/openmetrics-text"), "{}", om.content_type);
    assert!(om.body.ends_with("# EOF\n"));
}

#[test]
fn a_scrape_never_disagrees_with_stats() {
    if !loopback_or_unavailable("a_scrape_never_disagrees_with_stats") {
        return;
    }
    let d = Daemon::start_with(&["--metrics", "127.0.0.1:0"]);
    let url = metrics_url(&d);
    let (mut f, host) = Fixture::leaky(FIXTURE, 1);
    assert_eq!(f.num(&format!("repeat 3 kill {host} 0")), ESRCH);
    // Counters only grow: scrape, stats, scrape: the stats value lies between the two scrapes.
    let first = scrape(&url);
    let stats = d.stats();
    let second = scrape(&url);
    let between = |name: &str, l: &[(&str, &str)], v: u64| {
        let (a, b) = (value(&first, name, l), value(&second, name, l));
        let v = v as f64;
        assert!(a <= v && v <= b, "{name}{l:?}: scrape {a}, stats {v}, scrape {b}");
    };
    let crossings = stats["crossings"].as_object().unwrap();
    assert_eq!(crossings.len(), 69, "every watched syscall (the README's table; read counts signalfd reads)");
    for (syscall, verdicts) in crossings {
        for (verdict, n) in verdicts.as_object().unwrap() {
            between(
                "pidvirt_crossings_total",
                &[("syscall", syscall), ("verdict", verdict)],
                n.as_u64().unwrap(),
            );
        }
    }
    for (hook, n) in stats["denied"].as_object().unwrap() {
        between("pidvirt_denied_total", &[("hook", hook)], n.as_u64().unwrap());
    }
    for (reason, n) in stats["drops"].as_object().unwrap() {
        between(
            "pidvirt_ringbuf_lost_events_total",
            &[("ring", "EVENTS"), ("reason", reason)],
            n.as_u64().unwrap(),
        );
    }
    for (event, n) in stats["lifecycle"].as_object().unwrap() {
        between("pidvirt_lifecycle_events_total", &[("event", event)], n.as_u64().unwrap());
    }
    let errors = stats["map_errors"].as_object().unwrap();
    let scraped_errors: BTreeSet<String> = second
        .keys()
        .filter(|(n, _)| n == "pidvirt_map_errors_total")
        .map(|(_, l)| l["reason"].clone())
        .collect();
    assert_eq!(scraped_errors, errors.keys().cloned().collect(), "every map error reason");
    between("pidvirt_audit_log_records_written_total", &[], stats["audit_log"]["written"].as_u64().unwrap());
    assert!(value(&second, "pidvirt_anomalies_reported_total", &[("verdict", "leak")]) >= 3.0);
    assert!(value(&second, "pidvirt_last_event_timestamp_seconds", &[]) > 1.7e9, "a wall-clock time");
    assert_eq!(value(&second, "pidvirt_containers", &[("kind", "host")]), 1.0);
    assert!(value(&second, "pidvirt_containers", &[("kind", "pidns")]) >= 1.0);
    assert!(value(&second, "pidvirt_seed_duration_seconds", &[]) > 0.0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let build = second.keys().find(|(n, _)| n == "pidvirt_build_info").expect("build info");
    assert_eq!(build.1.get("kernel").map(String::as_str), Some(kernel.trim()));
    // Map capacities are the kernel's own (bpftool), entries within them.
    let tasks = value(&second, "pidvirt_tasks_tracked", &[]);
    let (front, spilled) = (
        value(&second, "pidvirt_map_entries", &[("map", "TASK_FRONT")]),
        value(&second, "pidvirt_map_entries", &[("map", "TASKS")]),
    );
    assert!(tasks > 0.0);
    assert_eq!(tasks, front + spilled, "the task map is its front and TASKS");
    // The daemon's maps, by id, from its file descriptors (the kernel's fdinfo); bpftool names them.
    let ours: BTreeSet<u64> = std::fs::read_dir(format!("/proc/{}/fdinfo", d.pid()))
        .unwrap()
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .filter_map(|info| info.lines().find_map(|l| l.strip_prefix("map_id:"))?.trim().parse().ok())
        .collect();
    let out = Command::new("bpftool").args(["-j", "map", "show"]).output().expect("bpftool");
    let maps: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).expect("bpftool's JSON");
    // The reverse map is its front and VIRT: a key per task per level below the host, so at least
    // one per task of the fixture's namespace (the fixture is quiet: /proc lists them all).
    // The fixture's tasks were forked after the daemon started: the programs wrote their keys,
    // to the front (the daemon's seeds of older tasks go to VIRT).
    let fixture_tasks = tests::proc_truth::tasks_in(f.inner()).len() as f64;
    let front_reverse = value(&second, "pidvirt_map_entries", &[("map", "VIRT_FRONT")]);
    let reverse = front_reverse + value(&second, "pidvirt_map_entries", &[("map", "VIRT")]);
    assert!(
        fixture_tasks >= 2.0 && reverse >= fixture_tasks,
        "{reverse} reverse entries, {fixture_tasks} tasks"
    );
    assert!(front_reverse >= 1.0, "the front holds none of the {fixture_tasks} fixture tasks' keys");
    for name in ["TASK_FRONT", "TASKS", "VIRT_FRONT", "VIRT"] {
        let map = maps
            .iter()
            .find(|m| m["name"] == name && m["id"].as_u64().is_some_and(|id| ours.contains(&id)))
            .unwrap_or_else(|| panic!("the daemon's {name} map in bpftool's list"));
        let capacity = value(&second, "pidvirt_map_capacity", &[("map", name)]);
        assert_eq!(map["max_entries"].as_f64().unwrap(), capacity, "{name}");
        assert!(value(&second, "pidvirt_map_entries", &[("map", name)]) <= capacity, "{name}");
    }
}

/// The socket addresses (hex, as /proc/net/tcp{,6} print them) listening on TCP `port`.
fn listening_on(port: u16) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for file in ["/proc/net/tcp", "/proc/net/tcp6"] {
        for line in std::fs::read_to_string(file).unwrap_or_default().lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let Some((addr, p)) = fields[1].rsplit_once(':') else { continue };
            if u16::from_str_radix(p, 16) == Ok(port) && fields[3] == "0A" {
                out.insert(addr.to_string());
            }
        }
    }
    out
}

#[test]
fn the_metrics_listener_binds_loopback_unless_told_otherwise() {
    if !loopback_or_unavailable("the_metrics_listener_binds_loopback_unless_told_otherwise") {
        return;
    }
    let port = prometheus::free_loopback_port().unwrap();
    let d = Daemon::start_with(&["--metrics", &port.to_string()]);
    assert_eq!(metrics_url(&d), format!("http://127.0.0.1:{port}/metrics"));
    // The kernel: one listening socket on the port, on 127.0.0.1 only.
    assert_eq!(listening_on(port), BTreeSet::from(["0100007F".to_string()]));
    assert_eq!(get(&format!("http://127.0.0.1:{port}/metrics"), None).unwrap().status, 200);
    assert_eq!(get(&format!("http://127.0.0.1:{port}/nothing"), None).unwrap().status, 404);
    drop(d);
    // Told otherwise: every address.
    let d = Daemon::start_with(&["--metrics", &format!("0.0.0.0:{port}")]);
    assert_eq!(listening_on(port), BTreeSet::from(["00000000".to_string()]));
    drop(d);
    // A port in use: the daemon refuses to start, naming the listener.
    let _held = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let out = tests::pidvirt(&["run", "--metrics", &port.to_string(), "--socket", sock.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains(&format!("metrics listener on 127.0.0.1:{port}")), "{out:?}");
}

#[test]
fn per_container_series_are_capped_and_the_rest_is_other() {
    if !loopback_or_unavailable("per_container_series_are_capped_and_the_rest_is_other") {
        return;
    }
    let d = Daemon::start_with(&["--metrics", "127.0.0.1:0", "--metrics-per-container", "1"]);
    let url = metrics_url(&d);
    let name = "pidvirt_container_crossings_total";
    let containers = |m: &BTreeMap<Series, f64>| -> BTreeSet<String> {
        m.keys().filter(|(n, _)| n == name).map(|(_, l)| l["container"].clone()).collect()
    };
    let leaks = |m: &BTreeMap<Series, f64>, c: &str| {
        m.get(&(name.to_string(), labels(&[("container", c), ("syscall", "kill"), ("verdict", "leak")])))
            .copied()
            .unwrap_or(0.0)
    };
    let before = scrape(&url);
    // Two new namespaces at once: at most one of them can be admitted.
    let (mut f, host) = Fixture::leaky(FIXTURE, 2);
    let (inner, outer) = (f.container(), format!("pidns-{}", f.pidns[0]));
    eventually(tests::settle(), "both namespaces known", || {
        let ids: BTreeSet<String> = d.containers().into_iter().map(|c| c.id).collect();
        (ids.contains(&inner) && ids.contains(&outer)).then_some(())
    });
    let seen = scrape(&url);
    let other_before = leaks(&seen, "other");
    // 5 leaks from the inner namespace, 7 from the outer one (its init's sibling's host pid is
    // no number of the outer namespace either: the inner sibling's host pid).
    assert_eq!(f.num(&format!("repeat 5 kill {host} 0")), ESRCH);
    for _ in 0..7 {
        assert_eq!(f.kill_from_level_1(FIXTURE, host), ESRCH.to_string());
    }
    let after = scrape(&url);
    let named = containers(&after);
    let own: Vec<&String> = named.iter().filter(|c| *c != "host" && *c != "other").collect();
    assert!(own.len() <= 1, "at most --metrics-per-container containers of their own: {named:?}");
    let admitted = |c: &str| named.contains(c);
    assert!(!(admitted(&inner) && admitted(&outer)), "both admitted past the cap: {named:?}");
    let expect_other =
        other_before + if admitted(&inner) { 0.0 } else { 5.0 } + if admitted(&outer) { 0.0 } else { 7.0 };
    if admitted(&inner) {
        assert_eq!(leaks(&after, &inner), 5.0);
    }
    if admitted(&outer) {
        assert_eq!(leaks(&after, &outer), 7.0);
    }
    assert_eq!(leaks(&after, "other"), expect_other, "the rest adds up under other");
    // The whole host's family still counts every leak.
    let total = |m: &BTreeMap<Series, f64>| {
        value(m, "pidvirt_crossings_total", &[("syscall", "kill"), ("verdict", "leak")])
    };
    assert_eq!(total(&after) - total(&before), 12.0);
    // The kernel's side: the outer namespace's leaks are counted there (stats per container).
    assert_eq!(d.container_crossings(&outer).0["kill"]["leak"], 7);
    assert_eq!(d.container_crossings(&inner).0["kill"]["leak"], 5);
}
