-- What auth's serving role may do: exactly the statements of store.py, no more.
-- services.common.postgres applies this as the schema's owner at every start, right after the
-- migrations and in their transaction, having first revoked everything the role held in the
-- schema's tables; a migration that adds a column the store writes adds it here too.
--
-- The role deletes nothing (a key is revoked by setting its revoke time, a session ended by
-- setting its end time; only the owner's functions below forget what no longer counts), and it
-- owns no table, so it cannot ALTER, DROP or TRUNCATE one or disable its triggers either.
-- Columns the database fills in (create times, last_seen_time at first) are not the role's to
-- insert, so nothing is backdated.

GRANT USAGE ON SCHEMA auth TO {role};

GRANT SELECT, INSERT (id, name) ON auth.accounts TO {role};

-- VerifyKey stamps last_use_time; RevokeKey and RevokeOwnKey set revoke_time. CreateKey and
-- CreateOwnKey take an advisory lock per account (pg_advisory_xact_lock, PUBLIC's to call).
-- MintPlaygroundKey inserts with session_id (migration 0004), which is never updated: a key is
-- not moved from its session, nor a key made a session's after it was created.
GRANT SELECT, INSERT (id, account_id, name, prefix, key_hash, session_id),
    UPDATE (revoke_time, last_use_time)
    ON auth.api_keys TO {role};

-- SignUp and CreateUser insert; ChangePassword, ResetPassword and a sign-in's rehash update.
-- The UPDATE also lets a sign-in lock the person's row (SELECT … FOR SHARE needs UPDATE on some
-- column) while it opens a session, so it waits for a password change in flight.
GRANT SELECT, INSERT (id, account_id, email, password_hash),
    UPDATE (password_hash, password_change_time)
    ON auth.users TO {role};

-- Sign-in opens (expire_time is computed by the statement); use, sign-out and password
-- changes move last_seen_time and end_time, never the token or the owner (and a trigger,
-- migration 0003, keeps an end once set, for every role).
GRANT SELECT, INSERT (id, token_hash, user_id, expire_time), UPDATE (last_seen_time, end_time)
    ON auth.sessions TO {role};

-- The throttle's upserts (INSERT … ON CONFLICT DO UPDATE).
GRANT SELECT, INSERT (key, window_start, count), UPDATE (window_start, count)
    ON auth.throttle_windows TO {role};
GRANT SELECT, INSERT (email, failures, last_failure_time), UPDATE (failures, last_failure_time)
    ON auth.sign_in_failures TO {role};

-- SetAccountLimits upserts an account's overrides, all four at once; VerifyKey reads them.
GRANT SELECT,
    INSERT (account_id, speech_requests_per_minute, speech_concurrent_streams,
        prediction_creates_per_minute, predictions_concurrent),
    UPDATE (speech_requests_per_minute, speech_concurrent_streams,
        prediction_creates_per_minute, predictions_concurrent, update_time)
    ON auth.account_limits TO {role};

-- RenewSlots moves a holder's unexpired slots' expire_time. Slots are taken and given back, and
-- request windows counted, only through the owner's functions below (a slot given back is
-- deleted); the role reads and writes key_request_windows not at all.
GRANT SELECT, UPDATE (expire_time) ON auth.stream_slots TO {role};

-- Function privileges are not among those revoked before this file runs: take them back here,
-- so a function dropped from this list is no longer callable after the next start.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA auth FROM {role};
-- Deletes only throttle rows that no longer count, as the owner (migration 0002).
GRANT EXECUTE ON FUNCTION auth.forget_stale_throttles() TO {role};
-- Deletes only sessions ended or expired more than 30 days ago, as the owner (migration 0003),
-- and with them their playground keys (ON DELETE CASCADE, migration 0004).
GRANT EXECUTE ON FUNCTION auth.forget_old_sessions() TO {role};
-- VerifyKey's admission under a key's limits: counts the request, deletes the key's expired
-- slots, takes a slot (migration 0005).
GRANT EXECUTE
    ON FUNCTION auth.admit_key_use(text, smallint, integer, integer, text, text, interval)
    TO {role};
-- Deletes only the given holder's live slots among the ids given (ReleaseSlots).
GRANT EXECUTE ON FUNCTION auth.release_slots(text, text[]) TO {role};
-- Deletes only expired slots and request windows that ended a day ago.
GRANT EXECUTE ON FUNCTION auth.forget_spent_limits() TO {role};
