-- Accounts and their API keys. Keys are stored only as an HMAC of the plaintext.

CREATE TABLE auth.accounts (
    id          text PRIMARY KEY,
    -- Unique as written; the service also refuses control characters and surrounding spaces.
    name        text NOT NULL UNIQUE CHECK (char_length(name) BETWEEN 1 AND 64),
    create_time timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE auth.api_keys (
    id          text PRIMARY KEY,
    account_id  text NOT NULL REFERENCES auth.accounts (id),
    name        text NOT NULL DEFAULT '' CHECK (char_length(name) <= 64),
    -- The first characters of the plaintext, for recognising a key in a list.
    prefix      text NOT NULL CHECK (char_length(prefix) <= 16),
    -- HMAC-SHA256 of the plaintext under the server secret; VerifyKey's one lookup.
    key_hash    bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    create_time timestamptz NOT NULL DEFAULT now(),
    revoke_time timestamptz
);

-- ListKeys: one account's keys, newest first.
CREATE INDEX api_keys_by_account_newest_first
    ON auth.api_keys (account_id, create_time DESC, id DESC);
