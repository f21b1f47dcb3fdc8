-- Limits per API key, shared by every gateway replica: requests per minute in fixed windows, and
-- stream slots leased to the gateway replica that holds them (services/auth/limits.py). VerifyKey
-- counts and takes them in its one statement, through auth.admit_key_use() below.
--
-- The window and slot rows are counters, not records: no foreign key ties them to their key, so
-- that the hot path's inserts take no lock on the key's row (a foreign key check would, FOR KEY
-- SHARE, on every slot), and the key ids they hold come from the lookup in the same statement.
-- Rows of keys that are gone, and rows that no longer count, are forgotten by
-- auth.forget_spent_limits().

-- An account's overrides; NULL is auth's default (AUTH_SPEECH_REQUESTS_PER_MINUTE, …). Read by
-- VerifyKey in the statement that finds the key, never cached: a change counts from the next call.
CREATE TABLE auth.account_limits (
    account_id                    text PRIMARY KEY REFERENCES auth.accounts (id),
    speech_requests_per_minute    integer CHECK (speech_requests_per_minute BETWEEN 1 AND 1000000),
    speech_concurrent_streams     integer CHECK (speech_concurrent_streams BETWEEN 1 AND 10000),
    prediction_creates_per_minute integer
        CHECK (prediction_creates_per_minute BETWEEN 1 AND 1000000),
    predictions_concurrent        integer CHECK (predictions_concurrent BETWEEN 1 AND 10000),
    update_time                   timestamptz NOT NULL DEFAULT now()
);

-- One row per key and use (the KeyUse numbers of auth.proto: 1 speech, 2 prediction create),
-- reused when its window turns. A window opens at the key's first request after the last one
-- ended, for 60 seconds. count stops at the limit + 1: refused requests count, but a flood
-- cannot grow it without bound. The row's lock is what makes one key's admissions take turns.
CREATE TABLE auth.key_request_windows (
    key_id     text NOT NULL,
    use        smallint NOT NULL CHECK (use IN (1, 2)),
    window_end timestamptz NOT NULL,
    count      integer NOT NULL CHECK (count >= 1),
    PRIMARY KEY (key_id, use)
);

-- A speech stream's slot: live while expire_time is ahead. The holder (a gateway replica) gives
-- it back when the stream ends, and renews its slots while their streams run; a replica that dies
-- leaves its slots to expire. Only key_id and holder are indexed, so a renewal (which moves
-- expire_time alone) is a HOT update; a key has at most its limit of live slots to filter.
CREATE TABLE auth.stream_slots (
    id          text PRIMARY KEY,
    key_id      text NOT NULL,
    holder      text NOT NULL CHECK (holder ~ '^[A-Za-z0-9_-]{1,64}$'),
    create_time timestamptz NOT NULL DEFAULT now(),
    expire_time timestamptz NOT NULL
);
CREATE INDEX stream_slots_by_key ON auth.stream_slots (key_id);
CREATE INDEX stream_slots_by_holder ON auth.stream_slots (holder);

-- Counts one request of `use` against its key's window and, for speech (a holder given), takes
-- a slot unless the key's live slots are at the limit. Called by VerifyKey's statement once the
-- key is found live; returns the request's count in its window (at most the limit + 1), the
-- window's end, and whether a slot was taken (NULL when none was tried: not speech, or the
-- request was over its limit).
--
-- Exact under concurrency: the window upsert locks the key's row for the use until the calling
-- transaction ends, so one key's admissions run here one after another. The slot statements come
-- after it as statements of their own, and a VOLATILE function's statements each take a fresh
-- snapshot: they see every slot committed by the admissions that held the lock before (one
-- statement's CTEs would share the snapshot taken before the lock was waited for). Expired slots
-- are deleted first, in their own statement: a renewal in flight holds its slot's row, so the
-- delete waits for it and then leaves the renewed slot, which the count then sees.
--
-- The commit is asynchronous (synchronous_commit off for the calling transaction): a database
-- crash may lose the last moments of counts and slots, which only admits a little more; waiting
-- for the disk on every request would cost more than the whole admission and hold the key's lock
-- meanwhile. Bitmap scans are off for the function's statements: a busy key's released slots
-- leave dead entries under its key_id until vacuum, which a plain index scan marks dead once
-- and then skips, but every bitmap scan reads again (measured: an admission's cost grew with
-- each stream the key had ended since the last vacuum). SECURITY DEFINER: the serving role
-- deletes nothing itself.
CREATE FUNCTION auth.admit_key_use(
    p_key_id text,
    p_use smallint,
    p_request_limit integer,
    p_concurrency_limit integer,
    p_holder text,
    p_slot_id text,
    p_lease interval,
    OUT request_count integer,
    OUT window_end_time timestamptz,
    OUT slot_taken boolean
) LANGUAGE plpgsql SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
SET enable_bitmapscan = off
AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);

    INSERT INTO auth.key_request_windows AS w (key_id, use, window_end, count)
    VALUES (p_key_id, p_use, now() + interval '60 seconds', 1)
    ON CONFLICT (key_id, use) DO UPDATE SET
        count = CASE WHEN w.window_end > now()
                     THEN least(w.count + 1, p_request_limit + 1) ELSE 1 END,
        window_end = CASE WHEN w.window_end > now() THEN w.window_end ELSE excluded.window_end END
    RETURNING w.count, w.window_end INTO request_count, window_end_time;

    IF p_holder IS NULL OR request_count > p_request_limit THEN
        RETURN;
    END IF;

    DELETE FROM auth.stream_slots WHERE key_id = p_key_id AND expire_time <= now();

    -- Counting stops at the limit: whether it is reached is all that matters.
    INSERT INTO auth.stream_slots (id, key_id, holder, expire_time)
    SELECT p_slot_id, p_key_id, p_holder, now() + p_lease
    WHERE (SELECT count(*) FROM (
               SELECT FROM auth.stream_slots WHERE key_id = p_key_id AND expire_time > now()
               LIMIT p_concurrency_limit
           ) live) < p_concurrency_limit;
    slot_taken := FOUND;
END
$$;
REVOKE ALL ON FUNCTION auth.admit_key_use(text, smallint, integer, integer, text, text, interval)
    FROM PUBLIC;

-- ReleaseSlots: deletes the holder's live slots among `p_slot_ids`, as the owner; returns how
-- many. Other holders' slots are not touched, and expired ones are left to
-- auth.forget_spent_limits() (they are free already).
CREATE FUNCTION auth.release_slots(p_holder text, p_slot_ids text[]) RETURNS integer
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    SELECT set_config('synchronous_commit', 'off', true);
    WITH released AS (
        DELETE FROM auth.stream_slots
        WHERE id = ANY (p_slot_ids) AND holder = p_holder AND expire_time > now()
        RETURNING 1
    )
    SELECT count(*)::integer FROM released
$$;
REVOKE ALL ON FUNCTION auth.release_slots(text, text[]) FROM PUBLIC;

-- Expired slots of keys nobody uses (an admission deletes its own key's) and windows that ended
-- a day ago: a request after either finds what a missing row means, a free slot, a new window.
CREATE FUNCTION auth.forget_spent_limits() RETURNS bigint
    LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp
AS $$
    WITH slots AS (
        DELETE FROM auth.stream_slots WHERE expire_time < now() RETURNING 1
    ), windows AS (
        DELETE FROM auth.key_request_windows WHERE window_end < now() - interval '1 day'
        RETURNING 1
    )
    SELECT (SELECT count(*) FROM slots) + (SELECT count(*) FROM windows)
$$;
REVOKE ALL ON FUNCTION auth.forget_spent_limits() FROM PUBLIC;
