//! Prometheus metrics: the registry, the recording API, and the services' health.
//!
//! A leaf module: it depends on nothing in the crate, so every layer records without plumbing.
//! Metrics are always recorded (a few atomic adds per call); they are served only when
//! `rexray.metrics.listen: ADDR:PORT` is set (`/metrics` and `/health`, by the protocol layer),
//! in the OpenMetrics text format that Prometheus scrapes ([`render`]).
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `rexray_build_info` | `version` | always 1 |
//! | `rexray_requests_total` | `endpoint`, `outcome` | plugin calls: `ok`, `bad_request`, `unknown_endpoint`, or the failure's kind (`not_found`, `in_use`, `timeout`, `attached_elsewhere`, …) |
//! | `rexray_request_duration_seconds` | `endpoint` | histogram of plugin call latency |
//! | `rexray_volumes` | `service` | volumes the service knows |
//! | `rexray_volumes_active` | `service` | volumes activated (attached and mounted) on this host |
//! | `rexray_mount_holders` | `service` | mounts held by containers (and dvdcli) in all |
//! | `rexray_service_up` | `service` | 1 once the service opened, 0 while it cannot |
//! | `rexray_backend_operations_total` | `backend`, `operation`, `outcome` | the Docker front's `activate`/`deactivate` and each half's operation (`create`, `delete`, `controller_publish`, `node_stage`, …): `ok` or the failure's kind |
//! | `rexray_backend_operation_duration_seconds` | `backend`, `operation` | histogram |
//! | `rexray_ec2_api_calls_total` | `action`, `outcome` | EC2 API calls: `ok`, `error`, `throttled` |
//! | `rexray_ec2_api_call_duration_seconds` | `action` | histogram (calls recorded with [`ec2_call_timed`]) |
//! | `rexray_ec2_volume_state_polls_total` | – | volume-state polls of waits (attach, detach, create), answered by batched DescribeVolumes calls |
//! | `rexray_ec2_volume_state_rounds_total` | – | the batched DescribeVolumes calls that answered them |
//!
//! The recording functions ([`record_request`], [`service_volumes`], [`ec2_call`], …) write to
//! one process-wide registry, so any layer can record without plumbing.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

/// Latency buckets in seconds: from half a millisecond (a `Get`) to Docker's 2-minute limit.
const BUCKETS: [f64; 17] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0];

/// The plugin endpoints, so that the `endpoint` label has a bounded set of values.
const ENDPOINTS: [&str; 9] = [
    "Plugin.Activate",
    "VolumeDriver.Create",
    "VolumeDriver.Remove",
    "VolumeDriver.Mount",
    "VolumeDriver.Unmount",
    "VolumeDriver.Path",
    "VolumeDriver.Get",
    "VolumeDriver.List",
    "VolumeDriver.Capabilities",
];

