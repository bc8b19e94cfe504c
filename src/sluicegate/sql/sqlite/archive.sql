-- Runs of archive tasks, their lock and their witness rows (ledger/archive.py).
-- Each block is named after the method that runs it.

-- unfinished --
-- The oldest archive run of a task that did not finish (recovered before any new run).
SELECT id, boundary, path, state, rows, bytes, checksum FROM {t}archive_runs
WHERE task = :task AND state <> 'done' ORDER BY started_at LIMIT 1;

-- last_done --
-- The latest finished archive run of a task (status): its boundary, file, rows and deletion.
SELECT boundary, path, rows, deleted, finished_at FROM {t}archive_runs
WHERE task = :task AND state = 'done' ORDER BY finished_at DESC LIMIT 1;

-- path_taken --
-- Whether an archive file name was already used by a run of any archive task (one destination).
SELECT 1 FROM {t}archive_runs WHERE path = :path;

-- start --
-- Record a new archive run before anything is written.
INSERT INTO {t}archive_runs (id, task, boundary, path, state, started_at) VALUES (:id, :task, :boundary, :path, 'exporting', :now);

-- published --
-- The archive file is published and verified: rows, bytes and checksum.
UPDATE {t}archive_runs SET state = 'published', rows = :rows, bytes = :bytes, checksum = :checksum
WHERE id = :id;

-- done --
-- The delete committed (or there is none): the run is finished.
UPDATE {t}archive_runs SET state = 'done', deleted = :deleted, finished_at = :now WHERE id = :id;

-- witness_exists --
-- In the source database: whether the table of archive delete markers exists.
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{t}archive_commits';

-- witness_create --
-- In the source database: the table of archive delete markers (used when the ledger is elsewhere).
CREATE TABLE IF NOT EXISTS {t}archive_commits (
    run_id TEXT PRIMARY KEY,
    task TEXT NOT NULL,
    deleted INTEGER NOT NULL,
    committed_at REAL NOT NULL
);

-- witness_start --
-- In the source database, committed before the run's file is written: the run's start marker (deleted -1).
INSERT OR IGNORE INTO {t}archive_commits (run_id, task, deleted, committed_at) VALUES (:id, :task, -1, :now);

-- witness --
-- In the source database, in the delete's transaction: the marker proving that the run's delete committed.
INSERT INTO {t}archive_commits (run_id, task, deleted, committed_at) VALUES (:id, :task, :deleted, :now);

-- witnessed --
-- In the source database: the rows a run deleted, if its delete committed (or -1: a run's start marker).
SELECT deleted FROM {t}archive_commits WHERE run_id = :id;
