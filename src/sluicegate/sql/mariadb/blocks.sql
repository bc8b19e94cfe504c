-- Blocks of blocks tasks: one row per (task, key value, block, stage) (ledger/blocks.py).
-- Each block is named after the method that runs it. Times: UTC seconds (DOUBLE); leases on the
-- server's clock. Lists of stages and of key values are JSON arrays; calls about a range see only
-- the key values the task has now (NULL: all). MariaDB evaluates the assignments of an UPDATE left
-- to right, each seeing the ones before it: every SET below assigns a column only after the
-- expressions that read its old value.

-- ensure --
-- Create one (block, stage) row when a range is asked for; an existing row is kept as it is.
INSERT INTO {t}blocks (task, key_value, block_start, block_end, label, stage, position, created_at)
VALUES (%(task)s, %(key_value)s, %(block_start)s, %(block_end)s, %(label)s, %(stage)s, %(position)s,
        UNIX_TIMESTAMP(NOW(6)))
ON DUPLICATE KEY UPDATE position = VALUES(position);

-- claim --
-- Lock up to limit runnable (block, stage) rows, skipping rows another worker holds: due, in the
-- range, previous stage done; pending ones, or with taken the rows of dead claims (running under an
-- expired lease; see postgresql/blocks.sql), and whether the dead claim held the row alone from the
-- start (a lone token).
-- claim_take then takes them, in the same transaction.
SELECT b.id, SUBSTRING(b.claim_token, 15, 1) = '8'
FROM {t}blocks AS b
WHERE b.task = %(task)s
  AND JSON_CONTAINS(%(stages)s, JSON_QUOTE(b.stage))
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(b.key_value)))
  AND (%(time_min)s IS NULL OR b.block_end > %(time_min)s)
  AND (%(time_max)s IS NULL OR b.block_end <= %(time_max)s)
  AND (CASE WHEN %(taken)s THEN b.status = 'running' AND b.lease_until < UNIX_TIMESTAMP(NOW(6))
            ELSE b.status = 'pending' END)
  AND (b.next_attempt_at IS NULL OR b.next_attempt_at <= UNIX_TIMESTAMP(NOW(6)))
  AND (b.position = 0 OR EXISTS (
        SELECT 1 FROM {t}blocks AS p
        WHERE p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
          AND p.position = b.position - 1 AND p.status = 'done'))
ORDER BY b.block_start, b.key_value, b.position
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- claim_take --
-- Take one locked row under a fresh token and lease (run for each row in one batch round trip);
-- taking over a row its dead claim held alone from the start (claim's second column) counts as an attempt.
UPDATE {t}blocks
SET attempts = attempts + CASE WHEN status = 'running' AND %(alone)s THEN 1 ELSE 0 END,
    status = 'running',
    claim_token = %(token)s,
    lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s,
    started_at = UNIX_TIMESTAMP(NOW(6))
WHERE id = %(id)s;

-- claimed --
-- The rows held under a claim token, as a claim returns them.
SELECT id, key_value, block_start, block_end, stage, position, attempts, forced, artifact, checksum
FROM {t}blocks WHERE claim_token = %(token)s ORDER BY block_start, key_value, position;

-- renew --
-- Extend the lease of every row still held under a claim token.
UPDATE {t}blocks SET lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s WHERE claim_token = %(token)s;

-- hold --
-- Lock a claimed row still held under its token (none: the claim was taken over), before its file
-- is put in place and recorded in the same transaction: a worker whose lease ran out places nothing.
SELECT id FROM {t}blocks WHERE id = %(id)s AND claim_token = %(token)s FOR UPDATE;

-- commit --
-- Record a finished stage (done or no_data) with its counts and artifact; fenced by the claim token.
UPDATE {t}blocks
SET status = %(status)s, claim_token = NULL, lease_until = NULL, next_attempt_at = NULL,
    error = %(error)s, forced = FALSE,
    records_total = %(total)s, records_processed = %(processed)s, records_errors = %(errors)s,
    artifact = %(artifact)s, bytes = %(bytes)s, checksum = %(checksum)s, finished_at = UNIX_TIMESTAMP(NOW(6))
WHERE id = %(id)s AND claim_token = %(token)s;

-- extracted --
-- Where a block's extract stage wrote its artifact (the path recorded when it was done): later
-- stages read it there, not at the path the task's template gives now (it may have been edited).
SELECT artifact FROM {t}blocks
WHERE task = %(task)s AND key_value = %(key_value)s AND block_start = %(block_start)s
  AND stage = %(stage)s AND status = 'done';

-- stale --
-- The files the later stages of a block published, which complete is about to forget (their
-- rows say no_data from then on): deleted by the recorder in the same transaction.
SELECT stage, artifact FROM {t}blocks
WHERE task = %(task)s AND key_value = %(key_value)s AND block_start = %(block_start)s
  AND position > %(position)s AND claim_token IS NULL AND artifact IS NOT NULL;

-- complete --
-- After a stage found no data, the later stages of its block have nothing to do: "no data" too.
UPDATE {t}blocks
SET status = 'no_data', next_attempt_at = NULL, error = NULL, forced = FALSE,
    records_total = 0, records_processed = 0, records_errors = 0,
    artifact = NULL, bytes = NULL, checksum = NULL, finished_at = UNIX_TIMESTAMP(NOW(6))
WHERE task = %(task)s AND key_value = %(key_value)s AND block_start = %(block_start)s
  AND position > %(position)s AND claim_token IS NULL;

-- fail --
-- Give a claimed row back after an error: retry later with backoff, or park it as failed
-- (status and the backoff read attempts before it is counted).
-- counted is 0 when the row is parked for the leases that expired before: no new attempt was made.
UPDATE {t}blocks
SET status = CASE WHEN %(terminal)s OR attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    next_attempt_at = UNIX_TIMESTAMP(NOW(6)) + LEAST(%(backoff)s * POW(2, LEAST(attempts, 20)), 3600),
    claim_token = NULL, lease_until = NULL,
    attempts = attempts + %(counted)s,
    error = %(error)s,
    records_total = coalesce(%(total)s, records_total),
    records_processed = coalesce(%(processed)s, records_processed),
    records_errors = coalesce(%(errors)s, records_errors),
    finished_at = UNIX_TIMESTAMP(NOW(6))
WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- Give back every row still held under a claim token, without counting an attempt.
UPDATE {t}blocks SET status = 'pending', claim_token = NULL, lease_until = NULL
WHERE claim_token = %(token)s;

-- reset --
-- --force: make the stages from a position on pending again, in blocks whose earlier stages are all
-- done and none of whose stages from the position on is running under a live lease (another run's
-- load would commit the old artifact as done over the new extract). (A self-join, not NOT EXISTS on
-- the updated table, which MySQL refuses.)
UPDATE {t}blocks AS b
LEFT JOIN {t}blocks AS p
    ON p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
   AND ((p.position < %(position)s AND p.status <> 'done')
        OR (p.position >= %(position)s AND p.status = 'running'
            AND p.lease_until >= UNIX_TIMESTAMP(NOW(6))))
SET b.status = 'pending', b.claim_token = NULL, b.lease_until = NULL,
    b.attempts = 0, b.next_attempt_at = NULL, b.error = NULL, b.forced = TRUE,
    b.records_total = NULL, b.records_processed = NULL, b.records_errors = NULL
WHERE b.task = %(task)s
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(b.key_value)))
  AND b.block_end > %(time_min)s AND b.block_end <= %(time_max)s
  AND b.position >= %(position)s
  AND p.id IS NULL;