/// The OpenMetrics media type.
pub const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    endpoint: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct EndpointLabels {
    endpoint: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabels {
    service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendOpLabels {
    backend: &'static str,
    operation: &'static str,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BackendTimeLabels {
    backend: &'static str,
    operation: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Ec2Labels {
    action: String,
    outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

fn histogram() -> Histogram {
    Histogram::new(BUCKETS.iter().copied())
}

/// Every metric, registered once.
struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_seconds: Histograms<EndpointLabels>,
    volumes: Family<ServiceLabels, Gauge>,
    volumes_active: Family<ServiceLabels, Gauge>,
    holders: Family<ServiceLabels, Gauge>,
    service_up: Family<ServiceLabels, Gauge>,
    backend_ops: Family<BackendOpLabels, Counter>,
    backend_seconds: Histograms<BackendTimeLabels>,
    ec2_calls: Family<Ec2Labels, Counter>,
    ec2_seconds: Histograms<ActionLabels>,
    state_polls: Counter,
    state_rounds: Counter,
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::default();
        let m = Metrics {
            registry: Registry::default(),
            requests: Family::default(),
            request_seconds: Family::new_with_constructor(histogram),
            volumes: Family::default(),
            volumes_active: Family::default(),
            holders: Family::default(),
            service_up: Family::default(),
            backend_ops: Family::default(),
            backend_seconds: Family::new_with_constructor(histogram),
            ec2_calls: Family::default(),
            ec2_seconds: Family::new_with_constructor(histogram),
            state_polls: Counter::default(),
            state_rounds: Counter::default(),
        };
        registry.register(
            "rexray_build",
            "rexray build information",
            Info::new(vec![("version".to_string(), env!("CARGO_PKG_VERSION").to_string())]),
        );
        registry.register("rexray_requests", "Docker plugin calls by endpoint and outcome", m.requests.clone());
        registry.register(
            "rexray_request_duration_seconds",
            "Docker plugin call latency by endpoint",
            m.request_seconds.clone(),
        );
        registry.register("rexray_volumes", "Volumes known to the service", m.volumes.clone());
        registry.register(
            "rexray_volumes_active",
            "Volumes activated (attached and mounted) on this host",
            m.volumes_active.clone(),
        );
        registry.register("rexray_mount_holders", "Mounts held by containers, in all", m.holders.clone());
        registry.register("rexray_service_up", "1 once the service opened, 0 while it cannot", m.service_up.clone());
        registry.register(
            "rexray_backend_operations",
            "Backend operations by backend, operation and outcome",
            m.backend_ops.clone(),
        );
        registry.register(
            "rexray_backend_operation_duration_seconds",
            "Backend operation latency",
            m.backend_seconds.clone(),
        );
        registry.register("rexray_ec2_api_calls", "EC2 API calls by action and outcome", m.ec2_calls.clone());
        registry.register(
            "rexray_ec2_api_call_duration_seconds",
            "EC2 API call latency by action",
            m.ec2_seconds.clone(),
        );
        registry.register(
            "rexray_ec2_volume_state_polls",
            "Volume-state polls of waits (attach, detach, create)",
            m.state_polls.clone(),
        );
        registry.register(
            "rexray_ec2_volume_state_rounds",
            "Batched DescribeVolumes calls answering the volume-state polls",
            m.state_rounds.clone(),
        );
        Metrics { registry, ..m }
    }
}

fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

fn gauge_value(n: impl TryInto<i64>) -> i64 {
    n.try_into().unwrap_or(i64::MAX)
}

// ----- recording -------------------------------------------------------------------------------

/// The outcome label of a successful plugin call.
pub const OK: &str = "ok";
/// The outcome label of a malformed request (HTTP 400, 413).
pub const BAD_REQUEST: &str = "bad_request";
/// The outcome label of a path that is not a plugin endpoint (HTTP 404).
pub const UNKNOWN_ENDPOINT: &str = "unknown_endpoint";

/// The `endpoint` label for a request path: the plugin endpoint it names (`VolumeDriver.Mount`,
/// also under the admin socket's `/services/<name>/` prefix), else `other`.
pub fn endpoint_label(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    ENDPOINTS.iter().copied().find(|e| *e == last).unwrap_or("other")
}

/// Records one plugin call: [`OK`], [`BAD_REQUEST`], [`UNKNOWN_ENDPOINT`] or the label of the
/// failure's kind.
pub fn record_request(endpoint: &'static str, outcome: &'static str, elapsed: Duration) {
    if outcome == OK {
        if let Some((calls, seconds)) = ENDPOINTS.iter().position(|e| *e == endpoint).map(|i| &ok_requests()[i]) {
            calls.inc();
            seconds.observe(elapsed.as_secs_f64());
            return;
        }
    }
    let m = metrics();
    m.requests.get_or_create(&RequestLabels { endpoint, outcome }).inc();
    m.request_seconds.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
}

/// Each endpoint's `ok` counter and its latency histogram, looked up once: the hot calls
/// (Get, Path, List) then record with an atomic add and a histogram update, without hashing
/// their labels into the families.
fn ok_requests() -> &'static [(Counter, Histogram); ENDPOINTS.len()] {
    static HANDLES: OnceLock<[(Counter, Histogram); ENDPOINTS.len()]> = OnceLock::new();
    HANDLES.get_or_init(|| {
        let m = metrics();
        ENDPOINTS.map(|endpoint| {
            (
                m.requests.get_or_create(&RequestLabels { endpoint, outcome: OK }).clone(),
                m.request_seconds.get_or_create(&EndpointLabels { endpoint }).clone(),
            )
        })
    })
}

/// Records a service's volume counts: all volumes, the active ones, and the mounts held.
pub fn service_volumes(service: &str, volumes: usize, active: usize, holders: u64) {
    let m = metrics();
    let labels = ServiceLabels { service: service.to_owned() };
    m.volumes.get_or_create(&labels).set(gauge_value(volumes));
    m.volumes_active.get_or_create(&labels).set(gauge_value(active));
    m.holders.get_or_create(&labels).set(gauge_value(holders));
}

/// Records whether a service is open (`rexray_service_up`).
pub fn service_up(service: &str, up: bool) {
    metrics().service_up.get_or_create(&ServiceLabels { service: service.to_owned() }).set(i64::from(up));
}

/// Records one backend operation with its outcome label (`ok`, or the failure's kind).
pub fn backend_operation(backend: &'static str, operation: &'static str, outcome: &'static str, elapsed: Duration) {
    let m = metrics();
    m.backend_ops.get_or_create(&BackendOpLabels { backend, operation, outcome }).inc();
    m.backend_seconds.get_or_create(&BackendTimeLabels { backend, operation }).observe(elapsed.as_secs_f64());
}

/// How an EC2 API call ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ec2Outcome {
    /// The call succeeded.
    Ok,
    /// EC2 refused it for throttling (`RequestLimitExceeded`, `Throttling`, …). Counted apart
    /// from [`Ec2Outcome::Error`], so a throttled call is not also an error.
    Throttled,
    /// Any other failure (an EC2 error code, a timeout, a connection failure).
    Error,
}

