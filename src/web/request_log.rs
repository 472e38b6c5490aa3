//! Request logging by group commit (operations.md §3.2): every response waits until its
//! `logging_requestlog` row is committed, but one multi-row INSERT serves every request that
//! arrived meanwhile, so there is no database round trip per request. [`WRITERS`] batches
//! are in flight at once, so a request arriving during one commit waits for the next, not
//! for two; on PostgreSQL a batch is one prepared statement over arrays (`UNNEST`),
//! whatever its size. A failed or stalled store releases the waiting responses anyway and
//! counts the loss.
//!
//! Every value is cut to its column before it joins a batch, and a batch the database still
//! rejects is split until the offending row is isolated, so one hostile request can never
//! cost the other requests of its batch their rows. Methods the log cannot hold (or that no
//! HTTP server in front of upstream accepts) are answered 400 here, before any handler.

use super::access::{Cid, correlation_id};
use super::{ApiError, state};
use crate::store::Db;
use crate::web::api::Caller;
use chrono::{DateTime, Utc};
use salvo::prelude::*;
use sea_query::{Alias, Expr, ExprTrait, Query};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
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

/// Column widths of `logging_requestlog` in characters (migrations/*/0001_initial.sql).
const METHOD_WIDTH: usize = 10;
const ENDPOINT_WIDTH: usize = 2048;
const ADDRESS_WIDTH: usize = 40;
const CID_WIDTH: usize = 36;

/// `text` as a column can hold it: NUL characters dropped (PostgreSQL text cannot store
/// them), at most `width` characters.
fn fit(text: &str, width: usize) -> String {
    text.chars().filter(|c| *c != '\0').take(width).collect()
}

impl Record {
    /// The record with every value bounded to its column: a row that cannot fail the insert.
    pub fn fitted(self) -> Record {
        Record {
            method: fit(&self.method, METHOD_WIDTH),
            endpoint: fit(&self.endpoint, ENDPOINT_WIDTH),
            response_code: Ord::max(self.response_code, 0),
            remote_address: self
                .remote_address
                .map(|a| fit(&a, ADDRESS_WIDTH))
                .filter(|a| !a.is_empty()),
            timestamp: self.timestamp,
            cid: fit(&self.cid, CID_WIDTH),
            user_id: self.user_id,
        }
    }
}

type Pending = (Record, oneshot::Sender<()>);

/// The handle requests use to log; cheap to clone.
#[derive(Clone)]
pub struct RequestLog {
    tx: mpsc::Sender<Pending>,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
    /// Set while the last batch could not be stored at all (the database unreachable):
    /// responses are then not held for their rows, which are still tried.
    down: Arc<AtomicBool>,
}

/// Largest batch per INSERT (bounded by bind-parameter limits: 7 values a row).
const MAX_BATCH: usize = 1000;
/// Batches being stored at once.
const WRITERS: usize = 2;
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
        let down = Arc::new(AtomicBool::new(false));
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for _ in 0..WRITERS {
            tokio::spawn(writer(
                db.clone(),
                rx.clone(),
                [dropped.clone(), written.clone()],
                down.clone(),
            ));
        }
        RequestLog {
            tx,
            dropped,
            written,
            down,
        }
    }

    /// Hands a record to the writer and waits (bounded) until it is committed; not when the
    /// answer is a 503 (only ever `ApiError::Unavailable`: the database out of reach) or the
    /// last batch found the database out of reach, since the row could not be read back.
    pub async fn log(&self, record: Record) {
        let unavailable = record.response_code == 503;
        let (done_tx, done_rx) = oneshot::channel();
        if self.tx.try_send((record.fitted(), done_tx)).is_err() {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        if unavailable || self.down.load(Ordering::Relaxed) {
            // Nobody could read the row back now anyway: the answer does not wait for it.
            return;
        }
        if tokio::time::timeout(WAIT_BOUND, done_rx).await.is_err() {
            tracing::warn!("request log store stalled; response released without its record");
        }
    }
}

/// One of the [`WRITERS`]: takes whatever is waiting (at least one record) while the
/// others store theirs, and stores it.
async fn writer(
    db: Db,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Pending>>>,
    [dropped, written]: [Arc<AtomicU64>; 2],
    down: Arc<AtomicBool>,
) {
    let mut batch: Vec<Pending> = Vec::with_capacity(MAX_BATCH);
    loop {
        {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else {
                return;
            };
            batch.push(first);
            // Everything that arrived while the other batches were stored joins this one.
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
        }
        let records: Vec<&Record> = batch.iter().map(|(r, _)| r).collect();
        let batch_result = store(&db, &records).await;
        written.fetch_add(batch_result.stored, Ordering::Relaxed);
        dropped.fetch_add(batch_result.lost, Ordering::Relaxed);
        down.store(batch_result.unreachable, Ordering::Relaxed);
        for (_, done) in batch.drain(..) {
            let _ = done.send(());
        }
    }
}

