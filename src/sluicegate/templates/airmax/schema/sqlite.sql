-- The airmax schema on SQLite: a 64-bit key (INTEGER PRIMARY KEY), unique message ids, and an
-- index for the window query. Times are UTC text, YYYY-MM-DDTHH:MM:SSZ; sluicegate compares
-- them with julianday(), so the index is on that expression.
-- `sluicegate generate --dataset airmax` runs this file.
CREATE TABLE IF NOT EXISTS raw (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL UNIQUE,
    message_send_time_utc TEXT,
    measurement_time_utc TEXT NOT NULL,
    country_code TEXT,
    location TEXT,
    city TEXT,
    latitude REAL,
    longitude REAL,
    source_type TEXT,
    source_name TEXT,
    parameter_name TEXT,
    parameter_value REAL,
    parameter_unit TEXT
);
CREATE INDEX IF NOT EXISTS raw_measurement_time ON raw (julianday(measurement_time_utc));
CREATE TABLE IF NOT EXISTS current_air_quality (
    city TEXT NOT NULL,
    parameter_name TEXT NOT NULL,
    parameter_unit TEXT NOT NULL,
    parameter_value REAL,
    num_measurements INTEGER NOT NULL,
    evaluation_time_utc TEXT NOT NULL,
    PRIMARY KEY (city, parameter_name, parameter_unit)
);
