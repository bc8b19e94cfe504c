-- Partitions of partitioned tasks: marks, claims, commits, failures (ledger/partitions.py).
-- Each block is named after the method that runs it.
-- Rows are locked in pkey order COLLATE "C" (bytes: for UTF-8, the code point order in which
-- marks sort them in Python); the database's collation (en-US on most managed servers) puts
-- "antwerp" before "Gent", and a mark and a commit locking in two orders could deadlock.

-- mark --
-- Record a change to one partition: insert it, or bump its version (clears a parked failure).
-- The zone and window are the ones just computed: when zone_sql gives a key a new zone, the
-- partition's day is cut in that zone from now on (a window kept from the old zone left a
-- change that fell outside it in no file, or in two).
INSERT INTO {t}partitions AS p (task, pkey, keys, zone, win_start, win_end)
VALUES (%(task)s, %(pkey)s, %(keys)s, %(zone)s, %(win_start)s, %(win_end)s)
ON CONFLICT (task, pkey) DO UPDATE
SET version = p.version + 1,
    zone = EXCLUDED.zone, win_start = EXCLUDED.win_start, win_end = EXCLUDED.win_end,
    changed_at = CASE WHEN p.version = p.exported_version THEN now() ELSE p.changed_at END,
    attempts = CASE WHEN p.failed THEN 0 ELSE p.attempts END,
    next_attempt_at = CASE WHEN p.failed THEN NULL ELSE p.next_attempt_at END,
    failed = false;

-- claim --
-- Claim up to limit pending, complete partitions no claim holds, oldest change first, then oldest
-- window (a dead claim's partitions are taken over first: take_over).
-- The rows are updated by "id = ANY (array)", an index scan of the primary key at any ledger
-- size (a join with the CTE was hashed over a sequential scan of small ledgers: slower at 10k
-- rows than at 1M).
WITH candidate AS (
    SELECT id FROM {t}partitions
    WHERE task = %(task)s
      AND NOT failed
      AND version > exported_version
      AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
      AND claim_token IS NULL
    ORDER BY changed_at, win_start, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}partitions AS p
SET claim_token = %(token)s,
    claimed_version = p.version,
    lease_until = now() + make_interval(secs => %(lease)s)
WHERE p.id = ANY (ARRAY(SELECT id FROM candidate))
RETURNING p.id, p.pkey, p.keys, p.zone, p.version, p.attempts, p.forced, p.exported_version,
          p.path, p.bytes, p.checksum, p.etag;

-- take_over --
-- Claim partitions of dead claims (held under an expired lease), oldest change first: with
-- singles, one partition whose dead claim held it alone or as a dead batch's second chance, alone
-- (limit 1); else up to limit partitions of dead batches, together, their second chance. A
-- partition that kills its worker (SIGKILL, the OOM killer) takes the others of its batch down
-- with it: claimed back together they die once more, then each is taken over alone, and the
-- poison dies alone from then on, while a batch that died innocently (a deploy, a host reboot)
-- is exported at batch speed. The kind of a dead claim is its token's UUID version digit
-- (ledger/claims.py): 8 for a claim of one partition (a lone token: a take-over alone, or a
-- claim that found one), 7 for a second chance, 4 for a batch. Taking over counts as an attempt
-- only when the dead claim held it alone from the start (8): nothing tells which partition of a
-- dead batch, or of its second chance, killed it, while one that died alone did. The dead claims
-- are read by the claim_token index (the claims held, not the ledger: the ARRAY is planned on its
-- own, without the ORDER BY), then ordered and locked by the primary key.
WITH candidate AS (
    SELECT id FROM {t}partitions
    WHERE id = ANY (ARRAY(
            SELECT id FROM {t}partitions
            WHERE claim_token IS NOT NULL AND lease_until < now() AND task = %(task)s
              AND NOT failed AND version > exported_version))
      AND claim_token IS NOT NULL AND lease_until < now()
      AND (substr(claim_token::text, 15, 1) IN ('7', '8')) = %(singles)s
      AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))
      AND (next_attempt_at IS NULL OR next_attempt_at <= now())
    ORDER BY changed_at, win_start, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
UPDATE {t}partitions AS p
SET attempts = p.attempts + CASE WHEN substr(p.claim_token::text, 15, 1) = '8' THEN 1 ELSE 0 END,
    claim_token = %(token)s,
    claimed_version = p.version,
    lease_until = now() + make_interval(secs => %(lease)s)
WHERE p.id = ANY (ARRAY(SELECT id FROM candidate))
RETURNING p.id, p.pkey, p.keys, p.zone, p.version, p.attempts, p.forced, p.exported_version,
          p.path, p.bytes, p.checksum, p.etag;

-- lone --
-- Put the one partition a claim took under a lone token (a claim of one: see take_over).
UPDATE {t}partitions SET claim_token = %(lone)s WHERE id = %(id)s AND claim_token = %(token)s;

-- renew --
-- Extend the lease of every partition still held under a claim token (rows locked in pkey order, like marks).
-- Rows locked now are skipped, never waited for: a commit (or a mark) holds them for a moment,
-- and a renewal that waited on a lock held by a dead connection would stop every later one.
UPDATE {t}partitions SET lease_until = now() + make_interval(secs => %(lease)s)
WHERE id IN (SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey COLLATE "C" FOR UPDATE SKIP LOCKED);