impl Ec2Outcome {
    fn as_str(self) -> &'static str {
        match self {
            Ec2Outcome::Ok => "ok",
            Ec2Outcome::Throttled => "throttled",
            Ec2Outcome::Error => "error",
        }
    }
}

/// Records one EC2 API call (each attempt, retries included) under its action name as EC2
/// spells it (`CreateVolume`, `AttachVolume`, `DescribeVolumes`, …):
/// `rexray_ec2_api_calls_total{action, outcome}`.
pub fn ec2_call(action: &str, outcome: Ec2Outcome) {
    metrics().ec2_calls.get_or_create(&Ec2Labels { action: action.to_owned(), outcome: outcome.as_str() }).inc();
}

/// [`ec2_call`] plus the call's latency (`rexray_ec2_api_call_duration_seconds{action}`).
pub fn ec2_call_timed(action: &str, outcome: Ec2Outcome, elapsed: Duration) {
    ec2_call(action, outcome);
    metrics().ec2_seconds.get_or_create(&ActionLabels { action: action.to_owned() }).observe(elapsed.as_secs_f64());
}

/// Records one batched DescribeVolumes round answering `polls` volume-state polls.
pub fn ec2_state_round(polls: usize) {
    let m = metrics();
    m.state_rounds.inc();
    m.state_polls.inc_by(u64::try_from(polls).unwrap_or(u64::MAX));
}

/// Every metric in the OpenMetrics text format.
pub fn render() -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &metrics().registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    text
}

// ----- health ----------------------------------------------------------------------------------

/// Where a service is in its life, for `/health`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServiceState {
    /// Its backend and state are being opened.
    Opening,
    /// It serves requests.
    Ready,
    /// It could not open; the next request tries again. Holds the error.
    Failed(String),
}

