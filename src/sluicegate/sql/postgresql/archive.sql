-- Runs of archive tasks, their lock and their witness rows (ledger/archive.py).
-- Each block is named after the method that runs it.

-- unfinished --
-- The oldest archive run of a task that did not finish (recovered before any new run).
SELECT id, boundary, path, state, rows, bytes, checksum FROM {t}archive_runs
WHERE task = %(task)s AND state <> 'done' ORDER BY started_at LIMIT 1;

-- last_done --
-- The latest finished archive run of a task (status): its boundary, file, rows and deletion.
SELECT boundary, path, rows, deleted, finished_at FROM {t}archive_runs
WHERE task = %(task)s AND state = 'done' ORDER BY finished_at DESC LIMIT 1;

-- path_taken --
-- Whether an archive file name was already used by a run of any archive task (one destination).
SELECT 1 FROM {t}archive_runs WHERE path = %(path)s;

-- start --
-- Record a new archive run before anything is written.
INSERT INTO {t}archive_runs (id, task, boundary, path, state) VALUES (%(id)s, %(task)s, %(boundary)s, %(path)s, 'exporting');

-- published --
-- The archive file is published and verified: rows, bytes and checksum.
UPDATE {t}archive_runs SET state = 'published', rows = %(rows)s, bytes = %(bytes)s, checksum = %(checksum)s
WHERE id = %(id)s;

-- done --
-- The delete committed (or there is none): the run is finished.
UPDATE {t}archive_runs SET state = 'done', deleted = %(deleted)s, finished_at = now() WHERE id = %(id)s;

-- lock --
-- Try to take the session lock of one archive task (a connection of its own holds it until it closes).
SELECT pg_try_advisory_lock(hashtext(%(scope)s), hashtext(%(task)s));

-- lock_held --
-- Whether this session still holds the lock of one archive task (a two-key advisory lock has objsubid 2).
SELECT EXISTS (
    SELECT 1 FROM pg_locks
    WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted AND objsubid = 2
      AND classid = hashtext(%(scope)s)::oid AND objid = hashtext(%(task)s)::oid
);

-- witness_exists --
-- In the source database: whether the table of archive delete markers exists.
SELECT 1 FROM pg_tables WHERE schemaname = %(schema)s AND tablename = 'archive_commits';

-- witness_create --
-- In the source database: the table of archive delete markers (used when the ledger is elsewhere).
SELECT pg_advisory_xact_lock(hashtext('sluicegate ledger schema'));
CREATE SCHEMA IF NOT EXISTS {t_schema};
CREATE TABLE IF NOT EXISTS {t}archive_commits (
    run_id uuid PRIMARY KEY,
    task text NOT NULL,
    deleted bigint NOT NULL,
    committed_at timestamptz NOT NULL DEFAULT now()
);

-- witness_start --
-- In the source database, committed before the run's file is written: the run's start marker (deleted -1).
INSERT INTO {t}archive_commits (run_id, task, deleted) VALUES (%(id)s, %(task)s, -1) ON CONFLICT (run_id) DO NOTHING;

-- witness --
-- In the source database, in the delete's transaction: the marker proving that the run's delete committed.
INSERT INTO {t}archive_commits (run_id, task, deleted) VALUES (%(id)s, %(task)s, %(deleted)s);

-- witnessed --
-- In the source database: the rows a run deleted, if its delete committed (or -1: a run's start marker).
SELECT deleted FROM {t}archive_commits WHERE run_id = %(id)s;
