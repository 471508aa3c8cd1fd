//! The kinds of request the soak sends, the answer each must get, and the mix: one table.
//!
//! A row of the summary is a kind over one protocol. The expected answers are the ones
//! README.md's "Responses" documents (status, reason, `error_description`), so that the soak
//! checks the wire against the documentation, not against the code.

use std::time::Duration;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Protocol {
    H1,
    H2,
}

impl Protocol {
    pub fn name(self) -> &'static str {
        match self {
            Protocol::H1 => "h1",
            Protocol::H2 => "h2",
        }
    }

    pub fn other(self) -> Protocol {
        match self {
            Protocol::H1 => Protocol::H2,
            Protocol::H2 => Protocol::H1,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// GET with a valid token bound to the connection's certificate.
    Valid,
    /// A token whose `exp` is two minutes past (beyond the 30 s skew).
    Expired,
    /// A valid token bound to another client's certificate (`mallory`'s).
    Misbound,
    /// Credentials that are `b64token`s but not JWTs (segments, base64, JSON).
    Malformed,
    /// A `b64token` over 8 KiB.
    Oversized,
    /// Bytes outside ASCII (not UTF-8, or UTF-8 but not a `b64token`) in `Authorization`.
    HostileAuthorization,
    /// A valid token, with obs-text bytes in other headers and forged claim headers
    /// (`x-tether-sub` and its look-alikes), which must not reach the upstream.
    HostileHeaders,
    /// POST on the signed route with a fresh request signature (ES256 or HS256).
    Signed,
    /// A signed request already served, sent again (its original went over the other
    /// protocol, and is counted as `Signed` there).
    Replayed,
    /// A signed HTTP/2 POST whose body ends with trailers (and a forged claim trailer).
    Trailers,
    /// A signed POST whose body comes well before `body_timeout_ms`.
    SlowBody,
    /// A signed POST whose body never comes: 408 at `body_timeout_ms`.
    StalledBody,
}

/// What a kind must be answered with.
#[derive(Clone, Copy, Debug)]
pub struct Expected {
    pub status: u16,
    /// The refusal's reason (its counter is `wasmcustom.tether.refused.<reason>`).
    pub reason: Option<&'static str>,
    /// The refusal's `error_description`, as README.md's "Responses" documents it.
    pub description: Option<&'static str>,
}

const SERVED: Expected = Expected {
    status: 200,
    reason: None,
    description: None,
};

const fn refused(status: u16, reason: &'static str, description: &'static str) -> Expected {
    Expected {
        status,
        reason: Some(reason),
        description: Some(description),
    }
}

/// The signed requests' settings in Tether's configuration (`signed_requests`).
pub const BODY_TIMEOUT_MS: u64 = 1000;
pub const MAX_AGE_SECONDS: u64 = 30;
/// How much later than `body_timeout_ms` any answer may come on a loaded 2-core machine:
/// Tether's tick (250 ms, src/host) times out held bodies, so a 408 may come a tick late;
/// the rest is scheduling (the driver, its upstream and Envoy's two workers share it).
pub const DEADLINE_MARGIN_MS: u64 = 1000;
/// A slow body arrives this long after its headers: well inside `body_timeout_ms`, with room
/// for a late tick.
pub const SLOW_BODY_DELAY: std::ops::Range<u64> = 50..(BODY_TIMEOUT_MS - 400);

pub fn deadline() -> Duration {
    Duration::from_millis(BODY_TIMEOUT_MS + DEADLINE_MARGIN_MS)
}

impl Kind {
    pub const ALL: [Kind; 12] = [
        Kind::Valid,
        Kind::Expired,
        Kind::Misbound,
        Kind::Malformed,
        Kind::Oversized,
        Kind::HostileAuthorization,
        Kind::HostileHeaders,
        Kind::Signed,
        Kind::Replayed,
        Kind::Trailers,
        Kind::SlowBody,
        Kind::StalledBody,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::Valid => "valid",
            Kind::Expired => "expired",
            Kind::Misbound => "misbound",
            Kind::Malformed => "malformed",
            Kind::Oversized => "oversized",
            Kind::HostileAuthorization => "hostile_authorization",
            Kind::HostileHeaders => "hostile_headers",
            Kind::Signed => "signed",
            Kind::Replayed => "replayed",
            Kind::Trailers => "trailers",
            Kind::SlowBody => "slow_body",
            Kind::StalledBody => "stalled_body",
        }
    }

    pub fn expected(self) -> Expected {
        match self {
            Kind::Valid | Kind::HostileHeaders | Kind::Signed | Kind::Trailers | Kind::SlowBody => {
                SERVED
            }
            Kind::Expired => refused(401, "token_expired", "token has expired"),
            Kind::Misbound => refused(
                401,
                "certificate_mismatch",
                "token is bound to another certificate",
            ),
            Kind::Malformed => refused(401, "token_malformed", "token is not a well-formed JWT"),
            Kind::Oversized => refused(401, "token_too_large", "token exceeds the size limit"),
            Kind::HostileAuthorization => refused(
                400,
                "malformed_authorization",
                "malformed Authorization header",
            ),
            Kind::Replayed => refused(
                401,
                "request_signature_replayed",
                "request signature was already used",
            ),
            Kind::StalledBody => {
                refused(408, "body_timeout", "request body did not arrive in time")
            }
        }
    }

    /// Held for up to `body_timeout_ms`: sent by lanes of their own, so that the fast lanes
    /// never wait on them.
    pub fn is_slow(self) -> bool {
        matches!(self, Kind::SlowBody | Kind::StalledBody)
    }

    /// Requests of this kind over `protocol` per 10 000 sent (0: not over that protocol).
    /// A replay is two requests: its original counts under `signed` of the other protocol.
    fn weight(self, protocol: Protocol) -> u64 {
        match (self, protocol) {
            (Kind::Trailers, Protocol::H1) => 0,
            (Kind::Trailers, Protocol::H2) => 500,
            (Kind::Valid, _) => 2015,
            (Kind::Signed, _) => 700,
            (Kind::Replayed, _) => 300,
            (Kind::Expired | Kind::Misbound | Kind::Malformed, _) => 250,
            (Kind::Oversized, _) => 150,
            (Kind::HostileAuthorization, _) => 200,
            (Kind::HostileHeaders, _) => 300,
            (Kind::SlowBody, _) => 20,
            (Kind::StalledBody, _) => 15,
        }
    }
}