/// The daemon's services and their states, shared by the daemon (which updates it as services
/// open) and the `/health` endpoint. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct Health {
    services: Arc<Mutex<BTreeMap<String, ServiceState>>>,
}

impl Health {
    /// Records `service`'s state (and `rexray_service_up`).
    pub fn set(&self, service: &str, state: ServiceState) {
        service_up(service, state == ServiceState::Ready);
        self.services.lock().expect("health map poisoned").insert(service.to_owned(), state);
    }

    /// Whether every service is ready, and each one's state as text.
    pub fn report(&self) -> (bool, BTreeMap<String, String>) {
        let services = self.services.lock().expect("health map poisoned");
        let all_ready = services.values().all(|s| *s == ServiceState::Ready);
        let states = services
            .iter()
            .map(|(name, state)| {
                let text = match state {
                    ServiceState::Opening => "opening".to_string(),
                    ServiceState::Ready => "ready".to_string(),
                    ServiceState::Failed(e) => format!("failed: {e}"),
                };
                (name.clone(), text)
            })
            .collect();
        (all_ready, states)
    }
}

impl Health {
    /// `/health`'s answer: whether every service is ready, and the JSON body saying so.
    pub fn body(&self) -> (bool, String) {
        let (ok, services) = self.report();
        let body = serde_json::json!({
            "status": if ok { "ok" } else { "unavailable" },
            "version": env!("CARGO_PKG_VERSION"),
            "services": services,
        });
        (ok, body.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The value of the sample line that starts with `prefix` (name and labels).
    fn sample(text: &str, prefix: &str) -> Option<f64> {
        text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    }

    #[test]
    fn ec2_calls_are_counted_by_action_and_outcome() {
        ec2_call("TestOnlyAttachVolume", Ec2Outcome::Ok);
        ec2_call("TestOnlyAttachVolume", Ec2Outcome::Ok);
        ec2_call("TestOnlyAttachVolume", Ec2Outcome::Throttled);
        ec2_call_timed("TestOnlyAttachVolume", Ec2Outcome::Error, Duration::from_millis(30));
        let text = render();
        let calls = |outcome: &str| {
            sample(
                &text,
                &format!("rexray_ec2_api_calls_total{{action=\"TestOnlyAttachVolume\",outcome=\"{outcome}\"}}"),
            )
        };
        assert_eq!(calls("ok"), Some(2.0), "{text}");
        assert_eq!(calls("throttled"), Some(1.0), "{text}");
        assert_eq!(calls("error"), Some(1.0), "{text}");
        assert_eq!(
            sample(&text, "rexray_ec2_api_call_duration_seconds_count{action=\"TestOnlyAttachVolume\"}"),
            Some(1.0),
            "{text}"
        );
        assert!(text.contains("# TYPE rexray_ec2_api_calls counter"), "{text}");
        assert!(text.contains("rexray_build_info{version=\""), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
    }

    #[test]
    fn endpoint_labels_are_bounded() {
        assert_eq!(endpoint_label("/VolumeDriver.Mount"), "VolumeDriver.Mount");
        assert_eq!(endpoint_label("/services/loop/VolumeDriver.Get"), "VolumeDriver.Get");
        assert_eq!(endpoint_label("/Plugin.Activate"), "Plugin.Activate");
        assert_eq!(endpoint_label("/etc/passwd"), "other");
        assert_eq!(endpoint_label(""), "other");
    }

    #[test]
    fn health_says_which_service_is_not_ready() {
        let health = Health::default();
        health.set("a", ServiceState::Ready);
        health.set("b", ServiceState::Failed("backend ebs is not available in this build".into()));
        let (ok, body) = health.body();
        assert!(!ok);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "unavailable");
        assert_eq!(v["services"]["a"], "ready");
        assert_eq!(v["services"]["b"], "failed: backend ebs is not available in this build");
        health.set("b", ServiceState::Ready);
        assert!(health.body().0);
        assert!(render().contains("rexray_service_up{service=\"b\"} 1"));
    }
}
