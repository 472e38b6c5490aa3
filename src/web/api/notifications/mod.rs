//! `/notifications/` (domain.md §9): notifications and preferences. Notifications are
//! created by background jobs; their recipient may only mark them read or unread.
//! Preferences are one row per user, defaults applying while a user has none.

#[allow(clippy::module_inception)] // `/notifications/notifications/`, as upstream names it
pub mod notifications;
pub mod preferences;

/// The routes of this family.
pub fn routes() -> crate::web::route::Routes {
    crate::web::route::Routes::new()
        .push(super::resource::routes::<notifications::Notifications>())
        .push(super::resource::routes::<preferences::Preferences>())
}