/// One row of the summary: a kind over a protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    pub kind: Kind,
    pub protocol: Protocol,
}

impl Row {
    pub fn name(self) -> String {
        format!("{} {}", self.kind.name(), self.protocol.name())
    }

    /// The `x-soak-row` header value, by which the upstream counts what reached it.
    pub fn tag(self) -> String {
        format!("{}-{}", self.kind.name(), self.protocol.name())
    }
}

/// Every row sent, in the summary's order.
pub fn rows() -> Vec<Row> {
    Kind::ALL
        .iter()
        .flat_map(|&kind| {
            [Protocol::H1, Protocol::H2]
                .into_iter()
                .filter(move |&protocol| kind.weight(protocol) > 0)
                .map(move |protocol| Row { kind, protocol })
        })
        .collect()
}

pub fn row_index(rows: &[Row], kind: Kind, protocol: Protocol) -> Option<usize> {
    rows.iter()
        .position(|r| r.kind == kind && r.protocol == protocol)
}

/// The work of one run, as row indices in a shuffled order: the fast lanes' and the slow
/// lanes'. A `Replayed` item sends two requests (the original, then the replay).
pub struct Plan {
    pub fast: Vec<u8>,
    pub slow: Vec<u8>,
}

/// `total` requests in the mix of [`Kind::weight`]; whatever rounding leaves goes to
/// `valid h1`. Shuffled by a seeded generator, so that a run can be repeated.
pub fn plan(rows: &[Row], total: u64, seed: u64) -> Plan {
    let requests_per_item = |row: &Row| if row.kind == Kind::Replayed { 2 } else { 1 };
    let weight_sum: u64 = rows
        .iter()
        .map(|r| r.kind.weight(r.protocol) * requests_per_item(r))
        .sum();
    let mut counts: Vec<u64> = rows
        .iter()
        .map(|r| total * r.kind.weight(r.protocol) / weight_sum)
        .collect();
    let planned: u64 = rows
        .iter()
        .zip(&counts)
        .map(|(r, n)| n * requests_per_item(r))
        .sum();
    if let Some(valid) = row_index(rows, Kind::Valid, Protocol::H1) {
        counts[valid] += total.saturating_sub(planned);
    }
    let mut fast = Vec::new();
    let mut slow = Vec::new();
    for (index, (row, &count)) in rows.iter().zip(&counts).enumerate() {
        let lane = if row.kind.is_slow() {
            &mut slow
        } else {
            &mut fast
        };
        lane.extend(std::iter::repeat_n(index as u8, count as usize));
    }
    let mut rng = Rng::new(seed);
    rng.shuffle(&mut fast);
    rng.shuffle(&mut slow);
    Plan { fast, slow }
}

/// xorshift64*: fast, seedable, good enough to shuffle a plan and pick padding.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `range` (which must not be empty).
    pub fn within(&mut self, range: std::ops::Range<u64>) -> u64 {
        range.start + self.next() % (range.end - range.start).max(1)
    }

    fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            let j = (self.next() % (i as u64 + 1)) as usize;
            items.swap(i, j);
        }
    }
}
