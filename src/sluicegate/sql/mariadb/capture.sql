-- The change inbox of trigger capture (ledger/capture.py), in a MariaDB/MySQL source database.
-- Each block is named after the method that runs it. Bins are UTC Unix seconds.

-- take_changes --
-- Lock up to limit captured changes of a task, skipping those another worker is folding (in one transaction),
-- as (id, keys, first bin, last bin): row triggers record one bin per row.
SELECT id, `keys`, bin, bin FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- delete_changes --
-- Remove one change take_changes locked, in the same transaction (run for each in one batch round trip).
DELETE FROM {t}changes WHERE id = %(id)s;

-- peek_changes --
-- Up to limit captured changes of a task, left in the inbox (for a dry run).
SELECT `keys`, bin, bin FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s;

-- count_changes --
-- How many captured changes of a task wait in the inbox, and the time of the oldest (not kept).
SELECT count(*), NULL FROM {t}changes WHERE task = %(task)s;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = %(task)s;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back).
INSERT INTO {t}scans (task, high_water, scanned_at) VALUES (%(task)s, %(high_water)s, UNIX_TIMESTAMP(NOW(6)))
ON DUPLICATE KEY UPDATE high_water = GREATEST(high_water, VALUES(high_water)), scanned_at = VALUES(scanned_at);
