//! Request logging by group commit (operations.md §3.2): every response waits until its
//! `logging_requestlog` row is committed, but one multi-row INSERT serves every request that
//! arrived meanwhile, so there is no database round trip per request. A failed or stalled
//! store releases the waiting responses anyway and counts the loss.

use super::access::{Cid, correlation_id};
use super::state;
use crate::api::Caller;
use crate::db::Db;
use chrono::{DateTime, Utc};
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

/// One row of `logging_requestlog`.
#[derive(Debug, Clone)]
pub struct Record {
    pub method: String,
    pub endpoint: String,
    pub response_code: i32,
    pub remote_address: Option<String>,
    pub timestamp: DateTime<Utc>,
    pub cid: String,
    pub user_id: Option<i64>,
}

type Pending = (Record, oneshot::Sender<()>);

/// The handle requests use to log; cheap to clone.
#[derive(Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<Pending>,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
}

/// Largest batch per INSERT (bounded by bind-parameter limits: 7 values a row).
const MAX_BATCH: usize = 1000;
/// How long a response waits for its row before it is released anyway.
const WAIT_BOUND: Duration = Duration::from_secs(3);
/// How long one INSERT may take before the batch is counted as lost.
const STORE_BOUND: Duration = Duration::from_secs(2);

impl RequestLog {
    /// Starts the writer task for a database.
    pub fn start(db: Db) -> RequestLog {
        let (tx, rx) = mpsc::channel::<Pending>(16_384);
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        tokio::spawn(writer(db, rx, dropped.clone(), written.clone()));
        RequestLog {
            tx,
            dropped,
            written,
        }
    }

    /// Hands a record to the writer and waits (bounded) until it is committed.
    pub async fn log(&self, record: Record) {
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.try_send((record, done_tx)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if tokio::time::timeout(WAIT_BOUND, done_rx).await.is_err() {
            tracing::warn!("request log store stalled; response released without its record");
        }
    }
}

async fn writer(
    db: Db,
    mut rx: mpsc::Receiver<Pending>,
    dropped: Arc<AtomicU64>,
    written: Arc<AtomicU64>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.recv().await {
        batch.push(first);
        // Everything that arrived while the previous insert ran joins this one.
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        let records: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
        let n = records.len() as u64;
        match tokio::time::timeout(STORE_BOUND, insert(&db, &records)).await {
            Ok(Ok(())) => {
                written.fetch_add(n, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("could not store {n} request log record(s): {e}");
            }
            Err(_) => {
                dropped.fetch_add(n, Ordering::Relaxed);
                tracing::warn!("storing {n} request log record(s) timed out");
            }
        }
        for (_, done) in batch.drain(..) {
            let _ = done.send(());
        }
    }
}

async fn insert(db: &Db, records: &[&Record]) -> Result<(), crate::db::DbError> {
    let mut q = Query::insert();
    q.into_table(Alias::new("logging_requestlog")).columns(
        [
            "method",
            "endpoint",
            "response_code",
            "remote_address",
            "timestamp",
            "cid",
            "user_id",
        ]
        .map(Alias::new),
    );
    for r in records {
        // The user may have deleted their own account while the request ran: a subquery
        // stores NULL then instead of failing the whole batch on the foreign key.
        let user = match r.user_id {
            Some(id) => {
                let mut s = Query::select();
                s.column(Alias::new("id"))
                    .from(Alias::new("users_user"))
                    .and_where(Expr::col(Alias::new("id")).eq(id));
                Expr::SubQuery(None, Box::new(s.into()))
            }
            None => Expr::value(Option::<i64>::None),
        };
        q.values_panic([
            r.method.clone().into(),
            r.endpoint.clone().into(),
            r.response_code.into(),
            r.remote_address.clone().into(),
            r.timestamp.into(),
            r.cid.clone().into(),
            user,
        ]);
    }
    crate::db::execute_insert(db, &q).await
}

/// The client address: the text before the first comma of `X-Forwarded-For` (not trimmed,
/// when trusted), else the peer IP; None for a Unix-socket peer without the header.
pub fn remote_address(req: &Request, trust_forwarded_for: bool) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .filter(|v| trust_forwarded_for && !v.is_empty())
    {
        return Some(v.split(',').next().unwrap_or("").chars().take(40).collect());
    }
    req.remote_addr()
        .as_ipv4()
        .map(|a| a.ip().to_string())
        .or_else(|| req.remote_addr().as_ipv6().map(|a| a.ip().to_string()))
}

/// The outermost middleware: decides the cid, lets the request run, then logs it before
/// the response leaves. CORS preflights are answered before this and never logged.
#[handler]
pub async fn log_requests(
    req: &mut Request,
    depot: &mut Depot,
    res: &mut Response,
    ctrl: &mut FlowCtrl,
) {
    let cid = correlation_id(req);
    depot.insert_typed(Cid(cid.clone()));
    let method = req.method().to_string();
    let endpoint: String = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| req.uri().path().to_string())
        .chars()
        .take(2048)
        .collect();
    // Every record logged while handling the request carries its cid and, once known,
    // the caller's id (journald fields KEYSTONE_CID, KEYSTONE_USER_ID). ERROR level, so the
    // span exists whatever the configured level.
    let span = tracing::error_span!(
        "request",
        keystone_cid = %cid,
        keystone_user_id = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    ctrl.call_next(req, depot, res)
        .instrument(span.clone())
        .await;
    span.in_scope(|| {
        tracing::info!(
            "{method} {endpoint} {} ({} ms)",
            res.status_code
                .unwrap_or(salvo::http::StatusCode::OK)
                .as_u16(),
            started.elapsed().as_millis()
        )
    });
    let Ok(app) = state(depot).cloned() else {
        return;
    };
    let Some(log) = app.request_log.clone() else {
        return;
    };
    let user_id = depot.get_typed::<Caller>().ok().and_then(Caller::id);
    let record = Record {
        method,
        endpoint,
        response_code: i32::from(
            res.status_code
                .unwrap_or(salvo::http::StatusCode::OK)
                .as_u16(),
        ),
        remote_address: remote_address(req, app.config.settings.server.trust_forwarded_for),
        timestamp: Utc::now(),
        cid,
        user_id,
    };
    log.log(record).await;
}
