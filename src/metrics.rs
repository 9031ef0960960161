//! Prometheus metrics, the `/metrics` and `/health` endpoints, and the recording API.
//!
//! Metrics are always recorded (a few atomic adds per call); they are served only when
//! `rexray.metrics.listen: ADDR:PORT` is set, by [`router`] on a TCP listener of its own, in the
//! OpenMetrics text format that Prometheus scrapes.
//!
//! | metric | labels | what |
//! |---|---|---|
//! | `rexray_build_info` | `version` | always 1 |
//! | `rexray_requests_total` | `endpoint`, `outcome` | plugin calls: `ok`, `not_found`, `error`, `bad_request`, `unknown_endpoint` |
//! | `rexray_request_duration_seconds` | `endpoint` | histogram of plugin call latency |
//! | `rexray_volumes` | `service` | volumes the service knows |
//! | `rexray_volumes_active` | `service` | volumes activated (attached and mounted) on this host |
//! | `rexray_mount_holders` | `service` | mounts held by containers (and dvdcli) in all |
//! | `rexray_service_up` | `service` | 1 once the service opened, 0 while it cannot |
//! | `rexray_backend_operations_total` | `backend`, `operation`, `outcome` | backend create/activate/deactivate/remove/is_active: `ok`, `error` |
//! | `rexray_backend_operation_duration_seconds` | `backend`, `operation` | histogram |
//! | `rexray_ec2_api_calls_total` | `action`, `outcome` | EC2 API calls: `ok`, `error`, `throttled` |
//! | `rexray_ec2_api_call_duration_seconds` | `action` | histogram (calls recorded with [`ec2_call_timed`]) |
//!
//! The recording functions ([`record_request`], [`service_volumes`], [`ec2_call`], …) write to
//! one process-wide registry, so any layer can record without plumbing.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::info::Info;
use prometheus_client::registry::Registry;

use crate::backend::{Backend, BackendError, Options, Scope};
use crate::service::name::VolumeName;

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
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

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

/// How a plugin call ended, for `rexray_requests_total{outcome}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestOutcome {
    /// HTTP 200.
    Ok,
    /// The volume does not exist (Docker asks for unknown names before every create).
    NotFound,
    /// Any other failure (HTTP 500).
    Error,
    /// A malformed request (HTTP 400).
    BadRequest,
    /// A path that is not a plugin endpoint (HTTP 404).
    UnknownEndpoint,
}

impl RequestOutcome {
    fn as_str(self) -> &'static str {
        match self {
            RequestOutcome::Ok => "ok",
            RequestOutcome::NotFound => "not_found",
            RequestOutcome::Error => "error",
            RequestOutcome::BadRequest => "bad_request",
            RequestOutcome::UnknownEndpoint => "unknown_endpoint",
        }
    }
}

/// The `endpoint` label for a request path: the plugin endpoint it names (`VolumeDriver.Mount`,
/// also under the admin socket's `/services/<name>/` prefix), else `other`.
pub fn endpoint_label(path: &str) -> &'static str {
    let last = path.rsplit('/').next().unwrap_or_default();
    ENDPOINTS.iter().copied().find(|e| *e == last).unwrap_or("other")
}

