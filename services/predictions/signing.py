"""Output URLs: signed, expiring links to a prediction's audio that work without the API key.

    <PUBLIC_BASE_URL>/v1/prediction/<id>/output?expires=<unix seconds>&signature=<sig>

`sig` is the unpadded base64url of HMAC-SHA256(secret, "<id>.<expires>"), under the service's
PREDICTIONS_URL_SIGNING_SECRET. The link expires when the audio is deleted (the retention), so
it never outlives what it points at, and no one without the secret can make one for another id
or a later expiry. The gateway serves the path and hands the parts to ReadOutput, which checks
them here; the check runs in constant time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import sys
from urllib.parse import quote

from services.common.errors import ServiceError
from services.common.mesh import URL_SIGNING_SECRET_ENV, URL_SIGNING_SECRET_FILE
from services.predictions.settings import PredictionsSettings
from services.predictions.store import Prediction

# Longer signatures are not ours (ours are 43 characters); refused before any work.
MAX_SIGNATURE_CHARS = 128


class SignatureInvalid(ServiceError):
    def __init__(self) -> None:
        super().__init__("the output URL's signature does not check", reason="SIGNATURE_INVALID")


class UrlSigner:
    def __init__(self, secret: str, public_base_url: str) -> None:
        if not secret:
            raise ValueError("the URL signing secret is empty")
        self._key = secret.encode()
        self._base = public_base_url.rstrip("/")

    def signature(self, prediction_id: str, expires: int) -> str:
        digest = hmac.new(self._key, f"{prediction_id}.{expires}".encode(), hashlib.sha256)
        return base64.urlsafe_b64encode(digest.digest()).decode().rstrip("=")

    def url(self, prediction_id: str, expires: int) -> str:
        signature = self.signature(prediction_id, expires)
        return (
            f"{self._base}/v1/prediction/{quote(prediction_id, safe='')}/output"
            f"?expires={expires}&signature={signature}"
        )

    def check(self, prediction_id: str, expires: int, signature: str) -> None:
        """SignatureInvalid unless `signature` is ours for this id and expiry (padding aside)."""
        given = signature.rstrip("=")
        if not given or len(given) > MAX_SIGNATURE_CHARS or not given.isascii():
            raise SignatureInvalid()
        expected = self.signature(prediction_id, expires)
        if not hmac.compare_digest(expected.encode(), given.encode()):
            raise SignatureInvalid()


def output_url(signer: UrlSigner, prediction: Prediction) -> str:
    """The signed URL of a successful prediction's audio, expiring with it; "" otherwise."""
    if prediction.status != "success" or prediction.output_expire_time is None:
        return ""
    return signer.url(prediction.id, int(prediction.output_expire_time.timestamp()))


def url_signer(settings: PredictionsSettings) -> UrlSigner:
    """The process's signer, or exit with one line saying where the secret goes."""
    secret = settings.url_signing_secret_value()
    if not secret:
        sys.exit(
            f"error: predictions needs {URL_SIGNING_SECRET_ENV} or the file "
            f".data/{URL_SIGNING_SECRET_FILE}"
        )
    return UrlSigner(secret, settings.public_base_url)
