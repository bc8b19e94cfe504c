-- Per-entity watermarks of incremental tasks (ledger/watermarks.py).
-- Each block is named after the method that runs it.

-- ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
INSERT INTO {t}watermarks (task, entity) VALUES (%(task)s, %(entity)s) ON CONFLICT (task, entity) DO NOTHING;

-- claim --
-- Claim the watermark rows of the given entities that no claim holds (a dead claim's rows, its
-- lease expired, are taken over one at a time: take_over).
WITH candidate AS (
    SELECT id FROM {t}watermarks
    WHERE task = %(task)s AND entity = ANY(%(entities)s) AND claim_token IS NULL
    ORDER BY entity
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}watermarks AS w
SET claim_token = %(token)s,
    lease_until = now() + make_interval(secs => %(lease)s)
FROM candidate
WHERE w.id = candidate.id
RETURNING w.id, w.entity, w.watermark, w.pending_start, w.pending_end, w.pending_type,
    CASE WHEN w.failed_mode = 'reexport' THEN 0 ELSE w.attempts END, w.path;

-- take_over --
-- Claim one row of a dead claim (held under an expired lease, with an attempt left: one without is
-- parked, and so is one park left at the epoch, whatever max_attempts says now) of the given entities, the oldest
-- death first, under a claim of its own: the rest of a batch that died with it go before an
-- entity that died alone later. An attempt only when the dead claim held it alone from the start
-- (a claim of one entity, such as a take-over, has a lone token: its UUID's version digit is 8,
-- see ledger/partitions.py lone_token), its window
-- stored (pending_end): nothing tells which entity of a dead batch killed it, the last one left
-- of it included, while one that died
-- alone exporting its window did (one that died before storing it read none of its rows, and its
-- window may turn out empty: given back, that death counted towards parking it). The attempts of a row
-- that owes a failed re-export are the re-export's (a commit keeps them, for redrive's bound):
-- no death is counted on them, nor do they park the entity (attempts returned: 0).
WITH candidate AS (
    SELECT id FROM {t}watermarks
    WHERE task = %(task)s AND entity = ANY(%(entities)s)
      AND claim_token IS NOT NULL AND lease_until < now() AND lease_until > 'epoch'::timestamptz
      AND (attempts < %(max_attempts)s OR failed_mode = 'reexport')
    ORDER BY lease_until, entity
    LIMIT 1
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}watermarks AS w
SET attempts = w.attempts + CASE WHEN w.failed_mode IS DISTINCT FROM 'reexport' AND w.pending_end IS NOT NULL
        AND substr(w.claim_token::text, 15, 1) = '8' THEN 1 ELSE 0 END,
    claim_token = %(token)s,
    lease_until = now() + make_interval(secs => %(lease)s)
FROM candidate
WHERE w.id = candidate.id
RETURNING w.id, w.entity, w.watermark, w.pending_start, w.pending_end, w.pending_type,
    CASE WHEN w.failed_mode = 'reexport' THEN 0 ELSE w.attempts END, w.path;

-- lone --
-- Put the one row a claim took under a lone token (a claim of one: see take_over).
UPDATE {t}watermarks SET claim_token = %(lone)s WHERE id = %(id)s AND claim_token = %(token)s;

-- set_pending --
-- Remember the window a claim is exporting, so a crashed export is redone with the same window.
UPDATE {t}watermarks SET pending_start = %(start)s, pending_end = %(end)s, pending_type = %(type)s
WHERE id = %(id)s AND claim_token = %(token)s;

-- holds --
-- Whether a claim still holds its row, its window stored (set_pending): a run that stalled past
-- its lease may have lost the entity to another run before storing it, which then exported it
-- to another end; that window must not be written.
SELECT count(*) FROM {t}watermarks WHERE id = %(id)s AND claim_token = %(token)s;

-- commit --
-- path stays the last file's when a window wrote none: the driver refuses a later window that
-- would overwrite it (a path template that names two windows alike).
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
    exported_at = now(), rows = %(rows)s, path = COALESCE(%(path)s, path)
WHERE id = %(id)s AND claim_token = %(token)s;

-- fail_window --
-- Record a failed watermark window (for redrive) and give the claim back; the watermark does not move.
-- The window stays pending: the next run or redrive exports this very window again, to the same
-- file, which may already be in place (a failure after placing it: a manifest, the commit).
-- A failed re-export recorded earlier keeps the failure columns: it is owed to its own destination.
-- (MariaDB assigns left to right: what reads failed_mode comes before failed_mode is set.)
UPDATE {t}watermarks
SET claim_token = NULL, lease_until = NULL,
    -- an entity that never exported keeps its bootstrap start, so the next run covers the failed window
    watermark = COALESCE(watermark, %(start)s),
    attempts = CASE WHEN failed_mode = 'reexport' THEN attempts ELSE attempts + 1 END,
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE %(error)s END,
    failed_start = CASE WHEN failed_mode = 'reexport' THEN failed_start ELSE %(start)s END,
    failed_end = CASE WHEN failed_mode = 'reexport' THEN failed_end ELSE %(end)s END,
    failed_type = CASE WHEN failed_mode = 'reexport' THEN failed_type ELSE %(type)s END,
    failed_destination = CASE WHEN failed_mode = 'reexport' THEN failed_destination ELSE NULL END,
    failed_mode = CASE WHEN failed_mode = 'reexport' THEN failed_mode ELSE 'watermark' END
