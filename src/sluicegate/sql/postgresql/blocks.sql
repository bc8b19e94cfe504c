-- Blocks of blocks tasks: one row per (task, key value, block, stage) (ledger/blocks.py).
-- Each block is named after the method that runs it. Calls about a range see only the key values
-- the task has now (an array; NULL: all).

-- ensure --
-- Create one (block, stage) row when a range is asked for; an existing row is kept as it is.
INSERT INTO {t}blocks AS b (task, key_value, block_start, block_end, label, stage, position)
VALUES (%(task)s, %(key_value)s, %(block_start)s, %(block_end)s, %(label)s, %(stage)s, %(position)s)
ON CONFLICT (task, key_value, block_start, stage) DO UPDATE SET position = EXCLUDED.position
WHERE b.position <> EXCLUDED.position;

-- claim --
-- Claim up to limit runnable (block, stage) rows: due, in the range, and whose previous stage of
-- the block is done; pending ones, or with taken the rows of dead claims (running under an expired
-- lease). Taking over a row its dead claim held alone from the start counts as an attempt (a claim
-- of one row has a lone token, its UUID's version digit 8: see ledger/partitions.lone_token): a dead
-- batch's rows are taken over one at a time (limit 1), uncounted, the last one left of the batch too,
-- so a block that kills its worker is counted for its own deaths, and the others of its batch are not.
WITH candidate AS (
    SELECT b.id FROM {t}blocks AS b
    WHERE b.task = %(task)s
      AND b.stage = ANY(%(stages)s::text[])
      AND (%(key_values)s::text[] IS NULL OR b.key_value = ANY(%(key_values)s::text[]))
      AND (%(time_min)s::timestamptz IS NULL OR b.block_end > %(time_min)s::timestamptz)
      AND (%(time_max)s::timestamptz IS NULL OR b.block_end <= %(time_max)s::timestamptz)
      AND (CASE WHEN %(taken)s THEN b.status = 'running' AND b.lease_until < now()
                ELSE b.status = 'pending' END)
      AND (b.next_attempt_at IS NULL OR b.next_attempt_at <= now())
      AND (b.position = 0 OR EXISTS (
            SELECT 1 FROM {t}blocks AS p
            WHERE p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
              AND p.position = b.position - 1 AND p.status = 'done'))
    ORDER BY b.block_start, b.key_value, b.position
    LIMIT %(limit)s
    FOR UPDATE OF b SKIP LOCKED
)
UPDATE {t}blocks AS b
SET status = 'running',
    claim_token = %(token)s,
    lease_until = now() + make_interval(secs => %(lease)s),
    attempts = b.attempts + CASE WHEN b.status = 'running' AND substr(b.claim_token::text, 15, 1) = '8'
        THEN 1 ELSE 0 END,
    started_at = now()
FROM candidate
WHERE b.id = candidate.id
RETURNING b.id, b.key_value, b.block_start, b.block_end, b.stage, b.position, b.attempts, b.forced,
          b.artifact, b.checksum;

-- renew --
-- Extend the lease of every row still held under a claim token.
UPDATE {t}blocks SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (SELECT id FROM {t}blocks WHERE claim_token = %(token)s ORDER BY id FOR UPDATE);

-- lone --
-- Put the one row a claim took under a lone token (a claim of one: see claim).
UPDATE {t}blocks SET claim_token = %(lone)s WHERE id = %(id)s AND claim_token = %(token)s;

-- hold --
-- Lock a claimed row still held under its token (none: the claim was taken over), before its file
-- is put in place and recorded in the same transaction: a worker whose lease ran out places nothing.
SELECT id FROM {t}blocks WHERE id = %(id)s AND claim_token = %(token)s FOR UPDATE;

-- commit --
-- Record a finished stage (done or no_data) with its counts and artifact; fenced by the claim token.
UPDATE {t}blocks
SET status = %(status)s, claim_token = NULL, lease_until = NULL, next_attempt_at = NULL,
    error = %(error)s, forced = false,
    records_total = %(total)s, records_processed = %(processed)s, records_errors = %(errors)s,
    artifact = %(artifact)s, bytes = %(bytes)s, checksum = %(checksum)s, finished_at = now()
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
SET status = 'no_data', next_attempt_at = NULL, error = NULL, forced = false,
    records_total = 0, records_processed = 0, records_errors = 0,
    artifact = NULL, bytes = NULL, checksum = NULL, finished_at = now()
WHERE task = %(task)s AND key_value = %(key_value)s AND block_start = %(block_start)s
  AND position > %(position)s AND claim_token IS NULL;

-- fail --
-- Give a claimed row back after an error: retry later with backoff, or park it as failed.
-- counted is 0 when the row is parked for the leases that expired before: no new attempt was made.
UPDATE {t}blocks
SET status = CASE WHEN %(terminal)s OR attempts + 1 >= %(max_attempts)s THEN 'failed' ELSE 'pending' END,
    claim_token = NULL, lease_until = NULL,
    attempts = attempts + %(counted)s,
    error = %(error)s,
    records_total = coalesce(%(total)s, records_total),
    records_processed = coalesce(%(processed)s, records_processed),
    records_errors = coalesce(%(errors)s, records_errors),
    next_attempt_at = now() + make_interval(secs => least(%(backoff)s * power(2, attempts), 3600)),
    finished_at = now()
WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- Give back every row still held under a claim token, without counting an attempt.
UPDATE {t}blocks SET status = 'pending', claim_token = NULL, lease_until = NULL
WHERE id IN (SELECT id FROM {t}blocks WHERE claim_token = %(token)s ORDER BY id FOR UPDATE);

-- reset --
-- --force: make the stages from a position on pending again, in blocks whose earlier stages are all
-- done and none of whose stages from the position on is running under a live lease (another run's
-- load would commit the old artifact as done over the new extract).
UPDATE {t}blocks AS b
SET status = 'pending', claim_token = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, error = NULL, forced = true,
    records_total = NULL, records_processed = NULL, records_errors = NULL
WHERE b.task = %(task)s
  AND (%(key_values)s::text[] IS NULL OR b.key_value = ANY(%(key_values)s::text[]))
  AND b.block_end > %(time_min)s AND b.block_end <= %(time_max)s
  AND b.position >= %(position)s
  AND NOT EXISTS (
      SELECT 1 FROM {t}blocks AS p
      WHERE p.task = b.task AND p.key_value = b.key_value AND p.block_start = b.block_start
        AND ((p.position < %(position)s AND p.status <> 'done')
             OR (p.position >= %(position)s AND p.status = 'running' AND p.lease_until >= now())));

-- busy --
-- --force: the blocks of the range that reset left alone because a stage from the position on is
-- running under a live lease (another run's; forcing its earlier stage would let it commit old data).
SELECT count(DISTINCT (b.key_value, b.block_start)) FROM {t}blocks AS b
WHERE b.task = %(task)s
  AND (%(key_values)s::text[] IS NULL OR b.key_value = ANY(%(key_values)s::text[]))
  AND b.block_end > %(time_min)s AND b.block_end <= %(time_max)s
  AND b.position >= %(position)s
  AND b.status = 'running' AND b.lease_until >= now();

-- unpark --
-- --incomplete-only: parked (failed) stages of the range are pending again, with fresh attempts.
UPDATE {t}blocks
SET status = 'pending', attempts = 0, next_attempt_at = NULL
WHERE task = %(task)s
  AND stage = ANY(%(stages)s::text[])
  AND (%(key_values)s::text[] IS NULL OR key_value = ANY(%(key_values)s::text[]))
  AND block_end > %(time_min)s AND block_end <= %(time_max)s
  AND status = 'failed';

-- rows --
-- The (block, stage) rows of a range (for --dry-run and the run's report; no range: every block), oldest
-- first; alone: running under a claim of it alone, a lone token (taking it over is an attempt).
SELECT key_value, block_start, block_end, label, stage, position, status, attempts,
       (status = 'running' AND lease_until < now()) AS expired,
       (next_attempt_at IS NOT NULL AND next_attempt_at > now()) AS backing_off,
       (status = 'running' AND substr(claim_token::text, 15, 1) = '8') AS alone
FROM {t}blocks AS b
WHERE task = %(task)s
  AND (%(key_values)s::text[] IS NULL OR key_value = ANY(%(key_values)s::text[]))
  AND (%(time_min)s::timestamptz IS NULL OR block_end > %(time_min)s::timestamptz)
  AND (%(time_max)s::timestamptz IS NULL OR block_end <= %(time_max)s::timestamptz)
ORDER BY block_start, key_value, position;

-- spans --
-- The distinct windows of a range's rows (one per block, whatever the key values and stages):
-- a run compares them with the blocks it asks for, to refuse a grain or zone changed since.
SELECT DISTINCT block_start, block_end FROM {t}blocks
WHERE task = %(task)s
  AND (%(key_values)s::text[] IS NULL OR key_value = ANY(%(key_values)s::text[]))
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
WHERE task = %(task)s AND (%(status)s::text IS NULL OR status = %(status)s::text)
ORDER BY block_start, key_value, position
LIMIT %(limit)s OFFSET %(offset)s;
