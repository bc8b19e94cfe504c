-- Partitions of partitioned tasks: marks, claims, commits, failures (ledger/partitions.py).
-- Each block is named after the method that runs it.

-- mark --
-- Record a change to one partition: insert it, or bump its version (clears a parked failure).
-- The zone and window are the ones just computed (a key's zone_sql zone may have changed).
INSERT INTO {t}partitions (task, pkey, keys, zone, win_start, win_end, changed_at)
VALUES (:task, :pkey, :keys, :zone, :win_start, :win_end, :now)
ON CONFLICT (task, pkey) DO UPDATE
SET version = version + 1,
    zone = excluded.zone, win_start = excluded.win_start, win_end = excluded.win_end,
    changed_at = CASE WHEN version = exported_version THEN :now ELSE changed_at END,
    attempts = CASE WHEN failed THEN 0 ELSE attempts END,
    next_attempt_at = CASE WHEN failed THEN NULL ELSE next_attempt_at END,
    failed = 0;

-- claim --
-- Claim up to limit pending, complete partitions no claim holds, oldest change first, then oldest
-- window (run inside BEGIN IMMEDIATE; a dead claim's partitions: take_over).
UPDATE {t}partitions
SET claim_token = :token,
    claimed_version = version,
    lease_until = :now + :lease
WHERE id IN (
    SELECT id FROM {t}partitions
    WHERE task = :task
      AND NOT failed
      AND version > exported_version
      AND (win_end IS NULL OR win_end <= :now - :settle)
      AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
      AND claim_token IS NULL
    ORDER BY changed_at, win_start, id
    LIMIT :limit
)
RETURNING id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag;

-- take_over --
-- Claim partitions of dead claims (held under an expired lease), oldest change first (run inside
-- BEGIN IMMEDIATE): with singles, one whose dead claim held it alone or as a second chance, alone;
-- else up to limit of dead batches, together, their second chance (see postgresql/partitions.sql);
-- an attempt only when the dead claim held it alone from the start (its lone token). Read by the
-- claim_token index: the claims held, not the queue.
UPDATE {t}partitions
SET attempts = attempts + CASE WHEN substr(claim_token, 15, 1) = '8' THEN 1 ELSE 0 END,
    claim_token = :token,
    claimed_version = version,
    lease_until = :now + :lease
WHERE id IN (
    SELECT id FROM {t}partitions INDEXED BY {t}partitions_claim_token_idx
    WHERE claim_token IS NOT NULL AND lease_until < :now
      AND (substr(claim_token, 15, 1) IN ('7', '8')) = :singles
      AND task = :task
      AND NOT failed
      AND version > exported_version
      AND (win_end IS NULL OR win_end <= :now - :settle)
      AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
    ORDER BY changed_at, win_start, id
    LIMIT :limit
)
RETURNING id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag;

-- lone --
-- Put the one partition a claim took under a lone token (a claim of one: see take_over).
UPDATE {t}partitions SET claim_token = :lone WHERE id = :id AND claim_token = :token;

-- renew --
-- Extend the lease of every partition still held under a claim token.
UPDATE {t}partitions SET lease_until = :now + :lease WHERE claim_token = :token;

-- hold --
-- Whether a claim is still held under its token (the transaction holds the write lock, so
-- its files are put in place and committed before any other worker can claim it).
SELECT id FROM {t}partitions WHERE id = :id AND claim_token = :token;

-- commit_held --
-- Record a durable export at the version read at claim; fenced by the claim token.
UPDATE {t}partitions
SET exported_version = claimed_version,
    forced = CASE WHEN version > claimed_version THEN forced ELSE 0 END,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = :path, rows = :rows, bytes = :bytes, checksum = :checksum, etag = :etag, exported_at = :now
WHERE id = :id AND claim_token = :token;

-- give_up --
-- Forget the file of each other partition of the task that recorded a path a commit's partition
-- just wrote (path, id: the writer), in the same transaction: after a path template change a
-- partition queued to move (or an hour retired by a zone change) gives its old file up to
-- another, whose rows it holds now; parked or exported later, its row must not name that file.
UPDATE {t}partitions SET path = NULL, rows = NULL, bytes = NULL, checksum = NULL, etag = NULL
WHERE task = :task AND path = :path AND id <> :id;

-- fail --
-- Give a claimed partition back after an error: retry later with backoff, or park it as failed.
-- counted is 0 when the partition is parked for the leases that expired before: no new attempt was made.
UPDATE {t}partitions
SET claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = attempts + :counted,
    last_error = :error,
    failed = (:terminal OR attempts + 1 >= :max_attempts),
    next_attempt_at = :now + min(:backoff * (1 << min(attempts, 20)), 3600)
WHERE id = :id AND claim_token = :token;

-- release --
-- Give back every partition still held under a claim token, without counting an attempt.
UPDATE {t}partitions SET claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE claim_token = :token;

-- pending --
-- List what the next claim would take (for --dry-run), without claiming.
SELECT id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag
FROM {t}partitions
WHERE task = :task
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= :now - :settle)
  AND (next_attempt_at IS NULL OR next_attempt_at <= :now)
  AND (claim_token IS NULL OR lease_until < :now)
ORDER BY changed_at, win_start, id
LIMIT :limit;

-- paths_taken --
-- The partitions of a task that recorded one of the paths (a JSON list): a batch's partition may
-- not take another's file (one lookup of the (task, path) index per path). moving: it is queued
-- to export again (after a path change it may write another file), not parked. bytes, checksum,
-- etag: what it recorded of the file (partitioned_paths._replaced).
SELECT path, pkey, zone, NOT failed AND version > exported_version AS moving, bytes, checksum, etag
FROM {t}partitions
WHERE task = :task AND path IN (SELECT value FROM json_each(:paths));

-- status --
-- Count a task's partitions by state.
SELECT
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < :now)
                 AND (win_end IS NULL OR win_end <= :now - :settle)), 0) AS pending,
    coalesce(sum(NOT failed AND claim_token IS NOT NULL AND lease_until >= :now), 0) AS claimed,
    coalesce(sum(NOT failed AND version = exported_version), 0) AS exported,
    coalesce(sum(failed), 0) AS failed,
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < :now)
                 AND win_end > :now - :settle), 0) AS waiting,
    coalesce(sum(NOT failed AND version > exported_version AND attempts > 0), 0) AS retrying,
    :now - min(CASE WHEN NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < :now)
                         AND (win_end IS NULL OR win_end <= :now - :settle) THEN changed_at END) AS oldest_pending_age,
    sum(zone IS NOT NULL AND zone <> :zone) AS other_zone
