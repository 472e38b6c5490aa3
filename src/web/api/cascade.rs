//! What a delete takes with it: the records that hang on a team or on an allocation request,
//! which the database deletes by cascade with it, each given its own `delete` entry in the
//! audit trail (in the order upstream writes them, children before their parent), and the
//! stored files to remove once the delete is committed. Resources never import each other:
//! this is the one place that knows which records hang on which.

use super::allocations::attachments;
use super::allocations::comments::Comments;
use super::allocations::requests::Requests;
use super::allocations::resource_allocations::ResourceAllocations;
use super::allocations::reviews::Reviews;
use super::memberships::Memberships;
use super::research::{grants::Grants, publications::Publications};
use super::resource::audit_deleted;
use crate::on_tx;
use crate::store::Tx;
use crate::store::audit::{self, Action, AuditContext, Snapshot};
use crate::web::ApiError;
use chrono::{DateTime, Utc};
use sea_query::{Alias, Expr, ExprTrait, Query};

/// A team's memberships, allocation requests (with what hangs on them), grants and
/// publications. Returns the stored files of the requests' attachments.
pub async fn team(tx: &mut Tx, ctx: &AuditContext, team_id: i64) -> Result<Vec<String>, ApiError> {
    audit_deleted::<Memberships>(tx, ctx, "team_id", &[team_id]).await?;
    let request_ids: Vec<i64> = on_tx!(tx, |c| sqlx::query_scalar(
        "SELECT id FROM allocations_allocationrequest WHERE team_id = $1"
    )
    .bind(team_id)
    .fetch_all(c)
    .await)?;
    let files = requests(tx, ctx, &request_ids).await?;
    audit_deleted::<Requests>(tx, ctx, "team_id", &[team_id]).await?;
    audit_deleted::<Grants>(tx, ctx, "team_id", &[team_id]).await?;
    audit_deleted::<Publications>(tx, ctx, "team_id", &[team_id]).await?;
    Ok(files)
}

/// The resource allocations, reviews, attachments and comments of some allocation requests
/// (not the requests). Returns the attachments' stored files.
pub async fn requests(
    tx: &mut Tx,
    ctx: &AuditContext,
    request_ids: &[i64],
) -> Result<Vec<String>, ApiError> {
    audit_deleted::<ResourceAllocations>(tx, ctx, "request_id", request_ids).await?;
    audit_deleted::<Reviews>(tx, ctx, "request_id", request_ids).await?;
    audit_deleted_attachments(tx, ctx, request_ids).await?;
    audit_deleted::<Comments>(tx, ctx, "request_id", request_ids).await?;
    attachments::stored_files(tx, request_ids).await
}

/// The `delete` entries of the attachments of some requests, in id order (attachments are
/// not a declared resource, so `audit_deleted` does not serve them).
async fn audit_deleted_attachments(
    tx: &mut Tx,
    ctx: &AuditContext,
    request_ids: &[i64],
) -> Result<(), ApiError> {
    use sea_query_sqlx::SqlxBinder;
    if request_ids.is_empty() {
        return Ok(());
    }
    let mut q = Query::select();
    q.columns(["id", "file", "name", "uploaded", "request_id"].map(Alias::new))
        .from(Alias::new("allocations_attachment"))
        .and_where(Expr::col(Alias::new("request_id")).is_in(request_ids.to_vec()))
        .order_by(Alias::new("id"), sea_query::Order::Asc);
    let (sql, values) = match tx.engine() {
        crate::config::Engine::Postgres => q.build_sqlx(sea_query::PostgresQueryBuilder),
        crate::config::Engine::Sqlite => q.build_sqlx(sea_query::SqliteQueryBuilder),
    };
    let rows: Vec<(i64, String, String, DateTime<Utc>, i64)> = on_tx!(&mut *tx, |c| {
        sqlx::query_as_with(sqlx::AssertSqlSafe(sql.clone()), values.clone())
            .fetch_all(c)
            .await
    })?;
    for (id, file, name, uploaded, request) in rows {
        let snap: Snapshot = vec![
            ("id", audit::int(id)),
            ("file", Some(file)),
            ("name", Some(name.clone())),
            ("uploaded", audit::datetime(&uploaded)),
            ("request", audit::int(request)),
        ];
        audit::record(
            tx,
            ctx,
            "allocations | Attachment",
            id,
            &format!("Attachment #{id} - '{name}' on request #{request}"),
            Action::Delete,
            audit::changes(Some(&snap), None),
        )
        .await?;
    }
    Ok(())
}
