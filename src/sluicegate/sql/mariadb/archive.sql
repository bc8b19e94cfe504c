-- Runs of archive tasks, their lock and their witness rows (ledger/archive.py).
-- Each block is named after the method that runs it. Times are UTC seconds from the server's
-- clock (DOUBLE), run ids CHAR(36), as in the other MariaDB stores.

-- unfinished --
-- The oldest archive run of a task that did not finish (recovered before any new run).
SELECT id, boundary, path, state, `rows`, bytes, checksum FROM {t}archive_runs
WHERE task = %(task)s AND state <> 'done' ORDER BY started_at LIMIT 1;

-- last_done --
-- The latest finished archive run of a task (status): its boundary, file, rows and deletion.
SELECT boundary, path, `rows`, deleted, finished_at FROM {t}archive_runs
WHERE task = %(task)s AND state = 'done' ORDER BY finished_at DESC LIMIT 1;

-- path_taken --
-- Whether an archive file name was already used by a run of any archive task (one destination).
SELECT 1 FROM {t}archive_runs WHERE path = %(path)s;

-- start --
-- Record a new archive run before anything is written.
INSERT INTO {t}archive_runs (id, task, boundary, path, state, started_at)
VALUES (%(id)s, %(task)s, %(boundary)s, %(path)s, 'exporting', UNIX_TIMESTAMP(NOW(6)));

-- published --
-- The archive file is published and verified: rows, bytes and checksum.
UPDATE {t}archive_runs SET state = 'published', `rows` = %(rows)s, bytes = %(bytes)s, checksum = %(checksum)s
WHERE id = %(id)s;

-- done --
-- The delete committed (or there is none): the run is finished.
UPDATE {t}archive_runs SET state = 'done', deleted = %(deleted)s, finished_at = UNIX_TIMESTAMP(NOW(6))
WHERE id = %(id)s;

-- lock --
-- Try to take the lock of one archive task on this connection (a connection of its own holds it
-- until it closes or is lost). GET_LOCK names are server-wide and at most 64 characters: the name
-- is a digest of the database, the scope and the task.
SELECT GET_LOCK(CONCAT('sluicegate archive ', LEFT(SHA2(CONCAT_WS('/', DATABASE(), %(scope)s, %(task)s), 256), 40)), 0);

-- lock_held --
-- Whether this connection still holds the lock of one archive task.
SELECT COALESCE(IS_USED_LOCK(CONCAT('sluicegate archive ', LEFT(SHA2(CONCAT_WS('/', DATABASE(), %(scope)s, %(task)s), 256), 40))) = CONNECTION_ID(), FALSE);

-- witness_exists --
-- In the source database: whether the table of archive delete markers exists (in the connection's
-- database; the schema parameter, PostgreSQL's, is only bound).
SELECT 1 FROM information_schema.tables
WHERE table_schema = DATABASE() AND table_name = '{t}archive_commits' AND %(schema)s IS NOT NULL;

-- witness_create --
-- In the source database: the table of archive delete markers (used when the ledger is elsewhere).
CREATE TABLE IF NOT EXISTS {t}archive_commits (
    run_id CHAR(36) NOT NULL PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    deleted BIGINT NOT NULL,
    committed_at DOUBLE NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- witness_start --
-- In the source database, committed before the run's file is written: the run's start marker (deleted -1).
INSERT IGNORE INTO {t}archive_commits (run_id, task, deleted, committed_at)
VALUES (%(id)s, %(task)s, -1, UNIX_TIMESTAMP(NOW(6)));

-- witness --
-- In the source database, in the delete's transaction: the marker proving that the run's delete committed.
INSERT INTO {t}archive_commits (run_id, task, deleted, committed_at)
VALUES (%(id)s, %(task)s, %(deleted)s, UNIX_TIMESTAMP(NOW(6)));

-- witnessed --
-- In the source database: the rows a run deleted, if its delete committed (or -1: a run's start marker).
SELECT deleted FROM {t}archive_commits WHERE run_id = %(id)s;
