//! `/allocations/reviews/` (domain.md §7.4): staff reviews of allocation requests. Staff
//! write them; members of the request's team read them. Reviews have no side effects on the
//! request.

use super::shared::{self, AllocationRequestSummaryDoc, REQUESTS, invalid_pk};
use crate::domain::validation::Validator;
use crate::store::audit::Snapshot;
use crate::store::{Db, Tx};
use crate::web::ApiError;
use crate::web::api::Caller;
use crate::web::api::body::Body;
use crate::web::api::list::{Column, Kind, ListSpec, search_via};
use crate::web::api::resource::{self, Docs, Field, Policy, Resource, Val, Who, Write};
use crate::web::api::summaries::{self, render_datetime};
use crate::web::api::summaries::{AuditLogSummaryDoc, UserSummaryDoc};
use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use salvo::oapi::{Components, RefOr, Schema, ToSchema};
use serde::Serialize;

pub const CONTENT_TYPE: &str = "allocations | AllocationReview";
const MODEL: &str = "AllocationReview";
pub const STATUSES: &[&str] = &["AP", "DC", "CR"];

const FIELDS: [Field<ReviewRow>; 5] = [
    Field::id(|r| Val::Int(r.id)),
    Field::new("status", Kind::Choice(STATUSES), |r| {
        Val::Text(r.status.clone())
    }),
    Field::new("submitted", Kind::DateTime, |r: &ReviewRow| {
        Val::DateTime(r.submitted)
    })
    .write(Write::Create),
    Field::new("request", Kind::Fk(REQUESTS), |r| Val::Int(r.request_id)),
    Field::new("reviewer", Kind::Fk("users_user"), |r| {
        Val::Int(r.reviewer_id)
    }),
];
const COLUMNS: &[Column] = &resource::columns(&FIELDS);

pub const SPEC: ListSpec = ListSpec {
    table: "allocations_allocationreview",
    filters: COLUMNS,
    order: COLUMNS,
    // Upstream's dead `public_comments`/`private_comments` are dropped (domain.md §2.3).
    search: &[
        search_via(
            &[("request_id", REQUESTS), ("team_id", "users_team")],
            "name",
        ),
        search_via(&[("request_id", REQUESTS)], "title"),
    ],
};

// A review as the API renders and documents it (a doc comment here would become the
// schema's description).
#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationReview"))]
pub struct AllocationReview {
    pub id: i64,
    #[salvo(schema(value_type = AllocationRequestSummaryDoc))]
    pub _request: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = UserSummaryDoc))]
    pub _reviewer: Option<crate::web::api::summaries::Embedded>,
    #[salvo(schema(value_type = Vec<AuditLogSummaryDoc>))]
    pub _history: Vec<crate::web::api::summaries::AuditLogSummaryDoc>,
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub submitted: String,
    pub request: i64,
    pub reviewer: i64,
}

#[derive(Serialize, ToSchema)]
#[salvo(schema(name = "AllocationReviewRequest"))]
pub struct AllocationReviewRequestDoc {
    /// * `AP` - Approved
    /// * `DC` - Declined
    /// * `CR` - Changes Requested
    pub status: String,
    pub request: i64,
    #[salvo(schema(required = false))]
    pub reviewer: i64,
}

#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ReviewRow {
    pub id: i64,
    pub status: String,
    pub submitted: DateTime<Utc>,
    pub request_id: i64,
    pub reviewer_id: i64,
}

pub fn snapshot(r: &ReviewRow) -> Snapshot {
    Reviews::snapshot(r)
}

/// `Allocation Review #<pk> - <reviewer username> review of request #<request id>`.
pub fn repr_with(r: &ReviewRow, reviewer_username: &str) -> String {
    format!(
        "Allocation Review #{} - {} review of request #{}",
        r.id, reviewer_username, r.request_id
    )
}

async fn repr(tx: &mut Tx, r: &ReviewRow) -> Result<String, ApiError> {
    let username = crate::store::users::username_in(tx, r.reviewer_id).await?;
    Ok(repr_with(r, &username))
}

/// Validates a body; `current` is the review being updated. The caller is staff.
async fn validate(
    db: &Db,
    caller_id: i64,
    body: &Body,
    partial: bool,
    current: Option<&ReviewRow>,
) -> Result<ReviewRow, ApiError> {
    body.require_object()?;
    let mut v = Validator::new(&body.fields, partial);
    let status = v.choice("status", STATUSES, true);
    let request = v.pk("request", true);
    let reviewer = v.pk("reviewer", false);
    if let Some(id) = request
        && shared::missing(db, id).await?
    {
        v.error("request", invalid_pk(id));
    }
    if let Some(id) = reviewer {
        if crate::store::first_missing(db, "users_user", &[id])
            .await?
            .is_some()
        {
            v.error("reviewer", invalid_pk(id));
        } else if id != caller_id {
            v.error(
                "reviewer",
                "Reviewer cannot be set to a different user than the submitter.",
            );
        }
    }
    v.finish()?;
    Ok(ReviewRow {
        id: current.map(|c| c.id).unwrap_or(0),
        status: status
            .or_else(|| current.map(|c| c.status.clone()))
            .unwrap_or_default(),
        submitted: current.map(|c| c.submitted).unwrap_or_else(shared::now),
        request_id: request
            .or(current.map(|c| c.request_id))
            .unwrap_or_default(),
        // Omitted: the caller on create, the stored reviewer on update.
        reviewer_id: reviewer
            .or(current.map(|c| c.reviewer_id))
            .unwrap_or(caller_id),
    })
}

