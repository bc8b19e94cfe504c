-- The ledger schema: every table, and the schema version (core: ledger/core.py).
-- Each block is named after the method that runs it.

-- ensure_schema --
-- Create the ledger tables (idempotent). Times are UTC seconds since the epoch (REAL).
CREATE TABLE IF NOT EXISTS {t}meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS {t}partitions (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    pkey TEXT NOT NULL,
    keys TEXT NOT NULL,
    zone TEXT,
    win_start REAL,
    win_end REAL,
    version INTEGER NOT NULL DEFAULT 1,
    exported_version INTEGER NOT NULL DEFAULT 0,
    changed_at REAL NOT NULL,
    forced INTEGER NOT NULL DEFAULT 0,
    claim_token TEXT,
    claimed_version INTEGER,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    failed INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    path TEXT,
    rows INTEGER,
    bytes INTEGER,
    checksum TEXT,
    exported_at REAL,
    UNIQUE (task, pkey),
    CHECK (exported_version <= version),
    CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
CREATE INDEX IF NOT EXISTS {t}partitions_queue_idx ON {t}partitions (task, changed_at, win_start, id)
    WHERE version > exported_version AND NOT failed;
CREATE INDEX IF NOT EXISTS {t}partitions_claim_token_idx ON {t}partitions (claim_token)
    WHERE claim_token IS NOT NULL;
CREATE TABLE IF NOT EXISTS {t}changes (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    keys TEXT NOT NULL,
    bin INTEGER
);
CREATE UNIQUE INDEX IF NOT EXISTS {t}changes_dedupe_idx ON {t}changes (task, keys, bin);
CREATE TABLE IF NOT EXISTS {t}scans (
    task TEXT PRIMARY KEY,
    high_water TEXT,
    scanned_at REAL
);
CREATE TABLE IF NOT EXISTS {t}watermarks (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    entity TEXT NOT NULL,
    watermark REAL,
    claim_token TEXT,
    lease_until REAL,
    pending_start REAL,
    pending_end REAL,
    pending_type TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT,
    failed_start REAL,
    failed_end REAL,
    failed_type TEXT,
    failed_mode TEXT CHECK (failed_mode IN ('watermark', 'reexport')),
    failed_destination TEXT,
    exported_at REAL,
    rows INTEGER,
    path TEXT,
    UNIQUE (task, entity),
    CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
CREATE TABLE IF NOT EXISTS {t}archive_runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    boundary REAL NOT NULL,
    path TEXT NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('exporting', 'published', 'done')),
    rows INTEGER,
    bytes INTEGER,
    checksum TEXT,
    deleted INTEGER,
    started_at REAL NOT NULL,
    finished_at REAL,
    UNIQUE (task, path)
);
CREATE TABLE IF NOT EXISTS {t}schedule_ticks (
    task TEXT NOT NULL,
    tick REAL NOT NULL,
    fired_at REAL,
    PRIMARY KEY (task, tick)
);
CREATE TABLE IF NOT EXISTS {t}runs (
    id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    tag TEXT,
    request TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    summary TEXT,
    heartbeat_at REAL
);
-- version 6: claims take the oldest window first among partitions changed together
DROP INDEX IF EXISTS {t}partitions_pending_idx;
CREATE TABLE IF NOT EXISTS {t}task_errors (
    task TEXT PRIMARY KEY,
    error TEXT NOT NULL,
    config INTEGER NOT NULL DEFAULT 0,
    at REAL NOT NULL
);
-- version 9: blocks tasks, one row per (task, key value, block, stage), created when a range is asked for
CREATE TABLE IF NOT EXISTS {t}blocks (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    key_value TEXT NOT NULL,
    block_start REAL NOT NULL,
    block_end REAL NOT NULL,
    label TEXT NOT NULL,
    stage TEXT NOT NULL,
    position INTEGER NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending'
        CHECK (status IN ('pending', 'running', 'done', 'no_data', 'failed')),
    claim_token TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL,
    forced INTEGER NOT NULL DEFAULT 0,
    records_total INTEGER,
    records_processed INTEGER,
    records_errors INTEGER,
    error TEXT,
    artifact TEXT,
    bytes INTEGER,
    checksum TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    UNIQUE (task, key_value, block_start, stage),
    CHECK ((claim_token IS NULL) = (lease_until IS NULL)),
    CHECK ((status = 'running') = (claim_token IS NOT NULL)),
    CHECK (block_start < block_end)
);
CREATE INDEX IF NOT EXISTS {t}blocks_position_idx ON {t}blocks (task, key_value, block_start, position);
CREATE INDEX IF NOT EXISTS {t}blocks_queue_idx ON {t}blocks (task, block_end)
    WHERE status IN ('pending', 'running');
CREATE INDEX IF NOT EXISTS {t}blocks_claim_token_idx ON {t}blocks (claim_token) WHERE claim_token IS NOT NULL;
-- version 10: evaluations of aggregate tasks, one row per (task, tick), claimed like schedule ticks
CREATE TABLE IF NOT EXISTS {t}aggregate_evaluations (
    task TEXT NOT NULL,
    tick REAL NOT NULL,
    window_start REAL NOT NULL,
    window_end REAL NOT NULL,
    state TEXT NOT NULL CHECK (state IN ('running', 'done', 'failed', 'superseded')),
    claim_token TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 1,
    next_attempt_at REAL,
    rows INTEGER,
    seconds REAL,
    path TEXT,
    error TEXT,
    started_at REAL NOT NULL,
    finished_at REAL,
    PRIMARY KEY (task, tick),
    CHECK ((claim_token IS NULL) = (lease_until IS NULL))
);
-- version 11: no change here (PostgreSQL's capture triggers record runs of bins in a new table)
-- version 12: a partition may not take a file another partition of its task recorded (paths_taken)
CREATE INDEX IF NOT EXISTS {t}partitions_path_idx ON {t}partitions (task, path);
-- The version is only ever raised: an older release must not lower it.
INSERT INTO {t}meta (key, value) VALUES ('schema_version', '12')
    ON CONFLICT (key) DO UPDATE SET value = excluded.value
    WHERE CAST({t}meta.value AS INTEGER) < 12;

-- add_failed_destination --
-- Version 5 (SQLite has no ADD COLUMN IF NOT EXISTS: run when the column is missing).
ALTER TABLE {t}watermarks ADD COLUMN failed_destination TEXT;

-- add_run_heartbeat --
-- Version 5, likewise.
ALTER TABLE {t}runs ADD COLUMN heartbeat_at REAL;

-- add_partition_etag --
-- Version 8: the store's ETag of each partition's published object (conditional writes).
ALTER TABLE {t}partitions ADD COLUMN etag TEXT;

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE key = 'schema_version';
