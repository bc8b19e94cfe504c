-- What ingest tasks ingested, in the database of their table (ledger/ingest.py).
-- Each block is named after the method that runs it.

-- exists --
-- Whether the ingest tables exist in this database.
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '{t}ingest_parked';

-- create --
-- The ingest log and the parked messages, next to the table that ingest writes (idempotent).
CREATE TABLE IF NOT EXISTS {t}ingest_batches (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    received INTEGER NOT NULL,
    inserted INTEGER NOT NULL,
    duplicates INTEGER NOT NULL,
    malformed INTEGER NOT NULL,
    message_ids TEXT NOT NULL,
    ingested_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS {t}ingest_batches_task_idx ON {t}ingest_batches (task, id);
CREATE TABLE IF NOT EXISTS {t}ingest_parked (
    id INTEGER PRIMARY KEY,
    task TEXT NOT NULL,
    message_id TEXT,
    body TEXT NOT NULL,
    error TEXT NOT NULL,
    parked_at REAL NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS {t}ingest_parked_message_idx ON {t}ingest_parked (task, message_id);

-- record --
-- In the transaction of a batch's rows: what the batch held and did (the message ids as a JSON list).
INSERT INTO {t}ingest_batches (task, received, inserted, duplicates, malformed, message_ids, ingested_at)
VALUES (:task, :received, :inserted, :duplicates, :malformed, :message_ids, :now);

-- park --
-- In the transaction of a batch's rows: a message that could not be ingested, kept with the reason
-- (once per message id: a redelivered one is not parked twice; one without an id once per body).
INSERT INTO {t}ingest_parked (task, message_id, body, error, parked_at)
SELECT :task, :message_id, :body, :error, :now
WHERE :message_id IS NOT NULL
   OR NOT EXISTS (SELECT 1 FROM {t}ingest_parked WHERE task = :task AND message_id IS NULL AND body = :body)
ON CONFLICT DO NOTHING;

-- status --
-- An ingest task's batches and messages so far, and its parked messages.
SELECT count(*), coalesce(sum(received), 0), coalesce(sum(inserted), 0), coalesce(sum(duplicates), 0),
       coalesce(sum(malformed), 0), max(ingested_at),
       (SELECT count(*) FROM {t}ingest_parked p WHERE p.task = :task)
FROM {t}ingest_batches WHERE task = :task;

-- parked --
-- The latest parked messages of an ingest task.
SELECT message_id, error, body, parked_at FROM {t}ingest_parked WHERE task = :task ORDER BY id DESC LIMIT :limit;
