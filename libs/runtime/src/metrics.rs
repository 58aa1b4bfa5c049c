//! What every service exports beside its own metrics (docs/deploy.md#metrics): `# HELP` text
//! from the service's catalogue, `chat_build_info`, the `process_*` metrics an operator expects
//! from any Prometheus target, and the lag of the durable JetStream consumers it owns.
//!
//! Every name is prefixed `chat_` (a shared Prometheus holds many projects), except the
//! `process_*` family, whose names are the convention of every Prometheus client library.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::jetstream;
use tokio_util::sync::CancellationToken;

/// What kind of series a metric is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// One entry of a service's catalogue of metrics.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    pub kind: Kind,
    pub help: &'static str,
    /// Label names; a metric without labels is registered at zero on start, so that dashboards
    /// and alert rules see a series before the first event.
    pub labels: &'static [&'static str],
}

impl Metric {
    pub const fn counter(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: Kind::Counter,
            help,
            labels: &[],
        }
    }
    pub const fn gauge(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: Kind::Gauge,
            help,
            labels: &[],
        }
    }
    pub const fn histogram(name: &'static str, help: &'static str) -> Self {
        Metric {
            name,
            kind: Kind::Histogram,
            help,
            labels: &[],
        }
    }
    pub const fn labelled(self, labels: &'static [&'static str]) -> Self {
        Metric { labels, ..self }
    }
}

/// Metrics every service exports (from this crate).
pub const COMMON: &[Metric] = &[
    Metric::gauge("chat_build_info", "Always 1; the labels name the service and its version.")
        .labelled(&["service", "version"]),
    Metric::gauge(
        "chat_ready",
        "1 while the service's dependencies answer (what /readyz says), 0 when not.",
    ),
    Metric::counter(
        "chat_nats_requests_dropped_total",
        "NATS requests dropped unanswered (reason=reply_subject: the reply subject is not an inbox).",
    )
    .labelled(&["reason"]),
    Metric::counter(
        "chat_nats_requests_waited_total",
        "NATS requests that waited for a free slot of the endpoint's concurrency limit.",
    )
    .labelled(&["subject"]),
    Metric::counter(
        "chat_nats_requests_timed_out_total",
        "NATS requests abandoned at the endpoint's deadline (answered unavailable).",
    )
    .labelled(&["subject"]),
    Metric::gauge(
        "chat_consumer_pending",
        "Stream messages not yet delivered to the durable consumer.",
    )
    .labelled(&["consumer"]),
    Metric::gauge(
        "chat_consumer_ack_pending",
        "Messages delivered to the durable consumer and not yet acknowledged.",
    )
    .labelled(&["consumer"]),
    Metric::gauge(
        "chat_consumer_lag_seconds",
        "Age of the oldest stream message the durable consumer has not acknowledged (0 when caught up).",
    )
    .labelled(&["consumer"]),
    Metric::gauge("process_cpu_seconds_total", "CPU time the process has used, in seconds."),
    Metric::gauge("process_resident_memory_bytes", "Resident memory of the process, in bytes."),
    Metric::gauge("process_open_fds", "Open file descriptors of the process."),
    Metric::gauge("process_threads", "Threads of the process."),
    Metric::gauge(
        "process_start_time_seconds",
        "When the process started, in seconds since the Unix epoch.",
    ),
];

/// Describes `catalogue` and [`COMMON`] to the recorder, registers the label-less ones at zero,
/// and sets `chat_build_info{service, version}`. Call once at start, before serving.
pub fn install(service: &'static str, catalogue: &[Metric]) {
    crate::admin::metrics_handle();
    for m in COMMON.iter().chain(catalogue) {
        match m.kind {
            Kind::Counter => metrics::describe_counter!(m.name, m.help),
            Kind::Gauge => metrics::describe_gauge!(m.name, m.help),
            Kind::Histogram => metrics::describe_histogram!(m.name, m.help),
        }
        if m.labels.is_empty() {
            match m.kind {
                Kind::Counter => metrics::counter!(m.name).increment(0),
                Kind::Gauge => metrics::gauge!(m.name).increment(0.0),
                // A histogram with no sample renders nothing; its first sample makes it appear.
                Kind::Histogram => {}
            }
        }
    }
    metrics::gauge!("chat_build_info", "service" => service, "version" => env!("CARGO_PKG_VERSION"))
        .set(1.0);
    let start = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    metrics::gauge!("process_start_time_seconds").set(start.as_secs_f64());
    update_process();
}