/// The review resource.
pub struct Reviews;

crate::document_resource!(Reviews);

impl Resource for Reviews {
    type Row = ReviewRow;
    type Repr = AllocationReview;
    type Extra = ();

    const PATH: &'static str = "allocations/reviews/";
    const TABLE: &'static str = "allocations_allocationreview";
    const CONTENT_TYPE: &'static str = CONTENT_TYPE;
    const MODEL: &'static str = MODEL;
    const FIELDS: &'static [Field<ReviewRow>] = &FIELDS;
    const SPEC: ListSpec = SPEC;
    /// Staff alone create (refused up front), change and delete.
    const POLICY: Policy = Policy {
        create: Who::Staff,
        ..Policy::STAFF_CHANGES
    };
    const DOCS: Docs = Docs {
        tag: "Allocations - Reviews",
        id: "A unique integer value identifying this allocation review.",
        list_name: "Allocation Review List",
        item_name: "Allocation Review Instance",
        list: (
            "List allocation reviews.",
            "Returns a list of allocation reviews. Non-staff users are only returned reviews \
             belonging to teams where they hold membership. Staff users are returned all \
             reviews.",
        ),
        retrieve: (
            "Retrieve an allocation review.",
            "Returns a single allocation review by ID. Read access is granted to staff users \
             and team members.",
        ),
        create: (
            "Create an allocation review.",
            "Creates a new allocation review. Write access is restricted to staff users. The \
             `reviewer` field defaults to the authenticated user if not specified.",
        ),
        update: (
            "Update an allocation review.",
            "Replaces an existing allocation review with new values. Write access is \
             restricted to staff users.",
        ),
        partial_update: (
            "Partially update an allocation review.",
            "Partially updates an existing allocation review with new values. Write access \
             is restricted to staff users.",
        ),
        destroy: (
            "Delete an allocation review.",
            "Deletes a single allocation review by ID. Write access is restricted to staff \
             users.",
        ),
    };

    crate::record_id!();

    async fn repr(tx: &mut Tx, row: &ReviewRow) -> Result<String, ApiError> {
        repr(tx, row).await
    }

    async fn validate(
        db: &Db,
        caller: &Caller,
        body: &Body,
        partial: bool,
        current: Option<&ReviewRow>,
    ) -> Result<(ReviewRow, ()), ApiError> {
        Ok((validate(db, caller.id(), body, partial, current).await?, ()))
    }

    /// Representations of a page of reviews: requests, reviewers and history in a constant
    /// number of queries.
    async fn represent(
        db: &Db,
        tz: Tz,
        rows: &[ReviewRow],
    ) -> Result<Vec<AllocationReview>, ApiError> {
        let ids: Vec<i64> = rows.iter().map(|r| r.id).collect();
        let request_ids: Vec<i64> = rows.iter().map(|r| r.request_id).collect();
        let reviewer_ids: Vec<i64> = rows.iter().map(|r| r.reviewer_id).collect();
        let reqs = shared::summaries_by_id(db, &request_ids).await?;
        let users = summaries::users_by_id(db, &reviewer_ids).await?;
        let mut history = summaries::history(db, tz, CONTENT_TYPE, &ids).await?;
        Ok(rows
            .iter()
            .map(|r| AllocationReview {
                id: r.id,
                _request: reqs.get(&r.request_id).cloned(),
                _reviewer: users.get(&r.reviewer_id).cloned(),
                _history: history.remove(&r.id).unwrap_or_default(),
                status: r.status.clone(),
                submitted: render_datetime(&r.submitted, tz),
                request: r.request_id,
                reviewer: r.reviewer_id,
            })
            .collect())
    }

    fn scope(q: &mut sea_query::SelectStatement, caller: &Caller) {
        shared::scope_via_request(q, caller, "request_id");
    }

    /// Read access: staff, or a member of the request's team (403).
    async fn check_record(db: &Db, caller: &Caller, row: &ReviewRow) -> Result<(), ApiError> {
        ApiError::forbidden_unless(super::sees_request(db, caller, row.request_id).await?)
    }

    fn request_body(components: &mut Components) -> Option<RefOr<Schema>> {
        Some(AllocationReviewRequestDoc::to_schema(components))
    }
}
