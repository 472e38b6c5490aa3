#!/usr/bin/env bash
# check-schema.sh: apply the migrations of both backends to scratch databases and check
# that they behave as the contract says (domain.md §3, operations.md §2.4/§2.10/§3.2/§3.4/§3.6).
#
#   * PostgreSQL: creates and drops its own database keystone_schema_check_<pid> on
#     $PGHOST (default 127.0.0.1) as $PGUSER (default postgres); needs `psql` and the right
#     to CREATE DATABASE.
#   * SQLite: a temporary file, used with `PRAGMA foreign_keys = ON`; needs `sqlite3` (3.40+).
#
# Every migration NNNN_*.sql of each backend is applied in order, each in one transaction
# (as sqlx's migrator does). Then the same data and statements are run against both
# databases. Prints one summary line; exits non-zero if anything failed.
#
# Usage: migrations/check-schema.sh [-v]     (-v: print every check, not just failures)
set -u -o pipefail

here=$(cd "$(dirname "$0")" && pwd)
verbose=0
[ "${1:-}" = "-v" ] && verbose=1

export PGHOST="${PGHOST:-127.0.0.1}"
export PGUSER="${PGUSER:-postgres}"
export PGOPTIONS="${PGOPTIONS:-} -c client_min_messages=warning"
PSQL="${PSQL:-psql}"
SQLITE3="${SQLITE3:-sqlite3}"

pgdb="keystone_schema_check_$$"
tmpdir=$(mktemp -d "${TMPDIR:-/tmp}/keystone-schema-check.XXXXXX")
sqdb="$tmpdir/check.db"
pg_created=0

