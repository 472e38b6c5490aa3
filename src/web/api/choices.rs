//! Choices endpoints (domain.md §10): static maps of stored code to label, in declaration
//! order, for the frontend's drop-downs.

use salvo::oapi::ToSchema;
use salvo::prelude::*;
use serde_json::{Map, Value};

/// Documents a choices body: one string property per stored code, defaulting to its label.
macro_rules! choices_doc {
    ($name:ident, $schema:literal, $($code:ident = $label:literal),+) => {
        #[allow(non_snake_case, dead_code)]
        #[derive(ToSchema)]
        #[salvo(schema(name = $schema))]
        pub struct $name {
            $(#[salvo(schema(default = $label))] $code: String,)+
        }
    };
}

choices_doc!(
    MembershipRoleChoices,
    "MembershipRoleChoices",
    OW = "Owner",
    AD = "Admin",
    MB = "Member"
);
choices_doc!(
    AllocationRequestStatusChoices,
    "AllocationRequestStatusChoices",
    PD = "Pending",
    AP = "Approved",
    DC = "Declined",
    CR = "Changes Requested"
);
choices_doc!(
    AllocationReviewStatusChoices,
    "AllocationReviewStatusChoices",
    AP = "Approved",
    DC = "Declined",
    CR = "Changes Requested"
);
choices_doc!(
    ClusterAccessModeChoices,
    "ClusterAccessModeChoices",
    WL = "Whitelist",
    BL = "Blacklist",
    OP = "Open"
);
choices_doc!(
    NotificationTypeChoices,
    "NotificationTypeChoices",
    GM = "General Message",
    RE = "Upcoming Request Expiration",
    RD = "Request Past Expiration"
);

pub const MEMBERSHIP_ROLE: &[(&str, &str)] = &[("OW", "Owner"), ("AD", "Admin"), ("MB", "Member")];
pub const REQUEST_STATUS: &[(&str, &str)] = &[
    ("PD", "Pending"),
    ("AP", "Approved"),
    ("DC", "Declined"),
    ("CR", "Changes Requested"),
];
pub const REVIEW_STATUS: &[(&str, &str)] = &[
    ("AP", "Approved"),
    ("DC", "Declined"),
    ("CR", "Changes Requested"),
];
pub const CLUSTER_ACCESS_MODE: &[(&str, &str)] =
    &[("WL", "Whitelist"), ("BL", "Blacklist"), ("OP", "Open")];
pub const NOTIFICATION_TYPE: &[(&str, &str)] = &[
    ("GM", "General Message"),
    ("RE", "Upcoming Request Expiration"),
    ("RD", "Request Past Expiration"),
];

fn render(res: &mut Response, pairs: &[(&str, &str)]) {
    let map: Map<String, Value> = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    res.render(Json(Value::Object(map)));
}

/// Retrieve membership role choices.
///
/// Returns valid choices for the membership role field mapped to human-readable labels.
#[endpoint(
    operation_id = "users_membership_choices_role_retrieve",
    tags("Users - Memberships"),
    responses((status_code = 200, description = "", body = MembershipRoleChoices))
)]
pub async fn membership_role(res: &mut Response) {
    render(res, MEMBERSHIP_ROLE);
}

/// Retrieve request status choices.
///
/// Returns valid choices for the request status field mapped to human-readable labels.
#[endpoint(
    operation_id = "allocations_request_choices_status_retrieve",
    tags("Allocations - Requests"),
    responses((status_code = 200, description = "", body = AllocationRequestStatusChoices))
)]
pub async fn request_status(res: &mut Response) {
    render(res, REQUEST_STATUS);
}

/// Retrieve review status choices.
///
/// Returns valid choices for the review status field mapped to human-readable labels.
#[endpoint(
    operation_id = "allocations_review_choices_status_retrieve",
    tags("Allocations - Reviews"),
    responses((status_code = 200, description = "", body = AllocationReviewStatusChoices))
)]
pub async fn review_status(res: &mut Response) {
    render(res, REVIEW_STATUS);
}

/// Retrieve cluster access mode choices.
///
/// Returns valid choices for the cluster access mode field mapped to human-readable labels.
#[endpoint(
    operation_id = "allocations_cluster_choices_access_mode_retrieve",
    tags("Allocations - Clusters"),
    responses((status_code = 200, description = "", body = ClusterAccessModeChoices))
)]
pub async fn cluster_access_mode(res: &mut Response) {
    render(res, CLUSTER_ACCESS_MODE);
}

/// Retrieve notification type choices.
///
/// Returns valid choices for the notification type field mapped to human-readable labels.
#[endpoint(
    operation_id = "notifications_notification_choices_type_retrieve",
    tags("Notifications - Notifications"),
    responses((status_code = 200, description = "", body = NotificationTypeChoices))
)]
pub async fn notification_type(res: &mut Response) {
    render(res, NOTIFICATION_TYPE);
}
