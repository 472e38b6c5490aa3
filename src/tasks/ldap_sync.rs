//! LDAP sync (operations.md §2.5 and §4.6): creates, updates and deactivates (or, with
//! `ldap.purge_removed`, deletes) the accounts imported from the directory. Local accounts are
//! never touched, no audit entries are written, and the database changes of one run are one
//! transaction. A run that would deactivate too many users aborts without changing anything
//! (§6.4 decision 5) unless `keystone ldap sync --force` asked for it.

use super::{TaskContext, TaskError};
use crate::config;
use crate::infra::ldap::{self, LdapError, LdapUser};
use crate::on_tx;
use crate::store::{Db, Tx};
use chrono::{DateTime, Utc};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

/// The user columns `attr_map` may fill (besides `username`), with their lengths.
const FIELDS: [(&str, usize); 5] = [
    ("first_name", 150),
    ("last_name", 150),
    ("email", 254),
    ("department", 1000),
    ("role", 1000),
];
/// `users_user.username` is a varchar(150).
const USERNAME_MAX: usize = 150;
/// Rows per multi-row statement: well under the bind-parameter limits of both backends.
const CHUNK: usize = 200;

/// What a sync changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Accounts created for new directory users.
    pub created: u64,
    /// Existing accounts whose mapped fields or LDAP flag changed.
    pub updated: u64,
    /// Active LDAP accounts deactivated because they left the directory.
    pub deactivated: u64,
    /// LDAP accounts deleted because they left the directory (`ldap.purge_removed` only).
    pub deleted: u64,
}

impl Summary {
    /// The line `keystone ldap sync` prints; deletions are only mentioned when purging is on.
    pub fn line(&self, purge: bool) -> String {
        let mut line = format!(
            "created {}, updated {}, deactivated {}",
            self.created, self.updated, self.deactivated
        );
        if purge {
            line.push_str(&format!(", deleted {}", self.deleted));
        }
        line
    }
}

/// What `keystone ldap sync` passes to the task running in the same tokio task: the
/// `--force` flag in, the summary out (the task runner itself only reports success).
pub struct CliRun {
    pub force: bool,
    pub summary: Mutex<Option<Summary>>,
}

tokio::task_local! {
    pub static CLI_RUN: Arc<CliRun>;
}

/// Runs one sync (§2.5). A no-op returning an empty summary when LDAP is not configured.
pub async fn run(ctx: &TaskContext) -> Result<Summary, TaskError> {
    let cli = CLI_RUN.try_with(Arc::clone).ok();
    let force = cli.as_ref().is_some_and(|c| c.force);
    let summary = sync(&ctx.config.settings.ldap, &ctx.db, force).await?;
    // Accounts may have been changed, deactivated or deleted: web processes look sessions
    // up afresh.
    crate::identity::sessions::invalidate_with(&ctx.config, crate::identity::sessions::Target::All)
        .await;
    if let Some(cli) = cli
        && let Ok(mut slot) = cli.summary.lock()
    {
        *slot = Some(summary.clone());
    }
    Ok(summary)
}

/// One directory user as it will be stored.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Record {
    username: String,
    /// Every column of [`FIELDS`] the `attr_map` names, `None` when the entry lacked it.
    fields: BTreeMap<&'static str, Option<String>>,
}

/// The columns of an existing account the sync compares and may change.
#[derive(Debug, Clone, sqlx::FromRow)]
struct Account {
    id: i64,
    username: String,
    first_name: Option<String>,
    last_name: Option<String>,
    email: Option<String>,
    department: Option<String>,
    role: Option<String>,
    is_active: bool,
    is_ldap_user: bool,
}

impl Account {
    fn field(&self, name: &str) -> Option<&String> {
        match name {
            "first_name" => self.first_name.as_ref(),
            "last_name" => self.last_name.as_ref(),
            "email" => self.email.as_ref(),
            "department" => self.department.as_ref(),
            "role" => self.role.as_ref(),
            _ => None,
        }
    }
}

/// The mapped values an account should hold: fields in `carried` come from the record
/// (NULL when it lacked them), the others keep their current value.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Values([Option<String>; 5]);

