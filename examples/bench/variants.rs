//! What is measured: the listeners (one per filter chain) and the rows (a listener, a token
//! algorithm, and how the requests are made and sent).

use crate::support::jwt::Alg;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listener {
    NoAuth,
    Ceiling,
    JwtAuthnCache,
    JwtAuthnNoCache,
    TetherCache,
    TetherNoCache,
    /// Tether with the token cache, `require: dpop` on every path (the DPoP rows).
    TetherDpop,
    /// Tether introspecting opaque tokens (RFC 7662) at the back end, its answers cached
    /// (`require: mtls`).
    TetherOpaque,
}

impl Listener {
    pub const ALL: [Listener; 8] = [
        Listener::NoAuth,
        Listener::Ceiling,
        Listener::JwtAuthnCache,
        Listener::JwtAuthnNoCache,
        Listener::TetherCache,
        Listener::TetherNoCache,
        Listener::TetherDpop,
        Listener::TetherOpaque,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Listener::NoAuth => "no_auth",
            Listener::Ceiling => "ceiling",
            Listener::JwtAuthnCache => "jwt_authn_cache",
            Listener::JwtAuthnNoCache => "jwt_authn_nocache",
            Listener::TetherCache => "tether_cache",
            Listener::TetherNoCache => "tether_nocache",
            Listener::TetherDpop => "tether_dpop",
            Listener::TetherOpaque => "tether_opaque",
        }
    }

    pub fn filter(self) -> &'static str {
        match self {
            Listener::NoAuth => "none",
            Listener::Ceiling => "ceiling",
            Listener::JwtAuthnCache | Listener::JwtAuthnNoCache => "jwt_authn",
            Listener::TetherCache
            | Listener::TetherNoCache
            | Listener::TetherDpop
            | Listener::TetherOpaque => "tether",
        }
    }

    /// `Some(true)` with a token cache, `Some(false)` without, `None` where it does not apply.
    pub fn cache(self) -> Option<bool> {
        match self {
            Listener::JwtAuthnCache
            | Listener::TetherCache
            | Listener::TetherDpop
            | Listener::TetherOpaque => Some(true),
            Listener::JwtAuthnNoCache | Listener::TetherNoCache => Some(false),
            Listener::NoAuth | Listener::Ceiling => None,
        }
    }

    pub fn authenticates(self) -> bool {
        self.cache().is_some()
    }

    pub fn is_tether(self) -> bool {
        matches!(
            self,
            Listener::TetherCache
                | Listener::TetherNoCache
                | Listener::TetherDpop
                | Listener::TetherOpaque
        )
    }
}

/// How a row's requests are made and who sends them.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Kind {
    /// `oha`: the same GET with the same `Authorization: Bearer` token on every request.
    Oha,
    /// `bench/signload`: the same request as `Oha` (GET, Bearer, the same token on every
    /// request), the DPoP rows' like-for-like baseline (the same load generator).
    Signload,
    /// `bench/signload`: `Authorization: DPoP <token>` and a fresh DPoP proof (RFC 9449) of the
    /// row's algorithm on every request.
    Dpop,
    /// `bench/signload`: a request refused at a known step of the DPoP checks, to see where a
    /// DPoP request's time goes (`BENCH_DPOP_BREAKDOWN=1`).
    Stage(Stage),
}

/// The steps of the DPoP breakdown, in the order Tether reaches them (ES256 proofs): each
/// stage's request is refused right after its step, so that the difference between two
/// consecutive stages' Envoy CPU per request is the cost of the step between them.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Stage {
    /// `tether_cache`, the bench token bound to another certificate: the cached token and the
    /// certificate check, then a 401 (the 401 path without any DPoP).
    MtlsRefused,
    /// A `DPoP` header as long as a proof that is not a JWS (two dots, not three).
    Malformed,
    /// A proof whose header says `typ: JWT`: refused once both parts are decoded and parsed.
    TypInvalid,
    /// A proof whose `htm` is `POST`: refused after the key (`jwk` to a key, the thumbprint)
    /// and the `jti`.
    HtmMismatch,
    /// A proof by a key the token is not bound to (its own `jwk`), its claims good: refused
    /// after every claim (`htu`, `iat`, `ath`), at the binding.
    KeyMismatch,
    /// A proof of the token's key whose signature is 64 bytes that are not its signature:
    /// refused by the signature check (Envoy's native `verify_signature`, which does the whole
    /// ECDSA verification before it says no).
    SignatureInvalid,
    /// A good proof sent a second time (after an unmeasured first pass): refused by the
    /// replay record, which is read but not written.
    Replayed,
}