-- hold --
-- Lock the rows of a batch's claims that are still held under their tokens (in pkey order,
-- like marks), waiting at most lock_timeout: the files are put in place while these locks
-- are held, then committed in the same transaction. Returns the ids still held.
-- The token is compared with IS NOT DISTINCT FROM (equal here: tokens are never NULL) so that the
-- planner joins on the primary key: every row of a batch has the same token, and a join on it
-- meets each row with every other (quadratic in the batch size). "id = ANY" reads the rows by
-- the primary key at any ledger size (see claim).
SELECT p.id
FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[]) AS d(id, token)
JOIN {t}partitions AS p ON p.id = d.id
WHERE p.claim_token IS NOT DISTINCT FROM d.token AND p.id = ANY (%(ids)s::bigint[])
ORDER BY p.pkey COLLATE "C"
FOR UPDATE OF p;

-- commit_held --
-- Record a batch's durable exports at their claimed versions, in one statement, fenced by the
-- claim tokens; returns the ids recorded (the rows are locked by hold in the same transaction).
-- Joined on the primary key, not the token, and read by "id = ANY" (see hold and claim).
WITH done AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(tokens)s::uuid[], %(paths)s::text[],
                         %(rows)s::bigint[], %(bytes)s::bigint[], %(checksums)s::text[], %(etags)s::text[])
        AS d(id, token, path, rows, bytes, checksum, etag)
)
UPDATE {t}partitions AS p
SET exported_version = p.claimed_version,
    forced = CASE WHEN p.version > p.claimed_version THEN p.forced ELSE false END,
    claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = 0, next_attempt_at = NULL, last_error = NULL,
    path = d.path, rows = d.rows, bytes = d.bytes, checksum = d.checksum, etag = d.etag,
    exported_at = now()
FROM done AS d
WHERE p.id = d.id AND p.claim_token IS NOT DISTINCT FROM d.token AND p.id = ANY (%(ids)s::bigint[])
RETURNING p.id;

-- give_up --
-- Forget the file of each other partition of the task that recorded a path a commit's partition
-- just wrote (path, id: the writer), in the same transaction: after a path template change a
-- partition queued to move (or an hour retired by a zone change) gives its old file up to
-- another, whose rows it holds now; parked or exported later, its row must not name that file.
-- One statement for the batch, by the index on (task, left(path, 500)).
UPDATE {t}partitions AS p SET path = NULL, rows = NULL, bytes = NULL, checksum = NULL, etag = NULL
FROM unnest(%(paths)s::text[], %(ids)s::bigint[]) AS d(path, id)
WHERE p.task = %(task)s AND left(p.path, 500) = left(d.path, 500) AND p.path = d.path AND p.id <> d.id;

-- fail --
-- Give a claimed partition back after an error: retry later with backoff, or park it as failed.
-- counted is 0 when the partition is parked for the leases that expired before: no new attempt was made.
UPDATE {t}partitions
SET claim_token = NULL, claimed_version = NULL, lease_until = NULL,
    attempts = attempts + %(counted)s,
    last_error = %(error)s,
    failed = %(terminal)s OR attempts + 1 >= %(max_attempts)s,
    next_attempt_at = now() + make_interval(secs => least(%(backoff)s * power(2, attempts), 3600))
WHERE id = %(id)s AND claim_token = %(token)s;

-- release --
-- Give back every partition still held under a claim token, without counting an attempt.
UPDATE {t}partitions SET claim_token = NULL, claimed_version = NULL, lease_until = NULL
WHERE id IN (SELECT id FROM {t}partitions WHERE claim_token = %(token)s ORDER BY pkey COLLATE "C" FOR UPDATE);

-- pending --
-- List what the next claim would take (for --dry-run), without claiming.
SELECT id, pkey, keys, zone, version, attempts, forced, exported_version, path, bytes, checksum, etag
FROM {t}partitions
WHERE task = %(task)s
  AND NOT failed
  AND version > exported_version
  AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))
  AND (next_attempt_at IS NULL OR next_attempt_at <= now())
  AND (claim_token IS NULL OR lease_until < now())
ORDER BY changed_at, win_start, id
LIMIT %(limit)s;

-- paths_taken --
-- The partitions of a task that recorded one of the paths: a batch's partition may not take
-- another's file. Looked up by the index on (task, left(path, 500)), as it holds long paths.
-- moving: it is queued to export again (after a path change it may write another file), not parked.
-- bytes, checksum, etag: what it recorded of the file (partitioned_paths._replaced).
SELECT path, pkey, zone, NOT failed AND version > exported_version AS moving, bytes, checksum, etag
FROM {t}partitions
WHERE task = %(task)s
  AND left(path, 500) = ANY (ARRAY(SELECT left(p, 500) FROM unnest(%(paths)s::text[]) AS p))
  AND path = ANY (%(paths)s::text[]);

