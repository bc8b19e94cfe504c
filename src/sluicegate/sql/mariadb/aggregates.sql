-- Evaluations of aggregate tasks, one row per (task, tick) (ledger/aggregates.py).
-- Each block is named after the method that runs it. Times are UTC seconds (DOUBLE) from the
-- server's clock. MariaDB has neither INSERT ... ON CONFLICT ... WHERE nor RETURNING: a claim is
-- one INSERT ... ON DUPLICATE KEY UPDATE (it locks the row exclusively at once, so concurrent
-- claims queue instead of deadlocking), then claim_attempts reads back who got it.

-- claim --
-- Claim one tick: a new tick, a failed one whose retry time has come, or one whose claim's lease
-- ran out. Assignments run left to right: claim_token goes first, decided on the old row, and
-- every later one asks whether it now holds this caller's (fresh) token.
INSERT INTO {t}aggregate_evaluations
    (task, tick, window_start, window_end, state, claim_token, lease_until, attempts, started_at)
VALUES (%(task)s, %(tick)s, %(window_start)s, %(window_end)s, 'running', %(token)s,
        UNIX_TIMESTAMP(NOW(6)) + %(lease)s, 1, UNIX_TIMESTAMP(NOW(6)))
ON DUPLICATE KEY UPDATE
    claim_token = IF((state = 'failed' AND coalesce(next_attempt_at, 0) <= UNIX_TIMESTAMP(NOW(6)))
                     OR (state = 'running' AND lease_until < UNIX_TIMESTAMP(NOW(6))),
                     VALUES(claim_token), claim_token),
    attempts = IF(claim_token <=> VALUES(claim_token), attempts + 1, attempts),
    state = IF(claim_token <=> VALUES(claim_token), 'running', state),
    lease_until = IF(claim_token <=> VALUES(claim_token), VALUES(lease_until), lease_until),
    started_at = IF(claim_token <=> VALUES(claim_token), VALUES(started_at), started_at),
    finished_at = IF(claim_token <=> VALUES(claim_token), NULL, finished_at),
    error = IF(claim_token <=> VALUES(claim_token), NULL, error);

-- claim_attempts --
-- The attempt number of a tick claimed under a token (no row: another caller has it, or it is done).
SELECT attempts FROM {t}aggregate_evaluations WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- renew --
-- Extend a held claim; no row when the claim was lost (its lease ran out and another worker took it).
UPDATE {t}aggregate_evaluations SET lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s AND state = 'running';

-- finish --
-- Record a finished evaluation, fenced by its claim (in the table sink's transaction when the sink
-- and the ledger share a database).
UPDATE {t}aggregate_evaluations SET
    state = %(state)s, claim_token = NULL, lease_until = NULL, `rows` = %(rows)s, seconds = %(seconds)s,
    path = %(path)s, error = %(error)s, finished_at = UNIX_TIMESTAMP(NOW(6)), next_attempt_at = NULL
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- newer --
-- The newest tick of an aggregate task after a given one that is done, or being evaluated under a
-- live claim: an older evaluation that finds one yields (superseded) instead of writing over it.
SELECT max(tick) FROM {t}aggregate_evaluations
WHERE task = %(task)s AND tick > %(tick)s
  AND (state = 'done' OR (state = 'running' AND lease_until >= UNIX_TIMESTAMP(NOW(6))));

-- fail --
-- Record a failed evaluation, fenced by its claim; it may be claimed again after the delay.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, seconds = %(seconds)s, error = %(error)s,
    finished_at = UNIX_TIMESTAMP(NOW(6)), next_attempt_at = UNIX_TIMESTAMP(NOW(6)) + %(delay)s
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- release --
-- Give a claimed tick back without an attempt, fenced by its claim: its evaluation lost the source
-- (a restart, a network failure), no fault of its own. It may be claimed again at once.
UPDATE {t}aggregate_evaluations SET
    state = 'failed', claim_token = NULL, lease_until = NULL, attempts = attempts - 1,
    seconds = %(seconds)s, error = %(error)s, finished_at = UNIX_TIMESTAMP(NOW(6)), next_attempt_at = NULL
WHERE task = %(task)s AND tick = %(tick)s AND claim_token = %(token)s;

-- status --
-- An aggregate task's evaluations by state, its latest done tick and its latest failure. A failed
-- row without a retry time was given back (release: its select lost the source), not charged: it
-- counts as waiting for the source, with its error, when it is the newest tick.
SELECT coalesce(sum(state = 'done'), 0) AS done,
       coalesce(sum(state = 'failed' AND next_attempt_at IS NOT NULL), 0) AS failed,
       coalesce(sum(state = 'running' AND lease_until >= UNIX_TIMESTAMP(NOW(6))), 0) AS running,
       coalesce(sum(state = 'superseded'), 0) AS superseded,
       max(CASE WHEN state = 'done' THEN tick END) AS latest,
       (SELECT error FROM {t}aggregate_evaluations f
        WHERE f.task = %(task)s AND f.state = 'failed' AND f.next_attempt_at IS NOT NULL
        ORDER BY f.tick DESC LIMIT 1) AS last_error,
       (SELECT CASE WHEN n.state = 'failed' AND n.next_attempt_at IS NULL THEN coalesce(n.error, '') END
        FROM {t}aggregate_evaluations n WHERE n.task = %(task)s ORDER BY n.tick DESC LIMIT 1) AS source_error
FROM {t}aggregate_evaluations WHERE task = %(task)s;

-- recent --
-- The latest evaluations of an aggregate task, newest tick first.
SELECT tick, window_start, window_end, state, attempts, `rows`, seconds, path, error, started_at, finished_at,
       next_attempt_at
FROM {t}aggregate_evaluations WHERE task = %(task)s ORDER BY tick DESC LIMIT %(limit)s;

-- prune --
-- Forget the evaluations of ticks before a time (not one being evaluated): one row per tick adds up
-- (about 105,000 a year at 5 minutes).
DELETE FROM {t}aggregate_evaluations
WHERE task = %(task)s AND tick < %(before)s AND state <> 'running';
