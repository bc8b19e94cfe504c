-- Evaluations of aggregate tasks, one row per (task, tick) (ledger/aggregates.py).
-- Each block is named after the method that runs it.

-- claim --
-- Claim one tick of an aggregate task: a new tick, a failed one whose retry time has come, or one
-- whose claim's lease ran out. Exactly one caller gets a row back.
INSERT INTO {t}aggregate_evaluations AS e
    (task, tick, window_start, window_end, state, claim_token, lease_until, attempts, started_at)
VALUES (%(task)s, %(tick)s, %(window_start)s, %(window_end)s, 'running', %(token)s,
        now() + make_interval(secs => %(lease)s), 1, now())
ON CONFLICT (task, tick) DO UPDATE SET
    state = 'running', claim_token = EXCLUDED.claim_token, lease_until = EXCLUDED.lease_until,
    attempts = e.attempts + 1, started_at = now(), finished_at = NULL, error = NULL
WHERE (e.state = 'failed' AND coalesce(e.next_attempt_at, now()) <= now())
   OR (e.state = 'running' AND e.lease_until < now())
RETURNING attempts;

-- renew --
-- Extend a held claim; no row when the claim was lost (its lease ran out and another worker took it).
UPDATE {t}aggregate_evaluations SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s AND state = 'running';

-- finish --
-- Record a finished evaluation, fenced by its claim (in the table sink's transaction when the sink
-- and the ledger share a database).
UPDATE {t}aggregate_evaluations SET
    state = %(state)s, claim_token = NULL, lease_until = NULL, rows = %(rows)s, seconds = %(seconds)s,
    path = %(path)s, error = %(error)s, finished_at = now(), next_attempt_at = NULL
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- newer --
-- The newest tick of an aggregate task after a given one that is done, or being evaluated under a
-- live claim: an older evaluation that finds one yields (superseded) instead of writing over it.
SELECT max(tick) FROM {t}aggregate_evaluations
WHERE task = %(task)s AND tick > %(tick)s
  AND (state = 'done' OR (state = 'running' AND lease_until >= now()));

-- fail --
-- Record a failed evaluation, fenced by its claim; it may be claimed again after the delay.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, seconds = %(seconds)s, error = %(error)s,
    finished_at = now(), next_attempt_at = now() + make_interval(secs => %(delay)s)
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- release --
-- Give a claimed tick back without an attempt, fenced by its claim: its evaluation lost the source
-- (a restart, a network failure), no fault of its own. It may be claimed again at once.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, attempts = attempts - 1,
    seconds = %(seconds)s, error = %(error)s, finished_at = now(), next_attempt_at = NULL
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- status --
-- An aggregate task's evaluations by state, its latest done tick and its latest failure. A failed
-- row without a retry time was given back (release: its select lost the source), not charged: it
-- counts as waiting for the source, with its error, when it is the newest tick.
SELECT count(*) FILTER (WHERE state = 'done') AS done,
       count(*) FILTER (WHERE state = 'failed' AND next_attempt_at IS NOT NULL) AS failed,
       count(*) FILTER (WHERE state = 'running' AND lease_until >= now()) AS running,
       count(*) FILTER (WHERE state = 'superseded') AS superseded,
       max(tick) FILTER (WHERE state = 'done') AS latest,
       (SELECT error FROM {t}aggregate_evaluations f
        WHERE f.task = %(task)s AND f.state = 'failed' AND f.next_attempt_at IS NOT NULL
        ORDER BY f.tick DESC LIMIT 1) AS last_error,
       (SELECT CASE WHEN n.state = 'failed' AND n.next_attempt_at IS NULL THEN coalesce(n.error, '') END
        FROM {t}aggregate_evaluations n WHERE n.task = %(task)s ORDER BY n.tick DESC LIMIT 1) AS source_error
FROM {t}aggregate_evaluations WHERE task = %(task)s;

-- recent --
-- The latest evaluations of an aggregate task, newest tick first.
SELECT tick, window_start, window_end, state, attempts, rows, seconds, path, error, started_at, finished_at,
       next_attempt_at
FROM {t}aggregate_evaluations WHERE task = %(task)s ORDER BY tick DESC LIMIT %(limit)s;

-- prune --
-- Forget the evaluations of ticks before a time (not one being evaluated): one row per tick adds up
-- (about 105,000 a year at 5 minutes).
DELETE FROM {t}aggregate_evaluations
WHERE task = %(task)s AND tick < %(before)s AND state <> 'running';
