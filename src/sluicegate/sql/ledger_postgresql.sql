-- schema --
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
INSERT INTO {t}meta (key, value) VALUES ('schema_version', '6')
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value;

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE key = 'schema_version';

-- mark --
-- Record a change to one partition: insert it, or bump its version (clears a parked failure).
INSERT INTO {t}partitions AS p (task, pkey, keys, zone, win_start, win_end)
VALUES (%(task)s, %(pkey)s, %(keys)s, %(zone)s, %(win_start)s, %(win_end)s)
ON CONFLICT (task, pkey) DO UPDATE
SET version = p.version + 1,
    changed_at = CASE WHEN p.version = p.exported_version THEN now() ELSE p.changed_at END,
    attempts = CASE WHEN p.failed THEN 0 ELSE p.attempts END,
    next_attempt_at = CASE WHEN p.failed THEN NULL ELSE p.next_attempt_at END,
    failed = false;

-- claim --
-- Claim up to limit pending, complete partitions, oldest change first, then oldest window; an expired lease counts as an attempt.
WITH candidate AS (
    SELECT id FROM {t}partitions
    WHERE task = %(task)s
      AND NOT failed
      AND version > exported_version
      AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
      AND (claim_token IS NULL OR lease_until < now())
    ORDER BY changed_at, win_start, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}partitions AS p
SET claim_token = %(token)s,
    claimed_version = p.version,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = p.attempts + CASE WHEN p.claim_token IS NULL THEN 0 ELSE 1 END
FROM candidate
WHERE p.id = candidate.id
RETURNING p.id, p.pkey, p.keys, p.zone, p.version, p.attempts, p.forced, p.exported_version,
          p.path, p.bytes, p.checksum;

-- renew --
-- Extend the lease of every partition still held under a claim token (rows locked in pkey order, like marks).
UPDATE {t}partitions SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey FOR UPDATE);

-- commit --
-- Record a durable export at the version read at claim; fenced by the claim token.
UPDATE {t}partitions
SET exported_version = claimed_version,
    forced = CASE WHEN version > claimed_version THEN forced ELSE false END,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = %(path)s, rows = %(rows)s, bytes = %(bytes)s, checksum = %(checksum)s, exported_at = now()
WHERE id = %(id)s AND claim_token = %(token)s;

-- commit_many --
-- The same as commit, for a whole batch in one statement (rows locked in pkey order, like marks);
-- returns the ids recorded, so a claim whose lease was taken over is told apart.
WITH done AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(paths)s::text[],
                         %(rows)s::bigint[], %(bytes)s::bigint[], %(checksums)s::text[])
        AS d(id, token, path, rows, bytes, checksum)
), locked AS (
    SELECT p.id FROM {t}partitions AS p JOIN done AS d ON p.id = d.id AND p.claim_token = d.token
    ORDER BY p.pkey
    FOR UPDATE OF p
)
UPDATE {t}partitions AS p
SET exported_version = p.claimed_version,
    forced = CASE WHEN p.version > p.claimed_version THEN p.forced ELSE false END,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = d.path, rows = d.rows, bytes = d.bytes, checksum = d.checksum, exported_at = now()
FROM done AS d, locked AS l
WHERE p.id = d.id AND p.id = l.id AND p.claim_token = d.token
RETURNING p.id;

-- fail --
-- Give a claimed partition back after an error: retry later with backoff, or park it as failed.
UPDATE {t}partitions
SET claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = attempts + 1,
    last_error = %(error)s,
    failed = %(terminal)s OR attempts + 1 >= %(max_attempts)s,
    next_attempt_at = now() + make_interval(secs => least(%(backoff)s * power(2, attempts), 3600))
WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- Give back every partition still held under a claim token, without counting an attempt.
UPDATE {t}partitions SET claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE id IN (SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey FOR UPDATE);

-- pending --
-- List what the next claim would take (for --dry-run), without claiming.
SELECT id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum
FROM {t}partitions
WHERE task = %(task)s
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))
  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
  AND (claim_token IS NULL OR lease_until < now())
ORDER BY changed_at, win_start, id
LIMIT %(limit)s;

-- status --
-- Count a task's partitions by state.
SELECT
    count(*) FILTER (WHERE NOT failed AND version > exported_version
                     AND (claim_token IS NULL OR lease_until < now())
                     AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))) AS pending,
    count(*) FILTER (WHERE NOT failed AND claim_token IS NOT NULL AND lease_until >= now()) AS claimed,
    count(*) FILTER (WHERE NOT failed AND version = exported_version) AS exported,
    count(*) FILTER (WHERE failed) AS failed,
    count(*) FILTER (WHERE NOT failed AND version > exported_version
                     AND (claim_token IS NULL OR lease_until < now())
                     AND win_end > now() - make_interval(secs => %(settle)s)) AS waiting,
    count(*) FILTER (WHERE NOT failed AND version > exported_version AND attempts > 0) AS retrying,
    extract(epoch FROM now() - min(changed_at) FILTER (WHERE NOT failed AND version > exported_version))
        AS oldest_pending_age
