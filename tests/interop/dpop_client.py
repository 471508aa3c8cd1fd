"""DPoP proofs (RFC 9449) made the way a client makes them, by jwcrypto, never by Tether's code.

For tests/e2e_dpop.rs and the demo. Usage: dpop_client.py <spec.json>, where the spec is one of

  {"mode": "keys", "dir": "<dir>"}
      makes the client keys (es256, es256-other, eddsa, rs256, ps256), keeps their private
      JWKs in <dir>, and prints {"jwk": {name: public JWK}, "jkt": {name: RFC 7638 thumbprint}};

  {"mode": "proofs", "dir": "<dir>", "proofs": [{"key": "es256", "htm": "GET",
      "htu": "https://...", "token": "<access token>", "nonce": "<optional>",
      "edit": {...optional, see below}}, ...]}
      prints {"proofs": ["<compact JWS>", ...]}, one per request, each with a fresh `jti`, `iat`
      now and `ath` the hash of the token (RFC 9449 §4.2).

An `edit` makes a proof wrong in one way, as an attacker or a broken client would:
  "header": {name: value}     set (or, with null, remove) protected header members;
  "claims": {name: value}     set (or, with null, remove) claims;
  "iat_offset": seconds       move `iat`;
  "private_jwk": true         put the private key in `jwk`;
  "signer": "<key name>"      sign with another key than the one in `jwk`;
  "duplicate_header": name    repeat a header member (same value) in the JSON;
  "unsigned": true            a header and claims with a signature that is not one (for an
                              `alg` jwcrypto will not sign with, such as `none`).
"""
import hashlib
import json
import sys
import time
import uuid
from base64 import urlsafe_b64encode

from jwcrypto import jwk, jws
from jwcrypto.common import json_encode

KEYS = {
    "es256": ("ES256", dict(kty="EC", crv="P-256")),
    "es256-other": ("ES256", dict(kty="EC", crv="P-256")),
    "es384": ("ES384", dict(kty="EC", crv="P-384")),
    "eddsa": ("EdDSA", dict(kty="OKP", crv="Ed25519")),
    "rs256": ("RS256", dict(kty="RSA", size=2048)),
    "ps256": ("PS256", dict(kty="RSA", size=2048)),
}


def b64(data: bytes) -> str:
    return urlsafe_b64encode(data).rstrip(b"=").decode()


def load(directory: str, name: str) -> jwk.JWK:
    with open(f"{directory}/{name}.jwk") as f:
        return jwk.JWK.from_json(f.read())


def make_keys(spec) -> dict:
    public, thumbprints = {}, {}
    for name, (_, params) in KEYS.items():
        key = jwk.JWK.generate(**params)
        with open(f"{spec['dir']}/{name}.jwk", "w") as f:
            f.write(key.export_private())
        public[name] = json.loads(key.export_public())
        thumbprints[name] = key.thumbprint()  # RFC 7638, SHA-256
    return {"jwk": public, "jkt": thumbprints}


def make_proof(directory: str, request: dict) -> str:
    edit = request.get("edit") or {}
    key = load(directory, request["key"])
    alg = KEYS[request["key"]][0]
    header = {
        "typ": "dpop+jwt",
        "alg": alg,
        "jwk": json.loads(key.export_private() if edit.get("private_jwk") else key.export_public()),
    }
    claims = {
        "jti": str(uuid.uuid4()),
        "htm": request["htm"],
        "htu": request["htu"],
        "iat": int(time.time()) + int(edit.get("iat_offset", 0)),
        "ath": b64(hashlib.sha256(request["token"].encode()).digest()),
    }
    if request.get("nonce"):
        claims["nonce"] = request["nonce"]
    for target, changes in ((header, edit.get("header", {})), (claims, edit.get("claims", {}))):
        for name, value in changes.items():
            if value is None:
                target.pop(name, None)
            else:
                target[name] = value
    protected = json_encode(header)
    duplicate = edit.get("duplicate_header")
    if duplicate:
        # The same member twice: serializers never write this, a hand-made proof can.
        member = json.dumps(header[duplicate])
        protected = protected[:-1] + f',"{duplicate}":{member}' + "}"
    payload = json_encode(claims).encode()
    if edit.get("unsigned"):
        return f"{b64(protected.encode())}.{b64(payload)}.{b64(b'not a signature')}"
    signer = load(directory, edit["signer"]) if edit.get("signer") else key
    token = jws.JWS(payload=payload)
    token.add_signature(signer, None, protected)
    return token.serialize(compact=True)


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    if spec["mode"] == "keys":
        print(json.dumps(make_keys(spec)))
    else:
        print(json.dumps({"proofs": [make_proof(spec["dir"], r) for r in spec["proofs"]]}))


if __name__ == "__main__":
    main()