impl Values {
    fn of_account(a: &Account) -> Values {
        Values(FIELDS.map(|(name, _)| a.field(name).cloned()))
    }

    fn of_record(
        r: &Record,
        carried: &BTreeSet<&'static str>,
        current: Option<&Account>,
    ) -> Values {
        Values(FIELDS.map(|(name, _)| {
            if carried.contains(name) {
                r.fields.get(name).cloned().flatten()
            } else {
                current.and_then(|a| a.field(name).cloned())
            }
        }))
    }
}

/// The changes one run makes, decided before anything is written.
#[derive(Debug, Default, PartialEq, Eq)]
struct Plan {
    create: Vec<(String, Values)>,
    /// (account id, new values) for accounts whose values or LDAP flag change.
    update: Vec<(i64, Values)>,
    /// Active LDAP accounts no longer in the directory.
    removed_active: Vec<i64>,
    /// Inactive LDAP accounts no longer in the directory (only purging touches them).
    removed_inactive: Vec<i64>,
    /// Active LDAP accounts before the run.
    active_ldap: usize,
    /// LDAP accounts (active or not) before the run.
    all_ldap: usize,
}

/// §2.5 step 4 on top of [`ldap::search_users`]: the columns the entries fill, values cut to
/// their column lengths, usernames that cannot be stored skipped.
fn records(s: &config::Ldap, users: Vec<LdapUser>) -> Vec<Record> {
    let mut out = Vec::with_capacity(users.len());
    for user in users {
        if user.username.chars().count() > USERNAME_MAX {
            tracing::warn!(
                dn = %user.dn,
                "LDAP sync: skipping an entry whose username is longer than {USERNAME_MAX} characters"
            );
            continue;
        }
        let mut fields = BTreeMap::new();
        for (name, max) in FIELDS {
            if !s.attr_map.contains_key(name) {
                continue;
            }
            let value = user.fields.get(name).cloned().flatten().map(|v| {
                if v.chars().count() > max {
                    tracing::warn!(
                        username = %user.username,
                        field = name,
                        "LDAP sync: value longer than {max} characters cut to fit"
                    );
                    v.chars().take(max).collect()
                } else {
                    v
                }
            });
            fields.insert(name, value);
        }
        out.push(Record {
            username: user.username,
            fields,
        });
    }
    out
}

/// §2.5 step 5's set U without `is_ldap_user`: the fields at least one entry carried.
fn carried(records: &[Record]) -> BTreeSet<&'static str> {
    records
        .iter()
        .flat_map(|r| r.fields.iter())
        .filter(|(_, v)| v.is_some())
        .map(|(k, _)| *k)
        .collect()
}

/// Steps 5 and 6 decided against the current accounts.
fn plan(records: &[Record], accounts: &[Account]) -> Plan {
    let carried = carried(records);
    let by_name: HashMap<&str, &Account> =
        accounts.iter().map(|a| (a.username.as_str(), a)).collect();
    let mut plan = Plan::default();
    for r in records {
        match by_name.get(r.username.as_str()) {
            None => plan
                .create
                .push((r.username.clone(), Values::of_record(r, &carried, None))),
            Some(a) => {
                let want = Values::of_record(r, &carried, Some(a));
                if !a.is_ldap_user || want != Values::of_account(a) {
                    plan.update.push((a.id, want));
                }
            }
        }
    }
    let listed: BTreeSet<&str> = records.iter().map(|r| r.username.as_str()).collect();
    for a in accounts.iter().filter(|a| a.is_ldap_user) {
        plan.all_ldap += 1;
        if a.is_active {
            plan.active_ldap += 1;
        }
        if !listed.contains(a.username.as_str()) {
            if a.is_active {
                plan.removed_active.push(a.id);
            } else {
                plan.removed_inactive.push(a.id);
            }
        }
    }
    plan
}

