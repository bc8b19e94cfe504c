-- The change inbox of trigger capture and the high-water marks of scans (ledger/capture.py).
-- Each block is named after the method that runs it.

-- take_changes --
-- Remove up to limit captured changes of a task from the inbox, returning them (inside one transaction)
-- as (keys, first bin, last bin): SQLite's row triggers record one bin per row.
DELETE FROM {t}changes
WHERE id IN (SELECT id FROM {t}changes WHERE task = :task ORDER BY id LIMIT :limit)
RETURNING keys, bin, bin;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = :task;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back), compared as times: a mark an
-- older release wrote unpadded before year 1000 ('999-06-01...': julianday() reads no time in
-- it, and as text it sorted above every later one) is replaced, so the scan moves on again.
INSERT INTO {t}scans (task, high_water, scanned_at) VALUES (:task, :high_water, :now)
ON CONFLICT (task) DO UPDATE
SET high_water = CASE WHEN julianday(high_water) IS NULL
                        OR julianday(excluded.high_water) > julianday(high_water)
                      THEN excluded.high_water ELSE high_water END,
    scanned_at = :now;

-- peek_changes --
-- Up to limit captured changes of a task, left in the inbox (for a dry run).
SELECT keys, bin, bin FROM {t}changes WHERE task = :task ORDER BY id LIMIT :limit;

-- count_changes --
-- How many captured changes of a task wait in the inbox, and the time of the oldest (SQLite: not kept).
SELECT count(*), NULL FROM {t}changes WHERE task = :task;
