"""A client of RFC 9421 HTTP Message Signatures, made with an independent implementation (the
PyPI package http-message-signatures 3.x, on `cryptography`, and jwcrypto for JWKs): it signs
requests for Tether to verify, and verifies the responses Tether signs against the key set
Tether publishes. Never Tether's code.

For tests/e2e_httpsig.rs. Usage: httpsig_exchange.py <spec.json>; prints a JSON answer.

- {"mode": "keys", "dir": D}: makes one client key per algorithm of RFC 9421 §3.3 (and an
  HMAC secret) in D. Answers {"jwks": {"keys": [public JWKs, kid "client-<alg>", with alg]},
  "hmac": {"kid": ..., "k": base64url}, "thumbprints": {alg: RFC 7638 thumbprint},
  "tether": {"ed25519": private JWK, "p256": private JWK}} (Tether's response signing keys).
- {"mode": "sign", "dir": D, "requests": [{"alg", "method", "url", "headers": [[n, v]],
  "body": base64, "created": unix time, "components": [...], "tag", "label", "keyid",
  "expires", "digest"}]}: signs each request; the library adds and covers Content-Digest
  unless "digest" is false. Answers {"headers": [[[n, v], ...], ...]}: the headers to add.
- {"mode": "verify_response", "jwks": {...}, "request": {"method", "url", "headers"},
  "response": {"status", "headers": [[n, v]], "body": base64}}: verifies the response's
  signature tagged `fapi-2-response` with the key its keyid names in the key set, requiring
  the FAPI 2.0 response components, and its Content-Digest. Answers {"ok": true, "covered":
  [...]} or {"ok": false, "error": "..."}.
- {"mode": "verify_jws", "jws": detached compact JWS, "body": base64, "jwks": {...}}: checks a
  JWS-signed response with jwcrypto. Answers {"ok": true, "header": {...}} or {"ok": false}.
"""
import base64
import datetime
import json
import os
import secrets
import sys

import http_message_signatures as hms
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from http_message_signatures import algorithms
from jwcrypto import jwk, jws

ALGS = {
    "ecdsa-p256-sha256": (algorithms.ECDSA_P256_SHA256, "ES256"),
    "ecdsa-p384-sha384": (algorithms.ECDSA_P384_SHA384, "ES384"),
    "ed25519": (algorithms.ED25519, "EdDSA"),
    "rsa-pss-sha512": (algorithms.RSA_PSS_SHA512, "PS512"),
    "rsa-v1_5-sha256": (algorithms.RSA_V1_5_SHA256, "RS256"),
    "hmac-sha256": (algorithms.HMAC_SHA256, None),
}


class Headers(dict):
    """Header fields, looked up without regard to case (as the library expects)."""

    def __getitem__(self, name):
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        raise KeyError(name)

    def __contains__(self, name):
        return any(key.lower() == str(name).lower() for key in self.keys())

    def get(self, name, default=None):
        try:
            return self[name]
        except KeyError:
            return default


class Request:
    def __init__(self, method, url, headers):
        self.method, self.url, self.headers = method, url, Headers(headers)


class Response:
    def __init__(self, status, headers, request):
        self.status_code, self.headers, self.request = status, Headers(headers), request


class Keys(hms.HTTPSignatureKeyResolver):
    def __init__(self, private=None, public=None):
        self.private, self.public = private, public

    def resolve_private_key(self, key_id):
        return self.private

    def resolve_public_key(self, key_id):
        return self.public(key_id)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def make_key(alg):
    if alg == "ecdsa-p256-sha256":
        return ec.generate_private_key(ec.SECP256R1())
    if alg == "ecdsa-p384-sha384":
        return ec.generate_private_key(ec.SECP384R1())
    if alg == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    if alg.startswith("rsa"):
        return rsa.generate_private_key(65537, 2048)
    return secrets.token_bytes(32)


def load_key(directory, alg):
    with open(os.path.join(directory, alg), "rb") as f:
        data = f.read()
    if alg == "hmac-sha256":
        return data
    return serialization.load_pem_private_key(data, password=None)


def keys(spec):
    directory = spec["dir"]
    public, thumbprints, hmac = [], {}, None
    for alg, (_, jws_alg) in ALGS.items():
        key = make_key(alg)
        with open(os.path.join(directory, alg), "wb") as f:
            if isinstance(key, bytes):
                f.write(key)
            else:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
        if jws_alg is None:
            hmac = {"kid": f"client-{alg}", "k": b64url(key)}
            continue
        exported = jwk.JWK.from_pyca(key.public_key())
        thumbprints[alg] = exported.thumbprint()
        entry = json.loads(exported.export_public())
        entry.update({"kid": f"client-{alg}", "alg": jws_alg})
        public.append(entry)
    # Tether's own response signing keys, as an operator would make them (private JWKs).
    tether = {
        "ed25519": jwk.JWK.generate(kty="OKP", crv="Ed25519").export_private(),
        "p256": jwk.JWK.generate(kty="EC", crv="P-256").export_private(),
    }
    return {"jwks": {"keys": public}, "hmac": hmac, "thumbprints": thumbprints, "tether": tether}


