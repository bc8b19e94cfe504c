-- The ledger tables on MariaDB/MySQL: partitioned tasks, runs, and the trigger inbox (core: ledger/core.py).
-- Each block is named after the method that runs it. Times are UTC seconds since the epoch
-- (DOUBLE), taken from the server's clock (UNIX_TIMESTAMP(NOW(6)) in a session pinned to UTC), so
-- leases mean the same on every worker. The stores of the other kinds are not on MariaDB yet.

-- ensure_schema --
-- Create the ledger tables (idempotent; MariaDB commits each CREATE on its own).
CREATE TABLE IF NOT EXISTS {t}meta (
    `key` VARCHAR(64) NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL
) ENGINE = InnoDB;
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
    CONSTRAINT {t}partitions_versions CHECK (exported_version <= version),
    CONSTRAINT {t}partitions_lease CHECK ((claim_token IS NULL) = (lease_until IS NULL))
) ENGINE = InnoDB;
-- Append-only: no unique index, so concurrent ingest transactions never wait on each other here
-- (one row per changed data row; the fold reads them in chunks).
CREATE TABLE IF NOT EXISTS {t}changes (
    id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY,
    task VARCHAR(255) NOT NULL,
    `keys` TEXT NOT NULL,
    bin BIGINT NULL,
    KEY {t}changes_task_idx (task, id)
) ENGINE = InnoDB;
-- (watermarks tables: incremental tasks)
CREATE TABLE IF NOT EXISTS {t}scans (
    task VARCHAR(255) NOT NULL PRIMARY KEY,
    high_water DATETIME(6),
    scanned_at DOUBLE
) ENGINE = InnoDB;
-- (archive tables: archive tasks)
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
) ENGINE = InnoDB;
CREATE TABLE IF NOT EXISTS {t}schedule_ticks (
    task VARCHAR(255) NOT NULL,
    tick DOUBLE NOT NULL,
    fired_at DOUBLE,
    PRIMARY KEY (task, tick)
) ENGINE = InnoDB;
-- (blocks tables: blocks tasks)
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
) ENGINE = InnoDB;
-- (aggregates tables: aggregate tasks)
CREATE TABLE IF NOT EXISTS {t}task_errors (
    task VARCHAR(255) NOT NULL PRIMARY KEY,
    error TEXT NOT NULL,
    config BOOLEAN NOT NULL DEFAULT FALSE,
    at DOUBLE NOT NULL
) ENGINE = InnoDB;
INSERT INTO {t}meta (`key`, value) VALUES ('schema_version', 'mariadb-1')
ON DUPLICATE KEY UPDATE value = VALUES(value);

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE `key` = 'schema_version';