/// Refreshes the `process_*` gauges from `/proc/self` (Linux; elsewhere they stay at zero).
pub fn update_process() {
    if let Some(p) = read_process() {
        metrics::gauge!("process_cpu_seconds_total").set(p.cpu_seconds);
        metrics::gauge!("process_resident_memory_bytes").set(p.resident_bytes as f64);
        metrics::gauge!("process_open_fds").set(p.open_fds as f64);
        metrics::gauge!("process_threads").set(p.threads as f64);
    }
}

#[derive(Debug, PartialEq)]
struct Process {
    cpu_seconds: f64,
    resident_bytes: u64,
    open_fds: usize,
    threads: u64,
}

fn read_process() -> Option<Process> {
    // schedstat's first field is the time spent on a CPU in ns (no clock-tick conversion).
    let schedstat = std::fs::read_to_string("/proc/self/schedstat").ok()?;
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let open_fds = std::fs::read_dir("/proc/self/fd").ok()?.count();
    let (resident_bytes, threads) = parse_status(&status)?;
    Some(Process {
        cpu_seconds: parse_schedstat(&schedstat)? as f64 / 1e9,
        resident_bytes,
        open_fds,
        threads,
    })
}

fn parse_schedstat(text: &str) -> Option<u64> {
    text.split_whitespace().next()?.parse().ok()
}

/// `VmRSS` (in bytes) and `Threads` from `/proc/self/status`.
fn parse_status(text: &str) -> Option<(u64, u64)> {
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some((field("VmRSS:")? * 1024, field("Threads:")?))
}

/// How often [`track_consumer_lag`] reads the consumer's state.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

/// Exports the lag of the durable consumer `consumer` of `stream` every `every` until
/// `shutdown`: `chat_consumer_pending`, `chat_consumer_ack_pending` and
/// `chat_consumer_lag_seconds` (the age of the first message above the consumer's ack floor,
/// read with a direct get; 0 when nothing is pending). One JetStream request or two per period,
/// whatever the traffic. A failed read leaves the last values and is logged at debug level.
pub async fn track_consumer_lag(
    stream: jetstream::stream::Stream,
    consumer: &'static str,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let pending = metrics::gauge!("chat_consumer_pending", "consumer" => consumer);
    let ack_pending = metrics::gauge!("chat_consumer_ack_pending", "consumer" => consumer);
    let lag = metrics::gauge!("chat_consumer_lag_seconds", "consumer" => consumer);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        let info = match stream.consumer_info(consumer).await {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(consumer, error = %e, "consumer info failed");
                continue;
            }
        };
        pending.set(info.num_pending as f64);
        ack_pending.set(info.num_ack_pending as f64);
        if info.num_pending == 0 && info.num_ack_pending == 0 {
            lag.set(0.0);
            continue;
        }
        let filter = match info.config.filter_subject.as_str() {
            "" => ">",
            f => f,
        };
        match stream
            .direct_get_next_for_subject(filter, Some(info.ack_floor.stream_sequence + 1))
            .await
        {
            Ok(message) => {
                let age = time_since(message.time.unix_timestamp_nanos());
                lag.set(age.as_secs_f64());
            }
            Err(e) => tracing::debug!(consumer, error = %e, "direct get for the lag failed"),
        }
    }
}

fn time_since(unix_nanos: i128) -> Duration {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as i128;
    Duration::from_nanos((now - unix_nanos).clamp(0, u64::MAX as i128) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        assert_eq!(parse_schedstat("123456789 42 7\n"), Some(123_456_789));
        let status = "Name:\tchat-edge\nVmRSS:\t   2048 kB\nThreads:\t9\n";
        assert_eq!(parse_status(status), Some((2048 * 1024, 9)));
        assert_eq!(parse_status("Name:\tx\n"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn reads_this_process() {
        let p = read_process().expect("procfs");
        assert!(
            p.resident_bytes > 0 && p.threads >= 1 && p.open_fds >= 3,
            "{p:?}"
        );
    }

    #[test]
    fn every_common_name_follows_the_convention() {
        for m in COMMON {
            assert!(
                m.name.starts_with("chat_") || m.name.starts_with("process_"),
                "{}",
                m.name
            );
            assert!(!m.help.is_empty());
        }
    }

    #[test]
    fn time_since_never_goes_negative() {
        assert_eq!(time_since(i128::MAX), Duration::ZERO);
        assert!(time_since(0) > Duration::from_secs(1_000_000_000));
    }
}
