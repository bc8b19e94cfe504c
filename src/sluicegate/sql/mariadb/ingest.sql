-- What ingest tasks ingested, in the database of their table (ledger/ingest.py).
-- Each block is named after the method that runs it. Times are UTC seconds (DOUBLE).

-- exists --
-- Whether the ingest tables exist in this database.
SELECT 1 FROM information_schema.tables
WHERE table_schema = DATABASE() AND table_name = '{t}ingest_parked';

-- create --
-- The ingest log and the parked messages, next to the table that ingest writes (idempotent;
-- MariaDB commits each CREATE on its own).
CREATE TABLE IF NOT EXISTS {t}ingest_batches (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    received INT NOT NULL,
    inserted INT NOT NULL,
    duplicates INT NOT NULL,
    malformed INT NOT NULL,
    message_ids LONGTEXT NOT NULL,
    ingested_at DOUBLE NOT NULL,
    KEY {t}ingest_batches_task_idx (task, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}ingest_parked (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    message_id LONGTEXT,
    -- ids of any length are unique through their digest (an index on the text would cap it)
    message_key BINARY(32) AS (UNHEX(SHA2(message_id, 256))) STORED,
    -- quoted: BODY is a reserved word in sql_mode ORACLE (a server's mode, which sessions keep)
    `body` LONGTEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at DOUBLE NOT NULL,
    UNIQUE KEY {t}ingest_parked_message_idx (task, message_key)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;

-- record --
-- In the transaction of a batch's rows: what the batch held and did (the message ids as a JSON list).
INSERT INTO {t}ingest_batches (task, received, inserted, duplicates, malformed, message_ids, ingested_at)
VALUES (%(task)s, %(received)s, %(inserted)s, %(duplicates)s, %(malformed)s, %(message_ids)s, UNIX_TIMESTAMP(NOW(6)));

-- park --
-- In the transaction of a batch's rows: a message that could not be ingested, kept with the reason
-- (once per message id: a redelivered one is not parked twice; NULL ids never collide in the
-- unique key, so one without an id is kept once per body by the NOT EXISTS).
INSERT INTO {t}ingest_parked (task, message_id, `body`, error, parked_at)
SELECT %(task)s, %(message_id)s, %(body)s, %(error)s, UNIX_TIMESTAMP(NOW(6)) FROM DUAL
WHERE %(message_id)s IS NOT NULL
   OR NOT EXISTS (SELECT 1 FROM {t}ingest_parked p
                  WHERE p.task = %(task)s AND p.message_key IS NULL AND p.`body` = %(body)s)
ON DUPLICATE KEY UPDATE id = {t}ingest_parked.id;

-- lock_parked --
-- Before parking: wait at most 30 s for another transaction parking messages
-- of the task to end (a named lock, held by the session until unlock_parked).
SELECT GET_LOCK(CONCAT('sluicegate parked ', LEFT(SHA2(CONCAT_WS('/', DATABASE(), %(task)s), 256), 40)), 30);

-- unlock_parked --
-- Free the named lock of lock_parked, once the batch's transaction ended.
SELECT RELEASE_LOCK(CONCAT('sluicegate parked ', LEFT(SHA2(CONCAT_WS('/', DATABASE(), %(task)s), 256), 40)));

-- status --
-- An ingest task's batches and messages so far, and its parked messages.
SELECT count(*), coalesce(sum(received), 0), coalesce(sum(inserted), 0), coalesce(sum(duplicates), 0),
       coalesce(sum(malformed), 0), max(ingested_at),
       (SELECT count(*) FROM {t}ingest_parked p WHERE p.task = %(task)s)
FROM {t}ingest_batches WHERE task = %(task)s;

-- parked --
-- The latest parked messages of an ingest task.
SELECT message_id, error, `body`, parked_at FROM {t}ingest_parked WHERE task = %(task)s ORDER BY id DESC LIMIT %(limit)s;
