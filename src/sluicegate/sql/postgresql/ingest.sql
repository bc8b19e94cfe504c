-- What ingest tasks ingested, in the database of their table (ledger/ingest.py).
-- Each block is named after the method that runs it.

-- exists --
-- Whether the ingest tables exist in this database.
SELECT 1 FROM pg_tables WHERE schemaname = %(schema)s AND tablename = 'ingest_parked';

-- create --
-- The ingest log and the parked messages, next to the table that ingest writes (idempotent, safe to race).
SELECT pg_advisory_xact_lock(hashtext('sluicegate ledger schema'));
CREATE SCHEMA IF NOT EXISTS {t_schema};
CREATE TABLE IF NOT EXISTS {t}ingest_batches (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    received integer NOT NULL,
    inserted integer NOT NULL,
    duplicates integer NOT NULL,
    malformed integer NOT NULL,
    message_ids text NOT NULL,
    ingested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS ingest_batches_task_idx ON {t}ingest_batches (task, id);
CREATE TABLE IF NOT EXISTS {t}ingest_parked (
    id bigserial PRIMARY KEY,
    task text NOT NULL,
    message_id text,
    body text NOT NULL,
    error text NOT NULL,
    parked_at timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX IF NOT EXISTS ingest_parked_message_idx ON {t}ingest_parked (task, message_id);

-- record --
-- In the transaction of a batch's rows: what the batch held and did (the message ids as a JSON list).
INSERT INTO {t}ingest_batches (task, received, inserted, duplicates, malformed, message_ids)
VALUES (%(task)s, %(received)s, %(inserted)s, %(duplicates)s, %(malformed)s, %(message_ids)s);

-- park --
-- In the transaction of a batch's rows: a message that could not be ingested, kept with the reason
-- (once per message id: a redelivered one is not parked twice; one without an id once per body).
INSERT INTO {t}ingest_parked (task, message_id, body, error)
SELECT %(task)s, CAST(%(message_id)s AS text), %(body)s, %(error)s
WHERE CAST(%(message_id)s AS text) IS NOT NULL
   OR NOT EXISTS (SELECT 1 FROM {t}ingest_parked
                  WHERE task = %(task)s AND message_id IS NULL AND body = CAST(%(body)s AS text))
ON CONFLICT DO NOTHING;

-- lock_parked --
-- Before parking: wait for another transaction parking messages of the task
-- to end (a statement of its own, so park's NOT EXISTS, taken after it, sees what that one parked).
SELECT pg_advisory_xact_lock(hashtext('sluicegate parked'), hashtext(%(task)s));

-- status --
-- An ingest task's batches and messages so far, and its parked messages.
SELECT count(*), coalesce(sum(received), 0), coalesce(sum(inserted), 0), coalesce(sum(duplicates), 0),
       coalesce(sum(malformed), 0), max(ingested_at),
       (SELECT count(*) FROM {t}ingest_parked p WHERE p.task = %(task)s)
FROM {t}ingest_batches WHERE task = %(task)s;

-- parked --
-- The latest parked messages of an ingest task.
SELECT message_id, error, body, parked_at FROM {t}ingest_parked WHERE task = %(task)s ORDER BY id DESC LIMIT %(limit)s;
