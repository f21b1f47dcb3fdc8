"""Every RPC says in its .proto who may call it, and says what the mesh's callers need.

The access interceptor refuses a method without a declaration, so a missing one would only show
as a broken service at run time; this catches it at the source, with the intended callers.
"""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor
from kokoropay.auth.v1 import auth_pb2
from kokoropay.common.v1 import access_pb2
from kokoropay.ledger.v1 import ledger_pb2
from kokoropay.predictions.v1 import predictions_pb2
from kokoropay.synth.v1 import synth_pb2

from services.common.access import AccessPolicy, declared_callers
from services.common.identity import ROLES

EVERYONE = {"OPERATOR", "GATEWAY", "PREDICTIONS", "DASHBOARD", "INTERNAL"}

EXPECTED = {
    "AuthService": {
        "VerifyKey": {"GATEWAY"},
        "ReleaseSlots": {"GATEWAY"},
        "RenewSlots": {"GATEWAY"},
        "GetAccountLimits": {"OPERATOR"},
        "SetAccountLimits": {"OPERATOR"},
        "CreateAccount": {"OPERATOR"},
        "GetAccount": {"DASHBOARD", "OPERATOR"},
        "CreateKey": {"OPERATOR"},
        "ListKeys": {"OPERATOR"},
        "RevokeKey": {"OPERATOR"},
        "SignUp": {"DASHBOARD"},
        "SignIn": {"DASHBOARD"},
        "ResolveSession": {"DASHBOARD"},
        "SignOut": {"DASHBOARD"},
        "ChangePassword": {"DASHBOARD"},
        "CreateOwnKey": {"DASHBOARD"},
        "ListOwnKeys": {"DASHBOARD"},
        "RevokeOwnKey": {"DASHBOARD"},
        "CreateUser": {"OPERATOR"},
        "ResetPassword": {"OPERATOR"},
        "MintPlaygroundKey": {"DASHBOARD"},
    },
    "LedgerService": {
        "Reserve": {"GATEWAY", "PREDICTIONS"},
        "Capture": {"GATEWAY", "PREDICTIONS"},
        "Release": {"GATEWAY", "PREDICTIONS"},
        "GetBalance": {"GATEWAY", "DASHBOARD", "OPERATOR"},
        "ListEntries": {"DASHBOARD", "OPERATOR"},
        "OpenAccount": {"DASHBOARD", "OPERATOR"},
        "Grant": {"OPERATOR"},
        "GrantSignupBonus": {"DASHBOARD"},
        "GrantTopUp": {"DASHBOARD"},
        "SetUnlimited": {"OPERATOR"},
        "Checkpoint": {"GATEWAY", "PREDICTIONS"},
        "Verify": {"OPERATOR"},
        "SummarizeUsage": {"DASHBOARD", "OPERATOR"},
        "ListHolds": {"DASHBOARD", "OPERATOR"},
    },
    "PredictionService": {
        "CreatePrediction": {"GATEWAY"},
        "GetPrediction": {"GATEWAY"},
        "CancelPrediction": {"GATEWAY"},
        "ListPredictions": {"GATEWAY", "DASHBOARD"},
        "ReadOutput": {"GATEWAY"},
        "GetWebhookSecret": {"DASHBOARD", "OPERATOR"},
        "RotateWebhookSecret": {"DASHBOARD", "OPERATOR"},
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
    predictions_pb2.DESCRIPTOR.services_by_name["PredictionService"],
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


def test_every_declared_caller_is_a_role_a_certificate_can_carry() -> None:
    # A role no certificate names would make its RPCs unreachable, silently.
    carried = set(ROLES.values())
    declared = set().union(*AccessPolicy.of(SERVICES).callers.values())
    assert declared <= carried
    assert {access_pb2.Caller.Name(role) for role in carried} == EVERYONE
