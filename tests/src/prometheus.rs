//! Debian's Prometheus server and promtool for the suite: a server of the test's own (its
//! configuration and storage in a temporary directory, on a free loopback port) scraping one
//! target every second, asked through its HTTP API; stopped on drop.

use std::{
    io::Write as _,
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

/// A plain-HTTP client with a timeout, taking error statuses as answers.
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(10)))
        .http_status_as_error(false)
        .build()
        .new_agent()
}

/// An HTTP answer: status, Content-Type, body.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub content_type: String,
    pub body: String,
}

/// `GET url` with `accept` as the Accept header (None: no Accept header at all).
pub fn get(url: &str, accept: Option<&str>) -> Result<Answer, String> {
    let mut req = agent().get(url);
    if let Some(a) = accept {
        req = req.header("Accept", a);
    }
    let mut resp = req.call().map_err(|e| format!("GET {url}: {e}"))?;
    let content_type =
        resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let body = resp.body_mut().read_to_string().map_err(|e| format!("GET {url}: body: {e}"))?;
    Ok(Answer { status: resp.status().as_u16(), content_type, body })
}

/// A port nobody listens on now (on 127.0.0.1), or an error if loopback cannot be bound.
pub fn free_loopback_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// `promtool check metrics` on an exposition: Ok(its output) when it finds no problem.
pub fn promtool_check_metrics(exposition: &str) -> Result<String, String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool (Debian's prometheus package): {e}"))?;
    child.stdin.take().expect("stdin").write_all(exposition.as_bytes()).map_err(|e| e.to_string())?;
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() { Ok(said) } else { Err(said) }
}

/// One series of an instant query: its labels and value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub labels: std::collections::BTreeMap<String, String>,
    pub value: f64,
}

/// A Prometheus server of the test's own.
pub struct Prometheus {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub url: String,
}

impl Prometheus {
    /// Starts Debian's `prometheus` scraping `target` (`HOST:PORT`, path /metrics) every
    /// second; Err says why it could not (not installed, did not become ready).
    pub fn start(target: &str) -> Result<Self, String> {
        let dir = tempfile::Builder::new().prefix("pvprom-").tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: pidvirt\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .map_err(|e| e.to_string())?;
        let port = free_loopback_port().map_err(|e| format!("no loopback address: {e}"))?;
        let log = std::fs::File::create(dir.path().join("prometheus.log")).map_err(|e| e.to_string())?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("prometheus (Debian's prometheus package): {e}"))?;
        let mut p = Self { child, dir, url: format!("http://127.0.0.1:{port}") };
        let start = Instant::now();
        let timeout = Duration::from_mins(1) * (crate::settle().as_secs() / 5).max(1) as u32;
        loop {
            if let Ok(Some(status)) = p.child.try_wait() {
                return Err(format!("prometheus exited ({status}): {}", p.log()));
            }
            if get(&format!("{}/-/ready", p.url), None).is_ok_and(|a| a.status == 200) {
                return Ok(p);
            }
            if start.elapsed() > timeout {
                return Err(format!("prometheus not ready within {timeout:?}: {}", p.log()));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// The instant vector `query` evaluates to now (through /api/v1/query).
    pub fn query(&self, query: &str) -> Vec<Sample> {
        let mut resp = agent()
            .get(&format!("{}/api/v1/query", self.url))
            .query("query", query)
            .call()
            .unwrap_or_else(|e| panic!("query {query}: {e}"));
        let body = resp.body_mut().read_to_string().expect("query body");
        let v: serde_json::Value =
            serde_json::from_str(&body).unwrap_or_else(|e| panic!("query {query}: {e}: {body}"));
        assert_eq!(v["status"], "success", "query {query}: {body}");
        assert_eq!(v["data"]["resultType"], "vector", "query {query}: {body}");
        v["data"]["result"]
            .as_array()
            .expect("result")
            .iter()
            .map(|r| Sample {
                labels: serde_json::from_value(r["metric"].clone()).expect("labels"),
                value: r["value"][1].as_str().and_then(|v| v.parse().ok()).expect("a value"),
            })
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
