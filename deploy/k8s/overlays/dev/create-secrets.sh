#!/usr/bin/env bash
# Creates the dev overlay's Secrets with random values, and the mesh's certificates, once: a
# Secret that already exists is kept, so re-running never changes the database password under a
# running PostgreSQL.
# Usage: deploy/k8s/overlays/dev/create-secrets.sh [namespace]   (kubectl's current context)
set -euo pipefail

namespace="${1:-kokoropay}"
kubectl get namespace "$namespace" >/dev/null 2>&1 || kubectl create namespace "$namespace"

random() { python3 -c 'import secrets; print(secrets.token_urlsafe(32))'; }

create() {  # create NAME KEY VALUE, unless NAME exists
  if kubectl -n "$namespace" get secret "$1" >/dev/null 2>&1; then
    echo "secret/$1 exists, kept"
  else
    kubectl -n "$namespace" create secret generic "$1" --from-literal="$2=$3"
  fi
}

if kubectl -n "$namespace" get secret postgres >/dev/null 2>&1; then
  password="$(kubectl -n "$namespace" get secret postgres \
    -o jsonpath='{.data.POSTGRES_PASSWORD}' | base64 -d)"
else
  password="$(random)"
fi
# kokoropay owns the database: auth, ledger and predictions migrate as it. Each serves as a role
# of its own (predictions' workers share the service's), which the dev PostgreSQL creates from
# these URLs when it first initializes (postgres.yaml).
url() { echo "postgresql://$1:$2@postgres.${namespace}.svc.cluster.local:5432/kokoropay"; }

create postgres POSTGRES_PASSWORD "$password"
create auth-migration-database MIGRATION_DATABASE_URL "$(url kokoropay "$password")"
create ledger-migration-database MIGRATION_DATABASE_URL "$(url kokoropay "$password")"
create predictions-migration-database MIGRATION_DATABASE_URL "$(url kokoropay "$password")"
create auth-database DATABASE_URL "$(url kokoropay_auth "$(random)")"
create ledger-database DATABASE_URL "$(url kokoropay_ledger "$(random)")"
create predictions-database DATABASE_URL "$(url kokoropay_predictions "$(random)")"
create auth-key-hash AUTH_KEY_HASH_SECRET "$(random)"
# Signs the predictions' output URLs (HMAC): changing it breaks every URL already handed out.
create predictions-secrets url-signing-secret "$(random)"
# The mesh's certificates, from a CA of its own (or use components/cert-manager instead).
"$(dirname "$0")/../../create-mesh-certificates.sh" "$namespace"
