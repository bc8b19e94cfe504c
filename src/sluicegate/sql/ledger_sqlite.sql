-- schema --
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
INSERT OR REPLACE INTO {t}meta (key, value) VALUES ('schema_version', '6');

-- add_failed_destination --
-- Version 5 (SQLite has no ADD COLUMN IF NOT EXISTS: run when the column is missing).
ALTER TABLE {t}watermarks ADD COLUMN failed_destination TEXT;

-- add_run_heartbeat --
-- Version 5, likewise.
ALTER TABLE {t}runs ADD COLUMN heartbeat_at REAL;

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE key = 'schema_version';

-- mark --
-- Record a change to one partition: insert it, or bump its version (clears a parked failure).
INSERT INTO {t}partitions (task, pkey, keys, zone, win_start, win_end, changed_at)
VALUES (:task, :pkey, :keys, :zone, :win_start, :win_end, :now)
ON CONFLICT (task, pkey) DO UPDATE
SET version = version + 1,
    changed_at = CASE WHEN version = exported_version THEN :now ELSE changed_at END,
    attempts = CASE WHEN failed THEN 0 ELSE attempts END,
    next_attempt_at = CASE WHEN failed THEN NULL ELSE next_attempt_at END,
    failed = 0;

-- claim --
-- Claim up to limit pending, complete partitions, oldest change first, then oldest window (run inside BEGIN IMMEDIATE).
UPDATE {t}partitions
SET claim_token = :token,
    claimed_version = version,
    lease_until = :now + :lease,
    attempts = attempts + CASE WHEN claim_token IS NULL THEN 0 ELSE 1 END
WHERE id IN (
    SELECT id FROM {t}partitions
    WHERE task = :task
      AND NOT failed
      AND version > exported_version
      AND (win_end IS NULL OR win_end <= :now - :settle)
      AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
      AND (claim_token IS NULL OR lease_until < :now)
    ORDER BY changed_at, win_start, id
    LIMIT :limit
)
RETURNING id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum;

-- renew --
-- Extend the lease of every partition still held under a claim token.
UPDATE {t}partitions SET lease_until = :now + :lease WHERE claim_token = :token;

-- commit --
-- Record a durable export at the version read at claim; fenced by the claim token.
UPDATE {t}partitions
SET exported_version = claimed_version,
    forced = CASE WHEN version > claimed_version THEN forced ELSE 0 END,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = :path, rows = :rows, bytes = :bytes, checksum = :checksum, exported_at = :now
WHERE id = :id AND claim_token = :token;

-- fail --
-- Give a claimed partition back after an error: retry later with backoff, or park it as failed.
UPDATE {t}partitions
SET claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = attempts + 1,
    last_error = :error,
    failed = (:terminal OR attempts + 1 >= :max_attempts),
    next_attempt_at = :now + min(:backoff * (1 << min(attempts, 20)), 3600)
WHERE id = :id AND claim_token = :token;

-- release --
-- Give back every partition still held under a claim token, without counting an attempt.
UPDATE {t}partitions SET claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE claim_token = :token;

-- pending --
-- List what the next claim would take (for --dry-run), without claiming.
SELECT id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum
FROM {t}partitions
WHERE task = :task
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= :now - :settle)
  AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
  AND (claim_token IS NULL OR lease_until < :now)
ORDER BY changed_at, win_start, id
LIMIT :limit;

-- status --
-- Count a task's partitions by state.
SELECT
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < :now)
                 AND (win_end IS NULL OR win_end <= :now - :settle)), 0) AS pending,
    coalesce(sum(NOT failed AND claim_token IS NOT NULL AND lease_until >= :now), 0) AS claimed,
    coalesce(sum(NOT failed AND version = exported_version), 0) AS exported,
    coalesce(sum(failed), 0) AS failed,
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < :now)
                 AND win_end > :now - :settle), 0) AS waiting,
    coalesce(sum(NOT failed AND version > exported_version AND attempts > 0), 0) AS retrying,
    :now - min(CASE WHEN NOT failed AND version > exported_version THEN changed_at END) AS oldest_pending_age
FROM {t}partitions WHERE task = :task;