cleanup() {
    if [ "$pg_created" = 1 ]; then
        "$PSQL" -X -q -d postgres -c "DROP DATABASE IF EXISTS $pgdb WITH (FORCE)" >/dev/null 2>&1 || true
    fi
    rm -rf "$tmpdir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

passed=0
failed=0

ok()   { passed=$((passed + 1)); [ "$verbose" = 1 ] && printf 'ok    %s\n' "$1"; return 0; }
bad()  { failed=$((failed + 1)); printf 'FAIL  %s\n' "$1" >&2; [ -n "${2:-}" ] && printf '      %s\n' "$2" | head -n 20 >&2; return 0; }
die()  { printf 'check-schema: FAILED: %s\n' "$1" >&2; exit 1; }

command -v "$PSQL" >/dev/null || die "psql not found"
command -v "$SQLITE3" >/dev/null || die "sqlite3 not found"

# --- raw runners: print output (stdout+stderr), return the tool's status ------------------
pg_run() { "$PSQL" -X -q -At -v ON_ERROR_STOP=1 -d "$pgdb" -c "$1" 2>&1; }
sq_run() { printf 'PRAGMA foreign_keys = ON;\n%s\n' "$1" | "$SQLITE3" -bail -batch "$sqdb" 2>&1; }

# --- assertions --------------------------------------------------------------------------
# X_ok NAME SQL              statement must succeed
# X_fail NAME PATTERN SQL    statement must fail with an error matching PATTERN (ERE)
# X_eq NAME EXPECTED SQL     statement must succeed and print exactly EXPECTED
for be in pg sq; do
    eval "
${be}_ok() {
    local out
    if out=\$(${be}_run \"\$2\"); then ok \"[$be] \$1\"; else bad \"[$be] \$1\" \"\$out\"; fi
}
${be}_fail() {
    local out
    if out=\$(${be}_run \"\$3\"); then
        bad \"[$be] \$1 (statement unexpectedly succeeded)\"
    elif printf '%s' \"\$out\" | grep -Eq -- \"\$2\"; then
        ok \"[$be] \$1\"
    else
        bad \"[$be] \$1 (wrong error; wanted /\$2/)\" \"\$out\"
    fi
}
${be}_eq() {
    local out
    if ! out=\$(${be}_run \"\$3\"); then bad \"[$be] \$1\" \"\$out\"
    elif [ \"\$out\" = \"\$2\" ]; then ok \"[$be] \$1\"
    else bad \"[$be] \$1\" \"expected: \$(printf '%s' \"\$2\" | tr '\n' ' ') got: \$(printf '%s' \"\$out\" | tr '\n' ' ')\"
    fi
}"
done
# Same statement on both backends. both_fail takes one pattern per backend.
both_ok()   { pg_ok "$1" "$2"; sq_ok "$1" "$2"; }
both_eq()   { pg_eq "$1" "$2" "$3"; sq_eq "$1" "$2" "$3"; }
both_fail() { pg_fail "$1" "$2" "$4"; sq_fail "$1" "$3" "$4"; }

# Fixtures use explicit ids (identical on both backends). PostgreSQL identity columns do
# not advance on explicit ids, so move each sequence past max(id) afterwards, as any
# seed/import code must do (see README).
pg_sync_ids() {
    local t sql=""
    for t in "$@"; do
        sql="$sql SELECT setval(pg_get_serial_sequence('$t', 'id'), (SELECT max(id) FROM $t));"
    done
    local out
    if out=$(pg_run "$sql"); then ok "[pg] advance identity sequences: $*"; else bad "[pg] advance identity sequences" "$out"; fi
}

# Typical error patterns.
PG_FK='violates foreign key constraint'
SQ_FK='FOREIGN KEY constraint failed'
SQ_CHECK='CHECK constraint failed'

# --- create databases and apply migrations -----------------------------------------------
"$PSQL" -X -q -d postgres -c "CREATE DATABASE $pgdb" >/dev/null 2>"$tmpdir/err" \
    || die "cannot create PostgreSQL database $pgdb on $PGHOST: $(cat "$tmpdir/err")"
pg_created=1

shopt -s nullglob
pg_files=("$here"/postgres/[0-9]*_*.sql)
sq_files=("$here"/sqlite/[0-9]*_*.sql)
[ ${#pg_files[@]} -gt 0 ] || die "no migrations in $here/postgres"
[ ${#sq_files[@]} -gt 0 ] || die "no migrations in $here/sqlite"

# Both backends must carry the same migration numbers.
pg_versions=$(for f in "${pg_files[@]}"; do basename "$f" | cut -d_ -f1; done)
sq_versions=$(for f in "${sq_files[@]}"; do basename "$f" | cut -d_ -f1; done)
if [ "$pg_versions" = "$sq_versions" ]; then ok "same migration numbers on both backends"
else bad "migration numbers differ between backends" "postgres: $(echo $pg_versions) / sqlite: $(echo $sq_versions)"; fi

for f in "${pg_files[@]}"; do
    grep -Eiq '^[[:space:]]*(BEGIN|COMMIT|ROLLBACK)[[:space:]]*;' "$f" \
        && bad "[pg] $(basename "$f") contains its own transaction statements"
    if out=$("$PSQL" -X -q -v ON_ERROR_STOP=1 --single-transaction -d "$pgdb" -f "$f" 2>&1); then
        ok "[pg] apply $(basename "$f")"
    else
        bad "[pg] apply $(basename "$f")" "$out"; die "PostgreSQL migration $(basename "$f") does not apply"
    fi
done
for f in "${sq_files[@]}"; do
    grep -Eiq '^[[:space:]]*(BEGIN|COMMIT|ROLLBACK|PRAGMA)\b' "$f" \
        && bad "[sq] $(basename "$f") contains PRAGMA or transaction statements"
    if out=$({ printf 'PRAGMA foreign_keys = ON;\nBEGIN;\n'; cat "$f"; printf '\nCOMMIT;\n'; } \
             | "$SQLITE3" -bail -batch "$sqdb" 2>&1); then
        ok "[sq] apply $(basename "$f")"
    else
        bad "[sq] apply $(basename "$f")" "$out"; die "SQLite migration $(basename "$f") does not apply"
    fi
done
sq_eq "foreign_key_check clean after migration" "" "PRAGMA foreign_key_check;"
sq_eq "integrity_check" "ok" "PRAGMA integrity_check;"

# --- structural parity between the two backends ------------------------------------------
pg_cols=$(pg_run "SELECT table_name || '|' || column_name || '|' || is_nullable
                  FROM information_schema.columns WHERE table_schema = 'public'" | LC_ALL=C sort)
sq_cols=$(sq_run "SELECT m.name || '|' || p.name || '|' ||
                         CASE WHEN p.\"notnull\" OR (p.pk AND p.type = 'INTEGER') THEN 'NO' ELSE 'YES' END
                  FROM sqlite_master m, pragma_table_info(m.name) p
                  WHERE m.type IN ('table', 'view') AND m.name NOT LIKE 'sqlite_%'" | LC_ALL=C sort)
if [ -n "$pg_cols" ] && [ "$pg_cols" = "$sq_cols" ]; then ok "same tables, views, columns and NULL-ability ($(printf '%s\n' "$pg_cols" | wc -l) columns)"
else bad "tables/columns/NULL-ability differ (< postgres, > sqlite)" "$(diff <(printf '%s\n' "$pg_cols") <(printf '%s\n' "$sq_cols"))"; fi

pg_idx=$(pg_run "SELECT tablename || '|' || indexname FROM pg_indexes
                 WHERE schemaname = 'public' AND indexname LIKE '%\_idx'" | LC_ALL=C sort)
sq_idx=$(sq_run "SELECT tbl_name || '|' || name FROM sqlite_master
                 WHERE type = 'index' AND sql IS NOT NULL" | LC_ALL=C sort)
if [ -n "$pg_idx" ] && [ "$pg_idx" = "$sq_idx" ]; then ok "same indexes ($(printf '%s\n' "$pg_idx" | wc -l))"
else bad "indexes differ (< postgres, > sqlite)" "$(diff <(printf '%s\n' "$pg_idx") <(printf '%s\n' "$sq_idx"))"; fi

pg_fks=$(pg_run "SELECT c.conrelid::regclass || '|' || a.attname || '|' || c.confrelid::regclass || '|' ||
                        CASE c.confdeltype WHEN 'c' THEN 'CASCADE' WHEN 'r' THEN 'RESTRICT'
                             WHEN 'n' THEN 'SET NULL' WHEN 'd' THEN 'SET DEFAULT' ELSE 'NO ACTION' END
                 FROM pg_constraint c JOIN pg_attribute a
                      ON a.attrelid = c.conrelid AND a.attnum = c.conkey[1]
                 WHERE c.contype = 'f'" | LC_ALL=C sort)
sq_fks=$(sq_run "SELECT m.name || '|' || f.\"from\" || '|' || f.\"table\" || '|' || f.on_delete
                 FROM sqlite_master m, pragma_foreign_key_list(m.name) f
                 WHERE m.type = 'table'" | LC_ALL=C sort)
if [ -n "$pg_fks" ] && [ "$pg_fks" = "$sq_fks" ]; then ok "same foreign keys and ON DELETE actions ($(printf '%s\n' "$pg_fks" | wc -l))"
else bad "foreign keys differ (< postgres, > sqlite)" "$(diff <(printf '%s\n' "$pg_fks") <(printf '%s\n' "$sq_fks"))"; fi

# ON DELETE actions required by domain.md §3.9 (PROTECT = RESTRICT).
expected_fks="allocations_allocationrequest|submitter_id|users_user|RESTRICT
allocations_allocationreview|reviewer_id|users_user|RESTRICT
allocations_comment|user_id|users_user|RESTRICT
allocations_resourceallocation|cluster_id|allocations_cluster|RESTRICT
allocations_allocationrequest|team_id|users_team|CASCADE
users_membership|user_id|users_user|CASCADE
users_membership|team_id|users_team|CASCADE
notifications_notification|user_id|users_user|CASCADE
notifications_preference|user_id|users_user|CASCADE
keystone_api_token|user_id|users_user|CASCADE
allocations_allocationrequest_assignees|user_id|users_user|CASCADE
allocations_allocationrequest_grants|grant_id|research_products_grant|CASCADE
allocations_allocationrequest_publications|publication_id|research_products_publication|CASCADE
allocations_cluster_access_teams|team_id|users_team|CASCADE
allocations_cluster_access_teams|cluster_id|allocations_cluster|CASCADE
research_products_grant|team_id|users_team|CASCADE
research_products_publication|team_id|users_team|CASCADE
allocations_resourceallocation|request_id|allocations_allocationrequest|CASCADE
allocations_allocationreview|request_id|allocations_allocationrequest|CASCADE
allocations_attachment|request_id|allocations_allocationrequest|CASCADE
allocations_comment|request_id|allocations_allocationrequest|CASCADE
logging_requestlog|user_id|users_user|SET NULL
auditlog_logentry|actor_id|users_user|SET NULL"
missing=$(LC_ALL=C comm -23 <(printf '%s\n' "$expected_fks" | LC_ALL=C sort) <(printf '%s\n' "$pg_fks"))
if [ -z "$missing" ]; then ok "ON DELETE actions match domain.md §3.9"
else bad "ON DELETE actions missing or wrong" "$missing"; fi

# --- fixtures ----------------------------------------------------------------------------
# Explicit ids keep both backends in step; literals are valid on both (TRUE/FALSE, ISO text).
both_ok "insert users" "
INSERT INTO users_user (id, username, password, first_name, last_name, email) VALUES
  (1, 'alice', 'pbkdf2_sha256\$1000000\$salt\$hash', 'Alice', 'Lee', 'alice@example.org'),
  (2, 'bob',   '!unusable', NULL, NULL, NULL),
  (3, 'carol', '!unusable', 'Carol', NULL, NULL),
  (4, 'dave',  '!unusable', NULL, NULL, NULL),
  (5, 'eve',   '!unusable', NULL, NULL, 'eve@example.org');"
pg_sync_ids users_user
both_eq "user defaults (is_active, is_staff, is_superuser, is_ldap_user, date_joined)" "1|0|0|0|1" "
SELECT CASE WHEN is_active THEN 1 ELSE 0 END, CASE WHEN is_staff THEN 1 ELSE 0 END,
       CASE WHEN is_superuser THEN 1 ELSE 0 END, CASE WHEN is_ldap_user THEN 1 ELSE 0 END,
       CASE WHEN date_joined IS NOT NULL THEN 1 ELSE 0 END
FROM users_user WHERE id = 2;"
both_fail "username unique" "users_user_username_key" "UNIQUE constraint failed: users_user.username" \
    "INSERT INTO users_user (username, password) VALUES ('alice', 'x');"
both_fail "username longer than 150 characters rejected" "value too long" "$SQ_CHECK" \
    "INSERT INTO users_user (username, password) VALUES ('$(printf 'u%.0s' $(seq 151))', 'x');"
both_fail "password is NOT NULL" "null value|not-null" "NOT NULL constraint failed: users_user.password" \
    "INSERT INTO users_user (username) VALUES ('nopass');"

both_ok "insert teams" "
INSERT INTO users_team (id, name, slug) VALUES (1, 'Team One', 'team-one'), (2, 'Team Two', 'team-two'), (3, 'Team Three', 'team-three');"
pg_sync_ids users_team
both_fail "team slug unique" "users_team_slug_key" "UNIQUE constraint failed: users_team.slug" \
    "INSERT INTO users_team (name, slug) VALUES ('team one', 'team-one');"
both_eq "team is_active defaults to true" "1" "SELECT CASE WHEN is_active THEN 1 ELSE 0 END FROM users_team WHERE id = 1;"

both_ok "insert memberships" "
INSERT INTO users_membership (id, role, user_id, team_id) VALUES
  (1, 'OW', 1, 1), (2, 'MB', 2, 1), (3, 'AD', 3, 2), (4, 'MB', 5, 1), (5, 'MB', 5, 2);"
pg_sync_ids users_membership
both_fail "unique_user_team" "unique_user_team" \
    "UNIQUE constraint failed: users_membership.user_id, users_membership.team_id" \
    "INSERT INTO users_membership (role, user_id, team_id) VALUES ('AD', 1, 1);"
both_fail "membership role CHECK (OW/AD/MB)" "users_membership_role_check" "$SQ_CHECK: users_membership_role_check" \
    "INSERT INTO users_membership (role, user_id, team_id) VALUES ('XX', 4, 1);"
both_fail "membership needs an existing user" "$PG_FK" "$SQ_FK" \
    "INSERT INTO users_membership (role, user_id, team_id) VALUES ('MB', 999, 1);"

both_ok "insert clusters and access list" "
INSERT INTO allocations_cluster (id, name, description) VALUES (1, 'gpu', 'GPU nodes');
INSERT INTO allocations_cluster (id, name, access_mode) VALUES (2, 'cpu', 'WL'), (3, 'old', 'BL');
INSERT INTO allocations_cluster_access_teams (id, cluster_id, team_id) VALUES (1, 2, 2), (2, 3, 1);"
pg_sync_ids allocations_cluster allocations_cluster_access_teams
both_eq "cluster defaults (enabled, access_mode OP)" "1|OP" \
    "SELECT CASE WHEN enabled THEN 1 ELSE 0 END, access_mode FROM allocations_cluster WHERE id = 1;"
both_fail "cluster access_mode CHECK" "allocations_cluster_access_mode_check" "$SQ_CHECK: allocations_cluster_access_mode_check" \
    "INSERT INTO allocations_cluster (name, access_mode) VALUES ('bad', 'XX');"
both_fail "cluster name unique" "allocations_cluster_name_key" "UNIQUE constraint failed: allocations_cluster.name" \
    "INSERT INTO allocations_cluster (name) VALUES ('gpu');"
both_fail "access list (cluster, team) unique" "allocations_cluster_access_teams_uniq" "UNIQUE constraint failed" \
    "INSERT INTO allocations_cluster_access_teams (cluster_id, team_id) VALUES (2, 2);"

both_ok "insert grants and publications" "
INSERT INTO research_products_grant (id, title, agency, amount, start_date, team_id) VALUES
  (1, 'Grant A', 'NSF', 1000.10, '2025-01-01', 1),
  (2, 'Grant B', 'NIH', -5, '2025-02-01', 2),
  (3, 'Grant C', 'NSF', 999999999999.99, '2025-03-01', 1);
INSERT INTO research_products_publication (id, title, doi, team_id) VALUES
  (1, 'Paper A', '10.1000/a', 1), (2, 'Paper B', NULL, 1), (3, 'Paper C', NULL, 2);"
pg_sync_ids research_products_grant research_products_publication
pg_eq "grant amount stored exactly" "1000.10|-5.00|999999999999.99" \
    "SELECT string_agg(amount::text, '|' ORDER BY id) FROM research_products_grant;"
sq_eq "grant amount stored as a number, 2-place text via printf" "1000.10|-5.00|999999999999.99" \
    "SELECT group_concat(printf('%.2f', amount), '|') FROM (SELECT amount FROM research_products_grant ORDER BY id);"
both_eq "grant amount compares numerically" "2" \
    "SELECT count(*) FROM research_products_grant WHERE amount > 100;"
both_fail "grant amount above 12 integer digits rejected" "numeric field overflow" "$SQ_CHECK" \
    "INSERT INTO research_products_grant (title, agency, amount, start_date, team_id) VALUES ('X', 'Y', 1000000000000, '2025-01-01', 1);"
sq_fail "grant amount must be numeric" "$SQ_CHECK" \
    "INSERT INTO research_products_grant (title, agency, amount, start_date, team_id) VALUES ('X', 'Y', 'abc', '2025-01-01', 1);"
both_fail "publication doi unique" "research_products_publication_doi_key" \
    "UNIQUE constraint failed: research_products_publication.doi" \
    "INSERT INTO research_products_publication (title, doi, team_id) VALUES ('Dup', '10.1000/a', 2);"
both_ok "several publications with NULL doi" \
    "INSERT INTO research_products_publication (id, title, doi, team_id) VALUES (4, 'Paper D', NULL, 1);"

both_ok "insert allocation requests" "
INSERT INTO allocations_allocationrequest (id, title, description, submitter_id, team_id) VALUES
  (1, 'Request one', 'Need GPUs', 2, 1);
INSERT INTO allocations_allocationrequest (id, title, description, status, active, expire, submitter_id, team_id) VALUES
  (2, 'Request two', 'Need CPUs', 'AP', '2025-01-01', '2025-12-31', 3, 2),
  (3, 'Request three', 'More', 'CR', NULL, NULL, 3, 2);"
pg_sync_ids allocations_allocationrequest
both_eq "request defaults (status PD, submitted set)" "PD|1" \
    "SELECT status, CASE WHEN submitted IS NOT NULL THEN 1 ELSE 0 END FROM allocations_allocationrequest WHERE id = 1;"
both_fail "request status CHECK (PD/AP/DC/CR)" "allocations_allocationrequest_status_check" \
    "$SQ_CHECK: allocations_allocationrequest_status_check" \
    "INSERT INTO allocations_allocationrequest (title, description, status, submitter_id, team_id) VALUES ('x', 'y', 'ZZ', 2, 1);"

both_ok "insert request M2M rows" "
INSERT INTO allocations_allocationrequest_assignees (id, allocationrequest_id, user_id) VALUES (1, 1, 1), (2, 1, 5), (3, 2, 5);
INSERT INTO allocations_allocationrequest_grants (id, allocationrequest_id, grant_id) VALUES (1, 1, 1), (2, 2, 1), (3, 2, 2);
INSERT INTO allocations_allocationrequest_publications (id, allocationrequest_id, publication_id) VALUES (1, 1, 1), (2, 2, 1);"
pg_sync_ids allocations_allocationrequest_assignees allocations_allocationrequest_grants allocations_allocationrequest_publications
both_fail "assignee pair unique" "allocations_allocationrequest_assignees_uniq" "UNIQUE constraint failed" \
    "INSERT INTO allocations_allocationrequest_assignees (allocationrequest_id, user_id) VALUES (1, 1);"

both_ok "insert reviews, allocations, attachments, comments" "
INSERT INTO allocations_allocationreview (id, status, request_id, reviewer_id) VALUES (1, 'AP', 1, 1), (2, 'CR', 2, 1);
INSERT INTO allocations_resourceallocation (id, requested, awarded, final, cluster_id, request_id) VALUES
  (1, 100, 50, NULL, 1, 1), (2, 2147483647, NULL, NULL, 2, 2), (3, 0, 0, 0, 2, 2);
INSERT INTO allocations_attachment (id, file, request_id) VALUES (1, 'allocations/hello.txt', 1);
INSERT INTO allocations_comment (id, content, user_id, request_id) VALUES (1, 'Looks good', 4, 1), (2, 'Thanks', 3, 2);"
pg_sync_ids allocations_allocationreview allocations_resourceallocation allocations_attachment allocations_comment
both_eq "attachment name defaults to '' and comment private to false" "|0" "
SELECT (SELECT name FROM allocations_attachment WHERE id = 1) || '|' ||
       (SELECT CASE WHEN private THEN 1 ELSE 0 END FROM allocations_comment WHERE id = 1);"
both_fail "review status CHECK (no PD)" "allocations_allocationreview_status_check" \
    "$SQ_CHECK: allocations_allocationreview_status_check" \
    "INSERT INTO allocations_allocationreview (status, request_id, reviewer_id) VALUES ('PD', 1, 1);"
both_fail "requested must be >= 0" "allocations_resourceallocation_requested_check" \
    "$SQ_CHECK: allocations_resourceallocation_requested_check" \
    "INSERT INTO allocations_resourceallocation (requested, cluster_id, request_id) VALUES (-1, 1, 1);"
both_fail "awarded must be >= 0" "allocations_resourceallocation_awarded_check" \
    "$SQ_CHECK: allocations_resourceallocation_awarded_check" \
    "INSERT INTO allocations_resourceallocation (requested, awarded, cluster_id, request_id) VALUES (1, -1, 1, 1);"
both_fail "final must be >= 0" "allocations_resourceallocation_final_check" \
    "$SQ_CHECK: allocations_resourceallocation_final_check" \
    "INSERT INTO allocations_resourceallocation (requested, final, cluster_id, request_id) VALUES (1, -1, 1, 1);"
both_fail "requested above 2147483647 rejected" "out of range" "$SQ_CHECK: allocations_resourceallocation_requested_check" \
    "INSERT INTO allocations_resourceallocation (requested, cluster_id, request_id) VALUES (2147483648, 1, 1);"

meta='{"days_to_expire":14,"request_id":7}'
both_ok "insert notifications" "
INSERT INTO notifications_notification (id, subject, message_text, message_html, metadata, notification_type, user_id) VALUES
  (1, 'Expiring', 'text', '<p>html</p>', '$meta', 'RE', 1),
  (2, 'Hello', 'text', '<p>html</p>', NULL, 'GM', 1),
  (3, 'Hello again', 'text', '<p>html</p>', NULL, 'GM', 1),
  (4, 'Expiring', 'text', '<p>html</p>', '$meta', 'RE', 2),
  (5, 'Expired', 'text', '<p>html</p>', '$meta', 'RD', 1),
  (6, 'Expiring', 'text', '<p>html</p>', '$meta', 'RE', 5);"
pg_sync_ids notifications_notification
both_fail "unique_user_type_metadata rejects a duplicate" "unique_user_type_metadata" \
    "UNIQUE constraint failed: notifications_notification.user_id, notifications_notification.notification_type, notifications_notification.metadata" \
    "INSERT INTO notifications_notification (subject, message_text, message_html, metadata, notification_type, user_id)
     VALUES ('Again', 't', 'h', '$meta', 'RE', 1);"
pg_fail "unique_user_type_metadata compares JSON values, not text" "unique_user_type_metadata" \
    "INSERT INTO notifications_notification (subject, message_text, message_html, metadata, notification_type, user_id)
     VALUES ('Again', 't', 'h', '{\"request_id\": 7, \"days_to_expire\": 14}', 'RE', 1);"
both_eq "notification defaults (read false, time set)" "0|1" \
    "SELECT CASE WHEN read THEN 1 ELSE 0 END, CASE WHEN time IS NOT NULL THEN 1 ELSE 0 END FROM notifications_notification WHERE id = 1;"
both_fail "notification_type CHECK (GM/RE/RD)" "notifications_notification_type_check" \
    "$SQ_CHECK: notifications_notification_type_check" \
    "INSERT INTO notifications_notification (subject, message_text, message_html, notification_type, user_id) VALUES ('s', 't', 'h', 'XX', 1);"
sq_fail "notification metadata must be JSON" "$SQ_CHECK" \
    "INSERT INTO notifications_notification (subject, message_text, message_html, metadata, notification_type, user_id) VALUES ('s', 't', 'h', '{oops', 'GM', 1);"
pg_eq "metadata queryable as JSON" "1" \
    "SELECT count(*) FROM notifications_notification WHERE user_id = 1 AND notification_type = 'RE' AND (metadata->>'request_id')::bigint = 7;"
sq_eq "metadata queryable as JSON" "1" \
    "SELECT count(*) FROM notifications_notification WHERE user_id = 1 AND notification_type = 'RE' AND json_extract(metadata, '\$.request_id') = 7;"

both_ok "insert preferences" "
INSERT INTO notifications_preference (id, user_id) VALUES (1, 1), (2, 5);"
pg_sync_ids notifications_preference
both_eq "preference defaults" "[30, 14]|1" \
    "SELECT request_expiry_thresholds, CASE WHEN notify_on_expiration THEN 1 ELSE 0 END FROM notifications_preference WHERE id = 1;"
both_fail "one preference per user" "notifications_preference_user_id_key" \
    "UNIQUE constraint failed: notifications_preference.user_id" \
    "INSERT INTO notifications_preference (user_id) VALUES (1);"

both_ok "insert log rows (ids generated)" "
INSERT INTO logging_requestlog (method, endpoint, response_code, remote_address, cid, user_id) VALUES
  ('GET', '/users/users/?_limit=5', 200, '10.0.0.1', '5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1', 5),
  ('POST', '/authentication/login/', 401, NULL, NULL, NULL);
INSERT INTO auditlog_logentry (content_type, object_pk, object_id, object_repr, action, changes, actor_id, actor_email, cid, remote_addr, remote_port)
  VALUES ('users | Team', '1', 1, 'Team #1 - Team One', 0, '{\"name\": [\"None\", \"Team One\"]}', 5, 'eve@example.org',
          '5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1', '10.0.0.1', 443);
INSERT INTO django_celery_results_taskresult (task_id, task_name, task_args, task_kwargs, status, worker, result)
  VALUES ('0b8a2c4e-6f0e-4d3c-9a4e-1f2b3c4d5e6f', 'apps.logging.tasks.clear_log_records', '[]', '{}', 'SUCCESS', 'keystone@host', 'null');"
both_eq "audit changes_text defaults to ''" "0" "SELECT length(changes_text) FROM auditlog_logentry;"
both_fail "audit action CHECK (0-3)" "auditlog_logentry_action_check" "$SQ_CHECK: auditlog_logentry_action_check" \
    "INSERT INTO auditlog_logentry (content_type, object_pk, object_repr, action) VALUES ('users | User', '1', 'x', 4);"
both_fail "audit content_type is '<app> | <Model>'" "auditlog_logentry_content_type_check" \
    "$SQ_CHECK: auditlog_logentry_content_type_check" \
    "INSERT INTO auditlog_logentry (content_type, object_pk, object_repr, action) VALUES ('User', '1', 'x', 0);"
both_fail "task status CHECK" "django_celery_results_taskresult_status_check" \
    "$SQ_CHECK: django_celery_results_taskresult_status_check" \
    "INSERT INTO django_celery_results_taskresult (task_id, status) VALUES ('t-bad', 'BOGUS');"
both_fail "task_id unique" "django_celery_results_taskresult_task_id_key" \
    "UNIQUE constraint failed: django_celery_results_taskresult.task_id" \
    "INSERT INTO django_celery_results_taskresult (task_id, status) VALUES ('0b8a2c4e-6f0e-4d3c-9a4e-1f2b3c4d5e6f', 'STARTED');"
both_eq "task result defaults (content type, encoding, dates)" "application/json|utf-8|1" \
    "SELECT content_type, content_encoding, CASE WHEN date_created IS NOT NULL AND date_done IS NOT NULL AND date_started IS NULL THEN 1 ELSE 0 END FROM django_celery_results_taskresult;"
both_fail "request log cid longer than 36 rejected" "value too long" "$SQ_CHECK" \
    "INSERT INTO logging_requestlog (method, endpoint, response_code, cid) VALUES ('GET', '/', 200, '{5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1}');"

# Feed view (operations.md §3.6).
both_ok "SELECT * FROM logging_feedentry" "SELECT * FROM logging_feedentry;"
both_eq "feed rows per record_type" "audit|1
request|2
task|1" "SELECT record_type, count(*) FROM logging_feedentry GROUP BY record_type ORDER BY record_type;"
both_eq "feed columns for a request record" "r1|1|/users/users/?_limit=5|5|5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1|200" \
    "SELECT id, record_id, summary, user_id, cid, status FROM logging_feedentry WHERE record_type = 'request' AND record_id = 1;"
both_eq "feed columns for a task record" "t1|apps.logging.tasks.clear_log_records|||SUCCESS" \
    "SELECT id, summary, user_id, cid, status FROM logging_feedentry WHERE record_type = 'task';"
both_eq "feed columns for an audit record" "a1|Team #1 - Team One|5|5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1|" \
    "SELECT id, summary, user_id, cid, status FROM logging_feedentry WHERE record_type = 'audit';"
both_eq "feed filters by cid and orders by timestamp" "2" \
    "SELECT count(*) FROM (SELECT * FROM logging_feedentry WHERE cid = '5f0c6ad2-7a55-4f59-9b1b-3bde3a2fe4f1' ORDER BY timestamp DESC LIMIT 10) f;"

# Keystone support tables.
both_ok "insert keystone support rows" "
INSERT INTO keystone_api_token (id, user_id, name, key_prefix, key_hash) VALUES
  (1, 5, 'ci', 'ks_abcd', '$(printf 'a%.0s' $(seq 64))'),
  (2, 1, '', 'ks_efgh', '$(printf 'b%.0s' $(seq 64))');
INSERT INTO keystone_revoked_session (jti, expires_at) VALUES ('jti-1', '2030-01-01T00:00:00+00:00');
INSERT INTO keystone_worker_heartbeat (worker, role, started_at, seen_at)
  VALUES ('keystone@host:1234', 'worker', '2025-01-01T00:00:00+00:00', '2025-01-01T00:00:05.123456+00:00');
INSERT INTO keystone_beat_state (entry, last_run_at) VALUES ('apps.logging.tasks.clear_log_records', '2025-01-01T00:00:00+00:00');"
pg_sync_ids keystone_api_token
both_fail "api token key_hash unique" "keystone_api_token_key_hash_key" \
    "UNIQUE constraint failed: keystone_api_token.key_hash" \
    "INSERT INTO keystone_api_token (user_id, key_prefix, key_hash) VALUES (1, 'ks_x', '$(printf 'a%.0s' $(seq 64))');"
both_fail "api token key_prefix at most 12 characters" "value too long" "$SQ_CHECK" \
    "INSERT INTO keystone_api_token (user_id, key_prefix, key_hash) VALUES (1, 'ks_0123456789', 'c');"
both_fail "revoked session jti is the primary key" "keystone_revoked_session_pkey" \
    "UNIQUE constraint failed: keystone_revoked_session.jti" \
    "INSERT INTO keystone_revoked_session (jti, expires_at) VALUES ('jti-1', '2030-01-01T00:00:00+00:00');"

# SQLite storage-format guards (PostgreSQL enforces these through its types).
sq_ok   "timestamp in sqlx DateTime<Utc> form accepted" \
    "UPDATE users_user SET last_login = '2025-01-31T12:00:00.123456789+00:00' WHERE id = 4;"
sq_fail "timestamp with Z suffix rejected (breaks text ordering)" "$SQ_CHECK" \
    "UPDATE users_user SET last_login = '2025-01-31T12:00:00Z' WHERE id = 4;"
sq_fail "naive timestamp rejected" "$SQ_CHECK" \
    "UPDATE users_user SET last_login = '2025-01-31 12:00:00' WHERE id = 4;"
sq_fail "date must be YYYY-MM-DD" "$SQ_CHECK" \
    "UPDATE allocations_allocationrequest SET expire = '2025-12-31T00:00:00+00:00' WHERE id = 2;"
sq_fail "boolean must be 0/1" "$SQ_CHECK" "UPDATE users_user SET is_staff = 2 WHERE id = 4;"
sq_eq   "SQLite defaults use the canonical timestamp form" "1" \
    "SELECT count(*) FROM users_user WHERE id = 1 AND date_joined GLOB '????-??-??T??:??:??.???+00:00';"

# --- deletion behaviour (domain.md §3.9) ------------------------------------------------
both_fail "deleting the submitter of a request is blocked (PROTECT)" "$PG_FK" "$SQ_FK" \
    "DELETE FROM users_user WHERE id = 2;"
both_fail "deleting the reviewer of a review is blocked (PROTECT)" "$PG_FK" "$SQ_FK" \
    "DELETE FROM users_user WHERE id = 1;"
both_fail "deleting the author of a comment is blocked (PROTECT)" "$PG_FK" "$SQ_FK" \
    "DELETE FROM users_user WHERE id = 4;"
both_fail "deleting a cluster with resource allocations is blocked (PROTECT)" "$PG_FK" "$SQ_FK" \
    "DELETE FROM allocations_cluster WHERE id = 1;"
both_eq "blocked deletes changed nothing" "5|1" \
    "SELECT (SELECT count(*) FROM users_user) || '|' || (SELECT count(*) FROM allocations_resourceallocation WHERE cluster_id = 1);"

both_ok "delete a user without protected references" "DELETE FROM users_user WHERE id = 5;"
both_eq "user delete cascaded (memberships, notifications, preference, token, assignees)" "0|0|0|0|0" "
SELECT (SELECT count(*) FROM users_membership WHERE user_id = 5) || '|' ||
       (SELECT count(*) FROM notifications_notification WHERE user_id = 5) || '|' ||
       (SELECT count(*) FROM notifications_preference WHERE user_id = 5) || '|' ||
       (SELECT count(*) FROM keystone_api_token WHERE user_id = 5) || '|' ||
       (SELECT count(*) FROM allocations_allocationrequest_assignees WHERE user_id = 5);"
both_eq "user delete kept log rows, nulling user/actor" "2|0|1|0" "
SELECT (SELECT count(*) FROM logging_requestlog) || '|' ||
       (SELECT count(*) FROM logging_requestlog WHERE user_id IS NOT NULL) || '|' ||
       (SELECT count(*) FROM auditlog_logentry WHERE actor_email = 'eve@example.org') || '|' ||
       (SELECT count(*) FROM auditlog_logentry WHERE actor_id IS NOT NULL);"

both_ok "delete a publication" "DELETE FROM research_products_publication WHERE id = 1;"
both_eq "publication delete removed request links only" "0|2" "
SELECT (SELECT count(*) FROM allocations_allocationrequest_publications) || '|' ||
       (SELECT count(*) FROM allocations_allocationrequest WHERE id IN (1, 2));"
both_ok "delete a grant" "DELETE FROM research_products_grant WHERE id = 2;"
both_eq "grant delete removed its request links only" "2" \
    "SELECT count(*) FROM allocations_allocationrequest_grants;"

both_ok "delete allocation request 1" "DELETE FROM allocations_allocationrequest WHERE id = 1;"
both_eq "request delete cascaded (allocations, reviews, attachments, comments, M2M)" "0|0|0|0|0|0" "
SELECT (SELECT count(*) FROM allocations_resourceallocation WHERE request_id = 1) || '|' ||
       (SELECT count(*) FROM allocations_allocationreview WHERE request_id = 1) || '|' ||
       (SELECT count(*) FROM allocations_attachment WHERE request_id = 1) || '|' ||
       (SELECT count(*) FROM allocations_comment WHERE request_id = 1) || '|' ||
       (SELECT count(*) FROM allocations_allocationrequest_assignees WHERE allocationrequest_id = 1) || '|' ||
       (SELECT count(*) FROM allocations_allocationrequest_grants WHERE allocationrequest_id = 1);"
both_ok "submitter and comment author deletable once their rows are gone" "DELETE FROM users_user WHERE id IN (2, 4);"
both_ok "cluster deletable once its allocations are gone" "DELETE FROM allocations_cluster WHERE id = 1;"

both_ok "delete team 2" "DELETE FROM users_team WHERE id = 2;"
both_eq "team delete cascaded (memberships, requests and below, grants, publications, access rows)" "0|0|0|0|0|0|0|0" "
SELECT (SELECT count(*) FROM users_membership WHERE team_id = 2) || '|' ||
       (SELECT count(*) FROM allocations_allocationrequest WHERE team_id = 2) || '|' ||
       (SELECT count(*) FROM allocations_resourceallocation) || '|' ||
       (SELECT count(*) FROM allocations_allocationreview) || '|' ||
       (SELECT count(*) FROM allocations_comment) || '|' ||
       (SELECT count(*) FROM research_products_grant WHERE team_id = 2) || '|' ||
       (SELECT count(*) FROM research_products_publication WHERE team_id = 2) || '|' ||
       (SELECT count(*) FROM allocations_cluster_access_teams WHERE team_id = 2);"
both_eq "team delete left clusters and other teams alone" "2|2|1" "
SELECT (SELECT count(*) FROM allocations_cluster) || '|' ||
       (SELECT count(*) FROM users_team) || '|' ||
       (SELECT count(*) FROM allocations_cluster_access_teams);"
both_ok "delete a cluster without allocations" "DELETE FROM allocations_cluster WHERE id = 3;"
both_eq "cluster delete cascaded its access-list rows" "0" "SELECT count(*) FROM allocations_cluster_access_teams;"
both_ok "reviewer deletable once the reviews are gone" "DELETE FROM users_user WHERE id = 1;"
sq_eq "no dangling references in SQLite" "" "PRAGMA foreign_key_check;"

# --- summary -----------------------------------------------------------------------------
total=$((passed + failed))
if [ "$failed" -eq 0 ]; then
    printf 'check-schema: OK: %d/%d checks passed (PostgreSQL %s, SQLite %s)\n' "$passed" "$total" \
        "$(pg_run 'SHOW server_version' | cut -d' ' -f1)" "$("$SQLITE3" --version | cut -d' ' -f1)"
    exit 0
fi
printf 'check-schema: FAILED: %d of %d checks failed\n' "$failed" "$total"
exit 1
