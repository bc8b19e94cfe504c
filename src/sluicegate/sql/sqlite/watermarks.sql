-- Per-entity watermarks of incremental tasks (ledger/watermarks.py).
-- Each block is named after the method that runs it.

-- ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
INSERT INTO {t}watermarks (task, entity) VALUES (:task, :entity) ON CONFLICT (task, entity) DO NOTHING;

-- claim --
-- Claim the watermark rows of the given entities that no claim holds (run inside BEGIN
-- IMMEDIATE; a dead claim's rows: take_over).
UPDATE {t}watermarks
SET claim_token = :token,
    lease_until = :now + :lease
WHERE task = :task AND entity IN (SELECT value FROM json_each(:entities))
  AND claim_token IS NULL
RETURNING id, entity, watermark, pending_start, pending_end, pending_type,
    CASE WHEN failed_mode = 'reexport' THEN 0 ELSE attempts END, path;

-- take_over --
-- Claim one row of a dead claim (held under an expired lease, with an attempt left: one without is
-- parked, and so is one park left at the epoch, 0), the oldest death first, alone
-- (run inside BEGIN IMMEDIATE); an attempt only when the dead claim held it alone from the start
-- (its lone token), its window
-- stored, and none on
-- the attempts of a row owing a failed re-export, nor a bound (see postgresql/watermarks.sql).
UPDATE {t}watermarks
SET attempts = attempts + CASE WHEN failed_mode IS NOT 'reexport' AND pending_end IS NOT NULL
        AND substr(claim_token, 15, 1) = '8' THEN 1 ELSE 0 END,
    claim_token = :token,
    lease_until = :now + :lease
WHERE id IN (
    SELECT id FROM {t}watermarks
    WHERE task = :task AND entity IN (SELECT value FROM json_each(:entities))
      AND claim_token IS NOT NULL AND lease_until < :now AND lease_until > 0
      AND (attempts < :max_attempts OR failed_mode = 'reexport')
    ORDER BY lease_until, entity
    LIMIT 1
)
RETURNING id, entity, watermark, pending_start, pending_end, pending_type,
    CASE WHEN failed_mode = 'reexport' THEN 0 ELSE attempts END, path;

-- lone --
-- Put the one row a claim took under a lone token (a claim of one: see take_over).
UPDATE {t}watermarks SET claim_token = :lone WHERE id = :id AND claim_token = :token;

-- set_pending --
-- Remember the window a claim is exporting, so a crashed export is redone with the same window.
UPDATE {t}watermarks SET pending_start = :start, pending_end = :end, pending_type = :type
WHERE id = :id AND claim_token = :token;

-- holds --
-- Whether a claim still holds its row, its window stored (set_pending): a run that stalled past
-- its lease may have lost the entity to another run before storing it, which then exported it
-- to another end; that window must not be written.
SELECT count(*) FROM {t}watermarks WHERE id = :id AND claim_token = :token;

-- commit --
-- path stays the last file's when a window wrote none: the driver refuses a later window that
-- would overwrite it (a path template that names two windows alike).
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
    exported_at = :now, rows = :rows, path = COALESCE(:path, path)
WHERE id = :id AND claim_token = :token;

-- fail_window --
-- Record a failed watermark window (for redrive) and give the claim back; the watermark does not move.
-- The window stays pending: the next run or redrive exports this very window again, to the same
-- file, which may already be in place (a failure after placing it: a manifest, the commit).
-- A failed re-export recorded earlier keeps the failure columns: it is owed to its own destination.
-- (MariaDB assigns left to right: what reads failed_mode comes before failed_mode is set.)
UPDATE {t}watermarks
SET claim_token = NULL, lease_until = NULL,
    -- an entity that never exported keeps its bootstrap start, so the next run covers the failed window
    watermark = COALESCE(watermark, :start),
    attempts = CASE WHEN failed_mode = 'reexport' THEN attempts ELSE attempts + 1 END,
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE :error END,
    failed_start = CASE WHEN failed_mode = 'reexport' THEN failed_start ELSE :start END,
    failed_end = CASE WHEN failed_mode = 'reexport' THEN failed_end ELSE :end END,
    failed_type = CASE WHEN failed_mode = 'reexport' THEN failed_type ELSE :type END,
    failed_destination = CASE WHEN failed_mode = 'reexport' THEN failed_destination ELSE NULL END,
    failed_mode = CASE WHEN failed_mode = 'reexport' THEN failed_mode ELSE 'watermark' END
WHERE task = :task AND entity = :entity AND claim_token = :token;

-- park --
-- Park an entity taken over with no attempt left (its worker died exporting it, alone, until
-- max_attempts): record its window as failed with why, and leave it held by a dead claim whose
-- lease ended at the epoch (0): parked (see postgresql/watermarks.sql). As fail_window otherwise.
UPDATE {t}watermarks
SET lease_until = 0,
    watermark = COALESCE(watermark, :start),
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE :error END,
    failed_start = CASE WHEN failed_mode = 'reexport' THEN failed_start ELSE :start END,
    failed_end = CASE WHEN failed_mode = 'reexport' THEN failed_end ELSE :end END,
    failed_type = CASE WHEN failed_mode = 'reexport' THEN failed_type ELSE :type END,
    failed_destination = CASE WHEN failed_mode = 'reexport' THEN failed_destination ELSE NULL END,
    failed_mode = CASE WHEN failed_mode = 'reexport' THEN failed_mode ELSE 'watermark' END
WHERE id = :id AND claim_token = :token;

-- reset_failed --
-- Clear the attempts of a task's entities that are not held by a live claim ('sluicegate reset
-- TASK --failed'): a parked one is taken over by the next run again, and redrive retries a
-- failed window it gave up on.
UPDATE {t}watermarks SET attempts = 0, lease_until = CASE WHEN lease_until <= 0 THEN :now ELSE lease_until END
WHERE task = :task AND (attempts > 0 OR lease_until <= 0) AND (lease_until IS NULL OR lease_until < :now);

-- fail_reexport --
-- Record a failed re-export (its window and destination, for redrive). It holds no claim, so it
-- leaves the entity's claim and pending window alone (a regular export may be under way).
-- A failed watermark window recorded earlier stays pending, and is redone by the next run.
-- One failed re-export is owed per entity: another window's failure is not recorded over it
-- (two re-exports run at once, both failed: the first was lost); the run reports it instead.
UPDATE {t}watermarks
SET attempts = CASE WHEN failed_mode = 'reexport' THEN attempts + 1 ELSE 1 END,
    last_error = :error,
    failed_start = :start, failed_end = :end, failed_type = :type, failed_mode = 'reexport',
    failed_destination = :destination
WHERE task = :task AND entity = :entity
  AND (failed_mode IS NOT 'reexport'
       OR (failed_start = :start AND failed_end = :end AND failed_type = :type
           AND failed_destination IS :destination));

-- clear_failure --
-- Forget a recorded failure once its window was exported (a redriven re-export).
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = :task AND entity = :entity;

-- clear_reexport --
-- Forget a recorded failed re-export once it was exported again (redriven): that window's only.
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = :task AND entity = :entity AND failed_mode = 'reexport' AND failed_start = :start
  AND failed_end = :end AND failed_type = :type AND failed_destination IS :destination;

-- renew --
-- Extend the lease of the watermark rows held under a claim token (a long window export).
UPDATE {t}watermarks SET lease_until = :now + :lease WHERE claim_token = :token;

-- release --
-- Give back every watermark row still held under a claim token. The pending window stays: it
-- may be a failed or crashed window whose file is in place, so the next run redoes exactly it.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL
WHERE claim_token = :token;

-- charged_on_take_over --
-- The rows of dead claims (held under an expired lease) in the order take_over takes them, with
-- their claim's token, whether their window is stored, their attempts, whether they owe a failed
-- re-export and whether they are parked (see park): which a run would charge an attempt (a dry
-- run's forecast of what it parks).
SELECT entity, claim_token, pending_end IS NOT NULL, attempts, failed_mode = 'reexport', lease_until <= 0
FROM {t}watermarks
WHERE task = :task AND claim_token IS NOT NULL AND lease_until < :now
ORDER BY lease_until, entity;

-- entities --
-- Every watermark row of a task (held: by a claim, live or dead; parked: see park).
SELECT entity, watermark, pending_start, pending_end, pending_type, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, rows, path, (claim_token IS NOT NULL AND lease_until >= :now) AS claimed,
       claim_token IS NOT NULL AS held, (claim_token IS NOT NULL AND lease_until <= 0) AS parked
FROM {t}watermarks WHERE task = :task ORDER BY entity;

-- delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = :task AND entity = :entity;

-- release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = :id AND claim_token = :token;
