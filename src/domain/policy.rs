//! Who may do what (domain.md §6–§9): one rule per resource and operation, evaluated on the
//! caller's standing towards the record (or, for a create, towards the team the body names).
//! The web layer works out the standing (staff flag, membership role, ownership) and asks
//! [`decide`]; visibility rules that answer 404 rather than 403 are separate functions.

use super::error::DomainError;

/// A membership role (domain.md §3.1), weakest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Member,
    Admin,
    Owner,
}

impl Role {
    /// The stored code (`MB`, `AD`, `OW`); `None` for anything else.
    pub fn from_code(code: &str) -> Option<Role> {
        match code {
            "MB" => Some(Role::Member),
            "AD" => Some(Role::Admin),
            "OW" => Some(Role::Owner),
            _ => None,
        }
    }

    /// Admins and owners manage their team's records.
    pub fn is_privileged(self) -> bool {
        self >= Role::Admin
    }
}

/// The API's resources with their own permission rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resource {
    Users,
    Teams,
    Memberships,
    Clusters,
    Requests,
    Reviews,
    Allocations,
    Attachments,
    Comments,
    Grants,
    Publications,
    Notifications,
    Preferences,
}

impl Resource {
    pub const ALL: [Resource; 13] = [
        Resource::Users,
        Resource::Teams,
        Resource::Memberships,
        Resource::Clusters,
        Resource::Requests,
        Resource::Reviews,
        Resource::Allocations,
        Resource::Attachments,
        Resource::Comments,
        Resource::Grants,
        Resource::Publications,
        Resource::Notifications,
        Resource::Preferences,
    ];
}

/// What the caller asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    List,
    Create,
    Retrieve,
    /// `PUT`
    Replace,
    /// `PATCH`
    Modify,
    Destroy,
}

impl Operation {
    pub const ALL: [Operation; 6] = [
        Operation::List,
        Operation::Create,
        Operation::Retrieve,
        Operation::Replace,
        Operation::Modify,
        Operation::Destroy,
    ];

    /// The HTTP method that asks for the operation.
    pub const fn method(self) -> &'static str {
        match self {
            Operation::List | Operation::Retrieve => "GET",
            Operation::Create => "POST",
            Operation::Replace => "PUT",
            Operation::Modify => "PATCH",
            Operation::Destroy => "DELETE",
        }
    }
}

/// How the caller stands towards the record (for a create: towards the team the body names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Standing {
    /// Credentials were presented and accepted.
    pub authenticated: bool,
    pub staff: bool,
    /// The caller's membership role in the record's team, if any.
    pub role: Option<Role>,
    /// The record is the caller's own: their account, their membership, their notification
    /// or preference.
    pub own: bool,
    /// The record is a private comment.
    pub private: bool,
}

impl Standing {
    pub const ANONYMOUS: Standing = Standing {
        authenticated: false,
        staff: false,
        role: None,
        own: false,
        private: false,
    };

    /// An authenticated caller with no relation to the record.
    pub const STRANGER: Standing = Standing {
        authenticated: true,
        ..Standing::ANONYMOUS
    };

    pub fn staff() -> Standing {
        Standing {
            staff: true,
            ..Standing::STRANGER
        }
    }

    pub fn with_role(role: Role) -> Standing {
        Standing {
            role: Some(role),
            ..Standing::STRANGER
        }
    }

    pub fn member(&self) -> bool {
        self.role.is_some()
    }

    pub fn privileged(&self) -> bool {
        self.role.is_some_and(Role::is_privileged)
    }
}

/// The answer to a request, before visibility and validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// 401: no credentials (the route gate answers it before any handler).
    Unauthenticated,
    /// 403
    Forbidden,
    /// 405: the resource does not offer the operation.
    NotOffered,
}

