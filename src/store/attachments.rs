//! The stored files attachment records refer to: which ones a delete takes along, and
//! whether a file is still referenced.

use crate::config::Engine;
use crate::on_db;
use crate::store::{Db, DbError, Tx};
use sea_query::{Alias, Expr, ExprTrait, Query};

/// For code deleting allocation requests: the stored files of the attachments the database
/// will cascade away with the requests of `request_ids` (run it in the deleting
/// transaction, before the `DELETE`), to be passed to `infra::uploads::remove_files` after
/// the commit.
pub async fn stored_files(tx: &mut Tx, request_ids: &[i64]) -> Result<Vec<String>, DbError> {
    if request_ids.is_empty() {
        return Ok(Vec::new());
    }
    let mut q = Query::select();
    q.column(Alias::new("file"))
        .from(Alias::new("allocations_attachment"))
        .and_where(Expr::col(Alias::new("request_id")).is_in(request_ids.to_vec()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    use sea_query_sqlx::SqlxBinder;
    let engine = tx.engine();
    let files: Vec<String> = crate::on_tx!(tx, |conn| {
        let (sql, values) = match engine {
            Engine::Postgres => q.build_sqlx(sea_query::PostgresQueryBuilder),
            Engine::Sqlite => q.build_sqlx(sea_query::SqliteQueryBuilder),
        };
        sqlx::query_scalar_with(sqlx::AssertSqlSafe(sql), values)
            .fetch_all(conn)
            .await?
    });
    Ok(files)
}

/// How many attachments refer to a stored `file` value.
pub async fn references(db: &Db, file: &str) -> Result<i64, DbError> {
    Ok(on_db!(db, |p| sqlx::query_scalar(
        "SELECT COUNT(*) FROM allocations_attachment WHERE file = $1"
    )
    .bind(file)
    .fetch_one(p)
    .await)?)
}
