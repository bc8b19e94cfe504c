-- The ledger schema: every table, and the schema version (core: ledger/core.py).
-- Each block is named after the method that runs it.

-- ensure_schema --
-- Create the ledger tables (idempotent). Statements are separated by ";" at line ends.
CREATE SCHEMA IF NOT EXISTS {t_schema};
CREATE TABLE IF NOT EXISTS {t}meta (
    key text PRIMARY KEY,
    value text NOT NULL
);
CREATE TABLE IF NOT EXISTS {t}partitions (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    pkey text NOT NULL,
    keys jsonb NOT NULL,
    zone text,
    win_start timestamptz,
    win_end timestamptz,
    version bigint NOT NULL DEFAULT 1,
    exported_version bigint NOT NULL DEFAULT 0,
    changed_at timestamptz NOT NULL DEFAULT now(),
    forced boolean NOT NULL DEFAULT false,
    claim_token uuid,
    claimed_version bigint,
    lease_until timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    failed boolean NOT NULL DEFAULT false,
    last_error text,
    path text,
    rows bigint,
    bytes bigint,
    checksum text,
    exported_at timestamptz,
    CONSTRAINT partitions_task_pkey_key UNIQUE (task, pkey),
    CONSTRAINT partitions_exported_le_version CHECK (exported_version <= version),
    CONSTRAINT partitions_claim_has_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
CREATE INDEX IF NOT EXISTS partitions_queue_idx ON {t}partitions (task, changed_at, win_start, id)
    WHERE version > exported_version AND NOT failed;
CREATE INDEX IF NOT EXISTS partitions_claim_token_idx ON {t}partitions (claim_token)
    WHERE claim_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS {t}changes (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    keys jsonb NOT NULL,
    bin timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS changes_task_idx ON {t}changes (task, id);
CREATE TABLE IF NOT EXISTS {t}scans (
    task text PRIMARY KEY,
    high_water timestamptz,
    scanned_at timestamptz
);
CREATE TABLE IF NOT EXISTS {t}watermarks (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    entity text NOT NULL,
    watermark timestamptz,
    claim_token uuid,
    lease_until timestamptz,
    pending_start timestamptz,
    pending_end timestamptz,
    pending_type text,
    attempts integer NOT NULL DEFAULT 0,
    last_error text,
    failed_start timestamptz,
    failed_end timestamptz,
    failed_type text,
    failed_mode text CHECK (failed_mode IN ('watermark', 'reexport')),
    failed_destination text,
    exported_at timestamptz,
    rows bigint,
    path text,
    CONSTRAINT watermarks_task_entity_key UNIQUE (task, entity),
    CONSTRAINT watermarks_claim_has_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
CREATE TABLE IF NOT EXISTS {t}archive_runs (
    id uuid PRIMARY KEY,
    task text NOT NULL,
    boundary timestamptz NOT NULL,
    path text NOT NULL,
    state text NOT NULL CHECK (state IN ('exporting', 'published', 'done')),
    rows bigint,
    bytes bigint,
    checksum text,
    deleted bigint,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT archive_runs_task_path_key UNIQUE (task, path)
);
CREATE TABLE IF NOT EXISTS {t}schedule_ticks (
    task text NOT NULL,
    tick timestamptz NOT NULL,
    fired_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (task, tick)
);
CREATE TABLE IF NOT EXISTS {t}runs (
    id uuid PRIMARY KEY,
    task text NOT NULL,
    tag text,
    request text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    summary text,
    heartbeat_at timestamptz
);
-- version 5: a failed re-export remembers its override destination, for redrive;
-- a run in progress beats, so one whose process died shows as abandoned
ALTER TABLE {t}watermarks ADD COLUMN IF NOT EXISTS failed_destination text;
ALTER TABLE {t}runs ADD COLUMN IF NOT EXISTS heartbeat_at timestamptz;
-- version 6: among partitions changed together, claims take the oldest window first, so a batch
-- holds few windows per key (the queue index gained win_start and replaces the old one)
DROP INDEX IF EXISTS {t}partitions_pending_idx;
-- version 7: a task-level error (the query fails, a zone is missing) is recorded per task
-- until a run of the task succeeds, so status shows what run reported
CREATE TABLE IF NOT EXISTS {t}task_errors (
    task text PRIMARY KEY,
    error text NOT NULL,
    config boolean NOT NULL DEFAULT false,
    at timestamptz NOT NULL DEFAULT now()
);
-- version 8: the store's ETag of each partition's published object, so a write can be
-- conditional on it (a zombie worker's late upload is refused by the store)
ALTER TABLE {t}partitions ADD COLUMN IF NOT EXISTS etag text;
-- version 9: blocks tasks, one row per (task, key value, block, stage), created when a range is asked for
CREATE TABLE IF NOT EXISTS {t}blocks (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    key_value text NOT NULL,
    block_start timestamptz NOT NULL,
    block_end timestamptz NOT NULL,
    label text NOT NULL,
    stage text NOT NULL,
    position integer NOT NULL,
    status text NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'no_data', 'failed')),
    claim_token uuid,
    lease_until timestamptz,
    attempts integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz,
    forced boolean NOT NULL DEFAULT false,
    records_total bigint,
    records_processed bigint,
    records_errors bigint,
    error text,
    artifact text,
    bytes bigint,
    checksum text,
    created_at timestamptz NOT NULL DEFAULT now(),
    started_at timestamptz,
    finished_at timestamptz,
    CONSTRAINT blocks_task_key_block_stage_key UNIQUE (task, key_value, block_start, stage),
    CONSTRAINT blocks_claim_has_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL)),
    CONSTRAINT blocks_running_is_claimed CHECK ((status = 'running') = (claim_token IS NOT NULL)),
    CONSTRAINT blocks_window CHECK (block_start < block_end)
);
CREATE INDEX IF NOT EXISTS blocks_position_idx ON {t}blocks (task, key_value, block_start, position);
CREATE INDEX IF NOT EXISTS blocks_queue_idx ON {t}blocks (task, block_end)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS blocks_claim_token_idx ON {t}blocks (claim_token) WHERE claim_token IS NOT NULL;
-- version 10: evaluations of aggregate tasks, one row per (task, tick), claimed like schedule ticks
CREATE TABLE IF NOT EXISTS {t}aggregate_evaluations (
    task text NOT NULL,
    tick timestamptz NOT NULL,
    window_start timestamptz NOT NULL,
    window_end timestamptz NOT NULL,
    state text NOT NULL CHECK (state IN ('running', 'done', 'failed', 'superseded')),
    claim_token uuid,
    lease_until timestamptz,
    attempts integer NOT NULL DEFAULT 1,
    next_attempt_at timestamptz,
    rows bigint,
    seconds double precision,
    path text,
    error text,
    started_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    PRIMARY KEY (task, tick),
    CONSTRAINT aggregate_evaluations_claim_has_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
-- version 11: capture triggers record runs of bins, one row per changed key values and UTC day
-- (hour, for hourly tasks) of a statement: (first bin, last bin). A new table, so that a worker
-- of an older version, which reads only changes, never takes a run it would read as one bin.
CREATE TABLE IF NOT EXISTS {t}change_runs (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    keys jsonb NOT NULL,
    first_bin timestamptz,
    last_bin timestamptz,
    changed_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS change_runs_task_idx ON {t}change_runs (task, id);
-- version 12: a partition may not take a file another partition of its task recorded (paths_taken
-- looks the batch's paths up). On the path's first 500 characters: a btree entry holds at most
-- 2,704 bytes, and a local path may have 4,095.
CREATE INDEX IF NOT EXISTS partitions_path_idx ON {t}partitions (task, left(path, 500));
-- The version is only ever raised: an older release must not lower it.
INSERT INTO {t}meta (key, value) VALUES ('schema_version', '12')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value
    WHERE {t}meta.value ~ '^[0-9]{1,9}$' AND {t}meta.value::int < 12;

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE key = 'schema_version';
