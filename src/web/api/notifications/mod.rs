//! `/notifications/` (domain.md §9): notifications and preferences. Notifications are
//! created by background jobs; their recipient may only mark them read or unread.
//! Preferences are one row per user, defaults applying while a user has none.

#[allow(clippy::module_inception)] // `/notifications/notifications/`, as upstream names it
pub mod notifications;
pub mod preferences;

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(
            crate::web::route::Endpoint::protected("notifications/notifications/")
                .get(notifications::list)
                .head(notifications::list)
                .options(crate::web::api::meta("Notification List", ""))
                .format_suffix(),
        )
        .push(
            crate::web::route::Endpoint::protected("notifications/notifications/{id}/")
                .get(notifications::retrieve)
                .head(notifications::retrieve)
                .patch(notifications::patch)
                .options(crate::web::api::meta("Notification Instance", ""))
                .format_suffix(),
        )
        .push(super::resource::routes::<preferences::Preferences>())
}
