-- Partitions of partitioned tasks: marks, claims, commits, failures (ledger/partitions.py).
-- Each block is named after the method that runs it. MariaDB evaluates the assignments of an
-- UPDATE (and of ON DUPLICATE KEY UPDATE) left to right, each seeing the ones before it: every
-- SET below assigns a column only after the expressions that read its old value.

-- mark --
-- Record a change to one partition: insert it, or bump its version (clears a parked failure).
-- The zone and window are the ones just computed (a key's zone_sql zone may have changed).
INSERT INTO {t}partitions (task, pkey, `keys`, zone, win_start, win_end, changed_at)
VALUES (%(task)s, %(pkey)s, %(keys)s, %(zone)s, %(win_start)s, %(win_end)s, UNIX_TIMESTAMP(NOW(6)))
ON DUPLICATE KEY UPDATE
    zone = VALUES(zone), win_start = VALUES(win_start), win_end = VALUES(win_end),
    changed_at = CASE WHEN version = exported_version THEN UNIX_TIMESTAMP(NOW(6)) ELSE changed_at END,
    attempts = CASE WHEN failed THEN 0 ELSE attempts END,
    next_attempt_at = CASE WHEN failed THEN NULL ELSE next_attempt_at END,
    failed = FALSE,
    version = version + 1;

-- claim --
-- Lock up to limit pending, complete partitions no claim holds, oldest change first, then oldest
-- window, skipping rows another worker holds (a dead claim's partitions: take_over).
SELECT id FROM {t}partitions
WHERE task = %(task)s
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= UNIX_TIMESTAMP(NOW(6)) - %(settle)s)
  AND (next_attempt_at IS NULL OR next_attempt_at <= UNIX_TIMESTAMP(NOW(6)))
  AND claim_token IS NULL
ORDER BY changed_at, win_start, id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- take_over --
-- Lock partitions of dead claims (held under an expired lease), oldest change first: with singles,
-- one whose dead claim held it alone or as a second chance; else up to limit of dead batches (see
-- postgresql/partitions.sql); and whether the dead claim held it alone from the start (its lone
-- token; an attempt then), read by the claim_token index (the claims held, not the queue).
-- claim_take then takes them.
SELECT p.id, SUBSTRING(p.claim_token, 15, 1) = '8'
FROM {t}partitions AS p FORCE INDEX ({t}partitions_claim_token_idx)
WHERE p.claim_token IS NOT NULL AND p.lease_until < UNIX_TIMESTAMP(NOW(6))
  AND (SUBSTRING(p.claim_token, 15, 1) IN ('7', '8')) = %(singles)s
  AND p.task = %(task)s
  AND NOT p.failed
  AND p.version > p.exported_version
  AND (p.win_end IS NULL OR p.win_end <= UNIX_TIMESTAMP(NOW(6)) - %(settle)s)
  AND (p.next_attempt_at IS NULL OR p.next_attempt_at <= UNIX_TIMESTAMP(NOW(6)))
ORDER BY p.changed_at, p.win_start, p.id
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- claim_take --
-- Take one locked row under a fresh token and lease (run for each row in one batch round trip);
-- taking over a row its dead claim held alone from the start (take_over's second column) counts
-- as an attempt.
-- (Not WHERE id IN (a JSON list): MariaDB before 11.1 runs that subquery of an UPDATE once per
-- row of the table.)
UPDATE {t}partitions
SET attempts = attempts + CASE WHEN claim_token IS NOT NULL AND %(alone)s THEN 1 ELSE 0 END,
    claim_token = %(token)s,
    claimed_version = version,
    lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s
WHERE id = %(id)s;

-- claimed --
-- The partitions held under a claim token, as a claim returns them.
SELECT id, pkey, `keys`, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag
FROM {t}partitions WHERE claim_token = %(token)s ORDER BY id;

-- renew --
-- Lock the partitions held under a claim token, skipping rows locked now, never waiting for
-- them (as on PostgreSQL): a commit (or a mark) holds them for a moment, and a renewal that
-- waited on a lock held by a stuck session stopped the renewal of every other row for the lock
-- wait timeout. Never waiting, it cannot deadlock with a mark or a commit, whatever order the
-- scan locks in (one UPDATE ... WHERE claim_token waited, and deadlocked with them).
-- renew_rows then extends the leases of the rows locked here.
SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey FOR UPDATE SKIP LOCKED;

-- renew_rows --
-- Extend the lease of one partition renew locked, if still held under the token (run for each row
-- in one batch round trip).
UPDATE {t}partitions SET lease_until = UNIX_TIMESTAMP(NOW(6)) + %(lease)s WHERE id = %(id)s AND claim_token = %(token)s;

-- hold --
-- Lock the rows of a batch's claims and read their tokens, in one round trip: one lookup of the
-- unique (task, pkey) key per pkey, in the order given (sorted, as marks lock the same keys),
-- so a commit and a mark cannot deadlock. The caller keeps the rows still held under its
-- tokens; their files are put in place while the locks are held, then committed in the same
-- transaction.
SELECT p.id, p.claim_token
FROM JSON_TABLE(%(pkeys)s, '$[*]' COLUMNS (pkey VARCHAR(512) PATH '$')) AS j
STRAIGHT_JOIN {t}partitions AS p FORCE INDEX ({t}partitions_task_pkey)
    ON p.task = %(task)s AND p.pkey = j.pkey COLLATE utf8mb4_bin
FOR UPDATE;

-- commit_held --
-- Record a durable export at the version read at claim; fenced by the claim token (the row is
-- locked by hold in this transaction, so it still matches: run for each row in one round trip).
UPDATE {t}partitions
SET forced = CASE WHEN version > claimed_version THEN forced ELSE FALSE END,
    exported_version = claimed_version,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = %(path)s, `rows` = %(rows)s, bytes = %(bytes)s, checksum = %(checksum)s, etag = %(etag)s,
    exported_at = UNIX_TIMESTAMP(NOW(6))
WHERE id = %(id)s AND claim_token = %(token)s;

-- give_up --
-- Forget the file of each other partition of the task that recorded a path a commit's partition
-- just wrote (path, id: the writer), in the same transaction: after a path template change a
-- partition queued to move (or an hour retired by a zone change) gives its old file up to
-- another, whose rows it holds now; parked or exported later, its row must not name that file.
-- By the (task, path) index; the paths compared exactly (utf8mb4_bin pads).
UPDATE {t}partitions
SET path = NULL, `rows` = NULL, bytes = NULL, checksum = NULL, etag = NULL
WHERE task = %(task)s AND path = %(path)s AND CAST(path AS BINARY) = CAST(%(path)s AS BINARY) AND id <> %(id)s;

-- fail --
-- Give a claimed partition back after an error: retry later with backoff, or park it as failed.
-- counted is 0 when the partition is parked for the leases that expired before: no new attempt was made.
UPDATE {t}partitions
SET failed = (%(terminal)s OR attempts + 1 >= %(max_attempts)s),
    next_attempt_at = UNIX_TIMESTAMP(NOW(6)) + LEAST(%(backoff)s * POW(2, LEAST(attempts, 20)), 3600),
    attempts = attempts + %(counted)s,
    last_error = %(error)s,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- The partitions held under a claim token, in pkey order (utf8mb4_bin: code points, the order
-- marks sort them in), not locked: release_rows then locks them in the order marks and commits
-- do. One UPDATE ... WHERE claim_token locked them in the claim_token index's order (by id),
-- and deadlocked with a mark or a commit of the same partitions.
SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey;

-- release_rows --
-- Give back one partition release found, if still held under the token, without counting an
-- attempt (run for each row in one batch round trip, in release's order).
UPDATE {t}partitions SET claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE id = %(id)s AND claim_token = %(token)s;

-- pending --
-- List what the next claim would take (for --dry-run), without claiming.
SELECT id, pkey, `keys`, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag
FROM {t}partitions
WHERE task = %(task)s
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= UNIX_TIMESTAMP(NOW(6)) - %(settle)s)
  AND (next_attempt_at IS NULL OR next_attempt_at <= UNIX_TIMESTAMP(NOW(6)))
  AND (claim_token IS NULL OR lease_until < UNIX_TIMESTAMP(NOW(6)))
ORDER BY changed_at, win_start, id
LIMIT %(limit)s;

-- paths_taken --
-- The partitions of a task that recorded one of the paths (a JSON list): a batch's partition may
-- not take another's file. One lookup of the (task, path) index per path; the caller compares
-- the paths exactly (utf8mb4_bin pads: 'a' and 'a ' are equal here). moving: it is queued to
-- export again (after a path change it may write another file), not parked. bytes, checksum,
-- etag: what it recorded of the file (partitioned_paths._replaced).
SELECT p.path, p.pkey, p.zone, NOT p.failed AND p.version > p.exported_version AS moving,
       p.bytes, p.checksum, p.etag
FROM JSON_TABLE(%(paths)s, '$[*]' COLUMNS (path TEXT PATH '$')) AS j
STRAIGHT_JOIN {t}partitions AS p FORCE INDEX ({t}partitions_path_idx)
    ON p.task = %(task)s AND p.path = j.path COLLATE utf8mb4_bin;

-- lock_paths --
-- Lock the files a commit puts in place, one named lock per task and path (digests, in order),
-- waiting at most 10 s for another worker's commit of one of them: a paths_taken after it sees that
-- commit (two partitions whose keys differ only in type render one file). unlock_paths frees them.
SELECT GET_LOCK(j.name, 10) FROM JSON_TABLE(%(names)s, '$[*]' COLUMNS (name VARCHAR(64) PATH '$')) AS j;

-- unlock_paths --
-- Free the named locks of lock_paths, once the commit ended.
SELECT RELEASE_LOCK(j.name) FROM JSON_TABLE(%(names)s, '$[*]' COLUMNS (name VARCHAR(64) PATH '$')) AS j;

-- status --
-- Count a task's partitions by state.
SELECT
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < n.now)
                 AND (win_end IS NULL OR win_end <= n.now - %(settle)s)), 0) AS pending,
    coalesce(sum(NOT failed AND claim_token IS NOT NULL AND lease_until >= n.now), 0) AS claimed,
    coalesce(sum(NOT failed AND version = exported_version), 0) AS exported,
    coalesce(sum(failed), 0) AS failed,
    coalesce(sum(NOT failed AND version > exported_version AND (claim_token IS NULL OR lease_until < n.now)
                 AND win_end > n.now - %(settle)s), 0) AS waiting,
    coalesce(sum(NOT failed AND version > exported_version AND attempts > 0), 0) AS retrying,
    max(n.now) - min(CASE WHEN NOT failed AND version > exported_version
                               AND (claim_token IS NULL OR lease_until < n.now)
                               AND (win_end IS NULL OR win_end <= n.now - %(settle)s) THEN changed_at END)
        AS oldest_pending_age,
    sum(zone IS NOT NULL AND zone <> %(zone)s) AS other_zone
