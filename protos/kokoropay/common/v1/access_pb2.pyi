from google.protobuf import descriptor_pb2 as _descriptor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Caller(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CALLER_UNSPECIFIED: _ClassVar[Caller]
    OPERATOR: _ClassVar[Caller]
    GATEWAY: _ClassVar[Caller]
    PREDICTIONS: _ClassVar[Caller]
    DASHBOARD: _ClassVar[Caller]
    INTERNAL: _ClassVar[Caller]
CALLER_UNSPECIFIED: Caller
OPERATOR: Caller
GATEWAY: Caller
PREDICTIONS: Caller
DASHBOARD: Caller
INTERNAL: Caller
ACCESS_FIELD_NUMBER: _ClassVar[int]
access: _descriptor.FieldDescriptor

class Access(_message.Message):
    __slots__ = ("callers",)
    CALLERS_FIELD_NUMBER: _ClassVar[int]
    callers: _containers.RepeatedScalarFieldContainer[Caller]
    def __init__(self, callers: _Optional[_Iterable[_Union[Caller, str]]] = ...) -> None: ...
