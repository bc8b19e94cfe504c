-- The airmax schema on MariaDB/MySQL, fixed: a 64-bit key (airmax's mediumint ran out after
-- 8,388,607 rows, about 58 days at 100 rows a minute), message ids that may not repeat, the
-- index on measurement_time_utc that every window query needs (airmax had none: each
-- evaluation scanned the whole table), and a key on current_air_quality.
-- message_id compares exactly (utf8mb4_nopad_bin; on MySQL 8 use utf8mb4_0900_bin): the default
-- utf8mb4_general_ci took ABC for abc and dropped the second message as a duplicate.
-- Times are DATETIME(6) in UTC (microseconds, as a message may carry them). `sluicegate generate --dataset airmax` runs this file.
CREATE TABLE IF NOT EXISTS raw (
    id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    message_id VARCHAR(255) COLLATE utf8mb4_nopad_bin NOT NULL,
    message_send_time_utc DATETIME(6),
    measurement_time_utc DATETIME(6) NOT NULL,
    country_code VARCHAR(2),
    location VARCHAR(255),
    city VARCHAR(255),
    latitude DECIMAL(8, 6),
    longitude DECIMAL(9, 6),
    source_type VARCHAR(255),
    source_name VARCHAR(255),
    parameter_name VARCHAR(255),
    parameter_value DOUBLE,
    parameter_unit VARCHAR(255),
    UNIQUE KEY raw_message_id (message_id),
    KEY raw_measurement_time (measurement_time_utc)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
-- Its key compares exactly too: a select on SQLite or PostgreSQL groups Gent and GENT apart, and a
-- case-insensitive key failed each evaluation with "Duplicate entry" (or merged them, with upsert).
CREATE TABLE IF NOT EXISTS current_air_quality (
    city VARCHAR(255) COLLATE utf8mb4_nopad_bin NOT NULL,
    parameter_name VARCHAR(255) COLLATE utf8mb4_nopad_bin NOT NULL,
    parameter_unit VARCHAR(255) COLLATE utf8mb4_nopad_bin NOT NULL,
    parameter_value DOUBLE,
    num_measurements BIGINT NOT NULL,
    evaluation_time_utc DATETIME NOT NULL,
    PRIMARY KEY (city, parameter_name, parameter_unit)
) ENGINE = InnoDB DEFAULT CHARSET = utf8mb4;
