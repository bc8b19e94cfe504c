-- Blocks of blocks tasks: one row per (task, key value, block, stage) (ledger/blocks.py).
-- Each block is named after the method that runs it. Lists of stages and of key values are JSON
-- arrays (json_each). Calls about a range see only the key values the task has now (NULL: all).

-- ensure --
-- Create one (block, stage) row when a range is asked for; an existing row is kept as it is.
INSERT INTO {t}blocks (task, key_value, block_start, block_end, label, stage, position, created_at)
VALUES (:task, :key_value, :block_start, :block_end, :label, :stage, :position, :now)
ON CONFLICT (task, key_value, block_start, stage) DO UPDATE SET position = excluded.position
WHERE position <> excluded.position;

-- claim --
-- Claim up to limit runnable (block, stage) rows (run inside BEGIN IMMEDIATE): due, in the range,
-- previous stage done; pending ones, or with taken the rows of dead claims (running under an expired
-- lease). Taking over a row its dead claim held alone from the start (a lone token) counts as an
-- attempt (see postgresql/blocks.sql).
UPDATE {t}blocks
SET status = 'running',
    claim_token = :token,
    lease_until = :now + :lease,
    attempts = attempts + CASE WHEN status = 'running' AND substr(claim_token, 15, 1) = '8' THEN 1 ELSE 0 END,
    started_at = :now
WHERE id IN (
    SELECT b.id FROM {t}blocks AS b
    WHERE b.task = :task
      AND b.stage IN (SELECT value FROM json_each(:stages))
      AND (:key_values IS NULL OR b.key_value IN (SELECT value FROM json_each(:key_values)))
      AND (:time_min IS NULL OR b.block_end > :time_min)
      AND (:time_max IS NULL OR b.block_end <= :time_max)
      AND (CASE WHEN :taken THEN b.status = 'running' AND b.lease_until < :now
                ELSE b.status = 'pending' END)
      AND (b.next_attempt_at IS NULL OR b.next_attempt_at <= :now)
      AND (b.position = 0 OR EXISTS (
            SELECT 1 FROM {t}blocks AS p
            WHERE p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
              AND p.position = b.position - 1 AND p.status = 'done'))
    ORDER BY b.block_start, b.key_value, b.position
    LIMIT :limit
)
RETURNING id, key_value, block_start, block_end, stage, position, attempts, forced, artifact, checksum;

-- renew --
-- Extend the lease of every row still held under a claim token.
UPDATE {t}blocks SET lease_until = :now + :lease WHERE claim_token = :token;

-- lone --
-- Put the one row a claim took under a lone token (a claim of one: see postgresql/blocks.sql).
UPDATE {t}blocks SET claim_token = :lone WHERE id = :id AND claim_token = :token;

-- hold --
-- Lock a claimed row still held under its token (none: the claim was taken over), before its file
-- is put in place and recorded in the same transaction: a worker whose lease ran out places nothing.
SELECT id FROM {t}blocks WHERE id = :id AND claim_token = :token;

-- commit --
-- Record a finished stage (done or no_data) with its counts and artifact; fenced by the claim token.
UPDATE {t}blocks
SET status = :status, claim_token = NULL, lease_until = NULL, next_attempt_at = NULL,
    error = :error, forced = 0,
    records_total = :total, records_processed = :processed, records_errors = :errors,
    artifact = :artifact, bytes = :bytes, checksum = :checksum, finished_at = :now
WHERE id = :id AND claim_token = :token;

-- extracted --
-- Where a block's extract stage wrote its artifact (the path recorded when it was done): later
-- stages read it there, not at the path the task's template gives now (it may have been edited).
SELECT artifact FROM {t}blocks
WHERE task = :task AND key_value = :key_value AND block_start = :block_start
  AND stage = :stage AND status = 'done';

-- stale --
-- The files the later stages of a block published, which complete is about to forget (their
-- rows say no_data from then on): deleted by the recorder in the same transaction.
SELECT stage, artifact FROM {t}blocks
WHERE task = :task AND key_value = :key_value AND block_start = :block_start
  AND position > :position AND claim_token IS NULL AND artifact IS NOT NULL;

-- complete --
-- After a stage found no data, the later stages of its block have nothing to do: "no data" too.
UPDATE {t}blocks
SET status = 'no_data', next_attempt_at = NULL, error = NULL, forced = 0,
    records_total = 0, records_processed = 0, records_errors = 0,
    artifact = NULL, bytes = NULL, checksum = NULL, finished_at = :now
WHERE task = :task AND key_value = :key_value AND block_start = :block_start
  AND position > :position AND claim_token IS NULL;

-- fail --
-- Give a claimed row back after an error: retry later with backoff, or park it as failed.
-- counted is 0 when the row is parked for the leases that expired before: no new attempt was made.
UPDATE {t}blocks
SET status = CASE WHEN :terminal OR attempts + 1 >= :max_attempts THEN 'failed' ELSE 'pending' END,
    claim_token = NULL, lease_until = NULL,
    attempts = attempts + :counted,
    error = :error,
    records_total = coalesce(:total, records_total),
    records_processed = coalesce(:processed, records_processed),
    records_errors = coalesce(:errors, records_errors),
    next_attempt_at = :now + min(:backoff * (1 << min(attempts, 20)), 3600),
    finished_at = :now
