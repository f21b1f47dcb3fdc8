-- What auth's serving role may do: exactly the statements of store.py, no more.
-- services.common.postgres applies this as the schema's owner at every start, right after the
-- migrations and in their transaction, having first revoked everything the role held in the
-- schema; a migration that adds a column the store writes adds it here too.
--
-- Nothing is ever deleted (a key is revoked by setting its revoke time), and the role
-- owns no table, so it cannot ALTER, DROP or TRUNCATE one either.

GRANT USAGE ON SCHEMA auth TO {role};

GRANT SELECT, INSERT (id, name) ON auth.accounts TO {role};

GRANT SELECT, INSERT (id, account_id, name, prefix, key_hash), UPDATE (revoke_time)
    ON auth.api_keys TO {role};
