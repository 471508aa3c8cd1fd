//! What is measured: the listeners (one per filter chain) and the rows (a listener and a
//! token algorithm).

use crate::support::jwt::Alg;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Listener {
    NoAuth,
    Ceiling,
    JwtAuthnCache,
    JwtAuthnNoCache,
    TetherCache,
    TetherNoCache,
}

impl Listener {
    pub const ALL: [Listener; 6] = [
        Listener::NoAuth,
        Listener::Ceiling,
        Listener::JwtAuthnCache,
        Listener::JwtAuthnNoCache,
        Listener::TetherCache,
        Listener::TetherNoCache,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Listener::NoAuth => "no_auth",
            Listener::Ceiling => "ceiling",
            Listener::JwtAuthnCache => "jwt_authn_cache",
            Listener::JwtAuthnNoCache => "jwt_authn_nocache",
            Listener::TetherCache => "tether_cache",
            Listener::TetherNoCache => "tether_nocache",
        }
    }

    pub fn filter(self) -> &'static str {
        match self {
            Listener::NoAuth => "none",
            Listener::Ceiling => "ceiling",
            Listener::JwtAuthnCache | Listener::JwtAuthnNoCache => "jwt_authn",
            Listener::TetherCache | Listener::TetherNoCache => "tether",
        }
    }

    /// `Some(true)` with a token cache, `Some(false)` without, `None` where it does not apply.
    pub fn cache(self) -> Option<bool> {
        match self {
            Listener::JwtAuthnCache | Listener::TetherCache => Some(true),
            Listener::JwtAuthnNoCache | Listener::TetherNoCache => Some(false),
            Listener::NoAuth | Listener::Ceiling => None,
        }
    }

    pub fn authenticates(self) -> bool {
        self.cache().is_some()
    }

    pub fn is_tether(self) -> bool {
        matches!(self, Listener::TetherCache | Listener::TetherNoCache)
    }
}

/// One row: a listener and the algorithm of the token sent to it.
#[derive(Clone, Copy, Debug)]
pub struct Variant {
    pub listener: Listener,
    pub alg: Alg,
}

impl Variant {
    /// In table order: references first, then each cache mode with its reference on top.
    pub fn all() -> Vec<Variant> {
        let v = |listener, alg| Variant { listener, alg };
        let mut all = vec![
            v(Listener::NoAuth, Alg::Es256),
            v(Listener::Ceiling, Alg::Es256),
            v(Listener::JwtAuthnCache, Alg::Es256),
        ];
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::TetherCache, alg));
        }
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::JwtAuthnNoCache, alg));
        }
        for alg in [Alg::Es256, Alg::Rs256, Alg::EdDsa] {
            all.push(v(Listener::TetherNoCache, alg));
        }
        all
    }

    pub fn id(&self) -> String {
        match self.listener {
            Listener::NoAuth | Listener::Ceiling => self.listener.name().to_string(),
            l => format!("{}_{}", l.name(), self.alg.name().to_ascii_lowercase()),
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
            Listener::TetherCache | Listener::TetherNoCache => {
                format!("Tether mtls {}{cache}", self.alg.name())
            }
        }
    }
}
