-- Runs and schedule ticks (ledger/runs.py). Times: the server's clock, UTC seconds.
-- Each block is named after the method that runs it.

-- start --
-- Record the start of a run with its tag and request.
INSERT INTO {t}runs (id, task, tag, request, started_at, heartbeat_at)
VALUES (%(id)s, %(task)s, %(tag)s, %(request)s, UNIX_TIMESTAMP(NOW(6)), UNIX_TIMESTAMP(NOW(6)));

-- heartbeat --
-- A run in progress is still alive.
UPDATE {t}runs SET heartbeat_at = UNIX_TIMESTAMP(NOW(6)) WHERE id = %(id)s AND finished_at IS NULL;

-- finish --
-- Record the end of a run with its summary.
UPDATE {t}runs SET finished_at = UNIX_TIMESTAMP(NOW(6)), summary = %(summary)s WHERE id = %(id)s;

-- get --
-- One run.
SELECT id, task, tag, request, started_at, finished_at, summary,
       UNIX_TIMESTAMP(NOW(6)) - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs WHERE id = %(id)s;

-- claim_tick --
-- Claim one schedule tick of a task; only one scheduler among all replicas gets the row.
INSERT IGNORE INTO {t}schedule_ticks (task, tick, fired_at) VALUES (%(task)s, %(tick)s, UNIX_TIMESTAMP(NOW(6)));

-- recent --
-- The most recent runs.
SELECT id, task, tag, request, started_at, finished_at, summary,
       UNIX_TIMESTAMP(NOW(6)) - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs
ORDER BY started_at DESC LIMIT %(limit)s;

-- record_task_error --
-- A task-level error (the task could not run at all), kept until a run of the task succeeds.
INSERT INTO {t}task_errors (task, error, config, at) VALUES (%(task)s, %(error)s, %(config)s, UNIX_TIMESTAMP(NOW(6)))
ON DUPLICATE KEY UPDATE error = VALUES(error), config = VALUES(config), at = VALUES(at);

-- clear_task_error --
-- A run of the task succeeded: forget its task-level error.
DELETE FROM {t}task_errors WHERE task = %(task)s;

-- task_errors --
-- Every recorded task-level error: task, error, whether it is a configuration error, since when.
SELECT task, error, config, at FROM {t}task_errors ORDER BY task;
