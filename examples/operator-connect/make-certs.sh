#!/bin/sh
# A local CA and certificates for running this example on 127.0.0.1 (never for production):
# certs/ca.pem, certs/sbc.{pem,key} (sbc.operator.example) and certs/teams.{pem,key}
# (sip.pstnhub.example.test, for a local TLS peer standing in for Microsoft).
set -eu
cd "$(dirname "$0")"
mkdir -p certs
cd certs
openssl req -x509 -newkey rsa:2048 -nodes -days 30 -subj "/CN=Bridgehead example CA" \
  -keyout ca.key -out ca.pem 2>/dev/null
for pair in "sbc:sbc.operator.example" "teams:sip.pstnhub.example.test"; do
  name=${pair%%:*}; fqdn=${pair#*:}
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$fqdn" -keyout "$name.key" -out "$name.csr" 2>/dev/null
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\n' "$fqdn" > "$name.ext"
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 30 \
    -extfile "$name.ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
done
echo "certificates in $(pwd)"
