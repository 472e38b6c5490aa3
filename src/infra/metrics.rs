//! Process metrics (operations.md §3.8): every `serve` process records Prometheus series
//! through the `metrics` facade and serves them on `/metrics` on the first free port of
//! `metrics.ports`, bound to `metrics.address` (loopback by default).

use crate::config::Config;
use crate::store::Db;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use salvo::prelude::*;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the global recorder once per process; None if another recorder is installed.
pub fn recorder() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets(&[
                    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
                ])
                .ok()?
                .install_recorder()
                .ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

fn describe() {
    metrics::describe_counter!(
        "keystone_http_requests_total",
        "HTTP requests answered, by method, route and status"
    );
    metrics::describe_histogram!(
        "keystone_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time to answer an HTTP request, by method and route"
    );
    metrics::describe_gauge!(
        "keystone_http_requests_in_flight",
        "HTTP requests being handled"
    );
    metrics::describe_counter!(
        "keystone_http_panics_total",
        "Requests whose handler panicked (answered with a 500)"
    );
    metrics::describe_counter!(
        "keystone_tasks_total",
        "Background task runs, by task name and final status"
    );
    metrics::describe_histogram!(
        "keystone_task_duration_seconds",
        metrics::Unit::Seconds,
        "Run time of background tasks, by task name"
    );
    metrics::describe_gauge!(
        "keystone_queue_depth",
        "Tasks in the queue, by state (ready: waiting for a worker, delayed: retries waiting \
         for their backoff, unacked: handed to a worker and not finished)"
    );
    metrics::describe_gauge!(
        "keystone_tasks_running",
        "Tasks this worker process is running now"
    );
    metrics::describe_gauge!(
        "keystone_request_log_dropped",
        "Request-log records that could not be stored since start"
    );
    metrics::describe_gauge!(
        "keystone_db_pool_connections",
        "Database pool connections, by state (in_use, idle)"
    );
}

/// Methods that get a label of their own; any other method is counted as `OTHER`, so that
/// clients cannot create label values (and Prometheus series) at will.
const METHOD_LABELS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT",
];

/// The `method` label: one of a fixed set, else `OTHER`.
pub fn method_label(method: &salvo::http::Method) -> &'static str {
    METHOD_LABELS
        .iter()
        .find(|m| **m == method.as_str())
        .copied()
        .unwrap_or("OTHER")
}

/// The `route` label: the template of the matched route as upstream writes it
/// (`/users/users/{id}/`), `/` for the site root, else `unmatched`. Never the request path,
/// which the client chooses.
pub fn route_label(req: &Request) -> String {
    match req.matched_path().trim_matches('/') {
        "" if req.uri().path() == "/" => "/".to_string(),
        "" => "unmatched".to_string(),
        p => format!("/{p}/"),
    }
}

/// Keeps `keystone_http_requests_in_flight` right whatever happens to the request: the
/// decrement runs when the guard is dropped, also when a panic unwinds through the handler
/// chain or the client disconnects and the request's future is dropped.
struct InFlight(metrics::Gauge);

impl InFlight {
    fn enter() -> InFlight {
        let gauge = metrics::gauge!("keystone_http_requests_in_flight");
        gauge.increment(1.0);
        InFlight(gauge)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.decrement(1.0);
    }
}

/// Counts and times every HTTP request (outermost middleware).
#[handler]
pub async fn http_metrics(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
    ctrl: &mut FlowCtrl,
) {
    let start = Instant::now();
    let in_flight = InFlight::enter();
    ctrl.call_next(req, depot, res).await;
    drop(in_flight);
    let route = route_label(req);
    let method = method_label(req.method());
    // Status codes are three digits by construction: a bounded set.
    let status = res
        .status_code
        .unwrap_or(salvo::http::StatusCode::OK)
        .as_u16()
        .to_string();
    metrics::counter!("keystone_http_requests_total", "method" => method, "route" => route.clone(), "status" => status)
        .increment(1);
    metrics::histogram!("keystone_http_request_duration_seconds", "method" => method, "route" => route)
        .record(start.elapsed().as_secs_f64());
}