/// Stores a batch: one INSERT, and when the database rejects it, the two halves again,
/// down to single rows, so that only rows the database refuses are lost. A store that stalls
/// (or a connection that fails) is not retried, and the splitting ends after twice
/// `STORE_BOUND`. Returns (stored, lost); [`Stored::unreachable`] tells whether a failure
/// was the database being out of reach (a connection error or a stall).
async fn store(db: &Db, records: &[&Record]) -> Stored {
    let deadline = tokio::time::Instant::now() + 2 * STORE_BOUND;
    let (mut stored, mut lost) = (0u64, 0u64);
    let mut unreachable = false;
    let mut parts: Vec<&[&Record]> = vec![records];
    while let Some(part) = parts.pop() {
        let n = part.len() as u64;
        let bound = deadline.min(tokio::time::Instant::now() + STORE_BOUND);
        match tokio::time::timeout_at(bound, insert(db, part)).await {
            Ok(Ok(())) => stored += n,
            Ok(Err(e)) if rejected_rows(&e) && part.len() > 1 => {
                let (a, b) = part.split_at(part.len() / 2);
                parts.push(b);
                parts.push(a);
            }
            Ok(Err(e)) => {
                lost += n;
                match part {
                    [r] => tracing::warn!(
                        "could not store the request log record of {:?} {:?} (cid {}): {e}",
                        r.method,
                        r.endpoint,
                        r.cid
                    ),
                    _ => tracing::warn!("could not store {n} request log record(s): {e}"),
                }
                if !rejected_rows(&e) {
                    unreachable = true;
                    lost += parts.drain(..).map(|p| p.len() as u64).sum::<u64>();
                }
            }
            Err(_) => {
                unreachable = true;
                lost += n + parts.drain(..).map(|p| p.len() as u64).sum::<u64>();
                tracing::warn!("storing request log records timed out");
            }
        }
    }
    Stored {
        stored,
        lost,
        unreachable,
    }
}

/// What became of one batch.
#[derive(Debug, PartialEq)]
struct Stored {
    stored: u64,
    lost: u64,
    /// The database could not be reached (not merely a row it refused).
    unreachable: bool,
}

/// Whether the database refused the statement itself (a value it will not take), as opposed
/// to being unreachable: only then can a smaller batch succeed.
fn rejected_rows(e: &crate::store::DbError) -> bool {
    matches!(e, crate::store::DbError::Query(sqlx::Error::Database(_)))
}

/// The batch insert on PostgreSQL: one statement text for every batch size, so it is
/// prepared once per connection. The user may have deleted their own account while the
/// request ran: the join stores NULL then instead of failing the batch on the foreign key.
const INSERT_UNNEST: &str = "INSERT INTO logging_requestlog \
     (method, endpoint, response_code, remote_address, timestamp, cid, user_id) \
     SELECT r.method, r.endpoint, r.code, r.addr, r.ts, r.cid, u.id \
     FROM UNNEST($1::text[], $2::text[], $3::int4[], $4::text[], $5::timestamptz[], \
     $6::text[], $7::int8[]) WITH ORDINALITY AS r(method, endpoint, code, addr, ts, cid, uid, n) \
     LEFT JOIN users_user u ON u.id = r.uid ORDER BY r.n";

async fn insert(db: &Db, records: &[&Record]) -> Result<(), crate::store::DbError> {
    if let Db::Postgres(pool) = db {
        let column = |f: fn(&Record) -> String| records.iter().map(|r| f(r)).collect::<Vec<_>>();
        sqlx::query(INSERT_UNNEST)
            .bind(column(|r| r.method.clone()))
            .bind(column(|r| r.endpoint.clone()))
            .bind(
                records
                    .iter()
                    .map(|r| r.response_code)
                    .collect::<Vec<i32>>(),
            )
            .bind(
                records
                    .iter()
                    .map(|r| r.remote_address.clone())
                    .collect::<Vec<Option<String>>>(),
            )
            .bind(records.iter().map(|r| r.timestamp).collect::<Vec<_>>())
            .bind(column(|r| r.cid.clone()))
            .bind(
                records
                    .iter()
                    .map(|r| r.user_id)
                    .collect::<Vec<Option<i64>>>(),
            )
            .execute(pool)
            .await
            .map_err(crate::store::DbError::Query)?;
        return Ok(());
    }
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
    crate::store::execute_insert(db, &q).await
}

/// The client address ([`crate::web::client::client_ip`]: the peer, or the trusted proxies'
/// `X-Forwarded-For` entry); None for a Unix-socket peer without one. At most 39 characters.
pub fn remote_address(req: &Request, settings: &crate::config::Settings) -> Option<String> {
    crate::web::client::client_ip(req, settings).map(|ip| ip.to_string())
}

