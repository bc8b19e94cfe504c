-- Per-entity watermarks of incremental tasks (ledger/watermarks.py). Times: UTC seconds (DOUBLE);
-- leases on the server's clock. Each block is named after the method that runs it. MariaDB
-- evaluates the assignments of an UPDATE left to right, each seeing the ones before it: every
-- SET below assigns a column only after the expressions that read its old value.

-- ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
-- (Not INSERT IGNORE, which would also turn a too-long entity into a warning.)
INSERT INTO {t}watermarks (task, entity) VALUES (%(task)s, %(entity)s)
ON DUPLICATE KEY UPDATE entity = entity;

-- claim --
-- Lock the watermark rows of the given entities (a JSON array) that no claim holds, skipping
-- rows another worker holds; claim_take then takes them, in one transaction (a dead claim's
-- rows: take_over).
SELECT w.id, 0 FROM {t}watermarks AS w
WHERE w.task = %(task)s
  AND w.entity IN (
      SELECT e.entity COLLATE {exact}
      FROM JSON_TABLE(%(entities)s, '$[*]' COLUMNS (entity VARCHAR(512) PATH '$')) AS e)
  AND w.claim_token IS NULL
ORDER BY w.entity
FOR UPDATE SKIP LOCKED;

-- take_over --
-- Lock one row of a dead claim (held under an expired lease, with an attempt left: one without is
-- parked, and so is one park left at the epoch, 0) of the given entities, the oldest
-- death first, and whether the dead claim held it alone from the start (its lone token), its
-- window stored (an attempt then; see
-- postgresql/watermarks.sql; a row owing a failed re-export: neither, nor a bound). claim_take
-- then takes it.
SELECT w.id, SUBSTRING(w.claim_token, 15, 1) = '8'
       AND NOT (w.failed_mode <=> 'reexport') AND w.pending_end IS NOT NULL
FROM {t}watermarks AS w
WHERE w.task = %(task)s
  AND w.entity IN (
      SELECT e.entity COLLATE {exact}
      FROM JSON_TABLE(%(entities)s, '$[*]' COLUMNS (entity VARCHAR(512) PATH '$')) AS e)
  AND w.claim_token IS NOT NULL AND w.lease_until < UNIX_TIMESTAMP(NOW(6)) AND w.lease_until > 0
  AND (w.attempts < %(max_attempts)s OR w.failed_mode = 'reexport')
ORDER BY w.lease_until, w.entity
LIMIT 1
FOR UPDATE SKIP LOCKED;

-- claim_take --
-- Take one locked row under a fresh token and lease (run for each row in one batch round trip);
-- taking over a row its dead claim held alone (take_over's second column) counts as an attempt.
UPDATE {t}watermarks
SET attempts = attempts + CASE WHEN claim_token IS NOT NULL AND %(alone)s THEN 1 ELSE 0 END,
    claim_token = %(token)s,
    lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s
WHERE id = %(id)s;

-- claimed --
-- The watermark rows held under a claim token, as a claim returns them (as take_over's, the
-- attempts of a row owing a failed re-export are the re-export's: 0, see postgresql/watermarks.sql).
SELECT id, entity, watermark, pending_start, pending_end, pending_type,
       CASE WHEN failed_mode = 'reexport' THEN 0 ELSE attempts END, path
FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity;

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
-- A failed watermark window is done once the watermark passes it. A failed re-export is not (it
-- went to its own window and destination): it stays, with its attempts, for redrive.
-- failed_end is cleared before failed_mode, which is then cleared where failed_end is gone
-- (the two are set and cleared together: the table's failed_window check).
UPDATE {t}watermarks
SET watermark = CASE WHEN watermark IS NULL OR watermark < %(end)s THEN %(end)s ELSE watermark END,
    claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    attempts = CASE WHEN failed_mode = 'reexport' THEN attempts ELSE 0 END,
    last_error = CASE WHEN failed_mode = 'reexport' THEN last_error ELSE NULL END,
    failed_start = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_start END,
    failed_type = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_type END,
    failed_end = CASE WHEN failed_mode = 'watermark' AND failed_end <= %(end)s THEN NULL ELSE failed_end END,
    failed_mode = CASE WHEN failed_end IS NULL THEN NULL ELSE failed_mode END,
    exported_at = UNIX_TIMESTAMP(NOW(6)), `rows` = %(rows)s, path = COALESCE(%(path)s, path)
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
WHERE task = %(task)s AND entity = %(entity)s AND claim_token = %(token)s;

-- park --
-- Park an entity taken over with no attempt left (its worker died exporting it, alone, until
-- max_attempts): record its window as failed with why, and leave it held by a dead claim whose
-- lease ended at the epoch (0): parked (see postgresql/watermarks.sql). As fail_window otherwise.
UPDATE {t}watermarks
SET lease_until = 0,
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
-- TASK --failed'): a parked one is taken over by the next run again, and redrive retries a
-- failed window it gave up on.
UPDATE {t}watermarks
SET attempts = 0, lease_until = CASE WHEN lease_until <= 0 THEN UNIX_TIMESTAMP(NOW(6)) ELSE lease_until END
WHERE task = %(task)s AND (attempts > 0 OR lease_until <= 0)
  AND (lease_until IS NULL OR lease_until < UNIX_TIMESTAMP(NOW(6)));

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
  AND (NOT (failed_mode <=> 'reexport')
       OR (failed_start = %(start)s AND failed_end = %(end)s AND failed_type = %(type)s
           AND failed_destination <=> %(destination)s));

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
  AND failed_end = %(end)s AND failed_type = %(type)s AND failed_destination <=> %(destination)s;

-- renew --
-- Lock the watermark rows held under a claim token (a long window export), skipping rows locked
-- now, never waiting for them (as on PostgreSQL; see partitions.sql renew): one UPDATE ...
-- WHERE claim_token waited for a row a stuck session held, and renewed no other row meanwhile.
-- renew_rows then extends the leases of the rows locked here.
SELECT id FROM {t}watermarks WHERE claim_token = %(token)s ORDER BY entity FOR UPDATE SKIP LOCKED;

-- renew_rows --
-- Extend the lease of one watermark row renew locked, if still held under the token (run for
-- each row in one batch round trip).
UPDATE {t}watermarks SET lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- Give back every watermark row still held under a claim token. The pending window stays: it
-- may be a failed or crashed window whose file is in place, so the next run redoes exactly it.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL
WHERE claim_token = %(token)s;

-- charged_on_take_over --
-- The rows of dead claims (held under an expired lease) in the order take_over takes them, with
-- their claim's token, whether their window is stored, their attempts, whether they owe a failed
-- re-export and whether they are parked (see park): which a run would charge an attempt (a dry
-- run's forecast of what it parks).
SELECT entity, claim_token, pending_end IS NOT NULL, attempts, failed_mode = 'reexport', lease_until <= 0
FROM {t}watermarks
WHERE task = %(task)s AND claim_token IS NOT NULL AND lease_until < UNIX_TIMESTAMP(NOW(6))
ORDER BY lease_until, entity;

-- entities --
-- Every watermark row of a task (held: by a claim, live or dead; parked: see park).
SELECT entity, watermark, pending_start, pending_end, pending_type, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, `rows`, path,
       claim_token IS NOT NULL AND lease_until >= UNIX_TIMESTAMP(NOW(6)) AS claimed,
       claim_token IS NOT NULL AS held, claim_token IS NOT NULL AND lease_until <= 0 AS parked
FROM {t}watermarks WHERE task = %(task)s ORDER BY entity;

-- delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = %(task)s AND entity = %(entity)s;

-- release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = %(id)s AND claim_token = %(token)s;
