"""HTTP Message Signatures (RFC 9421) made by an independent implementation: the PyPI
package http-message-signatures (3.x, on `cryptography` and `http-sf`), never Tether's code.

For tests/httpsig_interop.rs. Usage: httpsig_client.py <spec.json>, spec {"created": <unix
time>}. Prints {"cases": [...]}: one signed request per algorithm of RFC 9421 §3.3, each
{"alg", "method", "url", "headers": [[name, value], ...], "body" (base64), "key": {"jwk":
<public JWK with alg>} or {"hmac": <base64url secret>}}. Every request covers `@method`,
`@target-uri`, `@authority`, `@path`, `@query`, `authorization`, `content-type` and (added by the library, with the body's Content-Digest) `content-digest`, and
carries `tag="fapi-2-request"`.
"""
import base64
import datetime
import json
import secrets
import sys

import http_message_signatures as hms
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import algorithms
from jwcrypto import jwk

COVERED = (
    "@method",
    "@target-uri",
    "@authority",
    "@path",
    "@query",
    "authorization",
    "content-type",
)


class Message:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, headers


class Keys(hms.HTTPSignatureKeyResolver):
    def __init__(self, key):
        self.key = key

    def resolve_private_key(self, key_id):
        return self.key

    def resolve_public_key(self, key_id):
        return self.key if isinstance(self.key, bytes) else self.key.public_key()


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def public_jwk(key, alg: str) -> dict:
    exported = json.loads(jwk.JWK.from_pyca(key.public_key()).export_public())
    exported["alg"] = alg
    return exported


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    created = datetime.datetime.fromtimestamp(spec["created"], datetime.timezone.utc)
    keys = [
        ("ecdsa-p256-sha256", algorithms.ECDSA_P256_SHA256, ec.generate_private_key(ec.SECP256R1()), "ES256"),
        ("ecdsa-p384-sha384", algorithms.ECDSA_P384_SHA384, ec.generate_private_key(ec.SECP384R1()), "ES384"),
        ("ed25519", algorithms.ED25519, ed25519.Ed25519PrivateKey.generate(), "EdDSA"),
        ("rsa-pss-sha512", algorithms.RSA_PSS_SHA512, rsa.generate_private_key(65537, 2048), "PS512"),
        ("rsa-v1_5-sha256", algorithms.RSA_V1_5_SHA256, rsa.generate_private_key(65537, 2048), "RS256"),
        ("hmac-sha256", algorithms.HMAC_SHA256, secrets.token_bytes(32), None),
    ]
    cases = []
    for name, algorithm, key, jws_alg in keys:
        body = json.dumps({"amount": "10.00", "to": "bob", "alg": name}).encode()
        message = Message(
            "POST",
            "https://api.example.com/payments?to=bob&memo=r%C3%A9sum%C3%A9",
            {"Authorization": "DPoP eyJhbGciOiJFUzI1NiJ9.e30.c2ln", "Content-Type": "application/json"},
        )
        signer = hms.HTTPMessageSigner(signature_algorithm=algorithm, key_resolver=Keys(key))
        signer.sign(
            message,
            key_id=f"client-{name}",
            created=created,
            label="sig1",
            tag="fapi-2-request",
            covered_component_ids=COVERED,
            body=body,
        )
        cases.append(
            {
                "alg": name,
                "method": message.method,
                "url": message.url,
                "headers": [[k, v] for k, v in message.headers.items()],
                "body": base64.b64encode(body).decode(),
                "key": {"hmac": b64url(key)} if jws_alg is None else {"jwk": public_jwk(key, jws_alg)},
            }
        )
    print(json.dumps({"cases": cases}))


if __name__ == "__main__":
    main()
