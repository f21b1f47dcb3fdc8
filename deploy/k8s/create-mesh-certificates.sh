#!/usr/bin/env bash
# Issues the mesh's certificates without cert-manager (the dev overlay; any cluster where the
# cert-manager component is not used): a CA kept in the Secret mesh-ca, and one Secret per
# identity in the layout cert-manager writes (type kubernetes.io/tls: tls.crt, tls.key, ca.crt),
# with the same names and SANs as components/cert-manager/certificates.yaml. A Secret that
# already exists is kept; to renew one, delete it, run this again and restart its pods.
# Usage: deploy/k8s/create-mesh-certificates.sh [namespace]   (kubectl's current context; openssl)
set -euo pipefail

namespace="${1:-kokoropay}"
days="${MESH_CERT_DAYS:-90}"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

exists() { kubectl -n "$namespace" get secret "$1" >/dev/null 2>&1; }
secret_file() {  # secret_file SECRET KEY: a key of a Secret, decoded
  kubectl -n "$namespace" get secret "$1" -o "jsonpath={.data.${2//./\\.}}" | base64 -d
}
service() { echo "$1.${namespace}.svc.cluster.local"; }
quietly() {  # openssl's chatter only when it fails
  local out
  out="$("$@" 2>&1)" || { echo "$out" >&2; return 1; }
}

# The CA: made once, then read back, so that certificates issued later chain to the same one.
if exists mesh-ca; then
  secret_file mesh-ca tls.crt >"$work/ca.crt"
  secret_file mesh-ca tls.key >"$work/ca.key"
else
  cat >"$work/ca.cnf" <<'EOF'
[req]
distinguished_name = dn
x509_extensions = ca
prompt = no
[dn]
CN = kokoropay mesh CA
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
EOF
  quietly openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 -days 1825 \
    -config "$work/ca.cnf" -keyout "$work/ca.key" -out "$work/ca.crt"
  kubectl -n "$namespace" create secret tls mesh-ca --cert="$work/ca.crt" --key="$work/ca.key"
fi

issue() {  # issue SECRET ROLE USAGES [DNS-NAME|IP ...]
  local secret="$1" uri="spiffe://kokoropay/$2" usages="$3" san name
  shift 3
  if exists "$secret"; then
    echo "secret/$secret exists, kept"
    return
  fi
  san="URI:$uri"
  for name in "$@"; do
    if [[ "$name" =~ ^[0-9.]+$ ]]; then san+=",IP:$name"; else san+=",DNS:$name"; fi
  done
  cat >"$work/$secret.cnf" <<EOF
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = $usages
subjectAltName = $san
authorityKeyIdentifier = keyid
EOF
  # -subj separates names with "/": the URI's own are escaped.
  quietly openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -subj "/CN=${uri//\//\\/}" -keyout "$work/$secret.key" -out "$work/$secret.csr"
  quietly openssl x509 -req -in "$work/$secret.csr" -CA "$work/ca.crt" -CAkey "$work/ca.key" \
    -set_serial "0x$(openssl rand -hex 16)" -days "$days" -extfile "$work/$secret.cnf" \
    -out "$work/$secret.crt"
  kubectl -n "$namespace" create secret generic "$secret" --type=kubernetes.io/tls \
    --from-file=tls.crt="$work/$secret.crt" --from-file=tls.key="$work/$secret.key" \
    --from-file=ca.crt="$work/ca.crt"
}

server="serverAuth, clientAuth"
issue auth-tls auth "$server" "$(service auth)" "$(service auth-headless)"
issue ledger-tls ledger "$server" "$(service ledger)" "$(service ledger-headless)"
issue synth-tls synth "$server" "$(service synth-headless)"
# The predictions service and its workers share this one (the PREDICTIONS role).
issue predictions-mesh-tls predictions "$server" "$(service predictions)" \
  "$(service predictions-headless)"
# localhost: admin tools reach Envoy through `kubectl port-forward`.
issue envoy-tls envoy "$server" "$(service envoy)" localhost 127.0.0.1
issue gateway-mesh-tls gateway clientAuth
issue dashboard-mesh-tls dashboard clientAuth
issue operator-tls operator clientAuth
