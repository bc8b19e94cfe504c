-- The ledger tables on MariaDB/MySQL: every kind's stores, runs, and the trigger inbox (core:
-- ledger/core.py). Each block is named after the method that runs it. Times are UTC seconds
-- since the epoch (DOUBLE); those the ledger stamps are taken from the server's clock
-- (UNIX_TIMESTAMP(NOW(6)) in a session pinned to UTC), so leases mean the same on every worker.

-- ensure_schema --
-- Create the ledger tables (idempotent; MariaDB commits each CREATE on its own).
CREATE TABLE IF NOT EXISTS {t}meta (
    `key` VARCHAR(64) NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}partitions (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    pkey VARCHAR(512) NOT NULL,  -- with task: within InnoDB's 3072-byte key in utf8mb4
    `keys` TEXT NOT NULL,
    zone VARCHAR(64),
    win_start DOUBLE,
    win_end DOUBLE,
    version BIGINT NOT NULL DEFAULT 1,
    exported_version BIGINT NOT NULL DEFAULT 0,
    changed_at DOUBLE NOT NULL,
    forced BOOLEAN NOT NULL DEFAULT FALSE,
    claim_token CHAR(36),
    claimed_version BIGINT,
    lease_until DOUBLE,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE,
    failed BOOLEAN NOT NULL DEFAULT FALSE,
    last_error TEXT,
    path TEXT,
    `rows` BIGINT,
    bytes BIGINT,
    checksum VARCHAR(128),
    etag VARCHAR(255),
    exported_at DOUBLE,
    UNIQUE KEY {t}partitions_task_pkey (task, pkey),
    KEY {t}partitions_queue_idx (task, failed, changed_at, win_start, id),
    KEY {t}partitions_claim_token_idx (claim_token),
    KEY {t}partitions_path_idx (task, path(255)),  -- paths_taken; within InnoDB's 3072-byte key
    CONSTRAINT {t}partitions_versions CHECK (exported_version <= version),
    CONSTRAINT {t}partitions_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Append-only: no unique index, so concurrent ingest transactions never wait on each other here
-- (one row per changed data row; the fold reads them in chunks).
CREATE TABLE IF NOT EXISTS {t}changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    `keys` TEXT NOT NULL,
    bin BIGINT NULL,
    KEY {t}changes_task_idx (task, id)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- Entities compare as PostgreSQL's text does (bytes, trailing spaces too): {exact}, the NO PAD
-- binary collation (utf8mb4_bin is PAD SPACE: 's1' and 's1 ' were one row). With task:
-- within InnoDB's 3072-byte key in utf8mb4. failed_mode and failed_end are set and cleared
-- together (commit relies on it: it clears failed_end, then failed_mode where failed_end is gone).
CREATE TABLE IF NOT EXISTS {t}watermarks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    entity VARCHAR(512) CHARACTER SET utf8mb4 COLLATE {exact} NOT NULL,
    watermark DOUBLE,
    claim_token CHAR(36),
    lease_until DOUBLE,
    pending_start DOUBLE,
    pending_end DOUBLE,
    pending_type VARCHAR(32),
    attempts INT NOT NULL DEFAULT 0,
    last_error TEXT,
    failed_start DOUBLE,
    failed_end DOUBLE,
    failed_type VARCHAR(32),
    failed_mode VARCHAR(16),
    failed_destination TEXT,
    exported_at DOUBLE,
    `rows` BIGINT,
    path TEXT,
    UNIQUE KEY {t}watermarks_task_entity (task, entity),
    KEY {t}watermarks_claim_token_idx (claim_token),
    CONSTRAINT {t}watermarks_failed_mode CHECK (failed_mode IN ('watermark', 'reexport')),
    CONSTRAINT {t}watermarks_failed_window CHECK ((failed_mode IS NULL) = (failed_end IS NULL)),
    CONSTRAINT {t}watermarks_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}scans (
    task VARCHAR(255) NOT NULL PRIMARY KEY,
    high_water DATETIME(6),
    scanned_at DOUBLE
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}archive_runs (
    id CHAR(36) NOT NULL PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    boundary DOUBLE NOT NULL,
    path VARCHAR(512) NOT NULL,  -- with task: within InnoDB's 3072-byte key in utf8mb4
    state VARCHAR(16) NOT NULL,
    `rows` BIGINT,
    bytes BIGINT,
    checksum VARCHAR(128),
    deleted BIGINT,
    started_at DOUBLE NOT NULL,
    finished_at DOUBLE,
    UNIQUE KEY {t}archive_runs_task_path (task, path),
    KEY {t}archive_runs_task_started_idx (task, started_at),
    CONSTRAINT {t}archive_runs_state CHECK (state IN ('exporting', 'published', 'done'))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}schedule_ticks (
    task VARCHAR(255) NOT NULL,
    tick DOUBLE NOT NULL,
    fired_at DOUBLE,
    PRIMARY KEY (task, tick)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- One row per (task, key value, block, stage), created when a range is asked for. Key values
-- compare as PostgreSQL's text does ({exact}, as entities), stages as bytes; the unique key stays within
-- InnoDB's 3072 bytes. The queue index serves the claim's order (oldest block first).
CREATE TABLE IF NOT EXISTS {t}blocks (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    key_value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {exact} NOT NULL,
    block_start DOUBLE NOT NULL,
    block_end DOUBLE NOT NULL,
    label VARCHAR(255) NOT NULL,
    stage VARCHAR(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NOT NULL,
    position INT NOT NULL,
    status VARCHAR(16) NOT NULL DEFAULT 'pending',
    claim_token CHAR(36),
    lease_until DOUBLE,
    attempts INT NOT NULL DEFAULT 0,
    next_attempt_at DOUBLE,
    forced BOOLEAN NOT NULL DEFAULT FALSE,
    records_total BIGINT,
    records_processed BIGINT,
    records_errors BIGINT,
    error TEXT,
    artifact TEXT,
    bytes BIGINT,
    checksum VARCHAR(128),
    created_at DOUBLE NOT NULL,
    started_at DOUBLE,
    finished_at DOUBLE,
    UNIQUE KEY {t}blocks_task_key_block_stage (task, key_value, block_start, stage),
    KEY {t}blocks_position_idx (task, key_value, block_start, position),
    KEY {t}blocks_queue_idx (task, block_start, key_value, position),
    KEY {t}blocks_claim_token_idx (claim_token),
    CONSTRAINT {t}blocks_status CHECK (status IN ('pending', 'running', 'done', 'no_data', 'failed')),
    CONSTRAINT {t}blocks_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL)),
    CONSTRAINT {t}blocks_running_is_claimed CHECK ((status = 'running') = (claim_token IS NOT NULL)),
    CONSTRAINT {t}blocks_window CHECK (block_start < block_end)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}runs (
    id CHAR(36) NOT NULL PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    tag TEXT,
    request LONGTEXT,
    started_at DOUBLE NOT NULL,
    finished_at DOUBLE,
    summary LONGTEXT,
    heartbeat_at DOUBLE,
    KEY {t}runs_started_idx (started_at)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}aggregate_evaluations (
    task VARCHAR(255) NOT NULL,
    tick DOUBLE NOT NULL,
    window_start DOUBLE NOT NULL,
    window_end DOUBLE NOT NULL,
    state VARCHAR(16) NOT NULL,
    claim_token CHAR(36),
    lease_until DOUBLE,
    attempts INT NOT NULL DEFAULT 1,
    next_attempt_at DOUBLE,
    `rows` BIGINT,
    seconds DOUBLE,
    path TEXT,
    error TEXT,
    started_at DOUBLE NOT NULL,
    finished_at DOUBLE,
    PRIMARY KEY (task, tick),
    CONSTRAINT {t}aggregate_evaluations_state CHECK (state IN ('running', 'done', 'failed', 'superseded')),
    CONSTRAINT {t}aggregate_evaluations_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
CREATE TABLE IF NOT EXISTS {t}task_errors (
    task VARCHAR(255) NOT NULL PRIMARY KEY,
    error TEXT NOT NULL,
    config BOOLEAN NOT NULL DEFAULT FALSE,
    at DOUBLE NOT NULL
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4 COLLATE = utf8mb4_bin;
-- The version is only ever raised: an older release must not lower it (mariadb-inbox-1, the
-- inbox alone of the release before the ledger, is older than every number).
INSERT INTO {t}meta (`key`, value) VALUES ('schema_version', 'mariadb-4')
ON DUPLICATE KEY UPDATE value = CASE
    WHEN value = 'mariadb-inbox-1' THEN VALUES(value)
    WHEN CAST(SUBSTRING(value, 9) AS UNSIGNED) < 4 THEN VALUES(value)
    ELSE value
END;

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE `key` = 'schema_version';

-- upgrade_collation --
-- mariadb-1 -> mariadb-2: the tables of the first release compared text without case (the
-- server's default collation), so partition keys Gent and gent were one ledger row; binary now.
ALTER TABLE {t}meta CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}partitions CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}changes CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}scans CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}schedule_ticks CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}runs CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}task_errors CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin

-- upgrade_inbox --
-- mariadb-inbox-1 -> mariadb-2: the release before the MariaDB ledger made only the trigger inbox,
-- in the server's default (case-blind) collation; binary now, as the tables made later are.
ALTER TABLE {t}meta CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin;
ALTER TABLE {t}changes CONVERT TO CHARACTER SET utf8mb4 COLLATE utf8mb4_bin

-- upgrade_padding --
-- mariadb-2 -> mariadb-3: entities and blocks' key values compared as utf8mb4_bin, which is PAD
-- SPACE: 's1' and 's1 ' were one watermark row, and the second's rows were never exported.
ALTER TABLE {t}watermarks MODIFY entity VARCHAR(512) CHARACTER SET utf8mb4 COLLATE {exact} NOT NULL;
ALTER TABLE {t}blocks MODIFY key_value VARCHAR(255) CHARACTER SET utf8mb4 COLLATE {exact} NOT NULL

-- path_index_missing --
-- mariadb-1 to mariadb-3: whether the partitions table still lacks the path index of mariadb-4
-- (MySQL has no ADD KEY IF NOT EXISTS, and MariaDB commits DDL at once: a start that failed after
-- adding it must not add it again).
SELECT COUNT(*) = 0 FROM information_schema.statistics
WHERE table_schema = DATABASE() AND table_name = '{t}partitions' AND index_name = '{t}partitions_path_idx';

-- upgrade_path_index --
-- mariadb-3 -> mariadb-4: a partition may not take a file another partition of its task recorded
-- (paths_taken looks the batch's paths up by this index).
ALTER TABLE {t}partitions ADD KEY {t}partitions_path_idx (task, path(255))