/// Whether `standing` may perform `op` on `resource` (domain.md §6–§9).
pub fn decide(resource: Resource, op: Operation, s: Standing) -> Decision {
    use Operation::*;
    use Resource::*;
    if !s.authenticated {
        return Decision::Unauthenticated;
    }
    let allowed = match (resource, op) {
        // §9.1: the recipient alone reads and marks; staff included in "everyone else".
        (Notifications, Create | Replace | Destroy) => return Decision::NotOffered,
        (Notifications, List) => true,
        (Notifications, Retrieve | Modify) => s.own,
        // Lists are open to every authenticated caller; what they show is scoped.
        (_, List) => true,
        _ if s.staff => true,
        // §6.1
        (Users, Create) => false,
        (Users, Retrieve) => true,
        (Users, Replace | Modify | Destroy) => s.own,
        // §6.2: the creator of a team gets no membership.
        (Teams, Create | Retrieve) => true,
        (Teams, Replace | Modify | Destroy) => s.privileged(),
        // §6.3: anyone may leave a team.
        (Memberships, Retrieve) => true,
        (Memberships, Create | Replace | Modify) => s.privileged(),
        (Memberships, Destroy) => s.own || s.privileged(),
        // §7.1
        (Clusters, Retrieve) => true,
        (Clusters, _) => false,
        // §7.3–§7.6: team admins ask, staff review and decide; members read.
        (Requests | Allocations | Attachments, Create) => s.privileged(),
        (Requests | Reviews | Allocations | Attachments, Retrieve) => s.member(),
        (Requests | Reviews | Allocations | Attachments, _) => false,
        // §7.7: any member, on the public comments of their team.
        (Comments, Create) => s.member(),
        (Comments, _) => s.member() && !s.private,
        // §8.3: any member, on their team's records.
        (Grants | Publications, _) => s.member(),
        // §9.2
        (Preferences, Create) => true,
        (Preferences, _) => s.own,
    };
    if allowed {
        Decision::Allow
    } else {
        Decision::Forbidden
    }
}

/// [`decide`] as a result: the refusal is a [`DomainError`] the web edge maps to its status.
pub fn authorize(resource: Resource, op: Operation, s: Standing) -> Result<(), DomainError> {
    match decide(resource, op, s) {
        Decision::Allow => Ok(()),
        Decision::Unauthenticated => Err(DomainError::Unauthenticated),
        Decision::Forbidden => Err(DomainError::Forbidden),
        Decision::NotOffered => Err(DomainError::NotOffered(op.method())),
    }
}

/// Whether a cluster is usable by a team (domain.md §3.5.1): open, whitelisted with the team
/// on its list, or blacklisted without it. `listed` says whether the team is on the list.
pub fn cluster_usable(access_mode: &str, listed: bool) -> bool {
    match access_mode {
        "WL" => listed,
        "BL" => !listed,
        _ => true,
    }
}

/// Whether a non-staff caller may see a team at all (§6.2): inactive teams are 404 to them.
pub fn team_visible(staff: bool, team_active: bool) -> bool {
    staff || team_active
}

/// Whether a non-staff caller may see a user (§6.1): inactive users are 404 to them.
pub fn user_visible(staff: bool, user_active: bool) -> bool {
    staff || user_active
}

