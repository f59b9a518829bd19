#!/usr/bin/env bash
# Makes the certificates of the TLS stack (docker-compose.etcd-tls.yml) with openssl.
#
#   scripts/certs.sh DIR [MEMBER...]      members default to etcd-1 etcd-2 etcd-3
#
# In DIR (created if needed):
#   ca.crt, ca.key                          the CA every party trusts (--trusted-ca-file, --cacert)
#   MEMBER.crt, MEMBER.key                  each etcd member's server and peer certificate:
#                                           SANs DNS:MEMBER, DNS:localhost, IP:127.0.0.1,
#                                           usages serverAuth and clientAuth (peers are both)
#   root.crt, root.key                      a client certificate, CN=root (etcdctl on the host)
#   citadel-controller.crt, …key            a client certificate, CN=citadel-controller
#
# With etcd's --client-cert-auth, a client must show a certificate signed by the CA; once etcd's
# auth is enabled, its CN is also the etcd user it acts as.
#
# Idempotent: an existing CA is kept, and so is every certificate that the CA still verifies and
# that is valid for at least 30 more days; anything else is made (again). Keys are mode 0600.
set -euo pipefail

usage() {
    sed -n '2,18p' "$0" >&2
    exit 2
}
say() { printf 'certs: %s\n' "$*"; }
die() {
    printf 'certs: %s\n' "$*" >&2
    exit 1
}

[[ $# -ge 1 && $1 != -* ]] || usage
dir=$1
shift
members=("$@")
((${#members[@]} > 0)) || members=(etcd-1 etcd-2 etcd-3)
for m in "${members[@]}"; do
    [[ $m =~ ^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$ ]] || die "not a host name: $m"
done

command -v openssl >/dev/null 2>&1 || die "openssl not found (Debian: apt-get install openssl)"
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
umask 077
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

days=825   # leaf certificates; the CA gets ten years
renew=$((30 * 24 * 3600))

newkey() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }

# A usable certificate: signed by our CA and not expiring within 30 days.
usable() {
    local crt=$1
    [[ -f $crt && -f ${crt%.crt}.key ]] || return 1
    openssl verify -CAfile "$dir/ca.crt" "$crt" >/dev/null 2>&1 || return 1
    openssl x509 -in "$crt" -noout -checkend "$renew" >/dev/null 2>&1
}

if [[ -f $dir/ca.crt && -f $dir/ca.key ]] &&
    openssl x509 -in "$dir/ca.crt" -noout -checkend "$renew" >/dev/null 2>&1; then
    say "$dir/ca.crt: kept"
else
    newkey "$dir/ca.key"
    openssl req -x509 -new -key "$dir/ca.key" -sha256 -days 3650 \
        -subj "/O=citadel/CN=citadel etcd CA" \
        -addext "basicConstraints=critical,CA:TRUE" \
        -addext "keyUsage=critical,keyCertSign,cRLSign" \
        -addext "subjectKeyIdentifier=hash" \
        -out "$dir/ca.crt"
    say "$dir/ca.crt: made a new CA"
fi

# leaf NAME CN USAGES [SAN]
leaf() {
    local name=$1 cn=$2 usages=$3 san=${4:-} crt=$dir/$1.crt key=$dir/$1.key
    if usable "$crt"; then
        say "$crt: kept"
        return
    fi
    newkey "$key"
    {
        echo "basicConstraints=critical,CA:FALSE"
        echo "keyUsage=critical,digitalSignature,keyEncipherment"
        echo "extendedKeyUsage=$usages"
        echo "subjectKeyIdentifier=hash"
        echo "authorityKeyIdentifier=keyid"
        [[ -z $san ]] || echo "subjectAltName=$san"
    } >"$tmp/$name.ext"
    openssl req -new -key "$key" -subj "/O=citadel/CN=$cn" -out "$tmp/$name.csr"
    openssl x509 -req -in "$tmp/$name.csr" -sha256 -days "$days" \
        -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
        -extfile "$tmp/$name.ext" -out "$crt" 2>/dev/null
    chmod 0644 "$crt"
    say "$crt: made (CN=$cn${san:+, $san})"
}

for m in "${members[@]}"; do
    leaf "$m" "$m" serverAuth,clientAuth "DNS:$m,DNS:localhost,IP:127.0.0.1"
done
leaf root root clientAuth
leaf citadel-controller citadel-controller clientAuth
chmod 0644 "$dir/ca.crt"
chmod 0600 "$dir"/*.key