/// Counts a handler panic that was answered with a 500 (see `crate::web::panic`).
pub fn handler_panicked() {
    metrics::counter!("keystone_http_panics_total").increment(1);
}

/// Counts one finished task attempt (`status` = the row's new status: `SUCCESS`, `FAILURE`
/// or `RETRY`) and records its run time.
pub fn task_finished(task: &str, status: &str, elapsed: std::time::Duration) {
    let task = task_label(task);
    // `status` is a `tasks::results::Status` as text: a fixed set.
    metrics::counter!("keystone_tasks_total", "task" => task.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!("keystone_task_duration_seconds", "task" => task)
        .record(elapsed.as_secs_f64());
}

/// Distinct task names that get a label of their own (the catalogue has about a dozen).
const TASK_LABELS: usize = 32;

/// The `task` label. Task names arrive in queue messages; after `TASK_LABELS` distinct names,
/// new ones count as `other`, so a stream of junk messages cannot grow the series without
/// bound.
fn task_label(task: &str) -> String {
    static SEEN: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let Ok(mut seen) = SEEN.lock() else {
        return "other".into();
    };
    if seen.iter().any(|t| t == task) {
        return task.to_string();
    }
    if seen.len() < TASK_LABELS && task.len() <= 100 {
        seen.push(task.to_string());
        return task.to_string();
    }
    "other".into()
}

/// The queue sizes last seen by this worker's housekeeping.
pub fn queue_depth(ready: u64, delayed: u64, unacked: u64) {
    for (state, n) in [("ready", ready), ("delayed", delayed), ("unacked", unacked)] {
        metrics::gauge!("keystone_queue_depth", "state" => state).set(n as f64);
    }
}

/// Tasks this process runs now.
pub fn tasks_running(n: usize) {
    metrics::gauge!("keystone_tasks_running").set(n as f64);
}

/// Gauges sampled when Prometheus scrapes.
#[derive(Clone, Default)]
pub struct Sources {
    pub db: Option<Db>,
    pub request_log_dropped: Option<Arc<AtomicU64>>,
}

struct Endpoint {
    handle: PrometheusHandle,
    sources: Sources,
}

#[handler]
impl Endpoint {
    async fn handle(&self, res: &mut Response) {
        if let Some(db) = &self.sources.db {
            let (size, idle) = db.pool_usage();
            let idle = idle as f64;
            metrics::gauge!("keystone_db_pool_connections", "state" => "idle").set(idle);
            metrics::gauge!("keystone_db_pool_connections", "state" => "in_use")
                .set((f64::from(size) - idle).max(0.0));
        }
        if let Some(dropped) = &self.sources.request_log_dropped {
            metrics::gauge!("keystone_request_log_dropped")
                .set(dropped.load(Ordering::Relaxed) as f64);
        }
        res.headers_mut().insert(
            salvo::http::header::CONTENT_TYPE,
            salvo::http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        let _ = res.write_body(self.handle.render());
    }
}

/// Binds the first free port of `metrics.ports` and serves `/metrics` there; returns the
/// bound address, or None (with a warning) when disabled or no port is free.
pub fn start(config: &Config, sources: Sources) -> Option<std::net::SocketAddr> {
    if !config.settings.metrics.enabled {
        return None;
    }
    let handle = recorder()?;
    let ip: std::net::IpAddr = config.settings.metrics.address.parse().ok()?;
    let ports = config.metrics_ports().ok()?;
    let listener = ports
        .iter()
        .find_map(|p| std::net::TcpListener::bind((ip, *p)).ok());
    let Some(listener) = listener else {
        tracing::warn!(
            "metrics: no free port in {:?}; continuing without metrics",
            config.settings.metrics.ports
        );
        return None;
    };
    let addr = listener.local_addr().ok()?;
    listener.set_nonblocking(true).ok()?;
    let listener = tokio::net::TcpListener::from_std(listener).ok()?;
    let acceptor = salvo::conn::tcp::TcpAcceptor::try_from(listener).ok()?;
    let router = Router::new().push(Router::with_path("metrics").get(Endpoint { handle, sources }));
    tokio::spawn(async move {
        Server::new(acceptor).serve(router).await;
    });
    tracing::info!("metrics on http://{addr}/metrics");
    Some(addr)
}
