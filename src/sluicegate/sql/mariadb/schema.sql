-- The ledger tables MariaDB/MySQL holds so far: the trigger inbox in a source database (core: ledger/core.py).
-- Each block is named after the method that runs it. The rest of the ledger is not on MariaDB yet.

-- ensure_schema --
-- Create the inbox tables (idempotent; MariaDB commits each CREATE on its own).
CREATE TABLE IF NOT EXISTS {t}meta (
    `key` VARCHAR(64) NOT NULL PRIMARY KEY,
    value VARCHAR(255) NOT NULL
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
INSERT INTO {t}meta (`key`, value) VALUES ('schema_version', 'mariadb-inbox-1')
ON DUPLICATE KEY UPDATE value = VALUES(value);

-- schema_version --
-- The ledger schema version (fails when the tables do not exist yet).
SELECT value FROM {t}meta WHERE `key` = 'schema_version';
