"""Encrypted access tokens made by an independent JOSE implementation (jwcrypto), for
tests/jwe_interop.rs (issue 12): nested JWTs (signed ES256, typ at+jwt) encrypted as compact
JWE with cty "JWT", the way an identity provider that encrypts its access tokens makes them.

Usage:
  jwe_tokens.py keys
      prints {"issuer_private", "issuer_jwks", "recipients": {"rsa", "p256", "p384", "oct"}}:
      an ES256 signing key, its public JWKS, and private recipient keys (RSA 2048, EC P-256,
      EC P-384, a 256-bit oct key for "dir").
  jwe_tokens.py encrypt <spec.json>
      spec: {"issuer_private", "claims", "recipients": [{"alg", "enc", "jwk"}]}; prints
      {"tokens": [{"alg", "enc", "token"}]}. "jwk" may be private: only its public half is used
      (all of it for "dir").
"""
import json
import sys

from jwcrypto import jwe, jwk, jwt
from jwcrypto.common import json_encode


def keys() -> None:
    signing = jwk.JWK.generate(kty="EC", crv="P-256", kid="issuer-es256")
    recipients = {
        "rsa": jwk.JWK.generate(kty="RSA", size=2048, kid="enc-rsa"),
        "p256": jwk.JWK.generate(kty="EC", crv="P-256", kid="enc-p256"),
        "p384": jwk.JWK.generate(kty="EC", crv="P-384", kid="enc-p384"),
        "oct": jwk.JWK.generate(kty="oct", size=256, kid="enc-dir"),
    }
    print(json.dumps({
        "issuer_private": json.loads(signing.export_private()),
        "issuer_jwks": {"keys": [json.loads(signing.export_public())]},
        "recipients": {name: json.loads(key.export(private_key=True)) for name, key in recipients.items()},
    }))


def encrypt(spec_path: str) -> None:
    with open(spec_path, encoding="utf-8") as f:
        spec = json.load(f)
    signing = jwk.JWK(**spec["issuer_private"])
    inner = jwt.JWT(
        header={"alg": "ES256", "typ": "at+jwt", "kid": signing.kid},
        claims=spec["claims"],
    )
    inner.make_signed_token(signing)
    signed = inner.serialize()
    tokens = []
    for recipient in spec["recipients"]:
        alg, enc = recipient["alg"], recipient["enc"]
        key = jwk.JWK(**recipient["jwk"])
        if alg != "dir" and key.has_private:
            key = jwk.JWK(**json.loads(key.export_public()))
        header = {"alg": alg, "enc": enc, "cty": "JWT", "kid": recipient["jwk"]["kid"]}
        token = jwe.JWE(signed.encode(), protected=json_encode(header))
        # jwcrypto's default allow-list leaves some of these out: allow exactly this pair.
        token.allowed_algs = [alg, enc]
        token.add_recipient(key)
        tokens.append({"alg": alg, "enc": enc, "token": token.serialize(compact=True)})
    print(json.dumps({"tokens": tokens}))


def main() -> None:
    if len(sys.argv) == 2 and sys.argv[1] == "keys":
        keys()
    elif len(sys.argv) == 3 and sys.argv[1] == "encrypt":
        encrypt(sys.argv[2])
    else:
        sys.stderr.write(__doc__)
        sys.exit(2)


if __name__ == "__main__":
    main()