/// Whether a method can be served and logged: an upper-case token (letters, digits, `-`,
/// `_`) of at most 10 characters, the log's column width. Anything else (`get`, a 200-byte
/// token) gets 400, as upstream's gunicorn answers; unknown but well-formed methods (`FOO`,
/// `PROPFIND`) go on to the router, which answers 405 with `Allow` on a known path.
pub fn usable_method(method: &salvo::http::Method) -> bool {
    let m = method.as_str();
    !m.is_empty()
        && m.len() <= METHOD_WIDTH
        && m.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
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
    let method = fit(req.method().as_str(), METHOD_WIDTH);
    let endpoint = fit(
        req.uri()
            .path_and_query()
            .map(|p| p.as_str())
            .unwrap_or_else(|| req.uri().path()),
        ENDPOINT_WIDTH,
    );
    // Every record logged while handling the request carries its cid and, once known,
    // the caller's id (journald fields KEYSTONE_CID, KEYSTONE_USER_ID). ERROR level, so the
    // span exists whatever the configured level.
    let span = tracing::error_span!(
        "request",
        keystone_cid = %cid,
        keystone_user_id = tracing::field::Empty
    );
    let started = std::time::Instant::now();
    if usable_method(req.method()) {
        ctrl.call_next(req, depot, res)
            .instrument(span.clone())
            .await;
    } else {
        ApiError::BadRequest("Invalid HTTP method.".into()).render(res);
        ctrl.skip_rest();
    }
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
    let user_id = depot.get_typed::<Caller>().ok().map(Caller::id);
    let record = Record {
        method,
        endpoint,
        response_code: i32::from(
            res.status_code
                .unwrap_or(salvo::http::StatusCode::OK)
                .as_u16(),
        ),
        remote_address: remote_address(req, &app.config.settings),
        timestamp: Utc::now(),
        cid,
        user_id,
    };
    log.log(record).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(method: &str, endpoint: &str) -> Record {
        Record {
            method: method.into(),
            endpoint: endpoint.into(),
            response_code: 200,
            remote_address: Some("127.0.0.1".into()),
            timestamp: Utc::now(),
            cid: uuid::Uuid::new_v4().to_string(),
            user_id: None,
        }
    }

    #[test]
    fn fitted_records_hold_no_more_than_their_columns() {
        let mut r = record(&"A".repeat(200), &format!("/x\0y/{}", "é".repeat(3000)));
        r.remote_address = Some("\0".into());
        r.cid = "c".repeat(100);
        let f = r.fitted();
        assert_eq!(f.method, "A".repeat(10));
        assert!(f.endpoint.starts_with("/xy/é"));
        assert_eq!(f.endpoint.chars().count(), 2048);
        assert_eq!(f.remote_address, None);
        assert_eq!(f.cid.len(), 36);
    }

    #[test]
    fn usable_methods_are_short_upper_case_tokens() {
        use salvo::http::Method;
        for ok in ["GET", "PROPFIND", "M-SEARCH", "FOO", "BASELINE_1"] {
            assert!(
                usable_method(&Method::from_bytes(ok.as_bytes()).expect(ok)),
                "{ok}"
            );
        }
        for bad in ["get", "Get", "MKWORKSPACE", "A\u{0}"] {
            if let Ok(m) = Method::from_bytes(bad.as_bytes()) {
                assert!(!usable_method(&m), "{bad}");
            }
        }
        let long = "X".repeat(200);
        assert!(!usable_method(
            &Method::from_bytes(long.as_bytes()).expect("token")
        ));
    }

    /// A row the database refuses (here one that bypassed `fitted`, breaking the column's
    /// CHECK) costs only itself: the rest of its batch is stored.
    #[tokio::test]
    async fn a_rejected_row_does_not_drop_the_rest_of_its_batch() {
        let dir = tempfile::tempdir().expect("temp dir");
        let env: std::collections::BTreeMap<String, String> = [(
            "KEYSTONE_SERVER__STATE_DIR".to_string(),
            dir.path().display().to_string(),
        )]
        .into();
        let config = crate::config::load(&Default::default(), &env).expect("config");
        let db = Db::connect(&config, true).await.expect("database");
        db.migrate().await.expect("migrations");
        let mut records: Vec<Record> = (0..9).map(|i| record("GET", &format!("/{i}/"))).collect();
        records.insert(4, record(&"A".repeat(200), "/bad/"));
        let refs: Vec<&Record> = records.iter().collect();
        let result = store(&db, &refs).await;
        assert_eq!((result.stored, result.lost), (9, 1));
        assert!(!result.unreachable, "a refused row is not an outage");
        let mut q = Query::select();
        q.expr(Expr::cust("COUNT(*)"))
            .from(Alias::new("logging_requestlog"));
        let stored: i64 = crate::store::fetch_scalar(&db, &q).await.expect("count");
        assert_eq!(stored, 9);
        // Fitted, the same row is stored like any other.
        let fitted = record(&"A".repeat(200), "/bad/").fitted();
        let result = store(&db, &[&fitted]).await;
        assert_eq!((result.stored, result.lost), (1, 0));
    }
}