/// Whether a non-staff caller may see a membership (§6.3): team and user both active (staff
/// see every membership, without asking for either).
pub fn membership_visible(team_active: bool, user_active: bool) -> bool {
    team_active && user_active
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `authorize` is `decide` as a result, with the method of a refused operation.
    #[test]
    fn authorize_reports_refusals_as_domain_errors() {
        use Operation::*;
        let member = Standing::with_role(Role::Member);
        assert_eq!(authorize(Resource::Grants, Modify, member), Ok(()));
        assert_eq!(
            authorize(Resource::Grants, Modify, Standing::STRANGER),
            Err(DomainError::Forbidden)
        );
        assert_eq!(
            authorize(Resource::Grants, List, Standing::ANONYMOUS),
            Err(DomainError::Unauthenticated)
        );
        assert_eq!(
            authorize(Resource::Notifications, Replace, Standing::staff()),
            Err(DomainError::NotOffered("PUT"))
        );
        let methods: Vec<&str> = Operation::ALL.iter().map(|o| o.method()).collect();
        assert_eq!(methods, ["GET", "POST", "GET", "PUT", "PATCH", "DELETE"]);
    }

    /// The callers of the matrix, in column order.
    fn callers() -> [(&'static str, Standing); 8] {
        [
            ("anonymous", Standing::ANONYMOUS),
            ("stranger", Standing::STRANGER),
            ("member", Standing::with_role(Role::Member)),
            ("admin", Standing::with_role(Role::Admin)),
            ("owner", Standing::with_role(Role::Owner)),
            ("staff", Standing::staff()),
            (
                "self",
                Standing {
                    own: true,
                    ..Standing::STRANGER
                },
            ),
            (
                "member, private record",
                Standing {
                    private: true,
                    ..Standing::with_role(Role::Member)
                },
            ),
        ]
    }

    /// The permission matrix of domain.md §6–§9: one row per resource and operation, one
    /// letter per caller of [`callers`]: `A` allowed, `F` 403, `U` 401, `N` 405.
    /// "self" is the record's own user (the account, the membership's user, the recipient,
    /// the preference's owner); "member, private record" a plain member on a private comment.
    const MATRIX: &[(Resource, Operation, &str)] = {
        use Operation::*;
        use Resource::*;
        &[
            //                               anon strg mb ad ow staff self priv
            (Users, List, "UAAAAAAA"),
            (Users, Create, "UFFFFAFF"),
            (Users, Retrieve, "UAAAAAAA"),
            (Users, Replace, "UFFFFAAF"),
            (Users, Modify, "UFFFFAAF"),
            (Users, Destroy, "UFFFFAAF"),
            (Teams, List, "UAAAAAAA"),
            (Teams, Create, "UAAAAAAA"),
            (Teams, Retrieve, "UAAAAAAA"),
            (Teams, Replace, "UFFAAAFF"),
            (Teams, Modify, "UFFAAAFF"),
            (Teams, Destroy, "UFFAAAFF"),
            (Memberships, List, "UAAAAAAA"),
            (Memberships, Create, "UFFAAAFF"),
            (Memberships, Retrieve, "UAAAAAAA"),
            (Memberships, Replace, "UFFAAAFF"),
            (Memberships, Modify, "UFFAAAFF"),
            (Memberships, Destroy, "UFFAAAAF"),
            (Clusters, List, "UAAAAAAA"),
            (Clusters, Create, "UFFFFAFF"),
            (Clusters, Retrieve, "UAAAAAAA"),
            (Clusters, Replace, "UFFFFAFF"),
            (Clusters, Modify, "UFFFFAFF"),
            (Clusters, Destroy, "UFFFFAFF"),
            (Requests, List, "UAAAAAAA"),
            (Requests, Create, "UFFAAAFF"),
            (Requests, Retrieve, "UFAAAAFA"),
            (Requests, Replace, "UFFFFAFF"),
            (Requests, Modify, "UFFFFAFF"),
            (Requests, Destroy, "UFFFFAFF"),
            (Reviews, List, "UAAAAAAA"),
            (Reviews, Create, "UFFFFAFF"),
            (Reviews, Retrieve, "UFAAAAFA"),
            (Reviews, Replace, "UFFFFAFF"),
            (Reviews, Modify, "UFFFFAFF"),
            (Reviews, Destroy, "UFFFFAFF"),
            (Allocations, List, "UAAAAAAA"),
            (Allocations, Create, "UFFAAAFF"),
            (Allocations, Retrieve, "UFAAAAFA"),
            (Allocations, Replace, "UFFFFAFF"),
            (Allocations, Modify, "UFFFFAFF"),
            (Allocations, Destroy, "UFFFFAFF"),
            (Attachments, List, "UAAAAAAA"),
            (Attachments, Create, "UFFAAAFF"),
            (Attachments, Retrieve, "UFAAAAFA"),
            (Attachments, Replace, "UFFFFAFF"),
            (Attachments, Modify, "UFFFFAFF"),
            (Attachments, Destroy, "UFFFFAFF"),
            (Comments, List, "UAAAAAAA"),
            (Comments, Create, "UFAAAAFA"),
            (Comments, Retrieve, "UFAAAAFF"),
            (Comments, Replace, "UFAAAAFF"),
            (Comments, Modify, "UFAAAAFF"),
            (Comments, Destroy, "UFAAAAFF"),
            (Grants, List, "UAAAAAAA"),
            (Grants, Create, "UFAAAAFA"),
            (Grants, Retrieve, "UFAAAAFA"),
            (Grants, Replace, "UFAAAAFA"),
            (Grants, Modify, "UFAAAAFA"),
            (Grants, Destroy, "UFAAAAFA"),
            (Publications, List, "UAAAAAAA"),
            (Publications, Create, "UFAAAAFA"),
            (Publications, Retrieve, "UFAAAAFA"),
            (Publications, Replace, "UFAAAAFA"),
            (Publications, Modify, "UFAAAAFA"),
            (Publications, Destroy, "UFAAAAFA"),
            (Notifications, List, "UAAAAAAA"),
            (Notifications, Create, "UNNNNNNN"),
            (Notifications, Retrieve, "UFFFFFAF"),
            (Notifications, Replace, "UNNNNNNN"),
            (Notifications, Modify, "UFFFFFAF"),
            (Notifications, Destroy, "UNNNNNNN"),
            (Preferences, List, "UAAAAAAA"),
            (Preferences, Create, "UAAAAAAA"),
            (Preferences, Retrieve, "UFFFFAAF"),
            (Preferences, Replace, "UFFFFAAF"),
            (Preferences, Modify, "UFFFFAAF"),
            (Preferences, Destroy, "UFFFFAAF"),
        ]
    };

    fn letter(d: Decision) -> char {
        match d {
            Decision::Allow => 'A',
            Decision::Forbidden => 'F',
            Decision::Unauthenticated => 'U',
            Decision::NotOffered => 'N',
        }
    }

    #[test]
    fn the_permission_matrix_of_the_spec() {
        // Every resource × operation has exactly one row.
        for r in Resource::ALL {
            for op in Operation::ALL {
                let rows = MATRIX.iter().filter(|(mr, mo, _)| *mr == r && *mo == op);
                assert_eq!(rows.count(), 1, "{r:?} {op:?} must have one row");
            }
        }
        let callers = callers();
        let mut checked = 0;
        for (resource, op, expected) in MATRIX {
            assert_eq!(expected.len(), callers.len(), "{resource:?} {op:?}");
            for ((who, standing), want) in callers.iter().zip(expected.chars()) {
                let got = letter(decide(*resource, *op, *standing));
                assert_eq!(got, want, "{resource:?} {op:?} by {who}");
                checked += 1;
            }
        }
        assert_eq!(checked, 13 * 6 * 8);
    }

    #[test]
    fn staff_on_their_own_record_is_staff() {
        let own_staff = Standing {
            own: true,
            ..Standing::staff()
        };
        assert_eq!(
            decide(Resource::Users, Operation::Destroy, own_staff),
            Decision::Allow
        );
        // Staff read others' notifications only through the list (§9.1).
        assert_eq!(
            decide(
                Resource::Notifications,
                Operation::Retrieve,
                Standing::staff()
            ),
            Decision::Forbidden
        );
    }

    #[test]
    fn special_rules() {
        assert!(cluster_usable("OP", false));
        assert!(cluster_usable("WL", true) && !cluster_usable("WL", false));
        assert!(cluster_usable("BL", false) && !cluster_usable("BL", true));
        assert!(!team_visible(false, false) && team_visible(true, false));
        assert!(!user_visible(false, false) && user_visible(true, false));
        assert!(membership_visible(true, true));
        assert!(!membership_visible(true, false) && !membership_visible(false, true));
        assert_eq!(Role::from_code("AD"), Some(Role::Admin));
        assert!(Role::Owner.is_privileged() && !Role::Member.is_privileged());
        assert_eq!(Role::from_code("XX"), None);
    }
}
