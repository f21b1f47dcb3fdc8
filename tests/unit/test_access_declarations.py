"""Every RPC says in its .proto who may call it, and says what the mesh's callers need.

The access interceptor refuses a method without a declaration, so a missing one would only show
as a broken service at run time; this catches it at the source, with the intended callers.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor
from kokoropay.auth.v1 import auth_pb2
from kokoropay.common.v1 import access_pb2
from kokoropay.ledger.v1 import ledger_pb2
from kokoropay.synth.v1 import synth_pb2

from services.common.access import AccessPolicy, declared_callers

EVERYONE = {"OPERATOR", "GATEWAY", "PREDICTIONS", "DASHBOARD", "INTERNAL"}

EXPECTED = {
    "AuthService": {
        "VerifyKey": {"GATEWAY"},
        "CreateAccount": {"OPERATOR"},
        "GetAccount": {"DASHBOARD", "OPERATOR"},
        "CreateKey": {"OPERATOR"},
        "ListKeys": {"OPERATOR"},
        "RevokeKey": {"OPERATOR"},
    },
    "LedgerService": {
        "Reserve": {"GATEWAY", "PREDICTIONS"},
        "Capture": {"GATEWAY", "PREDICTIONS"},
        "Release": {"GATEWAY", "PREDICTIONS"},
        "GetBalance": {"GATEWAY", "DASHBOARD", "OPERATOR"},
        "ListEntries": {"DASHBOARD", "OPERATOR"},
        "OpenAccount": {"DASHBOARD", "OPERATOR"},
        "Grant": {"OPERATOR"},
        "SetUnlimited": {"OPERATOR"},
    },
    "SynthService": {
        "Synthesize": {"GATEWAY", "PREDICTIONS", "DASHBOARD", "INTERNAL"},
        "ListVoices": EVERYONE,
        "ListModels": EVERYONE,
    },
}

SERVICES: list[ServiceDescriptor] = [
    auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    synth_pb2.DESCRIPTOR.services_by_name["SynthService"],
]


def test_every_rpc_declares_exactly_its_intended_callers() -> None:
    declared = {
        service.name: {
            method.name: {access_pb2.Caller.Name(c) for c in declared_callers(method)}
            for method in service.methods
        }
        for service in SERVICES
    }
    assert declared == EXPECTED


def test_until_certificates_only_gateway_methods_are_open_without_the_operator_token() -> None:
    policy = AccessPolicy.of(SERVICES)
    open_methods = {m.rsplit("/", 1)[1] for m in policy.callers if not policy.needs_operator(m)}
    assert open_methods == {
        "VerifyKey",
        "Reserve",
        "Capture",
        "Release",
        "GetBalance",
        "Synthesize",
        "ListVoices",
        "ListModels",
    }