/// §6.4 decision 5: the reason to refuse a plan, unless forced.
fn refusal(plan: &Plan, found: usize, max_fraction: f64) -> Option<String> {
    if found == 0 && plan.all_ldap > 0 {
        return Some(format!(
            "the directory search returned no users while {} LDAP account(s) exist ({} active); \
             refusing to deactivate them all (run `keystone ldap sync --force` to apply)",
            plan.all_ldap, plan.active_ldap
        ));
    }
    let removed = plan.removed_active.len();
    if plan.active_ldap > 0 && removed as f64 > max_fraction * plan.active_ldap as f64 {
        return Some(format!(
            "the sync would deactivate {removed} of {} active LDAP account(s), more than \
             ldap.max_deactivate_fraction = {max_fraction}; nothing was changed (run \
             `keystone ldap sync --force` to apply)",
            plan.active_ldap
        ));
    }
    None
}

fn ldap_error(e: LdapError) -> TaskError {
    // python-ldap's exception names, as upstream's task results show them.
    let kind = match &e {
        LdapError::Unreachable { .. } => "SERVER_DOWN",
        LdapError::Timeout { .. } => "TIMEOUT",
        LdapError::InvalidCredentials { .. } => "INVALID_CREDENTIALS",
        LdapError::Filter { .. } => "FILTER_ERROR",
        _ => "LDAPError",
    };
    TaskError::new(kind, "ldap", e.to_string())
}

/// `$first, $first+1, …` for `n` values.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

async fn load_accounts(tx: &mut Tx) -> Result<Vec<Account>, TaskError> {
    const SQL: &str = "SELECT id, username, first_name, last_name, email, department, role, \
                       is_active, is_ldap_user FROM users_user";
    Ok(on_tx!(tx, |c| sqlx::query_as::<_, Account>(SQL)
        .fetch_all(c)
        .await)?)
}

async fn insert_accounts(
    tx: &mut Tx,
    rows: &[(String, Values)],
    now: DateTime<Utc>,
) -> Result<(), TaskError> {
    const BINDS: usize = 8;
    for chunk in rows.chunks(CHUNK) {
        let values: Vec<String> = (0..chunk.len())
            .map(|i| {
                format!(
                    "({}, TRUE, FALSE, FALSE, TRUE)",
                    placeholders(1 + i * BINDS, BINDS)
                )
            })
            .collect();
        let sql = format!(
            "INSERT INTO users_user (username, password, first_name, last_name, email, \
             department, role, date_joined, is_active, is_staff, is_superuser, is_ldap_user) \
             VALUES {}",
            values.join(", ")
        );
        on_tx!(tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for (username, v) in chunk {
                // Django's unusable password: `!` and random text no hash can match.
                q = q
                    .bind(username)
                    .bind(format!("!{}", crate::identity::passwords::generate(40)));
                for value in &v.0 {
                    q = q.bind(value);
                }
                q = q.bind(now);
            }
            q.execute(c).await.map(|_| ())
        })?;
    }
    Ok(())
}

async fn update_accounts(tx: &mut Tx, rows: &[(i64, Values)]) -> Result<(), TaskError> {
    const SQL: &str = "UPDATE users_user SET first_name = $1, last_name = $2, email = $3, \
                       department = $4, role = $5, is_ldap_user = TRUE WHERE id = $6";
    for (id, v) in rows {
        on_tx!(tx, |c| {
            let mut q = sqlx::query(SQL);
            for value in &v.0 {
                q = q.bind(value);
            }
            q.bind(id).execute(c).await.map(|_| ())
        })?;
    }
    Ok(())
}

/// Runs `sql` (containing `{ids}`) once per chunk of ids; returns the rows affected.
async fn by_ids(tx: &mut Tx, sql: &str, ids: &[i64]) -> Result<u64, TaskError> {
    let mut affected = 0;
    for chunk in ids.chunks(CHUNK) {
        let sql = sql.replace("{ids}", &placeholders(1, chunk.len()));
        affected += on_tx!(tx, |c| {
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.clone()));
            for id in chunk {
                q = q.bind(id);
            }
            q.execute(c).await.map(|r| r.rows_affected())
        })?;
    }
    Ok(affected)
}