-- failures --
-- The parked partitions of a task with their last error.
SELECT pkey, attempts, last_error FROM {t}partitions
WHERE task = :task AND failed ORDER BY changed_at, id LIMIT :limit;

-- partition_keys --
-- Every partition of a task with its window, for reexport filters.
SELECT id, keys, win_start, win_end FROM {t}partitions WHERE task = :task;

-- reexport --
-- Queue one partition again even if its bytes are unchanged.
UPDATE {t}partitions
SET version = version + 1, forced = 1, failed = 0, attempts = 0, next_attempt_at = NULL,
    changed_at = CASE WHEN version = exported_version THEN :now ELSE changed_at END
WHERE id = :id;

-- reset_failed --
-- Re-queue a task's parked partitions.
UPDATE {t}partitions SET failed = 0, attempts = 0, next_attempt_at = NULL WHERE task = :task AND failed;

-- take_changes --
-- Remove up to limit captured changes of a task from the inbox, returning them (inside one transaction).
DELETE FROM {t}changes
WHERE id IN (SELECT id FROM {t}changes WHERE task = :task ORDER BY id LIMIT :limit)
RETURNING keys, bin;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = :task;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back).
INSERT INTO {t}scans (task, high_water, scanned_at) VALUES (:task, :high_water, :now)
ON CONFLICT (task) DO UPDATE
SET high_water = max(high_water, excluded.high_water), scanned_at = :now;

-- wm_ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
INSERT INTO {t}watermarks (task, entity) VALUES (:task, :entity) ON CONFLICT (task, entity) DO NOTHING;

-- wm_claim --
-- Claim the watermark rows of the given entities that nobody holds (run inside BEGIN IMMEDIATE).
UPDATE {t}watermarks
SET claim_token = :token,
    lease_until = :now + :lease,
    attempts = attempts + CASE WHEN claim_token IS NULL THEN 0 ELSE 1 END
WHERE task = :task AND entity IN (SELECT value FROM json_each(:entities))
  AND (claim_token IS NULL OR lease_until < :now)
RETURNING id, entity, watermark, pending_start, pending_end, pending_type, attempts;

-- wm_set_pending --
-- Remember the window a claim is exporting, so a crashed export is redone with the same window.
UPDATE {t}watermarks SET pending_start = :start, pending_end = :end, pending_type = :type
WHERE id = :id AND claim_token = :token;

-- wm_commit --
-- Advance the watermark to the window end (compare-and-set: never backwards), fenced by the claim.
UPDATE {t}watermarks
SET watermark = CASE WHEN watermark IS NULL OR watermark < :end THEN :end ELSE watermark END,
    claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    -- A failed watermark window is done once the watermark passes it. A failed re-export is
    -- not (it went to its own window and destination): it stays, with its attempts, for redrive.
    attempts = CASE WHEN failed_mode = 'reexport' THEN attempts ELSE 0 END,
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE NULL END,
    failed_start = CASE WHEN failed_mode = 'watermark' AND failed_end <= :end THEN NULL ELSE failed_start END,
    failed_type = CASE WHEN failed_mode = 'watermark' AND failed_end <= :end THEN NULL ELSE failed_type END,
    failed_end = CASE WHEN failed_mode = 'watermark' AND failed_end <= :end THEN NULL ELSE failed_end END,
    failed_mode = CASE WHEN failed_mode = 'watermark' AND failed_end <= :end THEN NULL ELSE failed_mode END,
    exported_at = :now, rows = :rows, path = :path
WHERE id = :id AND claim_token = :token;

-- wm_fail --
-- Record a failed window (for redrive) and give the claim back; the watermark does not move.
UPDATE {t}watermarks
SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    -- an entity that never exported keeps its bootstrap start, so the next run covers the failed window
    watermark = CASE WHEN watermark IS NULL AND :mode = 'watermark' THEN :start ELSE watermark END,
    attempts = attempts + 1, last_error = :error,
    failed_start = :start, failed_end = :end, failed_type = :type, failed_mode = :mode, failed_destination = :destination
WHERE task = :task AND entity = :entity
  AND (:token IS NULL OR claim_token = :token);

-- wm_clear_failure --
-- Forget a recorded failure once its window was exported (a redriven re-export).
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = :task AND entity = :entity;

