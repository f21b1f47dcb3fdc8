-- People who sign in to the dashboard, their sessions, the counters that throttle sign-ins, and
-- when each API key was last used.
--
-- A password is stored only as its argon2id PHC string, a session token only as its SHA-256.
-- One person per account (account_id UNIQUE), one person per email: the unique indexes, not the
-- service, decide between concurrent sign-ups with one email (the loser's transaction fails on
-- users_email_key and takes its new account with it).

CREATE TABLE auth.users (
    id                   text PRIMARY KEY,
    account_id           text NOT NULL UNIQUE REFERENCES auth.accounts (id),
    -- Trimmed and lower-cased by the service (Python's Unicode lower-casing, which a database
    -- collation may not share, so the CHECK does not repeat it).
    email                text NOT NULL UNIQUE
        CHECK (char_length(email) BETWEEN 3 AND 254 AND email = btrim(email)),
    password_hash        text NOT NULL CHECK (password_hash LIKE '$argon2id$%'),
    create_time          timestamptz NOT NULL DEFAULT now(),
    password_change_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.sessions (
    id             text PRIMARY KEY,
    -- SHA-256 of the token: ResolveSession's one lookup.
    token_hash     bytea NOT NULL UNIQUE CHECK (octet_length(token_hash) = 32),
    user_id        text NOT NULL REFERENCES auth.users (id),
    create_time    timestamptz NOT NULL DEFAULT now(),
    -- Moved by use, at most about once a minute; idle past AUTH_SESSION_IDLE_SECONDS, it ends.
    last_seen_time timestamptz NOT NULL DEFAULT now(),
    -- Absolute: sign-in time plus AUTH_SESSION_MAX_SECONDS, whatever the activity.
    expire_time    timestamptz NOT NULL,
    -- Signed out, or ended by a password change or reset.
    end_time       timestamptz,
    CHECK (expire_time > create_time)
);

-- ChangePassword and ResetPassword end a person's open sessions.
CREATE INDEX sessions_open_by_user ON auth.sessions (user_id) WHERE end_time IS NULL;

-- Per-address attempt counters in fixed windows, e.g. key 'sign-in:203.0.113.7'. One row per
-- key, reused when its window turns: an attempt's upsert either adds one to the current window
-- or starts the next at one, and returns the count it made.
CREATE TABLE auth.throttle_windows (
    key          text PRIMARY KEY CHECK (char_length(key) <= 128),
    window_start timestamptz NOT NULL,
    count        integer NOT NULL CHECK (count >= 1)
);

-- Per-email sign-in failures. An attempt counts before its password is checked and a success
-- sets the count back to zero; failures older than 15 minutes count as none. Kept for unknown
-- emails too, so slowing reveals nothing about which emails exist.
CREATE TABLE auth.sign_in_failures (
    email             text PRIMARY KEY CHECK (char_length(email) <= 254),
    failures          integer NOT NULL CHECK (failures >= 0),
    last_failure_time timestamptz NOT NULL
);

-- Rows of both tables pile up with every new address and email tried. The serving role may not
-- DELETE (no serving role deletes anything, migration-wide); it may call this, which runs as the
-- owner and removes only rows that no longer count.
CREATE FUNCTION auth.forget_stale_throttles() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    WITH windows AS (
        DELETE FROM auth.throttle_windows WHERE window_start < now() - interval '1 day'
        RETURNING 1
    ), failures AS (
        DELETE FROM auth.sign_in_failures WHERE last_failure_time < now() - interval '1 day'
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM windows) + (SELECT count(*) FROM failures)
$$;
-- Functions are executable by everyone unless revoked; grants.sql gives it to the serving role.
REVOKE ALL ON FUNCTION auth.forget_stale_throttles() FROM PUBLIC;

-- When the key last paid for a request, to the minute: VerifyKey writes it at most once a
-- minute per key (auth.store.KeyUses, and the statement's own condition across replicas).
ALTER TABLE auth.api_keys ADD COLUMN last_use_time timestamptz;
