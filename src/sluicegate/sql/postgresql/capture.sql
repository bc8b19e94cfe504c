-- The change inbox of trigger capture and the high-water marks of scans (ledger/capture.py).
-- Each block is named after the method that runs it.

-- take_changes --
-- Remove up to limit captured changes of a task from each inbox table, returning them as
-- (keys, first bin, last bin): runs from change_runs, and single bins from changes (written
-- by the triggers of sluicegate before version 11 until `sluicegate install` replaces them).
WITH bins AS (
    DELETE FROM {t}changes
    WHERE id IN (SELECT id FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING keys, bin AS first_bin, bin AS last_bin
), runs AS (
    DELETE FROM {t}change_runs
    WHERE id IN (SELECT id FROM {t}change_runs WHERE task = %(task)s ORDER BY id LIMIT %(limit)s FOR UPDATE SKIP LOCKED)
    RETURNING keys, first_bin, last_bin
), taken AS (
    SELECT keys, first_bin, last_bin FROM bins UNION ALL SELECT keys, first_bin, last_bin FROM runs
)
-- A bin outside the years 1 to 9999 (a row's time of 'infinity') comes back as the nearest of
-- 0001-01-02 and 9999-12-30, which Python can hold and capture.fold sets aside with a warning.
SELECT keys::text,  -- parsed by ledger/capture.py: exact numbers (partitions.json_number)
    CASE WHEN first_bin < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
         WHEN first_bin > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00'::timestamptz
         ELSE first_bin END,
    CASE WHEN last_bin < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
         WHEN last_bin > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00'::timestamptz
         ELSE last_bin END
FROM taken;

-- get_scan --
-- The high-water mark of a scan-mode task.
SELECT high_water FROM {t}scans WHERE task = %(task)s;

-- set_scan --
-- Move a scan-mode task's high-water mark forward (never back).
INSERT INTO {t}scans AS s (task, high_water, scanned_at) VALUES (%(task)s, %(high_water)s, now())
ON CONFLICT (task) DO UPDATE
SET high_water = greatest(s.high_water, EXCLUDED.high_water), scanned_at = now();

-- peek_changes --
-- Up to limit captured changes of a task from each inbox table, left there (for a dry run);
-- bins clamped as take_changes does.
SELECT keys::text,  -- parsed by ledger/capture.py: exact numbers (partitions.json_number)
    CASE WHEN first_bin < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
         WHEN first_bin > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00'::timestamptz
         ELSE first_bin END,
    CASE WHEN last_bin < '0001-01-02 00:00:00+00' THEN '0001-01-02 00:00:00+00'::timestamptz
         WHEN last_bin > '9999-12-30 00:00:00+00' THEN '9999-12-30 00:00:00+00'::timestamptz
         ELSE last_bin END
FROM (
    (SELECT keys, bin AS first_bin, bin AS last_bin FROM {t}changes WHERE task = %(task)s ORDER BY id LIMIT %(limit)s)
    UNION ALL
    (SELECT keys, first_bin, last_bin FROM {t}change_runs WHERE task = %(task)s ORDER BY id LIMIT %(limit)s)
) AS waiting;

-- count_changes --
-- How many captured changes (bins and runs) of a task wait in the inbox, and the time of the oldest.
SELECT sum(n), min(oldest) FROM (
    SELECT count(*) AS n, min(changed_at) AS oldest FROM {t}changes WHERE task = %(task)s
    UNION ALL
    SELECT count(*), min(changed_at) FROM {t}change_runs WHERE task = %(task)s
) AS inbox;