-- busy --
-- --force: the blocks of the range that reset left alone because a stage from the position on is
-- running under a live lease.
SELECT count(DISTINCT b.key_value, b.block_start) FROM {t}blocks AS b
WHERE b.task = %(task)s
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(b.key_value)))
  AND b.block_end > %(time_min)s AND b.block_end <= %(time_max)s
  AND b.position >= %(position)s
  AND b.status = 'running' AND b.lease_until >= UNIX_TIMESTAMP(NOW(6));

-- unpark --
-- --incomplete-only: parked (failed) stages of the range are pending again, with fresh attempts.
UPDATE {t}blocks
SET status = 'pending', attempts = 0, next_attempt_at = NULL
WHERE task = %(task)s
  AND JSON_CONTAINS(%(stages)s, JSON_QUOTE(stage))
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(key_value)))
  AND block_end > %(time_min)s AND block_end <= %(time_max)s
  AND status = 'failed';

-- rows --
-- The (block, stage) rows of a range (for --dry-run and the run's report; no range: every block), oldest
-- first; alone: running under a claim of it alone, a lone token (taking it over is an attempt).
SELECT key_value, block_start, block_end, label, stage, position, status, attempts,
       (status = 'running' AND lease_until < UNIX_TIMESTAMP(NOW(6))) AS expired,
       (next_attempt_at IS NOT NULL AND next_attempt_at > UNIX_TIMESTAMP(NOW(6))) AS backing_off,
       (status = 'running' AND SUBSTRING(claim_token, 15, 1) = '8') AS alone
FROM {t}blocks AS b
WHERE task = %(task)s
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(key_value)))
  AND (%(time_min)s IS NULL OR block_end > %(time_min)s) AND (%(time_max)s IS NULL OR block_end <= %(time_max)s)
ORDER BY block_start, key_value, position;

-- spans --
-- The distinct windows of a range's rows (one per block, whatever the key values and stages):
-- a run compares them with the blocks it asks for, to refuse a grain or zone changed since.
SELECT DISTINCT block_start, block_end FROM {t}blocks
WHERE task = %(task)s
  AND (%(key_values)s IS NULL OR JSON_CONTAINS(%(key_values)s, JSON_QUOTE(key_value)))
  AND block_end > %(time_min)s AND block_end <= %(time_max)s;

-- frontier --
-- The end of the newest block a task's ledger holds (NULL: none): a scheduled tick asks for the
-- blocks after it, so the blocks left out as unsettled, or of a time nothing ran, run later.
SELECT max(block_end) FROM {t}blocks WHERE task = %(task)s;

-- counts --
-- A task's rows per stage and status, with record counts.
SELECT stage, min(position), status, count(*), coalesce(sum(records_errors), 0)
FROM {t}blocks WHERE task = %(task)s
GROUP BY stage, status ORDER BY min(position), status;

-- failures --
-- The parked (block, stage) rows of a task with their error.
SELECT key_value, label, stage, attempts, error FROM {t}blocks
WHERE task = %(task)s AND status = 'failed' ORDER BY block_start, key_value, position LIMIT %(limit)s;

-- list_rows --
-- A page of a task's (block, stage) rows, optionally of one status.
SELECT key_value, label, block_start, block_end, stage, status, attempts, error, artifact,
       records_total, records_processed, records_errors, bytes, started_at, finished_at
FROM {t}blocks
WHERE task = %(task)s AND (%(status)s IS NULL OR status = %(status)s)
ORDER BY block_start, key_value, position
LIMIT %(limit)s OFFSET %(offset)s;