FROM {t}partitions WHERE task = :task;

-- failures --
-- The parked partitions of a task with their last error.
SELECT pkey, attempts, last_error FROM {t}partitions
WHERE task = :task AND failed ORDER BY changed_at, id LIMIT :limit;

-- partition_keys --
-- Every partition of a task with its window, for reexport filters, in pkey order: reexport
-- locks them in this order, as marks and commits do (the table's order deadlocked with them).
SELECT id, pkey, keys, win_start, win_end FROM {t}partitions WHERE task = :task ORDER BY pkey;

-- reexport --
-- Queue one partition again even if its bytes are unchanged.
UPDATE {t}partitions
SET version = version + 1, forced = 1, failed = 0, attempts = 0, next_attempt_at = NULL,
    changed_at = CASE WHEN version = exported_version THEN :now ELSE changed_at END
WHERE id = :id;

-- requeue --
-- Queue one partition again: a lost claim's upload landed at its path after all (Recorder.commit).
UPDATE {t}partitions
SET version = version + 1,
    changed_at = CASE WHEN version = exported_version THEN :now ELSE changed_at END
WHERE id = :id;

-- stale_claims --
-- The claims held but not renewed for over half the lease (see postgresql/partitions.sql), and
-- the seconds until the last of their leases ends.
SELECT count(*), max(lease_until) - :now FROM {t}partitions
WHERE claim_token IS NOT NULL AND task = :task AND NOT failed
  AND lease_until >= :now AND lease_until < :now + :lease / 2.0;

-- other_zones --
-- How many of a task's partitions were cut in another zone than the task's (its zone changed).
SELECT count(*) FROM {t}partitions WHERE task = :task AND zone IS NOT NULL AND zone <> :zone;

-- relabel --
-- Record a partition as cut in the task's zone now, where its window there is the same.
UPDATE {t}partitions SET zone = :zone WHERE id = :id AND zone <> :zone;

-- reset_failed --
-- Re-queue a task's parked partitions.
UPDATE {t}partitions SET failed = 0, attempts = 0, next_attempt_at = NULL WHERE task = :task AND failed;

-- key_samples --
-- Some partitions of a task with their named keys (check_key_order): any of them, read by the
-- (task, pkey) index, never a sort of the task's partitions.
SELECT pkey, keys FROM {t}partitions WHERE task = :task LIMIT :limit;

-- list_partitions --
-- A page of a task's partitions with their state.
SELECT * FROM (
    SELECT pkey, keys, version, exported_version, attempts, last_error, path, rows, bytes, exported_at,
           win_start, win_end,
           CASE WHEN failed THEN 'failed'
                WHEN version = exported_version THEN 'exported'
                WHEN claim_token IS NOT NULL AND lease_until >= :now THEN 'claimed'
                WHEN win_end > :now - :settle THEN 'waiting'
                ELSE 'pending' END AS state
    FROM {t}partitions WHERE task = :task
) AS p
WHERE :state IS NULL OR state = :state
ORDER BY win_start IS NOT NULL, win_start, pkey
LIMIT :limit OFFSET :offset;
