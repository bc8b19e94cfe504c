-- Per-entity watermarks of incremental tasks (ledger/watermarks.py).
-- Each block is named after the method that runs it.

-- ensure --
-- Make sure an entity has a watermark row (no watermark yet means: start from the bootstrap).
INSERT INTO {t}watermarks (task, entity) VALUES (:task, :entity) ON CONFLICT (task, entity) DO NOTHING;

-- claim --
-- Claim the watermark rows of the given entities that nobody holds (run inside BEGIN IMMEDIATE).
UPDATE {t}watermarks
SET claim_token = :token,
    lease_until = :now + :lease,
    attempts = attempts + CASE WHEN claim_token IS NULL THEN 0 ELSE 1 END
WHERE task = :task AND entity IN (SELECT value FROM json_each(:entities))
  AND (claim_token IS NULL OR lease_until < :now)
RETURNING id, entity, watermark, pending_start, pending_end, pending_type, attempts, path;

-- set_pending --
-- Remember the window a claim is exporting, so a crashed export is redone with the same window.
UPDATE {t}watermarks SET pending_start = :start, pending_end = :end, pending_type = :type
WHERE id = :id AND claim_token = :token;

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

-- fail --
-- Record a failed window (for redrive) and give the claim back; the watermark does not move.
UPDATE {t}watermarks
SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL, pending_type = NULL,
    -- an entity that never exported keeps its bootstrap start, so the next run covers the failed window
    watermark = CASE WHEN watermark IS NULL AND :mode = 'watermark' THEN :start ELSE watermark END,
    attempts = attempts + 1, last_error = :error,
    failed_start = :start, failed_end = :end, failed_type = :type, failed_mode = :mode, failed_destination = :destination
WHERE task = :task AND entity = :entity
  AND (:token IS NULL OR claim_token = :token);

-- clear_failure --
-- Forget a recorded failure once its window was exported (a redriven re-export).
UPDATE {t}watermarks
SET failed_start = NULL, failed_end = NULL, failed_type = NULL, failed_mode = NULL, failed_destination = NULL,
    last_error = NULL, attempts = 0
WHERE task = :task AND entity = :entity;

-- renew --
-- Extend the lease of the watermark rows held under a claim token (a long window export).
UPDATE {t}watermarks SET lease_until = :now + :lease WHERE claim_token = :token;

-- release --
-- Give back every watermark row still held under a claim token.
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE claim_token = :token;

-- entities --
-- Every watermark row of a task.
SELECT entity, watermark, attempts, last_error, failed_start, failed_end, failed_type, failed_mode,
       failed_destination, exported_at, rows, path, (claim_token IS NOT NULL AND lease_until >= :now) AS claimed
FROM {t}watermarks WHERE task = :task ORDER BY entity;

-- delete --
-- Forget an entity's watermark: its next export starts from the bootstrap.
DELETE FROM {t}watermarks WHERE task = :task AND entity = :entity;

-- release_one --
-- Give back one watermark row (its window turned out empty).
UPDATE {t}watermarks SET claim_token = NULL, lease_until = NULL, pending_start = NULL, pending_end = NULL,
    pending_type = NULL
WHERE id = :id AND claim_token = :token;
