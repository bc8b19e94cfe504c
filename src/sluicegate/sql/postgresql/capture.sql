-- The change inbox of trigger capture and the high-water marks of scans (ledger/capture.py).
-- Each block is named after the method that runs it.

-- take_changes --
-- Remove up to limit captured changes of a task from the inbox, returning them.
DELETE FROM {t}changes
WHERE id IN (SELECT id FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
RETURNING keys, bin;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = %(task)s;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back).
INSERT INTO {t}scans AS s (task, high_water, scanned_at) VALUES (%(task)s, %(high_water)s, now())
ON CONFLICT (task) DO UPDATE
SET high_water = greatest(s.high_water, EXCLUDED.high_water), scanned_at = now();

-- peek_changes --
-- Up to limit captured changes of a task, left in the inbox (for a dry run).
SELECT keys, bin FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s;

-- count_changes --
-- How many captured changes of a task wait in the inbox, and the time of the oldest.
SELECT count(*), min(changed_at) FROM {t}changes WHERE task = %(task)s;
