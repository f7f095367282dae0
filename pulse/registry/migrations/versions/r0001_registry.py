"""The registry: versions, devices, alert and absence rules, silences, webhooks, alert history.

Revision ID: 0001
Revises:
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

NAME = "'^[A-Za-z0-9_.-]{1,128}$'"
WINDOW = "'^[0-9]{1,9}(ms|s|m|h|d)(/[0-9]{1,9}(ms|s|m|h|d))?$'"
AGGREGATES = "'count','sum','min','max','mean','first','last','p50','p95','p99'"
SEVERITIES = "'info','warning','critical'"
# models.alerts.Selector: one device, the devices of a site, or (neither) all.
SELECTOR = f"""
    device text CHECK (device ~ {NAME}),
    site text CHECK (site ~ {NAME}),
    CHECK (device IS NULL OR site IS NULL)"""
MAX_ABSENCE_US = 365 * 86400 * 1_000_000  # a year
MAX_UNTIL_US = 253_402_300_799_999_999  # the end of year 9999
VERSIONED = """
    version bigint NOT NULL REFERENCES registry_versions (version),
    removed boolean NOT NULL DEFAULT false"""

UPGRADE = f"""
CREATE SEQUENCE registry_version_seq;

-- One row per change: its version (from the one sequence), when it committed, what it did.
CREATE TABLE registry_versions (
    version bigint PRIMARY KEY DEFAULT nextval('registry_version_seq'),
    committed_at timestamptz NOT NULL DEFAULT now(),
    change text NOT NULL
);
ALTER SEQUENCE registry_version_seq OWNED BY registry_versions.version;

CREATE TABLE devices (
    id text NOT NULL CHECK (id ~ {NAME}),
    {VERSIONED},
    site text CHECK (site ~ {NAME}),
    labels jsonb NOT NULL DEFAULT '{{}}'::jsonb CHECK (jsonb_typeof(labels) = 'object'),
    enabled boolean NOT NULL DEFAULT true,
    PRIMARY KEY (id, version)
);

CREATE TABLE alert_rules (
    name text NOT NULL CHECK (name ~ {NAME}),
    {VERSIONED},
    metric text NOT NULL CHECK (metric ~ {NAME}),
    "window" text NOT NULL CHECK ("window" ~ {WINDOW}),
    aggregate text NOT NULL CHECK (aggregate IN ({AGGREGATES})),
    comparison text NOT NULL CHECK (comparison IN ('>', '>=', '<', '<=')),
    threshold double precision NOT NULL,
    clear_threshold double precision,  -- null: the threshold
    for_count integer NOT NULL CHECK (for_count BETWEEN 1 AND 1000),
    {SELECTOR},
    severity text NOT NULL CHECK (severity IN ({SEVERITIES})),
    enabled boolean NOT NULL DEFAULT true,
    CHECK (clear_threshold IS NULL OR
           CASE WHEN comparison IN ('>', '>=') THEN clear_threshold <= threshold
                ELSE clear_threshold >= threshold END),
    PRIMARY KEY (name, version)
);

CREATE TABLE absence_rules (
    name text NOT NULL CHECK (name ~ {NAME}),
    {VERSIONED},
    metric text NOT NULL CHECK (metric ~ {NAME}),
    duration_us bigint NOT NULL CHECK (duration_us BETWEEN 1 AND {MAX_ABSENCE_US}),
    {SELECTOR},
    severity text NOT NULL CHECK (severity IN ({SEVERITIES})),
    enabled boolean NOT NULL DEFAULT true,
    PRIMARY KEY (name, version)
);

CREATE SEQUENCE silence_id_seq;
CREATE TABLE silences (
    id bigint NOT NULL,
    {VERSIONED},
    rule text CHECK (rule ~ {NAME}),  -- null: every rule
    device text CHECK (device ~ {NAME}),  -- device and site null: every device
    site text CHECK (site ~ {NAME}),
    until_us bigint NOT NULL CHECK (until_us BETWEEN 0 AND {MAX_UNTIL_US}),
    CHECK (rule IS NOT NULL OR device IS NOT NULL OR site IS NOT NULL),
    CHECK (device IS NULL OR site IS NULL),
    PRIMARY KEY (id, version)
);

CREATE SEQUENCE webhook_id_seq;
CREATE TABLE webhooks (
    id bigint NOT NULL,
    {VERSIONED},
    url text NOT NULL CHECK (url ~ '^https?://'),
    rule text CHECK (rule ~ {NAME}),
    severity text CHECK (severity IN ({SEVERITIES})),
    CHECK (rule IS NULL OR severity IS NULL),
    PRIMARY KEY (id, version)
);

-- Not versioned: a record of what happened, one row per alert transition (its id and state:
-- an absence rule's resolution and its next firing may share an id, the start), written once
-- (INSERT ... ON CONFLICT DO NOTHING: a replay adds nothing). The columns are the transition's
-- (models.alerts.AlertTransition.json, times in epoch microseconds); alert is its whole JSON.
CREATE TABLE alert_history (
    id text NOT NULL,
    state text NOT NULL CHECK (state IN ('firing', 'resolved')),
    recorded_at timestamptz NOT NULL DEFAULT now(),
    rule text NOT NULL,
    device text NOT NULL,
    site text,
    metric text NOT NULL,
    "window" text,  -- null: an absence rule
    start_us bigint NOT NULL,
    end_us bigint NOT NULL,
    severity text NOT NULL,
    silenced boolean NOT NULL,
    alert jsonb NOT NULL,
    PRIMARY KEY (id, state)
);
CREATE INDEX alert_history_recorded_at ON alert_history (recorded_at);
CREATE INDEX alert_history_device_end ON alert_history (device, end_us);

-- Nothing is changed in place: a change is a new row of a new version.
CREATE FUNCTION registry_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the registry is append-only: % on % is not allowed', TG_OP, TG_TABLE_NAME;
END $$;

CREATE FUNCTION registry_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('pulse_registry', NEW.version::text);
    RETURN NULL;
END $$;

CREATE TRIGGER registry_versions_notify AFTER INSERT ON registry_versions
    FOR EACH ROW EXECUTE FUNCTION registry_notify();
"""

APPEND_ONLY = ("registry_versions", "devices", "alert_rules", "absence_rules", "silences",
               "webhooks", "alert_history")  # fmt: skip


def upgrade() -> None:
    op.execute(UPGRADE)
    for table in APPEND_ONLY:
        op.execute(
            f"CREATE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON {table} "
            "FOR EACH STATEMENT EXECUTE FUNCTION registry_append_only()"
        )


def downgrade() -> None:
    raise NotImplementedError("the registry's history is kept: no downgrade")
