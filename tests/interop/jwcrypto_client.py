"""Tokens and request signatures made by an independent JOSE implementation (jwcrypto).

Used by tests/e2e_interop.rs: it prints one JSON document with an issuer's JWKS, access tokens
signed with ES256, ES384, RS256, PS256 and EdDSA keys, a client's JWKS, and a detached
RFC 7797 (b64: false) request signature, all made by jwcrypto, never by Tether's code.

Usage:
  jwcrypto_client.py keys <x5t#S256 of the client certificate> <dir>
      prints {"jwks", "tokens", "client_jwks"} and keeps the client's private key in <dir>;
  jwcrypto_client.py sign <dir> <access token> <htu> <body>
      prints the detached compact JWS of <body> for POST <htu>.
"""
import hashlib
import json
import sys
import time
from base64 import urlsafe_b64encode

from jwcrypto import jwk, jws, jwt
from jwcrypto.common import json_encode

ISSUER = "https://idp.example.com"
AUDIENCE = "https://orders.mesh.internal"


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def keys(x5t: str, directory: str) -> None:
    now = int(time.time())
    issuer_keys = {
        "ES256": jwk.JWK.generate(kty="EC", crv="P-256", kid="jc-es256"),
        "ES384": jwk.JWK.generate(kty="EC", crv="P-384", kid="jc-es384"),
        "RS256": jwk.JWK.generate(kty="RSA", size=2048, kid="jc-rs256"),
        "PS256": jwk.JWK.generate(kty="RSA", size=2048, kid="jc-ps256"),
        "EdDSA": jwk.JWK.generate(kty="OKP", crv="Ed25519", kid="jc-eddsa"),
    }
    claims = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "alice",
        "client_id": "jc-app",
        "iat": now,
        "exp": now + 300,
        "jti": f"jc-{now}",
        "cnf": {"x5t#S256": x5t},
    }
    tokens = {}
    for alg, key in issuer_keys.items():
        token = jwt.JWT(header={"alg": alg, "kid": key.kid, "typ": "at+jwt"}, claims=claims)
        token.make_signed_token(key)
        tokens[alg] = token.serialize()
    client = jwk.JWK.generate(kty="EC", crv="P-256", kid="jc-client")
    with open(f"{directory}/client.jwk", "w") as f:
        f.write(client.export_private())
    print(
        json.dumps(
            {
                "jwks": {"keys": [json.loads(k.export_public()) for k in issuer_keys.values()]},
                "tokens": tokens,
                "client_jwks": {"keys": [json.loads(client.export_public())]},
            }
        )
    )


def sign(directory: str, token: str, htu: str, body: str) -> None:
    with open(f"{directory}/client.jwk") as f:
        client = jwk.JWK.from_json(f.read())
    protected = {
        "alg": "ES256",
        "kid": client.kid,
        "b64": False,
        "crit": ["b64"],
        "iat": int(time.time()),
        "htm": "POST",
        "htu": htu,
        "ath": b64(hashlib.sha256(token.encode()).digest()),
    }
    signature = jws.JWS(payload=body.encode())
    signature.add_signature(client, None, json_encode(protected))
    signature.detach_payload()
    print(signature.serialize(compact=True))


def main() -> None:
    if sys.argv[1] == "keys":
        keys(sys.argv[2], sys.argv[3])
    else:
        sign(sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5])


if __name__ == "__main__":
    main()
