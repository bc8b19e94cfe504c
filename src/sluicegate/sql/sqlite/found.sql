-- Whether this is the ledger of the destination's earlier runs (ledger/found.py): an empty
-- ledger over a destination holding a change feed looks lost or mistyped (engine.check_ledger_found).
-- Each block is named after the method that runs it. No task kind declares this store, so
-- `sluicegate grants` gives an exporter role none of it: such a role cannot create a ledger.

-- has_records --
-- Whether the ledger records any claim or export, or a task's destination. Not runs or schedule ticks: the service
-- records those before its run starts.
SELECT CASE WHEN EXISTS (SELECT 1 FROM {t}partitions) OR EXISTS (SELECT 1 FROM {t}watermarks)
    OR EXISTS (SELECT 1 FROM {t}scans) OR EXISTS (SELECT 1 FROM {t}archive_runs)
    OR EXISTS (SELECT 1 FROM {t}blocks) OR EXISTS (SELECT 1 FROM {t}aggregate_evaluations)
    OR EXISTS (SELECT 1 FROM {t}meta WHERE key = 'new_ledger' OR substr(key, 1, 12) = 'destination:')
    THEN 1 ELSE 0 END;

-- mark_new_ledger --
-- run --new-ledger: this ledger was started over existing output on purpose (has_records).
INSERT INTO {t}meta (key, value) VALUES ('new_ledger', datetime('now')) ON CONFLICT (key) DO NOTHING;

-- destinations --
-- The destination each task exports to (destination_id.py): 'destination:' and a hash of the
-- task's name, to the id written into that destination and its URL (masked). One query per run.
SELECT key, value FROM {t}meta WHERE substr(key, 1, 12) = 'destination:';

-- bind_destination --
-- A task's first run records the destination it exports to.
INSERT INTO {t}meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO NOTHING;

-- move_destination --
-- run --move-destination: the task exports to this destination from now on, on purpose.
INSERT INTO {t}meta (key, value) VALUES (:key, :value) ON CONFLICT (key) DO UPDATE SET value = excluded.value;