FROM {t}partitions WHERE task = %(task)s;

-- failures --
-- The parked partitions of a task with their last error.
SELECT pkey, attempts, last_error FROM {t}partitions
WHERE task = %(task)s AND failed ORDER BY changed_at, id LIMIT %(limit)s;

-- partition_keys --
-- Every partition of a task with its window, for reexport filters.
SELECT id, keys, win_start, win_end FROM {t}partitions WHERE task = %(task)s;

-- reexport --
-- Queue one partition again even if its bytes are unchanged.
UPDATE {t}partitions
SET version = version + 1, forced = true, failed = false, attempts = 0, next_attempt_at = NULL,
    changed_at = CASE WHEN version = exported_version THEN now() ELSE changed_at END
WHERE id = %(id)s;

-- reset_failed --
-- Re-queue a task's parked partitions.
UPDATE {t}partitions
SET failed = false, attempts = 0, next_attempt_at = NULL
WHERE task = %(task)s AND failed;

-- take_changes --
-- Remove up to limit captured changes of a task from the inbox, returning them.
DELETE FROM {t}changes
WHERE id IN (SELECT id FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING keys, bin;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = %(task)s;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back).
INSERT INTO {t}scans AS s (task, high_water, scanned_at) VALUES (%(task)s, %(high_water)s, now())
ON CONFLICT (task) DO UPDATE
SET high_water = greatest(s.high_water, EXCLUDED.high_water), scanned_at = now();

-- wm_ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
INSERT INTO {t}watermarks (task, entity) VALUES (%(task)s, %(entity)s) ON CONFLICT (task, entity) DO NOTHING;

-- wm_claim --
-- Claim the watermark rows of the given entities that nobody holds (or whose lease expired).
WITH candidate AS (
    SELECT id FROM {t}watermarks
    WHERE task = %(task)s AND entity = ANY(%(entities)s) AND (claim_token IS NULL OR lease_until < now())
    ORDER BY entity
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}watermarks AS w
SET claim_token = %(token)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = w.attempts + CASE WHEN w.claim_token IS NULL THEN 0 ELSE 1 END
FROM candidate
WHERE w.id = candidate.id
RETURNING w.id, w.entity, w.watermark, w.pending_start, w.pending_end, w.pending_type, w.attempts;

-- wm_set_pending --
-- Remember the window a claim is exporting, so a crashed export is redone with the same window.
UPDATE {t}watermarks SET pending_start = %(start)s, pending_end = %(end)s, pending_type = %(type)s
WHERE id = %(id)s AND claim_token = %(token)s;

-- wm_commit --
-- Advance the watermark to the window end (compare-and-set: never backwards), fenced by the claim.
UPDATE {t}watermarks
SET watermark = CASE WHEN watermark IS NULL OR watermark < %(end)s THEN %(end)s ELSE watermark END,
    claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    -- A failed watermark window is done once the watermark passes it. A failed re-export is
    -- not (it went to its own window and destination): it stays, with its attempts, for redrive.
    attempts = CASE WHEN failed_mode = 'reexport' THEN attempts ELSE 0 END,
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE NULL END,
    failed_start = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_start END,
    failed_type = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_type END,
    failed_end = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_end END,
    failed_mode = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_mode END,
    exported_at = now(), rows = %(rows)s, path = %(path)s
WHERE id = %(id)s AND claim_token = %(token)s;

-- wm_fail --
-- Record a failed window (for redrive) and give the claim back; the watermark does not move.
UPDATE {t}watermarks
SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    -- an entity that never exported keeps its bootstrap start, so the next run covers the failed window
    watermark = CASE WHEN watermark IS NULL AND %(mode)s = 'watermark' THEN %(start)s ELSE watermark END,
    attempts = attempts + 1, last_error = %(error)s,
    failed_start = %(start)s, failed_end = %(end)s, failed_type = %(type)s, failed_mode = %(mode)s, failed_destination = %(destination)s
WHERE task = %(task)s AND entity = %(entity)s
  AND (%(token)s::uuid IS NULL OR claim_token = %(token)s::uuid);

-- wm_clear_failure --
-- Forget a recorded failure once its window was exported (a redriven re-export).
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = %(task)s AND entity = %(entity)s;

-- wm_renew --
-- Extend the lease of the watermark rows held under a claim token (a long window export).
UPDATE {t}watermarks SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (SELECT id FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity FOR UPDATE);

-- wm_release --
-- Give back every watermark row still held under a claim token.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id IN (SELECT id FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity FOR UPDATE);

-- wm_list --
-- Every watermark row of a task.
SELECT entity, watermark, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, rows, path, claim_token IS NOT NULL AND lease_until >= now() AS claimed
FROM {t}watermarks WHERE task = %(task)s ORDER BY entity;