FROM {t}partitions CROSS JOIN (SELECT UNIX_TIMESTAMP(NOW(6)) AS now) AS n WHERE task = %(task)s;

-- failures --
-- The parked partitions of a task with their last error.
SELECT pkey, attempts, last_error FROM {t}partitions
WHERE task = %(task)s AND failed ORDER BY changed_at, id LIMIT %(limit)s;

-- partition_keys --
-- Every partition of a task with its window, for reexport filters, in pkey order: reexport
-- locks them in this order, as marks and commits do (the table's order deadlocked with them).
SELECT id, pkey, `keys`, win_start, win_end FROM {t}partitions WHERE task = %(task)s ORDER BY pkey;

-- reexport --
-- Queue one partition again even if its bytes are unchanged.
UPDATE {t}partitions
SET changed_at = CASE WHEN version = exported_version THEN UNIX_TIMESTAMP(NOW(6)) ELSE changed_at END,
    version = version + 1, forced = TRUE, failed = FALSE, attempts = 0, next_attempt_at = NULL
WHERE id = %(id)s;

-- requeue --
-- Queue one partition again: a lost claim's upload landed at its path after all (Recorder.commit).
UPDATE {t}partitions
SET changed_at = CASE WHEN version = exported_version THEN UNIX_TIMESTAMP(NOW(6)) ELSE changed_at END,
    version = version + 1
WHERE id = %(id)s;

-- stale_claims --
-- The claims held but not renewed for over half the lease (see postgresql/partitions.sql), and
-- the seconds until the last of their leases ends.
SELECT count(*), max(lease_until) - max(n.now)
FROM {t}partitions CROSS JOIN (SELECT UNIX_TIMESTAMP(NOW(6)) AS now) AS n
WHERE claim_token IS NOT NULL AND task = %(task)s AND NOT failed
  AND lease_until >= n.now AND lease_until < n.now + %(lease)s / 2.0;

-- other_zones --
-- How many of a task's partitions were cut in another zone than the task's (its zone changed).
SELECT count(*) FROM {t}partitions WHERE task = %(task)s AND zone IS NOT NULL AND zone <> %(zone)s;

-- relabel --
-- Record a partition as cut in the task's zone now, where its window there is the same.
UPDATE {t}partitions SET zone = %(zone)s WHERE id = %(id)s AND zone <> %(zone)s;

-- reset_failed --
-- A task's parked partitions, in pkey order, not locked: reset_failed_rows then locks them in
-- the order marks and commits do. One UPDATE ... WHERE task AND failed locked them in the queue
-- index's order (oldest change first), and deadlocked with a fold marking the same partitions.
SELECT id FROM {t}partitions WHERE task = %(task)s AND failed ORDER BY pkey;

-- reset_failed_rows --
-- Re-queue one partition reset_failed found, if still parked (run for each row in one batch
-- round trip, in reset_failed's order).
UPDATE {t}partitions SET failed = FALSE, attempts = 0, next_attempt_at = NULL WHERE id = %(id)s AND failed;

-- key_samples --
-- Some partitions of a task with their named keys (check_key_order): any of them, read by the
-- (task, pkey) index, never a sort of the task's partitions.
SELECT pkey, `keys` FROM {t}partitions WHERE task = %(task)s LIMIT %(limit)s;

-- list_partitions --
-- A page of a task's partitions with their state.
SELECT * FROM (
    SELECT pkey, `keys`, version, exported_version, attempts, last_error, path, `rows`, bytes, exported_at,
           win_start, win_end,
           CASE WHEN failed THEN 'failed'
                WHEN version = exported_version THEN 'exported'
                WHEN claim_token IS NOT NULL AND lease_until >= UNIX_TIMESTAMP(NOW(6)) THEN 'claimed'
                WHEN win_end > UNIX_TIMESTAMP(NOW(6)) - %(settle)s THEN 'waiting'
                ELSE 'pending' END AS state
    FROM {t}partitions WHERE task = %(task)s
) AS p
WHERE %(state)s IS NULL OR state = %(state)s
ORDER BY win_start IS NOT NULL, win_start, pkey
LIMIT %(limit)s OFFSET %(offset)s;
