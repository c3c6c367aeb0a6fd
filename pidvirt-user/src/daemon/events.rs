//! The events ring buffer: new pid namespaces and cgroup moves go to the container service,
//! anomalies become audit records named after their containers.

use std::sync::Arc;

use aya::maps::{MapData, RingBuf};
use pidvirt_common::{MigrateEvent, PidnsEvent, audit::AnomalyEvent, event_kind};
use tokio::io::unix::AsyncFd;

use super::App;
use crate::{
    audit::{Record, WallClock},
    kernel::read_record as read,
};

/// Most records handled per batch (one sink write each).
const BATCH: usize = 4096;

/// Reads the events ring buffer until the daemon stops.
pub async fn consume(events: RingBuf<MapData>, app: Arc<App>) -> anyhow::Result<()> {
    // SAFETY: the ring buffer owns its map fd for as long as the AsyncFd holds it.
    let mut fd = unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("poll the events ring buffer: {e}"))?;
    let mut anomalies: Vec<AnomalyEvent> = Vec::with_capacity(BATCH);
    loop {
        let mut guard = fd.readable_mut().await?;
        let ring = guard.get_inner_mut();
        loop {
            let mut more = false;
            while let Some(item) = ring.next() {
                handle(&item, &app, &mut anomalies);
                if anomalies.len() == BATCH {
                    more = true;
                    break;
                }
            }
            publish(&app, &mut anomalies);
            if !more {
                break;
            }
        }
        guard.clear_ready();
    }
}

fn publish(app: &App, anomalies: &mut Vec<AnomalyEvent>) {
    if anomalies.is_empty() {
        return;
    }
    let clock = WallClock::now();
    let records: Vec<Record> = app
        .containers
        .with_registry(|reg| anomalies.iter().filter_map(|ev| Record::from_event(ev, reg, clock)).collect())
        .unwrap_or_default();
    anomalies.clear();
    app.audit.publish(records);
}

fn handle(bytes: &[u8], app: &App, anomalies: &mut Vec<AnomalyEvent>) {
    let Some(kind) = read::<u32>(bytes) else { return };
    match kind {
        event_kind::ANOMALY => anomalies.extend(read::<AnomalyEvent>(bytes)),
        event_kind::PIDNS => {
            if let Some(ev) = read::<PidnsEvent>(bytes) {
                app.containers.noticed(&ev);
            }
        }
        event_kind::MIGRATE => {
            if let Some(ev) = read::<MigrateEvent>(bytes)
                && ev.threadgroup != 0
            {
                app.containers.migrated(ev.host_pid, ev.container, ev.slot);
            }
        }
        _ => {}
    }
}