WHERE id = :id AND claim_token = :token;

-- release --
-- Give back every row still held under a claim token, without counting an attempt.
UPDATE {t}blocks SET status = 'pending', claim_token = NULL, lease_until = NULL
WHERE claim_token = :token AND status = 'running';

-- reset --
-- --force: make the stages from a position on pending again, in blocks whose earlier stages are all
-- done and none of whose stages from the position on is running under a live lease (another run's
-- load would commit the old artifact as done over the new extract).
UPDATE {t}blocks
SET status = 'pending', claim_token = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, error = NULL, forced = 1,
    records_total = NULL, records_processed = NULL, records_errors = NULL
WHERE id IN (
    SELECT b.id FROM {t}blocks AS b
    WHERE b.task = :task
      AND (:key_values IS NULL OR b.key_value IN (SELECT value FROM json_each(:key_values)))
      AND b.block_end > :time_min AND b.block_end <= :time_max
      AND b.position >= :position
      AND NOT EXISTS (
          SELECT 1 FROM {t}blocks AS p
          WHERE p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
            AND ((p.position < :position AND p.status <> 'done')
                 OR (p.position >= :position AND p.status = 'running' AND p.lease_until >= :now)))
);

-- busy --
-- --force: the blocks of the range that reset left alone because a stage from the position on is
-- running under a live lease (another run's; forcing its earlier stage would let it commit old data).
SELECT count(DISTINCT b.key_value || ' ' || b.block_start) FROM {t}blocks AS b
WHERE b.task = :task
  AND (:key_values IS NULL OR b.key_value IN (SELECT value FROM json_each(:key_values)))
  AND b.block_end > :time_min AND b.block_end <= :time_max
  AND b.position >= :position
  AND b.status = 'running' AND b.lease_until >= :now;

-- unpark --
-- --incomplete-only: parked (failed) stages of the range are pending again, with fresh attempts.
UPDATE {t}blocks
SET status = 'pending', attempts = 0, next_attempt_at = NULL
WHERE task = :task
  AND stage IN (SELECT value FROM json_each(:stages))
  AND (:key_values IS NULL OR key_value IN (SELECT value FROM json_each(:key_values)))
  AND block_end > :time_min AND block_end <= :time_max
  AND status = 'failed';

-- rows --
-- The (block, stage) rows of a range (for --dry-run and the run's report; no range: every block), oldest
-- first; alone: running under a claim of it alone, a lone token (taking it over is an attempt).
SELECT key_value, block_start, block_end, label, stage, position, status, attempts,
       (status = 'running' AND lease_until < :now) AS expired,
       (next_attempt_at IS NOT NULL AND next_attempt_at > :now) AS backing_off,
       (status = 'running' AND substr(claim_token, 15, 1) = '8') AS alone
FROM {t}blocks AS b
WHERE task = :task
  AND (:key_values IS NULL OR key_value IN (SELECT value FROM json_each(:key_values)))
  AND (:time_min IS NULL OR block_end > :time_min) AND (:time_max IS NULL OR block_end <= :time_max)
ORDER BY block_start, key_value, position;

-- spans --
-- The distinct windows of a range's rows (one per block, whatever the key values and stages):
-- a run compares them with the blocks it asks for, to refuse a grain or zone changed since.
SELECT DISTINCT block_start, block_end FROM {t}blocks
WHERE task = :task
  AND (:key_values IS NULL OR key_value IN (SELECT value FROM json_each(:key_values)))
  AND block_end > :time_min AND block_end <= :time_max;

-- frontier --
-- The end of the newest block a task's ledger holds (NULL: none): a scheduled tick asks for the
-- blocks after it, so the blocks left out as unsettled, or of a time nothing ran, run later.
SELECT max(block_end) FROM {t}blocks WHERE task = :task;

-- counts --
-- A task's rows per stage and status, with record counts.
SELECT stage, min(position), status, count(*), coalesce(sum(records_errors), 0)
FROM {t}blocks WHERE task = :task
GROUP BY stage, status ORDER BY min(position), status;

-- failures --
-- The parked (block, stage) rows of a task with their error.
SELECT key_value, label, stage, attempts, error FROM {t}blocks
WHERE task = :task AND status = 'failed' ORDER BY block_start, key_value, position LIMIT :limit;

-- list_rows --
-- A page of a task's (block, stage) rows, optionally of one status.
SELECT key_value, label, block_start, block_end, stage, status, attempts, error, artifact,
       records_total, records_processed, records_errors, bytes, started_at, finished_at
FROM {t}blocks
WHERE task = :task AND (:status IS NULL OR status = :status)
ORDER BY block_start, key_value, position
LIMIT :limit OFFSET :offset;
