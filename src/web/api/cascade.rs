//! What a delete takes with it: the records that hang on a team or on an allocation request,
//! which the database deletes by cascade with it, each given its own `delete` entry in the
//! audit trail (in the order upstream writes them, children before their parent), and the
//! stored files to remove once the delete is committed. Resources never import each other:
//! this is the one place that knows which records hang on which.

use super::allocations::attachments::Attachments;
use super::allocations::comments::Comments;
use super::allocations::requests::Requests;
use super::allocations::resource_allocations::ResourceAllocations;
use super::allocations::reviews::Reviews;
use super::memberships::Memberships;
use super::research::{grants::Grants, publications::Publications};
use super::resource::audit_deleted;
use crate::on_tx;
use crate::store::Tx;
use crate::store::audit::AuditContext;
use crate::web::ApiError;

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
    audit_deleted::<Attachments>(tx, ctx, "request_id", request_ids).await?;
    audit_deleted::<Comments>(tx, ctx, "request_id", request_ids).await?;
    Ok(crate::store::attachments::stored_files(tx, request_ids).await?)
}