def sign(spec):
    out = []
    for r in spec["requests"]:
        alg = r["alg"]
        algorithm = ALGS[alg][0]
        headers = dict(r["headers"])
        message = Request(r["method"], r["url"], headers)
        signer = hms.HTTPMessageSigner(signature_algorithm=algorithm,
                                       key_resolver=Keys(private=load_key(spec["dir"], alg)))
        created = datetime.datetime.fromtimestamp(r["created"], datetime.timezone.utc)
        expires = r.get("expires")
        signer.sign(
            message,
            key_id=r.get("keyid", f"client-{alg}"),
            created=created,
            expires=None if expires is None else datetime.datetime.fromtimestamp(expires, datetime.timezone.utc),
            label=r.get("label", "sig1"),
            tag=r.get("tag", "fapi-2-request"),
            include_alg=r.get("include_alg", True),
            covered_component_ids=tuple(r["components"]),
            # Given the body, the library adds and covers its Content-Digest.
            body=base64.b64decode(r["body"]) if r.get("digest", True) else None,
        )
        added = [[k.lower(), v] for k, v in message.headers.items() if k.lower() not in {h.lower() for h in headers}]
        out.append(added)
    return {"headers": out}


def public_key_from(jwks):
    def resolve(key_id):
        for entry in jwks["keys"]:
            if entry.get("kid") == key_id:
                if entry.get("use") != "sig":
                    raise ValueError("the published key is not for signatures")
                return jwk.JWK(**entry).get_op_key("verify")
        raise KeyError(key_id)

    return resolve


def verify_response(spec):
    request = Request(spec["request"]["method"], spec["request"]["url"], dict(spec["request"]["headers"]))
    response_spec = spec["response"]
    response = Response(response_spec["status"], dict(response_spec["headers"]), request)
    body = base64.b64decode(response_spec["body"])
    input_header = response.headers.get("signature-input", "")
    # The algorithm comes from the published key (§3.3.7): the key set says which one.
    keyid = input_header.split('keyid="', 1)[1].split('"', 1)[0] if 'keyid="' in input_header else None
    entry = next((k for k in spec["jwks"]["keys"] if k.get("kid") == keyid), None)
    if entry is None:
        return {"ok": False, "error": f"no published key {keyid!r}"}
    algorithm = {"EdDSA": algorithms.ED25519, "ES256": algorithms.ECDSA_P256_SHA256}[entry["alg"]]
    verifier = hms.HTTPMessageVerifier(signature_algorithm=algorithm,
                                       key_resolver=Keys(public=public_key_from(spec["jwks"])))
    required = ['"@method";req', '"@target-uri";req', '"authorization";req', "@status"]
    required += spec.get("also_required", [])
    try:
        results = verifier.verify(response, expect_tag="fapi-2-response", max_age=datetime.timedelta(seconds=60),
                                  require_components=required, body=body)
    except Exception as e:  # noqa: BLE001 - the answer says why
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "covered": [str(c) for c in results[0].covered_components]}


def verify_jws(spec):
    """A detached JWS with an unencoded payload (RFC 7797) over a response body, checked by
    jwcrypto with the key its `kid` names in the published key set."""
    header_b64, _, signature_b64 = spec["jws"].split(".")
    header = json.loads(base64.urlsafe_b64decode(header_b64 + "=" * (-len(header_b64) % 4)))
    entry = next((k for k in spec["jwks"]["keys"] if k.get("kid") == header.get("kid")), None)
    if entry is None:
        return {"ok": False, "error": "no published key"}
    token = jws.JWS()
    try:
        token.deserialize(spec["jws"])
        token.verify(jwk.JWK(**entry), detached_payload=base64.b64decode(spec["body"]))
    except Exception as e:  # noqa: BLE001 - the answer says why
        return {"ok": False, "error": f"{type(e).__name__}: {e}"}
    return {"ok": True, "header": header}


def main() -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    modes = {"keys": keys, "sign": sign, "verify_response": verify_response, "verify_jws": verify_jws}
    answer = modes[spec["mode"]](spec)
    print(json.dumps(answer))


if __name__ == "__main__":
    main()