impl Stage {
    pub const ALL: [Stage; 7] = [
        Stage::MtlsRefused,
        Stage::Malformed,
        Stage::TypInvalid,
        Stage::HtmMismatch,
        Stage::KeyMismatch,
        Stage::SignatureInvalid,
        Stage::Replayed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Stage::MtlsRefused => "mtls_certificate_mismatch",
            Stage::Malformed => "malformed",
            Stage::TypInvalid => "typ_invalid",
            Stage::HtmMismatch => "htm_mismatch",
            Stage::KeyMismatch => "key_mismatch",
            Stage::SignatureInvalid => "signature_invalid",
            Stage::Replayed => "replayed",
        }
    }

    /// Tether's refusal reason (its `refused.<reason>` counter) for the stage's requests.
    pub fn reason(self) -> &'static str {
        match self {
            Stage::MtlsRefused => "certificate_mismatch",
            Stage::Malformed => "dpop_proof_malformed",
            Stage::TypInvalid => "dpop_proof_type_invalid",
            Stage::HtmMismatch => "dpop_method_mismatch",
            Stage::KeyMismatch => "dpop_key_mismatch",
            Stage::SignatureInvalid => "dpop_signature_invalid",
            Stage::Replayed => "dpop_proof_replayed",
        }
    }

    /// What the filter did for this stage's request beyond the previous stage's.
    pub fn step(self) -> &'static str {
        match self {
            Stage::MtlsRefused => "(the 401 baseline: cached token, certificate check, refusal)",
            Stage::Malformed => {
                "DPoP scheme and a ~600-byte DPoP header through Envoy and into the VM"
            }
            Stage::TypInvalid => "base64url decode + JSON parse of the proof's header and claims",
            Stage::HtmMismatch => {
                "alg; jwk to a key (P-256 point decode, SPKI DER); RFC 7638 thumbprint \
                 (JSON + SHA-256); jti, htm"
            }
            Stage::KeyMismatch => "htu normalization, iat window, ath (SHA-256 of the token)",
            Stage::SignatureInvalid => {
                "binding check; ES256 verify_signature (R||S to DER, protobuf, Envoy's BoringSSL)"
            }
            Stage::Replayed => "replay id (SHA-256); shared-data get and bucket decode/search",
        }
    }

    pub fn listener(self) -> Listener {
        match self {
            Stage::MtlsRefused => Listener::TetherCache,
            _ => Listener::TetherDpop,
        }
    }
}

/// One row: a listener, the algorithm of the token sent to it (and of the DPoP proofs), and
/// how its requests are made and sent.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub listener: Listener,
    pub alg: Alg,
    pub kind: Kind,
}

impl Variant {
    /// In table order: references first, then each cache mode with its reference on top, then
    /// the DPoP rows (each after its like-for-like baseline), then the breakdown stages if
    /// asked for.
    pub fn all(dpop: bool, breakdown: bool) -> Vec<Variant> {
        let v = |listener, alg| Variant {
            listener,
            alg,
            kind: Kind::Oha,
        };
        let mut all = vec![
            v(Listener::NoAuth, Alg::Es256),
            v(Listener::Ceiling, Alg::Es256),
            v(Listener::JwtAuthnCache, Alg::Es256),
        ];
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::TetherCache, alg));
        }
        // An opaque token bound to the certificate, its introspection answer cached: beside
        // the cached JWT rows it compares with.
        all.push(v(Listener::TetherOpaque, Alg::Es256));
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::JwtAuthnNoCache, alg));
        }
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::TetherNoCache, alg));
        }
        if dpop {
            for alg in [Alg::Es256, Alg::EdDsa] {
                all.push(Variant {
                    listener: Listener::TetherCache,
                    alg,
                    kind: Kind::Signload,
                });
                all.push(Variant {
                    listener: Listener::TetherDpop,
                    alg,
                    kind: Kind::Dpop,
                });
            }
            if breakdown {
                for stage in Stage::ALL {
                    all.push(Variant {
                        listener: stage.listener(),
                        alg: Alg::Es256,
                        kind: Kind::Stage(stage),
                    });
                }
            }
        }
        all
    }

    /// Whether `bench/signload` sends this row's requests (otherwise `oha`).
    pub fn by_signload(&self) -> bool {
        self.kind != Kind::Oha
    }

    /// The load generator's name, for the report.
    pub fn client(&self) -> &'static str {
        if self.by_signload() {
            "signload"
        } else {
            "oha"
        }
    }

    pub fn id(&self) -> String {
        let alg = self.alg.name().to_ascii_lowercase();
        match (self.kind, self.listener) {
            (Kind::Stage(stage), _) => format!("dpop_stage_{}", stage.name()),
            (Kind::Signload, l) => format!("{}_{alg}_signload", l.name()),
            (_, Listener::NoAuth | Listener::Ceiling | Listener::TetherOpaque) => {
                self.listener.name().to_string()
            }
            (_, l) => format!("{}_{alg}", l.name()),
        }
    }

    /// The id of the `oha` row with the same listener and algorithm as a `Signload` or
    /// `Dpop` row: for a DPoP row, the cached `mtls` row of the same token algorithm.
    pub fn mtls_row_id(&self) -> String {
        format!(
            "{}_{}",
            Listener::TetherCache.name(),
            self.alg.name().to_ascii_lowercase()
        )
    }

    /// The id of the `Signload` row of the same algorithm (a DPoP row's like-for-like
    /// baseline).
    pub fn signload_row_id(&self) -> String {
        format!("{}_signload", self.mtls_row_id())
    }

    /// The HTTP status the row's requests must get, and Tether's refusal reason if not 200.
    pub fn expected(&self) -> (&'static str, Option<&'static str>) {
        match self.kind {
            Kind::Stage(stage) => ("401", Some(stage.reason())),
            _ => ("200", None),
        }
    }

    pub fn label(&self) -> String {
        let cache = match self.listener.cache() {
            Some(true) => ", cache",
            Some(false) => ", no cache",
            None => "",
        };
        match self.listener {
            Listener::NoAuth => "no auth filter".into(),
            Listener::Ceiling => "wasm ceiling".into(),
            Listener::JwtAuthnCache | Listener::JwtAuthnNoCache => {
                format!("jwt_authn {}{cache}", self.alg.name())
            }
            Listener::TetherOpaque => "Tether mtls opaque, introspection cache".into(),
            Listener::TetherCache | Listener::TetherNoCache | Listener::TetherDpop => {
                match self.kind {
                    Kind::Oha => format!("Tether mtls {}{cache}", self.alg.name()),
                    Kind::Signload => format!("Tether mtls {}{cache}, signload", self.alg.name()),
                    Kind::Dpop => format!("Tether dpop {}{cache}", self.alg.name()),
                    Kind::Stage(stage) => format!("dpop stage: {}", stage.reason()),
                }
            }
        }
    }
}