-- wm_renew --
-- Extend the lease of the watermark rows held under a claim token (a long window export).
UPDATE {t}watermarks SET lease_until = :now + :lease WHERE claim_token = :token;

-- wm_release --
-- Give back every watermark row still held under a claim token.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE claim_token = :token;

-- wm_list --
-- Every watermark row of a task.
SELECT entity, watermark, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, rows, path, (claim_token IS NOT NULL AND lease_until >= :now) AS claimed
FROM {t}watermarks WHERE task = :task ORDER BY entity;

-- wm_delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = :task AND entity = :entity;

-- run_start --
-- Record the start of a run with its tag and request.
INSERT INTO {t}runs (id, task, tag, request, started_at, heartbeat_at) VALUES (:id, :task, :tag, :request, :now, :now);

-- run_heartbeat --
-- A run in progress is still alive.
UPDATE {t}runs SET heartbeat_at = :now WHERE id = :id AND finished_at IS NULL;

-- run_finish --
-- Record the end of a run with its summary.
UPDATE {t}runs SET finished_at = :now, summary = :summary WHERE id = :id;

-- run_get --
-- One run.
SELECT id, task, tag, request, started_at, finished_at, summary,
       :now - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs WHERE id = :id;

-- arc_unfinished --
-- The oldest archive run of a task that did not finish (recovered before any new run).
SELECT id, boundary, path, state, rows, bytes, checksum FROM {t}archive_runs
WHERE task = :task AND state <> 'done' ORDER BY started_at LIMIT 1;

-- arc_path_taken --
-- Whether an archive file name was already used by a run of the task.
SELECT 1 FROM {t}archive_runs WHERE task = :task AND path = :path;

-- arc_start --
-- Record a new archive run before anything is written.
INSERT INTO {t}archive_runs (id, task, boundary, path, state, started_at) VALUES (:id, :task, :boundary, :path, 'exporting', :now);

-- arc_published --
-- The archive file is published and verified: rows, bytes and checksum.
UPDATE {t}archive_runs SET state = 'published', rows = :rows, bytes = :bytes, checksum = :checksum
WHERE id = :id;

-- arc_done --
-- The delete committed (or there is none): the run is finished.
UPDATE {t}archive_runs SET state = 'done', deleted = :deleted, finished_at = :now WHERE id = :id;

-- arc_witness_exists --
-- In the source database: whether the table of archive delete markers exists.
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{t}archive_commits';

-- arc_witness_create --
-- In the source database: the table of archive delete markers (used when the ledger is elsewhere).
CREATE TABLE IF NOT EXISTS {t}archive_commits (
    run_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    committed_at REAL NOT NULL
);

-- arc_witness --
-- In the source database, in the delete's transaction: the marker proving that the run's delete committed.
INSERT INTO {t}archive_commits (run_id, task, deleted, committed_at) VALUES (:id, :task, :deleted, :now);

-- arc_witnessed --
-- In the source database: the rows a run deleted, if its delete committed.
SELECT deleted FROM {t}archive_commits WHERE run_id = :id;

-- tick_claim --
-- Claim one schedule tick of a task; only one scheduler among all replicas gets the row.
INSERT INTO {t}schedule_ticks (task, tick, fired_at) VALUES (:task, :tick, :now) ON CONFLICT DO NOTHING;

-- run_list --
-- The most recent runs.
SELECT id, task, tag, request, started_at, finished_at, summary,
       :now - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs
ORDER BY started_at DESC LIMIT :limit;

-- list_partitions --
-- A page of a task's partitions with their state.
SELECT * FROM (
    SELECT pkey, keys, version, exported_version, attempts, last_error, path, rows, bytes, exported_at,
           win_start, win_end,
           CASE WHEN failed THEN 'failed'
                WHEN version = exported_version THEN 'exported'
                WHEN claim_token IS NOT NULL AND lease_until >= :now THEN 'claimed'
                WHEN win_end > :now - :settle THEN 'waiting'
                ELSE 'pending' END AS state
    FROM {t}partitions WHERE task = :task
) AS p
WHERE :state IS NULL OR state = :state
ORDER BY win_start IS NOT NULL, win_start, pkey
LIMIT :limit OFFSET :offset;

-- wm_release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = :id AND claim_token = :token;
