-- Keystone initial schema (SQLite 3.40+).
--
-- Twin of migrations/postgres/0001_initial.sql: same tables, columns, NULL-ability,
-- defaults, constraints, foreign-key actions, indexes and feed view. Keep both in step.
--
-- SQLite storage conventions (see migrations/README.md):
--   * ids                  INTEGER PRIMARY KEY AUTOINCREMENT
--   * timestamps           TEXT, UTC RFC 3339 with a `T` and a `+00:00` suffix, exactly
--                          what sqlx writes for chrono::DateTime<Utc>
--                          (`2025-01-31T12:00:00.123456+00:00`); enforced by CHECK so
--                          text order = time order
--   * dates                TEXT `YYYY-MM-DD` (chrono::NaiveDate); enforced by CHECK
--   * booleans             BOOLEAN holding 0/1; enforced by CHECK
--   * varchar(n)           TEXT with CHECK (length(col) <= n)
--   * small integers       INTEGER with a typeof check where a range is stated
--   * grant amount         NUMERIC (stored as an integer or real number; see README)
--   * JSON                 TEXT
-- Foreign keys are enforced only on connections with `PRAGMA foreign_keys = ON`
-- (sqlx's SqliteConnectOptions turns it on by default).

---------------------------------------------------------------------------
-- users app
---------------------------------------------------------------------------

CREATE TABLE users_user (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    password     TEXT    NOT NULL CHECK (length(password) <= 128),
    last_login   TEXT    NULL CHECK (length(last_login) BETWEEN 25 AND 35 AND last_login GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    is_superuser BOOLEAN NOT NULL DEFAULT 0 CHECK (is_superuser IN (0, 1)),
    username     TEXT    NOT NULL CHECK (length(username) <= 150),
    first_name   TEXT    NULL CHECK (length(first_name) <= 150),
    last_name    TEXT    NULL CHECK (length(last_name) <= 150),
    email        TEXT    NULL CHECK (length(email) <= 254),
    is_staff     BOOLEAN NOT NULL DEFAULT 0 CHECK (is_staff IN (0, 1)),
    is_active    BOOLEAN NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    date_joined  TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                 CHECK (length(date_joined) BETWEEN 25 AND 35 AND date_joined GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    department   TEXT    NULL CHECK (length(department) <= 1000),
    role         TEXT    NULL CHECK (length(role) <= 1000),
    is_ldap_user BOOLEAN NOT NULL DEFAULT 0 CHECK (is_ldap_user IN (0, 1)),
    CONSTRAINT users_user_username_key UNIQUE (username)
);
-- `username` is indexed by its unique constraint.
CREATE INDEX users_user_first_name_idx            ON users_user (first_name);
CREATE INDEX users_user_last_name_first_name_idx  ON users_user (last_name, first_name);
CREATE INDEX users_user_email_idx                 ON users_user (email);
CREATE INDEX users_user_is_staff_idx              ON users_user (is_staff);
CREATE INDEX users_user_is_ldap_user_idx          ON users_user (is_ldap_user);
CREATE INDEX users_user_date_joined_idx           ON users_user (date_joined);
CREATE INDEX users_user_last_login_idx            ON users_user (last_login);
CREATE INDEX users_user_is_active_is_staff_idx    ON users_user (is_active, is_staff);

CREATE TABLE users_team (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    name      TEXT    NOT NULL CHECK (length(name) <= 255),
    slug      TEXT    NOT NULL CHECK (length(slug) <= 255),
    is_active BOOLEAN NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    CONSTRAINT users_team_name_key UNIQUE (name),
    CONSTRAINT users_team_slug_key UNIQUE (slug)
);
CREATE INDEX users_team_is_active_idx      ON users_team (is_active);
CREATE INDEX users_team_slug_is_active_idx ON users_team (slug, is_active);

CREATE TABLE users_membership (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    role    TEXT    NOT NULL,
    user_id INTEGER NOT NULL REFERENCES users_user (id) ON DELETE CASCADE,
    team_id INTEGER NOT NULL REFERENCES users_team (id) ON DELETE CASCADE,
    CONSTRAINT users_membership_role_check CHECK (role IN ('OW', 'AD', 'MB')),
    CONSTRAINT unique_user_team UNIQUE (user_id, team_id)
);
CREATE INDEX users_membership_user_id_role_idx         ON users_membership (user_id, role);
CREATE INDEX users_membership_team_id_role_idx         ON users_membership (team_id, role);
CREATE INDEX users_membership_team_id_user_id_role_idx ON users_membership (team_id, user_id, role);

---------------------------------------------------------------------------
-- research_products app (before allocations: requests link to grants/publications)
---------------------------------------------------------------------------

CREATE TABLE research_products_grant (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    title        TEXT    NOT NULL CHECK (length(title) <= 250),
    agency       TEXT    NOT NULL CHECK (length(agency) <= 100),
    pi           TEXT    NULL CHECK (length(pi) <= 100),
    -- numeric(14,2) in PostgreSQL: negative allowed, at most 12 integer digits.
    amount       NUMERIC NOT NULL CHECK (typeof(amount) IN ('integer', 'real')
                                         AND amount > -1000000000000 AND amount < 1000000000000),
    grant_number TEXT    NULL CHECK (length(grant_number) <= 250),
    start_date   TEXT    NOT NULL CHECK (start_date GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    end_date     TEXT    NULL CHECK (end_date GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    description  TEXT    NULL,
    team_id      INTEGER NOT NULL REFERENCES users_team (id) ON DELETE CASCADE
);
CREATE INDEX research_products_grant_title_idx        ON research_products_grant (title);
CREATE INDEX research_products_grant_agency_idx       ON research_products_grant (agency);
CREATE INDEX research_products_grant_grant_number_idx ON research_products_grant (grant_number);
CREATE INDEX research_products_grant_start_date_idx   ON research_products_grant (start_date);
CREATE INDEX research_products_grant_end_date_idx     ON research_products_grant (end_date);
CREATE INDEX research_products_grant_team_id_idx      ON research_products_grant (team_id);
CREATE INDEX research_products_grant_team_dates_idx
    ON research_products_grant (team_id, start_date, end_date);
CREATE INDEX research_products_grant_agency_dates_idx
    ON research_products_grant (agency, start_date, end_date);
CREATE INDEX research_products_grant_team_agency_dates_idx
    ON research_products_grant (team_id, agency, start_date, end_date);

CREATE TABLE research_products_publication (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    title     TEXT    NOT NULL CHECK (length(title) <= 250),
    abstract  TEXT    NULL,
    published TEXT    NULL CHECK (published GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    submitted TEXT    NULL CHECK (submitted GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    journal   TEXT    NULL CHECK (length(journal) <= 100),
    doi       TEXT    NULL CHECK (length(doi) <= 50),
    volume    TEXT    NULL CHECK (length(volume) <= 20),
    issue     TEXT    NULL CHECK (length(issue) <= 20),
    team_id   INTEGER NOT NULL REFERENCES users_team (id) ON DELETE CASCADE,
    CONSTRAINT research_products_publication_doi_key UNIQUE (doi)
);
-- `doi` is indexed by its unique constraint.
CREATE INDEX research_products_publication_title_idx     ON research_products_publication (title);
CREATE INDEX research_products_publication_published_idx ON research_products_publication (published);
CREATE INDEX research_products_publication_submitted_idx ON research_products_publication (submitted);
CREATE INDEX research_products_publication_journal_idx   ON research_products_publication (journal);
CREATE INDEX research_products_publication_team_id_idx   ON research_products_publication (team_id);
CREATE INDEX research_products_publication_team_journal_idx
    ON research_products_publication (team_id, journal);
CREATE INDEX research_products_publication_team_published_idx
    ON research_products_publication (team_id, published);
CREATE INDEX research_products_publication_team_submitted_idx
    ON research_products_publication (team_id, submitted);

---------------------------------------------------------------------------
-- allocations app
---------------------------------------------------------------------------

CREATE TABLE allocations_cluster (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL CHECK (length(name) <= 50),
    description TEXT    NULL,  -- max 150 characters, enforced by the API
    enabled     BOOLEAN NOT NULL DEFAULT 1 CHECK (enabled IN (0, 1)),
    access_mode TEXT    NOT NULL DEFAULT 'OP',
    CONSTRAINT allocations_cluster_name_key UNIQUE (name),
    CONSTRAINT allocations_cluster_access_mode_check CHECK (access_mode IN ('WL', 'BL', 'OP'))
);
-- `name` is indexed by its unique constraint.

-- Cluster.access_teams (M2M, Django auto-created table).
CREATE TABLE allocations_cluster_access_teams (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    cluster_id INTEGER NOT NULL REFERENCES allocations_cluster (id) ON DELETE CASCADE,
    team_id    INTEGER NOT NULL REFERENCES users_team (id) ON DELETE CASCADE,
    CONSTRAINT allocations_cluster_access_teams_uniq UNIQUE (cluster_id, team_id)
);
CREATE INDEX allocations_cluster_access_teams_team_id_idx
    ON allocations_cluster_access_teams (team_id);

CREATE TABLE allocations_allocationrequest (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    title        TEXT    NOT NULL CHECK (length(title) <= 250),
    description  TEXT    NOT NULL,  -- max 20 000 characters, enforced by the API
    submitted    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                 CHECK (length(submitted) BETWEEN 25 AND 35 AND submitted GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    active       TEXT    NULL CHECK (active GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    expire       TEXT    NULL CHECK (expire GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]'),
    status       TEXT    NOT NULL DEFAULT 'PD',
    submitter_id INTEGER NOT NULL REFERENCES users_user (id) ON DELETE RESTRICT,
    team_id      INTEGER NOT NULL REFERENCES users_team (id) ON DELETE CASCADE,
    CONSTRAINT allocations_allocationrequest_status_check CHECK (status IN ('PD', 'AP', 'DC', 'CR'))
);
CREATE INDEX allocations_allocationrequest_status_idx       ON allocations_allocationrequest (status);
CREATE INDEX allocations_allocationrequest_submitted_idx    ON allocations_allocationrequest (submitted);
CREATE INDEX allocations_allocationrequest_active_idx       ON allocations_allocationrequest (active);
CREATE INDEX allocations_allocationrequest_expire_idx       ON allocations_allocationrequest (expire);
CREATE INDEX allocations_allocationrequest_submitter_id_idx ON allocations_allocationrequest (submitter_id);
CREATE INDEX allocations_allocationrequest_team_status_idx
    ON allocations_allocationrequest (team_id, status);
CREATE INDEX allocations_allocationrequest_team_submitter_status_idx
    ON allocations_allocationrequest (team_id, submitter_id, status);
CREATE INDEX allocations_allocationrequest_team_active_expire_idx
    ON allocations_allocationrequest (team_id, active, expire);
CREATE INDEX allocations_allocationrequest_team_expire_idx
    ON allocations_allocationrequest (team_id, expire);
CREATE INDEX allocations_allocationrequest_submitter_status_idx
    ON allocations_allocationrequest (submitter_id, status);

-- AllocationRequest.assignees (M2M -> users_user).
CREATE TABLE allocations_allocationrequest_assignees (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    allocationrequest_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE,
    user_id              INTEGER NOT NULL REFERENCES users_user (id) ON DELETE CASCADE,
    CONSTRAINT allocations_allocationrequest_assignees_uniq UNIQUE (allocationrequest_id, user_id)
);
CREATE INDEX allocations_allocationrequest_assignees_user_id_idx
    ON allocations_allocationrequest_assignees (user_id);

-- AllocationRequest.grants (M2M -> research_products_grant).
CREATE TABLE allocations_allocationrequest_grants (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    allocationrequest_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE,
    grant_id             INTEGER NOT NULL REFERENCES research_products_grant (id) ON DELETE CASCADE,
    CONSTRAINT allocations_allocationrequest_grants_uniq UNIQUE (allocationrequest_id, grant_id)
);
CREATE INDEX allocations_allocationrequest_grants_grant_id_idx
    ON allocations_allocationrequest_grants (grant_id);

-- AllocationRequest.publications (M2M -> research_products_publication).
CREATE TABLE allocations_allocationrequest_publications (
    id                   INTEGER PRIMARY KEY AUTOINCREMENT,
    allocationrequest_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE,
    publication_id       INTEGER NOT NULL REFERENCES research_products_publication (id) ON DELETE CASCADE,
    CONSTRAINT allocations_allocationrequest_publications_uniq UNIQUE (allocationrequest_id, publication_id)
);
CREATE INDEX allocations_allocationrequest_publications_publication_id_idx
    ON allocations_allocationrequest_publications (publication_id);

CREATE TABLE allocations_allocationreview (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    status      TEXT    NOT NULL,
    submitted   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                CHECK (length(submitted) BETWEEN 25 AND 35 AND submitted GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    request_id  INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE,
    reviewer_id INTEGER NOT NULL REFERENCES users_user (id) ON DELETE RESTRICT,
    CONSTRAINT allocations_allocationreview_status_check CHECK (status IN ('AP', 'DC', 'CR'))
);
CREATE INDEX allocations_allocationreview_status_idx      ON allocations_allocationreview (status);
CREATE INDEX allocations_allocationreview_submitted_idx   ON allocations_allocationreview (submitted);
CREATE INDEX allocations_allocationreview_request_id_idx  ON allocations_allocationreview (request_id);
CREATE INDEX allocations_allocationreview_reviewer_id_idx ON allocations_allocationreview (reviewer_id);

-- requested/awarded/final: 32-bit non-negative integers (PostgreSQL INTEGER range).
CREATE TABLE allocations_resourceallocation (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    requested  INTEGER NOT NULL,
    awarded    INTEGER NULL,
    final      INTEGER NULL,  -- NULL = not yet finalised by the Slurm limit job
    cluster_id INTEGER NOT NULL REFERENCES allocations_cluster (id) ON DELETE RESTRICT,
    request_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE,
    CONSTRAINT allocations_resourceallocation_requested_check
        CHECK (typeof(requested) = 'integer' AND requested BETWEEN 0 AND 2147483647),
    CONSTRAINT allocations_resourceallocation_awarded_check
        CHECK (awarded IS NULL OR (typeof(awarded) = 'integer' AND awarded BETWEEN 0 AND 2147483647)),
    CONSTRAINT allocations_resourceallocation_final_check
        CHECK (final IS NULL OR (typeof(final) = 'integer' AND final BETWEEN 0 AND 2147483647))
);
-- No uniqueness on (request, cluster).
CREATE INDEX allocations_resourceallocation_request_id_idx
    ON allocations_resourceallocation (request_id);
CREATE INDEX allocations_resourceallocation_cluster_request_idx
    ON allocations_resourceallocation (cluster_id, request_id);

CREATE TABLE allocations_attachment (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    file       TEXT    NOT NULL CHECK (length(file) <= 100),
    name       TEXT    NOT NULL DEFAULT '' CHECK (length(name) <= 250),
    uploaded   TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
               CHECK (length(uploaded) BETWEEN 25 AND 35 AND uploaded GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    request_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE
);
CREATE INDEX allocations_attachment_uploaded_idx   ON allocations_attachment (uploaded);
CREATE INDEX allocations_attachment_request_id_idx ON allocations_attachment (request_id);

CREATE TABLE allocations_comment (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    content    TEXT    NOT NULL,  -- max 2 000 characters, enforced by the API
    created    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
               CHECK (length(created) BETWEEN 25 AND 35 AND created GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    private    BOOLEAN NOT NULL DEFAULT 0 CHECK (private IN (0, 1)),
    user_id    INTEGER NOT NULL REFERENCES users_user (id) ON DELETE RESTRICT,
    request_id INTEGER NOT NULL REFERENCES allocations_allocationrequest (id) ON DELETE CASCADE
);
CREATE INDEX allocations_comment_created_idx    ON allocations_comment (created);
CREATE INDEX allocations_comment_request_id_idx ON allocations_comment (request_id);
CREATE INDEX allocations_comment_user_request_created_idx
    ON allocations_comment (user_id, request_id, created);

---------------------------------------------------------------------------
-- notifications app
---------------------------------------------------------------------------

-- metadata is compared as text here (JSONB in PostgreSQL): write it in canonical
-- form (compact serde_json, keys sorted) so equal values collide.
CREATE TABLE notifications_notification (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    time              TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                      CHECK (length(time) BETWEEN 25 AND 35 AND time GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    read              BOOLEAN NOT NULL DEFAULT 0 CHECK (read IN (0, 1)),
    subject           TEXT    NOT NULL,
    message_text      TEXT    NOT NULL,
    message_html      TEXT    NOT NULL,
    metadata          TEXT    NULL CHECK (metadata IS NULL OR json_valid(metadata)),
    notification_type TEXT    NOT NULL,
    user_id           INTEGER NOT NULL REFERENCES users_user (id) ON DELETE CASCADE,
    CONSTRAINT notifications_notification_type_check CHECK (notification_type IN ('GM', 'RE', 'RD')),
    -- NULL metadata never collides (NULLs are distinct in SQLite unique constraints).
    CONSTRAINT unique_user_type_metadata UNIQUE (user_id, notification_type, metadata)
);
CREATE INDEX notifications_notification_time_idx              ON notifications_notification (time);
CREATE INDEX notifications_notification_notification_type_idx ON notifications_notification (notification_type);
CREATE INDEX notifications_notification_user_id_idx           ON notifications_notification (user_id);
CREATE INDEX notifications_notification_user_read_type_idx
    ON notifications_notification (user_id, read, notification_type);
CREATE INDEX notifications_notification_user_time_type_idx
    ON notifications_notification (user_id, time, notification_type);

CREATE TABLE notifications_preference (
    id                        INTEGER PRIMARY KEY AUTOINCREMENT,
    request_expiry_thresholds TEXT    NOT NULL DEFAULT '[30, 14]',  -- any JSON value
    notify_on_expiration      BOOLEAN NOT NULL DEFAULT 1 CHECK (notify_on_expiration IN (0, 1)),
    user_id                   INTEGER NOT NULL REFERENCES users_user (id) ON DELETE CASCADE,
    CONSTRAINT notifications_preference_user_id_key UNIQUE (user_id)
);
-- `user_id` is indexed by its unique constraint.

---------------------------------------------------------------------------
-- logging: request log, audit log, task results, feed view
---------------------------------------------------------------------------

CREATE TABLE logging_requestlog (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    method         TEXT    NOT NULL CHECK (length(method) <= 10),
    endpoint       TEXT    NOT NULL CHECK (length(endpoint) <= 2048),
    response_code  INTEGER NOT NULL,
    remote_address TEXT    NULL CHECK (length(remote_address) <= 40),
    timestamp      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                   CHECK (length(timestamp) BETWEEN 25 AND 35 AND timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    cid            TEXT    NULL CHECK (length(cid) <= 36),
    user_id        INTEGER NULL REFERENCES users_user (id) ON DELETE SET NULL,
    CONSTRAINT logging_requestlog_response_code_check
        CHECK (typeof(response_code) = 'integer' AND response_code BETWEEN 0 AND 2147483647)
);
CREATE INDEX logging_requestlog_timestamp_idx          ON logging_requestlog (timestamp);
CREATE INDEX logging_requestlog_method_idx             ON logging_requestlog (method);
CREATE INDEX logging_requestlog_cid_timestamp_idx      ON logging_requestlog (cid, timestamp);
CREATE INDEX logging_requestlog_user_timestamp_idx     ON logging_requestlog (user_id, timestamp);
CREATE INDEX logging_requestlog_endpoint_timestamp_idx ON logging_requestlog (endpoint, timestamp);
CREATE INDEX logging_requestlog_remote_address_timestamp_idx
    ON logging_requestlog (remote_address, timestamp);
CREATE INDEX logging_requestlog_response_code_timestamp_idx
    ON logging_requestlog (response_code, timestamp);

-- django-auditlog LogEntry. `content_type` is the rendered record name
-- (`users | User`, `allocations | AllocationRequest`, ...) instead of a FK
-- to django_content_type; see migrations/README.md.
CREATE TABLE auditlog_logentry (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    content_type    TEXT    NOT NULL CHECK (length(content_type) <= 100),
    object_pk       TEXT    NOT NULL CHECK (length(object_pk) <= 255),
    object_id       INTEGER NULL,
    object_repr     TEXT    NOT NULL,
    serialized_data TEXT    NULL,               -- JSON text; always NULL in Keystone
    action          INTEGER NOT NULL,           -- 0 create, 1 update, 2 delete, 3 access
    changes         TEXT    NULL,               -- JSON text {"field": ["old", "new"]}
    changes_text    TEXT    NOT NULL DEFAULT '',
    actor_id        INTEGER NULL REFERENCES users_user (id) ON DELETE SET NULL,
    actor_email     TEXT    NULL CHECK (length(actor_email) <= 254),
    remote_addr     TEXT    NULL CHECK (length(remote_addr) <= 45),  -- valid IP text or NULL
    remote_port     INTEGER NULL,
    timestamp       TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                    CHECK (length(timestamp) BETWEEN 25 AND 35 AND timestamp GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    additional_data TEXT    NULL,               -- JSON text; always NULL in Keystone
    cid             TEXT    NULL CHECK (length(cid) <= 255),
    CONSTRAINT auditlog_logentry_content_type_check CHECK (content_type LIKE '_% | _%'),
    CONSTRAINT auditlog_logentry_action_check       CHECK (action IN (0, 1, 2, 3)),
    CONSTRAINT auditlog_logentry_remote_port_check
        CHECK (remote_port IS NULL OR (typeof(remote_port) = 'integer' AND remote_port BETWEEN 0 AND 2147483647))
);
CREATE INDEX auditlog_logentry_timestamp_idx ON auditlog_logentry (timestamp);
CREATE INDEX auditlog_logentry_action_idx    ON auditlog_logentry (action);
CREATE INDEX auditlog_logentry_cid_idx       ON auditlog_logentry (cid);
CREATE INDEX auditlog_logentry_object_pk_idx ON auditlog_logentry (object_pk);
CREATE INDEX auditlog_logentry_object_id_idx ON auditlog_logentry (object_id);
CREATE INDEX auditlog_logentry_actor_id_idx  ON auditlog_logentry (actor_id);
-- `_history` lookups: WHERE content_type = ? AND object_id = ? ORDER BY timestamp DESC
CREATE INDEX auditlog_logentry_content_type_object_id_timestamp_idx
    ON auditlog_logentry (content_type, object_id, timestamp);

-- django-celery-results TaskResult (operations.md 2.4). JSON values are text.
CREATE TABLE django_celery_results_taskresult (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id            TEXT NOT NULL CHECK (length(task_id) <= 255),
    periodic_task_name TEXT NULL CHECK (length(periodic_task_name) <= 255),
    task_name          TEXT NULL CHECK (length(task_name) <= 255),
    task_args          TEXT NULL,
    task_kwargs        TEXT NULL,
    status             TEXT NOT NULL DEFAULT 'PENDING',
    worker             TEXT NULL CHECK (length(worker) <= 100),
    content_type       TEXT NOT NULL DEFAULT 'application/json' CHECK (length(content_type) <= 128),
    content_encoding   TEXT NOT NULL DEFAULT 'utf-8' CHECK (length(content_encoding) <= 64),
    result             TEXT NULL,
    date_created       TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                       CHECK (length(date_created) BETWEEN 25 AND 35 AND date_created GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    date_started       TEXT NULL
                       CHECK (length(date_started) BETWEEN 25 AND 35 AND date_started GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    date_done          TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
                       CHECK (length(date_done) BETWEEN 25 AND 35 AND date_done GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    traceback          TEXT NULL,
    meta               TEXT NULL,
    CONSTRAINT django_celery_results_taskresult_task_id_key UNIQUE (task_id),
    CONSTRAINT django_celery_results_taskresult_status_check CHECK (status IN
        ('PENDING', 'RECEIVED', 'STARTED', 'SUCCESS', 'FAILURE', 'RETRY', 'REVOKED'))
);
CREATE INDEX django_celery_results_taskresult_status_idx       ON django_celery_results_taskresult (status);
CREATE INDEX django_celery_results_taskresult_task_name_idx    ON django_celery_results_taskresult (task_name);
CREATE INDEX django_celery_results_taskresult_worker_idx       ON django_celery_results_taskresult (worker);
CREATE INDEX django_celery_results_taskresult_date_created_idx ON django_celery_results_taskresult (date_created);
CREATE INDEX django_celery_results_taskresult_date_done_idx    ON django_celery_results_taskresult (date_done);
CREATE INDEX django_celery_results_taskresult_periodic_task_name_idx
    ON django_celery_results_taskresult (periodic_task_name);

-- Feed (operations.md 3.6): merged stream over the three log tables.
-- The API field `user` is the view column `user_id` (as upstream's view).
CREATE VIEW logging_feedentry AS
    SELECT
        'r' || id                     AS id,
        id                            AS record_id,
        'request'                     AS record_type,
        timestamp                     AS timestamp,
        endpoint                      AS summary,
        user_id                       AS user_id,
        cid                           AS cid,
        CAST(response_code AS TEXT)   AS status
    FROM logging_requestlog
    UNION ALL
    SELECT
        't' || id                     AS id,
        id                            AS record_id,
        'task'                        AS record_type,
        date_created                  AS timestamp,
        task_name                     AS summary,
        NULL                          AS user_id,
        NULL                          AS cid,
        status                        AS status
    FROM django_celery_results_taskresult
    UNION ALL
    SELECT
        'a' || id                     AS id,
        id                            AS record_id,
        'audit'                       AS record_type,
        timestamp                     AS timestamp,
        object_repr                   AS summary,
        actor_id                      AS user_id,
        cid                           AS cid,
        NULL                          AS status
    FROM auditlog_logentry;

---------------------------------------------------------------------------
-- Keystone-only support tables
---------------------------------------------------------------------------

-- API tokens (`Authorization: Token <key>`); replaces upstream authtoken_token.
-- Only the SHA-256 hex digest of the key is stored.
CREATE TABLE keystone_api_token (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    user_id    INTEGER NOT NULL REFERENCES users_user (id) ON DELETE CASCADE,
    name       TEXT    NOT NULL DEFAULT '',
    key_prefix TEXT    NOT NULL CHECK (length(key_prefix) <= 12),
    key_hash   TEXT    NOT NULL CHECK (length(key_hash) <= 128),
    created    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%f+00:00', 'now'))
               CHECK (length(created) BETWEEN 25 AND 35 AND created GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    last_used  TEXT    NULL
               CHECK (length(last_used) BETWEEN 25 AND 35 AND last_used GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    expires    TEXT    NULL
               CHECK (length(expires) BETWEEN 25 AND 35 AND expires GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    CONSTRAINT keystone_api_token_key_hash_key UNIQUE (key_hash)
);
CREATE INDEX keystone_api_token_user_id_idx ON keystone_api_token (user_id);

-- Sessions revoked before their expiry (logout, password change).
CREATE TABLE keystone_revoked_session (
    jti        TEXT NOT NULL PRIMARY KEY CHECK (length(jti) <= 64),
    expires_at TEXT NOT NULL
               CHECK (length(expires_at) BETWEEN 25 AND 35 AND expires_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00')
);
CREATE INDEX keystone_revoked_session_expires_at_idx ON keystone_revoked_session (expires_at);

-- Liveness of worker/beat processes.
CREATE TABLE keystone_worker_heartbeat (
    worker     TEXT NOT NULL PRIMARY KEY CHECK (length(worker) <= 255),
    role       TEXT NOT NULL CHECK (length(role) <= 16),
    started_at TEXT NOT NULL
               CHECK (length(started_at) BETWEEN 25 AND 35 AND started_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00'),
    seen_at    TEXT NOT NULL
               CHECK (length(seen_at) BETWEEN 25 AND 35 AND seen_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00')
);

-- Last run of each beat schedule entry (catch-up after restart).
CREATE TABLE keystone_beat_state (
    entry       TEXT NOT NULL PRIMARY KEY CHECK (length(entry) <= 255),
    last_run_at TEXT NOT NULL
                CHECK (length(last_run_at) BETWEEN 25 AND 35 AND last_run_at GLOB '[0-9][0-9][0-9][0-9]-[0-9][0-9]-[0-9][0-9]T[0-9][0-9]:[0-9][0-9]:[0-9][0-9]*+00:00')
);
