-- The local run's database roles, applied by its embedded PostgreSQL's superuser at every start
-- (services/cli/embedded_database.py); every step is idempotent.
--
-- kokoropay_owner owns the auth, ledger and predictions schemas and runs their migrations. Each
-- service serves as a role of its own, to which its migrations grant only what its store runs
-- (services/<service>/migrations/grants.sql); predictions' workers serve as predictions' role.
-- The server listens on a Unix socket only and trusts it, so the roles have no passwords.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY[
        'kokoropay_owner', 'kokoropay_auth', 'kokoropay_ledger', 'kokoropay_predictions'
    ] LOOP
        IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = name) THEN
            EXECUTE format('CREATE ROLE %I LOGIN', name);
        END IF;
    END LOOP;
    -- The owner creates its schemas on the first start.
    EXECUTE format('GRANT CREATE ON DATABASE %I TO kokoropay_owner', current_database());
END
$$;

-- Data from before the roles existed is the superuser's: hand its schemas, tables (with their
-- indexes and identity sequences) and functions to the owner, which must own what it migrates.
DO $$
DECLARE
    statement text;
BEGIN
    FOR statement IN
        SELECT format('ALTER SCHEMA %I OWNER TO kokoropay_owner', n.nspname)
        FROM pg_namespace n
        WHERE n.nspname IN ('auth', 'ledger') AND n.nspowner <> 'kokoropay_owner'::regrole
        UNION ALL
        SELECT format('ALTER TABLE %I.%I OWNER TO kokoropay_owner', n.nspname, c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('auth', 'ledger') AND c.relkind IN ('r', 'p')
            AND c.relowner <> 'kokoropay_owner'::regrole
        UNION ALL
        SELECT format('ALTER ROUTINE %s OWNER TO kokoropay_owner', p.oid::regprocedure)
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname IN ('auth', 'ledger') AND p.proowner <> 'kokoropay_owner'::regrole
    LOOP
        EXECUTE statement;
    END LOOP;
END
$$;