/// Of `ids`, those a request (submitter), review (reviewer) or comment (author) references:
/// deleting them is blocked (domain.md §3.9).
async fn protected(tx: &mut Tx, ids: &[i64]) -> Result<BTreeSet<i64>, TaskError> {
    let mut out = BTreeSet::new();
    for chunk in ids.chunks(CHUNK) {
        let sql = format!(
            "SELECT u.id FROM users_user u WHERE u.id IN ({}) AND (\
             EXISTS (SELECT 1 FROM allocations_allocationrequest r WHERE r.submitter_id = u.id) \
             OR EXISTS (SELECT 1 FROM allocations_allocationreview v WHERE v.reviewer_id = u.id) \
             OR EXISTS (SELECT 1 FROM allocations_comment m WHERE m.user_id = u.id))",
            placeholders(1, chunk.len())
        );
        let found: Vec<i64> = on_tx!(tx, |c| {
            let mut q = sqlx::query_scalar(sqlx::AssertSqlSafe(sql.clone()));
            for id in chunk {
                q = q.bind(id);
            }
            q.fetch_all(c).await
        })?;
        out.extend(found);
    }
    Ok(out)
}

/// §2.5: search, then apply the plan in one transaction.
async fn sync(s: &config::Ldap, db: &Db, force: bool) -> Result<Summary, TaskError> {
    if !ldap::enabled(s) {
        tracing::info!("LDAP sync skipped: LDAP is not configured (ldap.server_uri is empty)");
        return Ok(Summary::default());
    }
    let found = ldap::search_users(s).await.map_err(ldap_error)?;
    let records = records(s, found);

    let mut tx = db.begin().await?;
    let accounts = load_accounts(&mut tx).await?;
    let plan = plan(&records, &accounts);
    if let Some(reason) = refusal(&plan, records.len(), s.max_deactivate_fraction) {
        if !force {
            tracing::warn!("LDAP sync aborted: {reason}");
            return Err(TaskError::new(
                "SyncAborted",
                "keystone.tasks.ldap_sync",
                reason,
            ));
        }
        tracing::warn!("LDAP sync forced although {reason}");
    }
    if records.is_empty() && plan.all_ldap > 0 {
        tracing::warn!(
            count = plan.removed_active.len(),
            "LDAP sync: the directory search returned no users; every LDAP account is removed"
        );
    }

    let now = Utc::now();
    insert_accounts(&mut tx, &plan.create, now).await?;
    update_accounts(&mut tx, &plan.update).await?;
    let mut summary = Summary {
        created: plan.create.len() as u64,
        updated: plan.update.len() as u64,
        ..Summary::default()
    };
    let mut deactivate = plan.removed_active.clone();
    if s.purge_removed {
        let removed: Vec<i64> = plan
            .removed_active
            .iter()
            .chain(&plan.removed_inactive)
            .copied()
            .collect();
        let keep = protected(&mut tx, &removed).await?;
        let delete: Vec<i64> = removed
            .iter()
            .copied()
            .filter(|id| !keep.contains(id))
            .collect();
        summary.deleted = by_ids(
            &mut tx,
            "DELETE FROM users_user WHERE id IN ({ids})",
            &delete,
        )
        .await?;
        deactivate.retain(|id| keep.contains(id));
    }
    summary.deactivated = by_ids(
        &mut tx,
        "UPDATE users_user SET is_active = FALSE WHERE is_active = TRUE AND id IN ({ids})",
        &deactivate,
    )
    .await?;
    tx.commit().await?;
    tracing::info!(
        created = summary.created,
        updated = summary.updated,
        deactivated = summary.deactivated,
        deleted = summary.deleted,
        directory_users = records.len(),
        "LDAP sync finished"
    );
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(id: i64, username: &str, first: Option<&str>, active: bool, ldap: bool) -> Account {
        Account {
            id,
            username: username.into(),
            first_name: first.map(String::from),
            last_name: None,
            email: None,
            department: None,
            role: None,
            is_active: active,
            is_ldap_user: ldap,
        }
    }

    fn record(username: &str, first: Option<&str>) -> Record {
        Record {
            username: username.into(),
            fields: BTreeMap::from([("first_name", first.map(String::from))]),
        }
    }

    fn values(first: Option<&str>) -> Values {
        Values([first.map(String::from), None, None, None, None])
    }

    #[test]
    fn plans_creates_updates_and_removals_and_leaves_local_accounts_alone() {
        let accounts = [
            account(1, "same", Some("Same"), true, true),
            account(2, "renamed", Some("Old"), true, true),
            account(3, "gone", None, true, true),
            account(4, "gone-before", None, false, true),
            account(5, "local", Some("Local"), true, false),
            account(6, "local-in-ldap", None, true, false),
            account(7, "back", Some("Back"), false, true),
        ];
        let records = [
            record("same", Some("Same")),
            record("renamed", Some("New")),
            record("new", Some("Newcomer")),
            record("local-in-ldap", None),
            record("back", Some("Back")),
        ];
        let p = plan(&records, &accounts);
        assert_eq!(p.create, [("new".to_string(), values(Some("Newcomer")))]);
        // A local account listed in the directory becomes an LDAP account; a returning
        // inactive user is not touched (is_active is never in U).
        assert_eq!(p.update, [(2, values(Some("New"))), (6, values(None))]);
        assert_eq!(p.removed_active, [3]);
        assert_eq!(p.removed_inactive, [4]);
        assert_eq!((p.active_ldap, p.all_ldap), (3, 5));
        assert_eq!(plan(&records[..2], &accounts[..2]).update.len(), 1);
    }

    #[test]
    fn fields_no_entry_carried_are_left_untouched() {
        let mut a = account(1, "u", Some("Kept"), true, true);
        a.email = Some("old@example.org".into());
        let r = Record {
            username: "u".into(),
            fields: BTreeMap::from([("first_name", None), ("email", None)]),
        };
        let other = Record {
            username: "v".into(),
            fields: BTreeMap::from([("first_name", None), ("email", Some("v@x".into()))]),
        };
        // email is carried by another entry, so u's email becomes NULL; first_name is carried
        // by nobody, so it stays.
        let p = plan(&[r, other], &[a]);
        assert_eq!(p.update, [(1, values(Some("Kept")))]);
    }

    #[test]
    fn refuses_empty_results_and_mass_deactivation() {
        let p = |active: usize, removed: usize, all: usize| Plan {
            removed_active: (0..removed as i64).collect(),
            active_ldap: active,
            all_ldap: all,
            ..Plan::default()
        };
        assert!(refusal(&p(4, 2, 4), 2, 0.5).is_none());
        let r = refusal(&p(4, 3, 4), 1, 0.5).expect("3 of 4 is too many");
        assert!(r.contains("3 of 4 active"), "{r}");
        assert!(refusal(&p(0, 0, 2), 0, 1.0).is_some(), "empty result");
        assert!(
            refusal(&p(0, 0, 0), 0, 0.5).is_none(),
            "first sync of nothing"
        );
        assert!(refusal(&p(4, 4, 4), 1, 1.0).is_none());
    }

    #[test]
    fn summary_line_mentions_deletions_only_when_purging() {
        let s = Summary {
            created: 1,
            updated: 2,
            deactivated: 3,
            deleted: 4,
        };
        assert_eq!(s.line(false), "created 1, updated 2, deactivated 3");
        assert_eq!(
            s.line(true),
            "created 1, updated 2, deactivated 3, deleted 4"
        );
    }

    #[test]
    fn records_cut_long_values_and_skip_long_usernames() {
        let mut s = config::Ldap::default();
        s.attr_map.insert("first_name".into(), "givenName".into());
        let user = |name: String, first: String| LdapUser {
            dn: format!("uid={name}"),
            username: name,
            fields: BTreeMap::from([("first_name".to_string(), Some(first))]),
        };
        let out = records(
            &s,
            vec![
                user("x".repeat(151), "A".into()),
                user("ok".into(), "é".repeat(200)),
            ],
        );
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].fields["first_name"].as_deref(),
            Some("é".repeat(150).as_str())
        );
    }
}
