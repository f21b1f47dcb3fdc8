import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from kokoropay.common.v1 import access_pb2 as _access_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class PredictionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PREDICTION_STATUS_UNSPECIFIED: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_PROCESSING: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_SUCCESS: _ClassVar[PredictionStatus]
    PREDICTION_STATUS_ERROR: _ClassVar[PredictionStatus]
PREDICTION_STATUS_UNSPECIFIED: PredictionStatus
PREDICTION_STATUS_PROCESSING: PredictionStatus
PREDICTION_STATUS_SUCCESS: PredictionStatus
PREDICTION_STATUS_ERROR: PredictionStatus

class PredictionInput(_message.Message):
    __slots__ = ("text", "voice", "speed", "output_format")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    VOICE_FIELD_NUMBER: _ClassVar[int]
    SPEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    text: str
    voice: str
    speed: float
    output_format: str
    def __init__(self, text: _Optional[str] = ..., voice: _Optional[str] = ..., speed: _Optional[float] = ..., output_format: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("id", "account_id", "status", "input", "output_url", "predict_time", "message", "details", "create_time", "finish_time", "webhook_url", "output_expire_time")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_URL_FIELD_NUMBER: _ClassVar[int]
    PREDICT_TIME_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    FINISH_TIME_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_EXPIRE_TIME_FIELD_NUMBER: _ClassVar[int]
    id: str
    account_id: str
    status: PredictionStatus
    input: PredictionInput
    output_url: str
    predict_time: float
    message: str
    details: str
    create_time: _timestamp_pb2.Timestamp
    finish_time: _timestamp_pb2.Timestamp
    webhook_url: str
    output_expire_time: _timestamp_pb2.Timestamp
    def __init__(self, id: _Optional[str] = ..., account_id: _Optional[str] = ..., status: _Optional[_Union[PredictionStatus, str]] = ..., input: _Optional[_Union[PredictionInput, _Mapping]] = ..., output_url: _Optional[str] = ..., predict_time: _Optional[float] = ..., message: _Optional[str] = ..., details: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., finish_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., webhook_url: _Optional[str] = ..., output_expire_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class CreatePredictionRequest(_message.Message):
    __slots__ = ("account_id", "key_id", "input", "webhook_url", "max_active", "idempotency_key", "request_fingerprint")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    INPUT_FIELD_NUMBER: _ClassVar[int]
    WEBHOOK_URL_FIELD_NUMBER: _ClassVar[int]
    MAX_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    IDEMPOTENCY_KEY_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FINGERPRINT_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    key_id: str
    input: PredictionInput
    webhook_url: str
    max_active: int
    idempotency_key: str
    request_fingerprint: str
    def __init__(self, account_id: _Optional[str] = ..., key_id: _Optional[str] = ..., input: _Optional[_Union[PredictionInput, _Mapping]] = ..., webhook_url: _Optional[str] = ..., max_active: _Optional[int] = ..., idempotency_key: _Optional[str] = ..., request_fingerprint: _Optional[str] = ...) -> None: ...

class GetPredictionRequest(_message.Message):
    __slots__ = ("account_id", "prediction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    prediction_id: str
    def __init__(self, account_id: _Optional[str] = ..., prediction_id: _Optional[str] = ...) -> None: ...

class CancelPredictionRequest(_message.Message):
    __slots__ = ("account_id", "prediction_id")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    prediction_id: str
    def __init__(self, account_id: _Optional[str] = ..., prediction_id: _Optional[str] = ...) -> None: ...

class ListPredictionsRequest(_message.Message):
    __slots__ = ("account_id", "page_size", "page_token")
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    page_size: int
    page_token: str
    def __init__(self, account_id: _Optional[str] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListPredictionsResponse(_message.Message):
    __slots__ = ("predictions", "next_page_token")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    next_page_token: str
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ReadOutputRequest(_message.Message):
    __slots__ = ("prediction_id", "expires", "signature", "offset", "length")
    PREDICTION_ID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    prediction_id: str
    expires: int
    signature: str
    offset: int
    length: int
    def __init__(self, prediction_id: _Optional[str] = ..., expires: _Optional[int] = ..., signature: _Optional[str] = ..., offset: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class OutputChunk(_message.Message):
    __slots__ = ("total_size", "content_type", "data")
    TOTAL_SIZE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_TYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    total_size: int
    content_type: str
    data: bytes
    def __init__(self, total_size: _Optional[int] = ..., content_type: _Optional[str] = ..., data: _Optional[bytes] = ...) -> None: ...

class GetWebhookSecretRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class RotateWebhookSecretRequest(_message.Message):
    __slots__ = ("account_id",)
    ACCOUNT_ID_FIELD_NUMBER: _ClassVar[int]
    account_id: str
    def __init__(self, account_id: _Optional[str] = ...) -> None: ...

class WebhookSecret(_message.Message):
    __slots__ = ("secret", "create_time")
    SECRET_FIELD_NUMBER: _ClassVar[int]
    CREATE_TIME_FIELD_NUMBER: _ClassVar[int]
    secret: str
    create_time: _timestamp_pb2.Timestamp
    def __init__(self, secret: _Optional[str] = ..., create_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...
