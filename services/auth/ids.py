"""The prefixes of auth's ids (`acct_01JD3Q…`, `key_01JD3Q…`, `usr_…`, `ses_…`, `slot_…`);
services.common.ids makes them."""

from __future__ import annotations

from services.common.ids import is_id, new_id

__all__ = ["ACCOUNT", "KEY", "SESSION", "SLOT", "USER", "is_id", "new_id"]

ACCOUNT = "acct"
KEY = "key"
USER = "usr"
SESSION = "ses"
# A key's stream slot (limits.py), held by a gateway replica while the stream runs.
SLOT = "slot"