WHERE task = %(task)s AND entity = %(entity)s AND claim_token = %(token)s::uuid;

-- park --
-- Park an entity taken over with no attempt left (its worker died exporting it, alone, until
-- max_attempts): record its window as failed with why (for status and redrive), and leave it held
-- by a dead claim whose lease ended at the epoch: parked, which the claim and take_over skip
-- (a raised max_attempts too) until reset_failed; a run then takes it over again. As fail_window otherwise.
UPDATE {t}watermarks
SET lease_until = 'epoch'::timestamptz,
    watermark = COALESCE(watermark, %(start)s),
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE %(error)s END,
    failed_start = CASE WHEN failed_mode = 'reexport' THEN failed_start ELSE %(start)s END,
    failed_end = CASE WHEN failed_mode = 'reexport' THEN failed_end ELSE %(end)s END,
    failed_type = CASE WHEN failed_mode = 'reexport' THEN failed_type ELSE %(type)s END,
    failed_destination = CASE WHEN failed_mode = 'reexport' THEN failed_destination ELSE NULL END,
    failed_mode = CASE WHEN failed_mode = 'reexport' THEN failed_mode ELSE 'watermark' END
WHERE id = %(id)s AND claim_token = %(token)s;

-- reset_failed --
-- Clear the attempts of a task's entities that are not held by a live claim ('sluicegate reset
-- TASK --failed'): a parked one (its lease ended at the epoch) is a dead claim of now, which the
-- next run takes over again, and redrive retries a failed window it gave up on.
UPDATE {t}watermarks
SET attempts = 0, lease_until = CASE WHEN lease_until <= 'epoch'::timestamptz THEN now() ELSE lease_until END
WHERE task = %(task)s AND (attempts > 0 OR lease_until <= 'epoch'::timestamptz)
  AND (lease_until IS NULL OR lease_until < now());

-- fail_reexport --
-- Record a failed re-export (its window and destination, for redrive). It holds no claim, so it
-- leaves the entity's claim and pending window alone (a regular export may be under way).
-- A failed watermark window recorded earlier stays pending, and is redone by the next run.
-- One failed re-export is owed per entity: another window's failure is not recorded over it
-- (two re-exports run at once, both failed: the first was lost); the run reports it instead.
UPDATE {t}watermarks
SET attempts = CASE WHEN failed_mode = 'reexport' THEN attempts + 1 ELSE 1 END,
    last_error = %(error)s,
    failed_start = %(start)s, failed_end = %(end)s, failed_type = %(type)s, failed_mode = 'reexport',
    failed_destination = %(destination)s
WHERE task = %(task)s AND entity = %(entity)s
  AND (failed_mode IS DISTINCT FROM 'reexport'
       OR (failed_start = %(start)s AND failed_end = %(end)s AND failed_type = %(type)s
           AND failed_destination IS NOT DISTINCT FROM %(destination)s));

-- clear_failure --
-- Forget a recorded failure once its window was exported (a redriven re-export).
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = %(task)s AND entity = %(entity)s;

-- clear_reexport --
-- Forget a recorded failed re-export once it was exported again (redriven): that window's only.
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = %(task)s AND entity = %(entity)s AND failed_mode = 'reexport' AND failed_start = %(start)s
  AND failed_end = %(end)s AND failed_type = %(type)s AND failed_destination IS NOT DISTINCT FROM %(destination)s;

-- renew --
-- Extend the lease of the watermark rows held under a claim token (a long window export);
-- rows locked at the moment are skipped (see partitions.sql renew).
UPDATE {t}watermarks SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (SELECT id FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity FOR UPDATE SKIP LOCKED);

-- release --
-- Give back every watermark row still held under a claim token. The pending window stays: it
-- may be a failed or crashed window whose file is in place, so the next run redoes exactly it.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL
WHERE id IN (SELECT id FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity FOR UPDATE);

-- charged_on_take_over --
-- The rows of dead claims (held under an expired lease) in the order take_over takes them, with
-- their claim's token, whether their window is stored, their attempts, whether they owe a failed
-- re-export and whether they are parked (see park): which a run would charge an attempt (a dry
-- run's forecast of what it parks).
SELECT entity, claim_token::text, pending_end IS NOT NULL, attempts, failed_mode = 'reexport', lease_until <= 'epoch'::timestamptz
FROM {t}watermarks
WHERE task = %(task)s AND claim_token IS NOT NULL AND lease_until < now()
ORDER BY lease_until, entity;

-- entities --
-- Every watermark row of a task (held: by a claim, live or dead; parked: see park).
SELECT entity, watermark, pending_start, pending_end, pending_type, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, rows, path, claim_token IS NOT NULL AND lease_until >= now() AS claimed,
       claim_token IS NOT NULL AS held, claim_token IS NOT NULL AND lease_until <= 'epoch'::timestamptz AS parked
FROM {t}watermarks WHERE task = %(task)s ORDER BY entity;

-- delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = %(task)s AND entity = %(entity)s;

-- release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = %(id)s AND claim_token = %(token)s;