-- lock_paths --
-- Lock the files a commit puts in place, one advisory lock per task and path (digests, in order)
-- until the transaction ends: a paths_taken after it sees any other worker's commit of one of them
-- (two partitions whose keys differ only in type render one file). lock_timeout applies (hold).
SELECT pg_advisory_xact_lock(k) FROM unnest(%(keys)s::bigint[]) AS k;

-- status --
-- Count a task's partitions by state.
SELECT
    count(*) FILTER (WHERE NOT failed AND version > exported_version
                     AND (claim_token IS NULL OR lease_until < now())
                     AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))) AS pending,
    count(*) FILTER (WHERE NOT failed AND claim_token IS NOT NULL AND lease_until >= now()) AS claimed,
    count(*) FILTER (WHERE NOT failed AND version = exported_version) AS exported,
    count(*) FILTER (WHERE failed) AS failed,
    count(*) FILTER (WHERE NOT failed AND version > exported_version
                     AND (claim_token IS NULL OR lease_until < now())
                     AND win_end > now() - make_interval(secs => %(settle)s)) AS waiting,
    count(*) FILTER (WHERE NOT failed AND version > exported_version AND attempts > 0) AS retrying,
    extract(epoch FROM now() - min(changed_at) FILTER (WHERE NOT failed AND version > exported_version
                     AND (claim_token IS NULL OR lease_until < now())
                     AND (win_end IS NULL OR win_end <= now() - make_interval(secs => %(settle)s))))
        AS oldest_pending_age,
    count(*) FILTER (WHERE zone IS NOT NULL AND zone <> %(zone)s) AS other_zone
FROM {t}partitions WHERE task = %(task)s;

-- failures --
-- The parked partitions of a task with their last error.
SELECT pkey, attempts, last_error FROM {t}partitions
WHERE task = %(task)s AND failed ORDER BY changed_at, id LIMIT %(limit)s;

-- partition_keys --
-- Every partition of a task with its window, for reexport filters, in pkey order: reexport
-- locks them in this order, as marks and commits do (the table's order deadlocked with them).
SELECT id, pkey, keys, win_start, win_end FROM {t}partitions WHERE task = %(task)s ORDER BY pkey COLLATE "C";

-- reexport --
-- Queue one partition again even if its bytes are unchanged.
UPDATE {t}partitions
SET version = version + 1, forced = true, failed = false, attempts = 0, next_attempt_at = NULL,
    changed_at = CASE WHEN version = exported_version THEN now() ELSE changed_at END
WHERE id = %(id)s;

-- requeue --
-- Queue one partition again: a lost claim's upload landed at its path after all (Recorder.commit).
UPDATE {t}partitions
SET version = version + 1,
    changed_at = CASE WHEN version = exported_version THEN now() ELSE changed_at END
WHERE id = %(id)s;

-- stale_claims --
-- The claims held (their lease has not ended) but not renewed for over half the lease: a running
-- worker renews its claims every third of it, so theirs has stopped (SIGSTOP, a lost ledger
-- connection) or died; and the seconds until the last of those leases ends (take_over then).
SELECT count(*), extract(epoch FROM max(lease_until) - now()) FROM {t}partitions
WHERE claim_token IS NOT NULL AND task = %(task)s AND NOT failed
  AND lease_until >= now() AND lease_until < now() + make_interval(secs => %(lease)s / 2.0);

-- other_zones --
-- How many of a task's partitions were cut in another zone than the task's (its zone changed).
SELECT count(*) FROM {t}partitions WHERE task = %(task)s AND zone IS NOT NULL AND zone <> %(zone)s;

-- relabel --
-- Record a partition as cut in the task's zone now, where its window there is the same.
UPDATE {t}partitions SET zone = %(zone)s WHERE id = %(id)s AND zone <> %(zone)s;

-- reset_failed --
-- Re-queue a task's parked partitions (locked in pkey order, as marks lock them).
UPDATE {t}partitions
SET failed = false, attempts = 0, next_attempt_at = NULL
WHERE id IN (SELECT id FROM {t}partitions WHERE task = %(task)s AND failed ORDER BY pkey COLLATE "C" FOR UPDATE);

-- key_samples --
-- Some partitions of a task with their named keys (check_key_order): any of them, read by the
-- (task, pkey) index, never a sort of the task's partitions.
SELECT pkey, keys FROM {t}partitions WHERE task = %(task)s LIMIT %(limit)s;

-- list_partitions --
-- A page of a task's partitions with their state.
SELECT * FROM (
    SELECT pkey, keys, version, exported_version, attempts, last_error, path, rows, bytes, exported_at,
           win_start, win_end,
           CASE WHEN failed THEN 'failed'
                WHEN version = exported_version THEN 'exported'
                WHEN claim_token IS NOT NULL AND lease_until >= now() THEN 'claimed'
                WHEN win_end > now() - make_interval(secs => %(settle)s) THEN 'waiting'
                ELSE 'pending' END AS state
    FROM {t}partitions WHERE task = %(task)s
) AS p
WHERE %(state)s::text IS NULL OR state = %(state)s::text
ORDER BY win_start NULLS FIRST, pkey COLLATE "C"
LIMIT %(limit)s OFFSET %(offset)s;