-- wm_delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = %(task)s AND entity = %(entity)s;

-- run_start --
-- Record the start of a run with its tag and request.
INSERT INTO {t}runs (id, task, tag, request, heartbeat_at) VALUES (%(id)s, %(task)s, %(tag)s, %(request)s, now());

-- run_heartbeat --
-- A run in progress is still alive.
UPDATE {t}runs SET heartbeat_at = now() WHERE id = %(id)s AND finished_at IS NULL;

-- run_finish --
-- Record the end of a run with its summary.
UPDATE {t}runs SET finished_at = now(), summary = %(summary)s WHERE id = %(id)s;

-- run_get --
-- One run.
SELECT id, task, tag, request, started_at, finished_at, summary,
       extract(epoch FROM now() - coalesce(heartbeat_at, started_at)) AS silent
FROM {t}runs WHERE id = %(id)s;

-- arc_unfinished --
-- The oldest archive run of a task that did not finish (recovered before any new run).
SELECT id, boundary, path, state, rows, bytes, checksum FROM {t}archive_runs
WHERE task = %(task)s AND state <> 'done' ORDER BY started_at LIMIT 1;

-- arc_path_taken --
-- Whether an archive file name was already used by a run of the task.
SELECT 1 FROM {t}archive_runs WHERE task = %(task)s AND path = %(path)s;

-- arc_start --
-- Record a new archive run before anything is written.
INSERT INTO {t}archive_runs (id, task, boundary, path, state) VALUES (%(id)s, %(task)s, %(boundary)s, %(path)s, 'exporting');

-- arc_published --
-- The archive file is published and verified: rows, bytes and checksum.
UPDATE {t}archive_runs SET state = 'published', rows = %(rows)s, bytes = %(bytes)s, checksum = %(checksum)s
WHERE id = %(id)s;

-- arc_done --
-- The delete committed (or there is none): the run is finished.
UPDATE {t}archive_runs SET state = 'done', deleted = %(deleted)s, finished_at = now() WHERE id = %(id)s;

-- arc_lock --
-- Try to take the session lock of one archive task (a connection of its own holds it until it closes).
SELECT pg_try_advisory_lock(hashtext(%(scope)s), hashtext(%(task)s));

-- arc_lock_held --
-- Whether this session still holds the lock of one archive task (a two-key advisory lock has objsubid 2).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 2
      AND classid = hashtext(%(scope)s)::oid AND objid = hashtext(%(task)s)::oid
);

-- arc_witness_exists --
-- In the source database: whether the table of archive delete markers exists.
SELECT 1 FROM pg_tables WHERE schemaname = %(schema)s AND tablename = 'archive_commits';

-- arc_witness_create --
-- In the source database: the table of archive delete markers (used when the ledger is elsewhere).
SELECT pg_advisory_xact_lock(hashtext('sluicegate ledger schema'));
CREATE SCHEMA IF NOT EXISTS {t_schema};
CREATE TABLE IF NOT EXISTS {t}archive_commits (
    run_id uuid PRIMARY KEY,
    task text NOT NULL,
    deleted bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- arc_witness --
-- In the source database, in the delete's transaction: the marker proving that the run's delete committed.
INSERT INTO {t}archive_commits (run_id, task, deleted) VALUES (%(id)s, %(task)s, %(deleted)s);

-- arc_witnessed --
-- In the source database: the rows a run deleted, if its delete committed.
SELECT deleted FROM {t}archive_commits WHERE run_id = %(id)s;

-- tick_claim --
-- Claim one schedule tick of a task; only one scheduler among all replicas gets the row.
INSERT INTO {t}schedule_ticks (task, tick) VALUES (%(task)s, %(tick)s) ON CONFLICT DO NOTHING;

-- run_list --
-- The most recent runs.
SELECT id, task, tag, request, started_at, finished_at, summary,
       extract(epoch FROM now() - coalesce(heartbeat_at, started_at)) AS silent
FROM {t}runs
ORDER BY started_at DESC LIMIT %(limit)s;

-- list_partitions --
-- A page of a task's partitions with their state.
SELECT * FROM (
    SELECT pkey, keys, version, exported_version, attempts, last_error, path, rows, bytes, exported_at,
           win_start, win_end,
           CASE WHEN failed THEN 'failed'
                WHEN version = exported_version THEN 'exported'
                WHEN claim_token IS NOT NULL AND lease_until >= now() THEN 'claimed'
                WHEN win_end > now() - make_interval(secs => %(settle)s) THEN 'waiting'
                ELSE 'pending' END AS state
    FROM {t}partitions WHERE task = %(task)s
) AS p
WHERE %(state)s::text IS NULL OR state = %(state)s::text
ORDER BY win_start NULLS FIRST, pkey
LIMIT %(limit)s OFFSET %(offset)s;

-- wm_release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = %(id)s AND claim_token = %(token)s;
