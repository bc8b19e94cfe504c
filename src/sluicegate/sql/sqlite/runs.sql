-- Runs and schedule ticks (ledger/runs.py).
-- Each block is named after the method that runs it.

-- start --
-- Record the start of a run with its tag and request.
INSERT INTO {t}runs (id, task, tag, request, started_at, heartbeat_at) VALUES (:id, :task, :tag, :request, :now, :now);

-- heartbeat --
-- A run in progress is still alive.
UPDATE {t}runs SET heartbeat_at = :now WHERE id = :id AND finished_at IS NULL;

-- finish --
-- Record the end of a run with its summary.
UPDATE {t}runs SET finished_at = :now, summary = :summary WHERE id = :id;

-- get --
-- One run.
SELECT id, task, tag, request, started_at, finished_at, summary,
       :now - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs WHERE id = :id;

-- claim_tick --
-- Claim one schedule tick of a task; only one scheduler among all replicas gets the row.
INSERT INTO {t}schedule_ticks (task, tick, fired_at) VALUES (:task, :tick, :now) ON CONFLICT DO NOTHING;

-- recent --
-- The most recent runs.
SELECT id, task, tag, request, started_at, finished_at, summary,
       :now - coalesce(heartbeat_at, started_at) AS silent
FROM {t}runs
ORDER BY started_at DESC LIMIT :limit;

-- record_task_error --
-- A task-level error (the task could not run at all), kept until a run of the task succeeds.
INSERT INTO {t}task_errors (task, error, config, at) VALUES (:task, :error, :config, :now)
ON CONFLICT (task) DO UPDATE SET error = excluded.error, config = excluded.config, at = excluded.at;

-- clear_task_error --
-- A run of the task succeeded: forget its task-level error.
DELETE FROM {t}task_errors WHERE task = :task;

-- task_errors --
-- Every recorded task-level error: task, error, whether it is a configuration error, since when.
SELECT task, error, config, at FROM {t}task_errors ORDER BY task;
