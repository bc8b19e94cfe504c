-- Evaluations of aggregate tasks, one row per (task, tick) (ledger/aggregates.py).
-- Each block is named after the method that runs it. Times are UTC seconds since the epoch.

-- claim --
-- Claim one tick of an aggregate task: a new tick, a failed one whose retry time has come, or one
-- whose claim's lease ran out. Exactly one caller gets a row back.
INSERT INTO {t}aggregate_evaluations
    (task, tick, window_start, window_end, state, claim_token, lease_until, attempts, started_at)
VALUES (:task, :tick, :window_start, :window_end, 'running', :token, :now + :lease, 1, :now)
ON CONFLICT (task, tick) DO UPDATE SET
    state = 'running', claim_token = excluded.claim_token, lease_until = excluded.lease_until,
    attempts = {t}aggregate_evaluations.attempts + 1, started_at = :now, finished_at = NULL, error = NULL
WHERE ({t}aggregate_evaluations.state = 'failed'
       AND coalesce({t}aggregate_evaluations.next_attempt_at, :now) <= :now)
   OR ({t}aggregate_evaluations.state = 'running' AND {t}aggregate_evaluations.lease_until < :now)
RETURNING attempts;

-- renew --
-- Extend a held claim; no row when the claim was lost (its lease ran out and another worker took it).
UPDATE {t}aggregate_evaluations SET lease_until = :now + :lease
WHERE task = :task AND tick = :tick AND claim_token = :token AND state = 'running';

-- finish --
-- Record a finished evaluation, fenced by its claim (in the table sink's transaction when the sink
-- and the ledger share a database).
UPDATE {t}aggregate_evaluations SET
    state = :state, claim_token = NULL, lease_until = NULL, rows = :rows, seconds = :seconds,
    path = :path, error = :error, finished_at = :now, next_attempt_at = NULL
WHERE task = :task AND tick = :tick AND claim_token = :token;

-- newer --
-- The newest tick of an aggregate task after a given one that is done, or being evaluated under a
-- live claim: an older evaluation that finds one yields (superseded) instead of writing over it.
SELECT max(tick) FROM {t}aggregate_evaluations
WHERE task = :task AND tick > :tick
  AND (state = 'done' OR (state = 'running' AND lease_until >= :now));

-- fail --
-- Record a failed evaluation, fenced by its claim; it may be claimed again after the delay.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, seconds = :seconds, error = :error,
    finished_at = :now, next_attempt_at = :now + :delay
WHERE task = :task AND tick = :tick AND claim_token = :token;

-- release --
-- Give a claimed tick back without an attempt, fenced by its claim: its evaluation lost the source
-- (a restart, a network failure), no fault of its own. It may be claimed again at once.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, attempts = attempts - 1,
    seconds = :seconds, error = :error, finished_at = :now, next_attempt_at = NULL
WHERE task = :task AND tick = :tick AND claim_token = :token;

-- status --
-- An aggregate task's evaluations by state, its latest done tick and its latest failure. A failed
-- row without a retry time was given back (release: its select lost the source), not charged: it
-- counts as waiting for the source, with its error, when it is the newest tick.
SELECT count(*) FILTER (WHERE state = 'done') AS done,
       count(*) FILTER (WHERE state = 'failed' AND next_attempt_at IS NOT NULL) AS failed,
       count(*) FILTER (WHERE state = 'running' AND lease_until >= :now) AS running,
       count(*) FILTER (WHERE state = 'superseded') AS superseded,
       max(tick) FILTER (WHERE state = 'done') AS latest,
       (SELECT error FROM {t}aggregate_evaluations f
        WHERE f.task = :task AND f.state = 'failed' AND f.next_attempt_at IS NOT NULL
        ORDER BY f.tick DESC LIMIT 1) AS last_error,
       (SELECT CASE WHEN n.state = 'failed' AND n.next_attempt_at IS NULL THEN coalesce(n.error, '') END
        FROM {t}aggregate_evaluations n WHERE n.task = :task ORDER BY n.tick DESC LIMIT 1) AS source_error
FROM {t}aggregate_evaluations WHERE task = :task;

-- recent --
-- The latest evaluations of an aggregate task, newest tick first.
SELECT tick, window_start, window_end, state, attempts, rows, seconds, path, error, started_at, finished_at,
       next_attempt_at
FROM {t}aggregate_evaluations WHERE task = :task ORDER BY tick DESC LIMIT :limit;

-- prune --
-- Forget the evaluations of ticks before a time (not one being evaluated): one row per tick adds up
-- (about 105,000 a year at 5 minutes).
DELETE FROM {t}aggregate_evaluations
WHERE task = :task AND tick < :before AND state <> 'running';
