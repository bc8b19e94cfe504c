-- The GRANT statements `sluicegate grants` prints, and the catalog queries that find what a task
-- reads (grants.py). Identifiers are filled in with psycopg.sql: {role}, {database}, {schema}, ...
-- Each block is named after what it grants or finds.

-- connect --
-- Open a session on a database.
GRANT CONNECT ON DATABASE {database} TO {role};

-- usage --
-- Find objects in a schema (each schema of the tables it reads, and the ledger schema).
GRANT USAGE ON SCHEMA {schema} TO {role};

-- table --
-- Privileges on tables and views.
GRANT {privileges} ON TABLE {tables} TO {role};

-- sequence --
-- Take ids from the sequences of the ledger tables it inserts into.
GRANT USAGE ON SEQUENCE {sequences} TO {role};

-- read_all_stats --
-- See the transaction start of every session in pg_stat_activity (the late-commit cap).
GRANT pg_read_all_stats TO {role};

-- probe_view --
-- A temporary view over a task's query, whose dependencies name the relations it reads (rolled back).
CREATE TEMPORARY VIEW sluicegate_grants_probe AS {query};

-- probe_relations --
-- The tables and views the probe view reads directly (a view's own tables are its owner's business).
SELECT DISTINCT n.nspname, c.relname
FROM pg_depend AS d
JOIN pg_rewrite AS r ON r.oid = d.objid AND d.classid = 'pg_rewrite'::regclass
JOIN pg_class AS c ON c.oid = d.refobjid AND d.refclassid = 'pg_class'::regclass
JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE r.ev_class = 'sluicegate_grants_probe'::regclass AND c.oid <> 'sluicegate_grants_probe'::regclass
ORDER BY 1, 2;

-- relation --
-- The schema and name of one table as the role's search_path resolves it.
SELECT n.nspname, c.relname FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE c.oid = %(name)s::regclass;

-- current_database --
-- The name of the database connected to.
SELECT current_database();