/// Records one plugin call.
pub fn record_request(endpoint: &'static str, outcome: RequestOutcome, elapsed: Duration) {
    let m = metrics();
    m.requests.get_or_create(&RequestLabels { endpoint, outcome: outcome.as_str() }).inc();
    m.request_seconds.get_or_create(&EndpointLabels { endpoint }).observe(elapsed.as_secs_f64());
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

/// Records one backend operation (`create`, `activate`, `deactivate`, `remove`, `is_active`).
pub fn backend_operation(backend: &'static str, operation: &'static str, ok: bool, elapsed: Duration) {
    let m = metrics();
    let outcome = if ok { "ok" } else { "error" };
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

/// Every metric in the OpenMetrics text format.
pub fn render() -> String {
    let mut text = String::new();
    if let Err(e) = prometheus_client::encoding::text::encode(&mut text, &metrics().registry) {
        tracing::error!(error = %e, "could not encode the metrics");
    }
    text
}

// ----- the request middleware ------------------------------------------------------------------

/// The largest error body read back to tell "no such volume" from other failures.
const MAX_ERROR_BODY: usize = 64 << 10;

/// Axum middleware for the plugin routers: counts each call by endpoint and outcome and
/// observes its latency. It changes nothing in the reply.
pub async fn track_request(request: Request, next: Next) -> Response {
    let endpoint = endpoint_label(request.uri().path());
    let start = Instant::now();
    let response = next.run(request).await;
    let (response, outcome) = classify(response).await;
    record_request(endpoint, outcome, start.elapsed());
    response
}

/// The outcome of a reply; an error reply's body is read (and put back) to find "not found".
async fn classify(response: Response) -> (Response, RequestOutcome) {
    match response.status() {
        s if s.is_success() => (response, RequestOutcome::Ok),
        StatusCode::BAD_REQUEST => (response, RequestOutcome::BadRequest),
        StatusCode::NOT_FOUND => (response, RequestOutcome::UnknownEndpoint),
        _ => {
            let (parts, body) = response.into_parts();
            let Ok(bytes) = axum::body::to_bytes(body, MAX_ERROR_BODY).await else {
                return (Response::from_parts(parts, Body::empty()), RequestOutcome::Error);
            };
            let not_found = format!(": {}", crate::service::Cause::NotFound);
            let message = serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("Err").and_then(serde_json::Value::as_str).map(str::to_owned));
            let outcome = match message {
                Some(m) if m.ends_with(&not_found) => RequestOutcome::NotFound,
                _ => RequestOutcome::Error,
            };
            (Response::from_parts(parts, Body::from(bytes)), outcome)
        }
    }
}

// ----- backend operations ----------------------------------------------------------------------

/// A [`Backend`] that records each storage operation in `rexray_backend_operations_total` and
/// its latency. Built by [`instrument`] at the composition root.
///
/// Every trait method is forwarded, including the ones with a default body (`status`,
/// `known_volumes`, `knows`): a method added to [`Backend`] must be forwarded here too, or the
/// wrapped backend's own version is silently replaced by the default.
#[derive(Debug)]
pub struct InstrumentedBackend {
    /// The real backend.
    inner: Arc<dyn Backend>,
}

/// Wraps `backend` so that its operations are measured.
pub fn instrument(backend: Arc<dyn Backend>) -> Arc<dyn Backend> {
    Arc::new(InstrumentedBackend { inner: backend })
}

impl InstrumentedBackend {
    async fn timed<T>(
        &self,
        operation: &'static str,
        call: impl std::future::Future<Output = Result<T, BackendError>>,
    ) -> Result<T, BackendError> {
        let start = Instant::now();
        let result = call.await;
        backend_operation(self.inner.kind(), operation, result.is_ok(), start.elapsed());
        result
    }
}

#[async_trait]
impl Backend for InstrumentedBackend {
    fn kind(&self) -> &'static str {
        self.inner.kind()
    }

    fn scope(&self) -> Scope {
        self.inner.scope()
    }

    fn parse_options(&self, raw: &BTreeMap<String, String>) -> Result<Options, BackendError> {
        self.inner.parse_options(raw)
    }

    async fn create(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.timed("create", self.inner.create(name, opts)).await
    }

    async fn activate(&self, name: &VolumeName, opts: &Options) -> Result<PathBuf, BackendError> {
        self.timed("activate", self.inner.activate(name, opts)).await
    }

    async fn deactivate(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.timed("deactivate", self.inner.deactivate(name, opts)).await
    }

    async fn remove(&self, name: &VolumeName, opts: &Options) -> Result<(), BackendError> {
        self.timed("remove", self.inner.remove(name, opts)).await
    }

    async fn is_active(&self, name: &VolumeName, opts: &Options) -> Result<bool, BackendError> {
        self.timed("is_active", self.inner.is_active(name, opts)).await
    }

    fn mountpoint(&self, name: &VolumeName, opts: &Options) -> PathBuf {
        self.inner.mountpoint(name, opts)
    }

    fn status(&self, name: &VolumeName, opts: &Options) -> BTreeMap<String, serde_json::Value> {
        self.inner.status(name, opts)
    }

    async fn known_volumes(&self) -> Vec<String> {
        self.inner.known_volumes().await
    }

    async fn knows(&self, name: &VolumeName) -> bool {
        self.inner.knows(name).await
    }

    fn snapshots(&self) -> Option<&dyn crate::backend::Snapshots> {
        self.inner.snapshots()
    }
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

/// The metrics listener's routes: `GET /metrics` (OpenMetrics text) and `GET /health`
/// (200 `{"status":"ok",…}` when every service is open, else 503 `{"status":"unavailable",…}`
/// with each service's state).
pub fn router(health: Health) -> Router {
    Router::new().route("/metrics", get(metrics_handler)).route("/health", get(health_handler)).with_state(health)
}

async fn metrics_handler() -> Response {
    ([(header::CONTENT_TYPE, OPENMETRICS)], render()).into_response()
}

async fn health_handler(State(health): State<Health>) -> Response {
    let (ok, services) = health.report();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "unavailable" },
        "version": env!("CARGO_PKG_VERSION"),
        "services": services,
    });
    let status = if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::fake::FakeBackend;
    use crate::config::Integration;
    use crate::service::{ServiceHandle, VolumeService};
    use tower::ServiceExt;

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

    #[tokio::test]
    async fn the_instrumented_backend_forwards_every_method() {
        let fake = Arc::new(FakeBackend::default());
        let backend = instrument(fake.clone());
        let name = VolumeName::new("fwd").unwrap();
        let opts = backend.parse_options(&BTreeMap::new()).unwrap();
        assert_eq!(backend.kind(), "fake");
        assert_eq!(backend.scope(), fake.scope());
        backend.create(&name, &opts).await.unwrap();
        assert_eq!(backend.known_volumes().await, vec!["fwd".to_string()]);
        assert!(backend.knows(&name).await);
        assert_eq!(backend.activate(&name, &opts).await.unwrap(), fake.mountpoint(&name, &opts));
        assert!(backend.is_active(&name, &opts).await.unwrap());
        assert_eq!(backend.mountpoint(&name, &opts), fake.mountpoint(&name, &opts));
        assert_eq!(backend.status(&name, &opts), fake.status(&name, &opts));
        backend.deactivate(&name, &opts).await.unwrap();
        backend.remove(&name, &opts).await.unwrap();
        assert_eq!(fake.calls(), ["create:fwd", "activate:fwd", "deactivate:fwd", "remove:fwd"]);
        assert!(!backend.knows(&name).await);
    }

    #[test]
    fn endpoint_labels_are_bounded() {
        assert_eq!(endpoint_label("/VolumeDriver.Mount"), "VolumeDriver.Mount");
        assert_eq!(endpoint_label("/services/loop/VolumeDriver.Get"), "VolumeDriver.Get");
        assert_eq!(endpoint_label("/Plugin.Activate"), "Plugin.Activate");
        assert_eq!(endpoint_label("/etc/passwd"), "other");
        assert_eq!(endpoint_label(""), "other");
    }

    async fn post(app: &Router, path: &str, body: &str) -> StatusCode {
        let request = Request::post(path).body(Body::from(body.to_owned())).unwrap();
        app.clone().oneshot(request).await.unwrap().status()
    }

    #[tokio::test]
    async fn plugin_calls_backend_operations_and_volumes_are_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let fake = Arc::new(FakeBackend::default());
        let backend = instrument(fake.clone());
        let settings = Integration::defaults(std::path::Path::new("/unused"));
        let service = VolumeService::open("metrics-test", backend, settings, dir.path().join("state")).await.unwrap();
        let app = crate::protocol::router(Arc::new(ServiceHandle::ready(Arc::new(service))));

        assert_eq!(post(&app, "/VolumeDriver.Get", r#"{"Name":"m1"}"#).await, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(post(&app, "/VolumeDriver.Create", r#"{"Name":"m1"}"#).await, StatusCode::OK);
        assert_eq!(post(&app, "/VolumeDriver.Mount", r#"{"Name":"m1","ID":"a"}"#).await, StatusCode::OK);
        assert_eq!(post(&app, "/VolumeDriver.Create", r#"{"Name":"../x"}"#).await, StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(post(&app, "/VolumeDriver.Mount", "{not json").await, StatusCode::BAD_REQUEST);
        assert_eq!(post(&app, "/VolumeDriver.Nope", "{}").await, StatusCode::NOT_FOUND);

        let text = render();
        let count = |endpoint: &str, outcome: &str| {
            sample(&text, &format!("rexray_requests_total{{endpoint=\"{endpoint}\",outcome=\"{outcome}\"}}"))
                .unwrap_or(0.0)
        };
        // Other tests in this process record too: every count here is at least ours.
        assert!(count("VolumeDriver.Get", "not_found") >= 1.0, "{text}");
        assert!(count("VolumeDriver.Create", "ok") >= 1.0, "{text}");
        assert!(count("VolumeDriver.Create", "error") >= 1.0, "{text}");
        assert!(count("VolumeDriver.Mount", "bad_request") >= 1.0, "{text}");
        assert!(count("other", "unknown_endpoint") >= 1.0, "{text}");
        assert!(
            sample(&text, "rexray_request_duration_seconds_count{endpoint=\"VolumeDriver.Mount\"}").unwrap_or(0.0)
                >= 2.0,
            "{text}"
        );
        assert!(
            sample(&text, "rexray_backend_operations_total{backend=\"fake\",operation=\"activate\",outcome=\"ok\"}")
                .unwrap_or(0.0)
                >= 1.0,
            "{text}"
        );
        assert_eq!(sample(&text, "rexray_volumes{service=\"metrics-test\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "rexray_volumes_active{service=\"metrics-test\"}"), Some(1.0), "{text}");
        assert_eq!(sample(&text, "rexray_mount_holders{service=\"metrics-test\"}"), Some(1.0), "{text}");

        // The reply itself is untouched by the middleware.
        let request = Request::post("/VolumeDriver.Get").body(Body::from(r#"{"Name":"nope"}"#)).unwrap();
        let reply = app.clone().oneshot(request).await.unwrap();
        let body = axum::body::to_bytes(reply.into_body(), 1 << 20).await.unwrap();
        assert_eq!(&body[..], br#"{"Err":"get \"nope\": no such volume"}"#);

        assert_eq!(post(&app, "/VolumeDriver.Unmount", r#"{"Name":"m1","ID":"a"}"#).await, StatusCode::OK);
        assert_eq!(post(&app, "/VolumeDriver.Remove", r#"{"Name":"m1"}"#).await, StatusCode::OK);
        let text = render();
        assert_eq!(sample(&text, "rexray_volumes{service=\"metrics-test\"}"), Some(0.0), "{text}");
        assert_eq!(sample(&text, "rexray_volumes_active{service=\"metrics-test\"}"), Some(0.0), "{text}");
    }

    #[tokio::test]
    async fn health_says_which_service_is_not_ready() {
        let health = Health::default();
        health.set("a", ServiceState::Ready);
        health.set("b", ServiceState::Failed("backend ebs is not available in this build".into()));
        let app = router(health.clone());
        let reply = app.clone().oneshot(Request::get("/health").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(reply.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(reply.into_body(), 1 << 20).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["status"], "unavailable");
        assert_eq!(v["services"]["a"], "ready");
        assert_eq!(v["services"]["b"], "failed: backend ebs is not available in this build");

        health.set("b", ServiceState::Ready);
        let reply = app.clone().oneshot(Request::get("/health").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        let reply = app.clone().oneshot(Request::get("/metrics").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(reply.status(), StatusCode::OK);
        assert!(reply.headers()[header::CONTENT_TYPE].to_str().unwrap().starts_with("application/openmetrics-text"));
        let body = axum::body::to_bytes(reply.into_body(), 1 << 20).await.unwrap();
        assert!(String::from_utf8_lossy(&body).contains("rexray_service_up{service=\"b\"} 1"));
    }
}
