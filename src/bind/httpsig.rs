//! HTTP Message Signatures (RFC 9421): reading a signature from the `Signature-Input` and
//! `Signature` fields, rebuilding the signature base it covers, and verifying it.
//!
//! Pure: the caller gathers the message's facts ([`Request`], [`Response`]) and the key; no
//! host call, no clock, no policy. What a rule requires (which components must be covered,
//! how old `created` may be, which key `keyid` names) is the caller's.
//!
//! **Reading** ([`Signature::read`]) is strict: both fields must be RFC 9651 Dictionaries
//! ([`sfv`], which refuses anything else), no label may be given twice (§4.1 requires unique
//! labels; a verifier that checked only the last one would let a second, unchecked signature
//! ride along), every label must be in both fields, every `Signature-Input` member an Inner
//! List of Strings and every `Signature` member a Byte Sequence, even the members that are
//! not the one selected.
//!
//! **Signature parameters** (§2.3): `created` (Integer, required by Tether's policy: without
//! it a signature never expires), `expires` (Integer), `keyid` (String, required: the key is
//! looked up by it), `alg`, `nonce`, `tag` (Strings). §2.3 lets a registry define more;
//! Tether refuses any other parameter ([`Error::UnknownParameter`]) rather than accept one
//! whose meaning it cannot check (a future `expires`-like restriction ignored would widen
//! what the signer meant to allow). A wrong type is [`Error::InvalidParameter`]. A parameter
//! given twice cannot be detected: RFC 9651 §4.2.3.2 keeps the last value, and so does
//! [`sfv`].
//!
//! **The base** (§2.5) is rebuilt from the covered components in order, then the
//! `@signature-params` line. That line's value is the Inner List re-serialized by RFC 9651
//! §4.1, not the received bytes: §3.2 step 5 says the value "is the value of the
//! Signature-Input field for this signature serialized according to the rules described in
//! Section 2.3". The two can differ for a valid field (several spaces between items,
//! `;sf=?1` for `;sf`, `created=01` for `created=1`, a repeated parameter); a signer that
//! signed its own non-canonical spelling then fails to verify, which is the safe direction.
//! Component identifiers are written canonically too (§2.5 step 2.1).
//!
//! **Components** supported (§2.1, §2.2): HTTP fields, with `;sf` (fields of a known type
//! only: [`field_type`]), `;key` and `;bs`; `@method`, `@target-uri`, `@authority`,
//! `@scheme`, `@request-target`, `@path`, `@query`, `@query-param`; on a response, `@status`
//! and request components with `;req`. Refused: `;tr` (trailers are not gathered,
//! [`Error::UnsupportedComponent`]), `;req` on a request, `;bs` with `;sf` or `;key` (§2.1.3),
//! any other parameter or derived component ([`Error::UnknownComponent`]), a component
//! listed twice (§2.5), more than [`MAX_COMPONENTS`], a name longer than
//! [`MAX_COMPONENT_NAME_BYTES`], a base longer than [`MAX_BASE_BYTES`], and any component
//! value holding CR, LF or NUL: a line break in a value would forge a line of the base.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::crypto::{self, SignatureVerifier};
use crate::jwk::{Alg, VerificationKey};
use crate::percent;
use crate::sfv::{self, is_tchar, BareItem, Dictionary, InnerList, Item, ListEntry, Parameters};

/// The most components one signature may cover. FAPI 2.0 asks for five; a signature covering
/// more than this is refused before its base is built.
pub const MAX_COMPONENTS: usize = 32;
/// The longest component name (a field name or a derived component's), in bytes.
pub const MAX_COMPONENT_NAME_BYTES: usize = 256;
/// The longest signature base, in bytes. A base is built from header values Envoy already
/// bounds, but nothing is hashed or verified beyond this.
pub const MAX_BASE_BYTES: usize = 16 * 1024;

/// The `tag` of the request signature checked when no label is configured (FAPI 2.0 HTTP
/// Signatures).
pub const DEFAULT_REQUEST_TAG: &str = "fapi-2-request";
/// The `tag` of the response signatures Tether makes.
pub const RESPONSE_TAG: &str = "fapi-2-response";
/// The label of the response signatures Tether makes.
pub const RESPONSE_LABEL: &str = "sig1";
/// The components a request signature must cover by default (FAPI 2.0 HTTP Signatures):
/// `dpop` only when the request has a `DPoP` header, `content-digest` only when it has a
/// body.
pub const FAPI_REQUIRED_COMPONENTS: [&str; 5] = [
    "@method",
    "@target-uri",
    "authorization",
    "dpop",
    "content-digest",
];
/// Required components that a request without the field need not cover: `dpop` when there
/// is no `DPoP` header, `content-digest` when there is no body.
pub const CONDITIONAL_COMPONENTS: [&str; 2] = ["dpop", "content-digest"];

/// The request components a rule can require by name: a lowercase field name (a `tchar`
/// token, RFC 9110 §5.1) or a derived request component without parameters (§2.2).
pub fn is_request_component_name(name: &str) -> bool {
    match name.strip_prefix('@') {
        Some(derived) => matches!(
            derived,
            "method" | "target-uri" | "authority" | "scheme" | "request-target" | "path" | "query"
        ),
        None => {
            !name.is_empty()
                && name.len() <= MAX_COMPONENT_NAME_BYTES
                && name.bytes().all(|b| is_tchar(b) && !b.is_ascii_uppercase())
        }
    }
}

/// The `Accept-Signature` value (§5.1) that asks for a signature labelled `label` covering
/// `components`, with `created` and this `tag`: what a refusal for a missing signature tells
/// the client. `components` are valid names ([`is_request_component_name`]).
pub fn accept_signature(label: &str, components: &[String], tag: &str) -> String {
    let mut list = InnerList::default();
    for name in components {
        list.items.push(Item::new(BareItem::String(name.clone())));
    }
    list.params.insert("created", BareItem::Boolean(true));
    list.params.insert("tag", BareItem::String(tag.to_string()));
    let mut dictionary = Dictionary::default();
    dictionary.insert(label, ListEntry::InnerList(list));
    sfv::serialize_dictionary(&dictionary).unwrap_or_default()
}

/// The covered components and parameters of a response signature (FAPI 2.0 HTTP Signatures):
/// the request's `@method`, `@target-uri` and `authorization`, its `dpop` and
/// `content-digest` when it had them, the verified request signature (`signature-input` and
/// `signature` of `request_label`, `;key`), then `@status` and the response's
/// `content-digest` when the response has a body; `created`, `keyid`, `tag`.
pub fn response_input(
    request: &Request<'_>,
    request_label: Option<&str>,
    response_has_body: bool,
    created: u64,
    keyid: &str,
) -> InnerList {
    let component = |name: &str, req: bool, key: Option<&str>| {
        let mut item = Item::new(BareItem::String(name.to_string()));
        if req {
            item.params.insert("req", BareItem::Boolean(true));
        }
        if let Some(key) = key {
            item.params.insert("key", BareItem::String(key.to_string()));
        }
        item
    };
    let has = |name: &[u8]| request.headers.iter().any(|(n, _)| *n == name);
    let mut list = InnerList::default();
    for name in ["@method", "@target-uri", "authorization"] {
        list.items.push(component(name, true, None));
    }
    for name in ["dpop", "content-digest"] {
        if has(name.as_bytes()) {
            list.items.push(component(name, true, None));
        }
    }
    if let Some(label) = request_label {
        for name in ["signature-input", "signature"] {
            list.items.push(component(name, true, Some(label)));
        }
    }
    list.items.push(component("@status", false, None));
    if response_has_body {
        list.items.push(component("content-digest", false, None));
    }
    list.params.insert(
        "created",
        BareItem::Integer(i64::try_from(created).unwrap_or(i64::MAX)),
    );
    list.params
        .insert("keyid", BareItem::String(keyid.to_string()));
    list.params
        .insert("tag", BareItem::String(RESPONSE_TAG.to_string()));
    list
}

/// The `Signature-Input` and `Signature` values of one signature labelled `label`.
pub fn signature_fields(
    label: &str,
    input: &InnerList,
    signature: &[u8],
) -> Result<(String, String), Error> {
    let mut inputs = Dictionary::default();
    inputs.insert(label, ListEntry::InnerList(input.clone()));
    let mut signatures = Dictionary::default();
    signatures.insert(
        label,
        ListEntry::Item(Item::new(BareItem::ByteSequence(signature.to_vec()))),
    );
    let serialize = |d: &Dictionary| sfv::serialize_dictionary(d).map_err(|_| Error::Malformed);
    Ok((serialize(&inputs)?, serialize(&signatures)?))
}

/// One header line: the lowercase name and the raw value, as the proxy received it.
pub type Header<'a> = (&'a [u8], &'a [u8]);

/// A request as RFC 9421 sees it: borrowed facts, nothing parsed yet.
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    /// `:method`, as received (§2.2.1: case-sensitive).
    pub method: &'a str,
    /// `:scheme`.
    pub scheme: &'a str,
    /// `:authority` (or `Host`), as received.
    pub authority: &'a str,
    /// `:path`: the path and the query, as received.
    pub path_and_query: &'a str,
    /// Every header line in order, repeated lines kept, names lowercase.
    pub headers: &'a [Header<'a>],
}

/// A response as RFC 9421 sees it, with the request it answers for `;req` components.
#[derive(Clone, Copy, Debug)]
pub struct Response<'a> {
    /// `:status` (§2.2.9).
    pub status: u16,
    /// Every header line in order, repeated lines kept, names lowercase.
    pub headers: &'a [Header<'a>],
    /// The request this response answers: the source of every `;req` component (§2.4).
    pub request: Option<Request<'a>>,
}

/// The message whose signature base is built.
#[derive(Clone, Copy, Debug)]
pub enum Message<'a> {
    Request(Request<'a>),
    Response(Response<'a>),
}

/// Why a signature was not read, its base not built, or it did not verify. No variant carries
/// any of the input. The caller maps these to its refusal reasons (the reading and base
/// errors to `request_signature_malformed`, [`Error::BadSignature`] to an invalid
/// signature, ...).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// `Signature-Input` or `Signature` is not a valid Dictionary (RFC 9651), or too large.
    Malformed,
    /// A label is given twice in one field (§4.1: labels are unique).
    RepeatedLabel,
    /// A label is in one field and not the other.
    LabelMismatch,
    /// A `Signature-Input` member is not an Inner List of Strings (§4.1).
    InputNotInnerList,
    /// A `Signature` member is not a Byte Sequence (§4.2).
    SignatureNotByteSequence,
    /// No signature has the label, or the `tag`, asked for (also: both fields absent).
    NotFound,
    /// More than one signature has the `tag` asked for.
    AmbiguousTag,
    /// `created` or `keyid` is missing.
    MissingParameter,
    /// A known signature parameter has the wrong type, or `created`/`expires` is negative.
    InvalidParameter,
    /// A signature parameter RFC 9421 §2.3 does not define (see the module documentation).
    UnknownParameter,
    /// More than [`MAX_COMPONENTS`] covered components.
    TooManyComponents,
    /// A covered component is listed twice (§2.5).
    DuplicateComponent,
    /// A component identifier that is not valid: empty, too long, not lowercase, a parameter
    /// of the wrong type or in a combination §2.1 forbids (`;bs` with `;sf` or `;key`), a
    /// field parameter on a derived component, `@signature-params` itself, a response-only
    /// component on a request or a request component on a response without `;req`.
    InvalidComponent,
    /// A derived component or a component parameter RFC 9421 does not define.
    UnknownComponent,
    /// A component RFC 9421 defines that Tether does not build: `;tr`, `;req` on a request,
    /// `;sf` on a field whose structured type Tether does not know.
    UnsupportedComponent,
    /// A covered component is not in the message: a field absent, a `;key` member absent, a
    /// query parameter absent, a `;req` component of a response without its request.
    ComponentMissing,
    /// A component's value cannot be written into a base: it holds CR, LF or NUL, it is not
    /// a valid structured field for `;sf`/`;key`, or a `@query-param` name appears more than
    /// once (§2.2.8).
    InvalidComponentValue,
    /// The base would be longer than [`MAX_BASE_BYTES`].
    BaseTooLong,
    /// `alg` is not an algorithm of RFC 9421 §3.3 that Tether verifies, or the key's own
    /// algorithm is none of them.
    UnsupportedAlgorithm,
    /// `alg` is not the key's algorithm (§3.3.7).
    AlgorithmMismatch,
    /// The signature does not verify.
    BadSignature,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::Malformed => "malformed Signature-Input or Signature field",
            Error::RepeatedLabel => "a signature label is repeated",
            Error::LabelMismatch => "a signature label is in one field only",
            Error::InputNotInnerList => "a Signature-Input member is not an inner list of strings",
            Error::SignatureNotByteSequence => "a Signature member is not a byte sequence",
            Error::NotFound => "no signature with the expected label or tag",
            Error::AmbiguousTag => "several signatures with the expected tag",
            Error::MissingParameter => "a required signature parameter is missing",
            Error::InvalidParameter => "a signature parameter has an invalid value",
            Error::UnknownParameter => "an unknown signature parameter",
            Error::TooManyComponents => "too many covered components",
            Error::DuplicateComponent => "a covered component is repeated",
            Error::InvalidComponent => "an invalid component identifier",
            Error::UnknownComponent => "an unknown component or component parameter",
            Error::UnsupportedComponent => "an unsupported component",
            Error::ComponentMissing => "a covered component is missing from the message",
            Error::InvalidComponentValue => "a component value cannot be signed",
            Error::BaseTooLong => "the signature base is too long",
            Error::UnsupportedAlgorithm => "an unsupported signature algorithm",
            Error::AlgorithmMismatch => "the signature algorithm is not the key's",
            Error::BadSignature => "the signature does not verify",
        })
    }
}

impl std::error::Error for Error {}

/// Which signature of the fields to check.
#[derive(Clone, Copy, Debug)]
pub enum Select<'a> {
    /// The one with this label.
    Label(&'a str),
    /// The only one whose `tag` parameter is this (§2.3; more than one is an error).
    Tag(&'a str),
}

/// One signature, read and checked for shape; nothing in it is trusted until [`verify`]
/// succeeds over its base.
#[derive(Clone, Debug)]
pub struct Signature {
    /// Its label in both fields.
    pub label: String,
    /// The covered components and the signature parameters, as parsed.
    pub input: InnerList,
    /// The signature bytes (the `Signature` member).
    pub signature: Vec<u8>,
    /// `created`: seconds since the epoch.
    pub created: i64,
    /// `expires`, when present.
    pub expires: Option<i64>,
    /// `keyid`.
    pub keyid: String,
    /// `alg`, when present (§3.3.7: the key decides otherwise).
    pub alg: Option<String>,
    /// `nonce`, when present.
    pub nonce: Option<String>,
    /// `tag`, when present.
    pub tag: Option<String>,
}

impl Signature {
    /// Reads the selected signature from the lines of `Signature-Input` and `Signature`
    /// (see the module documentation for what is refused). Absent fields read as empty:
    /// [`Error::NotFound`]; a caller that answers a missing signature differently (with
    /// `Accept-Signature`, §5.1) checks for the fields first.
    pub fn read(
        signature_input: &[&[u8]],
        signature: &[&[u8]],
        select: Select<'_>,
    ) -> Result<Signature, Error> {
        let inputs = read_dictionary(signature_input)?;
        let signatures = read_dictionary(signature)?;
        if inputs.len() != signatures.len()
            || inputs
                .iter()
                .any(|(label, _)| signatures.get(label).is_none())
        {
            return Err(Error::LabelMismatch);
        }
        for (_, member) in inputs.iter() {
            covered_list(member)?;
        }
        for (_, member) in signatures.iter() {
            byte_sequence(member)?;
        }
        let label = match select {
            Select::Label(label) => inputs
                .iter()
                .find(|(l, _)| *l == label)
                .map(|(l, _)| l)
                .ok_or(Error::NotFound)?,
            Select::Tag(tag) => {
                let mut tagged = inputs.iter().filter(|(_, member)| {
                    covered_list(member).is_ok_and(|list| {
                        matches!(list.params.get("tag"), Some(BareItem::String(t)) if t == tag)
                    })
                });
                let (label, _) = tagged.next().ok_or(Error::NotFound)?;
                if tagged.next().is_some() {
                    return Err(Error::AmbiguousTag);
                }
                label
            }
        };
        let input = inputs
            .get(label)
            .ok_or(Error::NotFound)
            .and_then(covered_list)?
            .clone();
        let signature_bytes = signatures
            .get(label)
            .ok_or(Error::LabelMismatch)
            .and_then(byte_sequence)?
            .to_vec();
        check_covered(&input)?;
        let params = SignatureParams::read(&input.params)?;
        Ok(Signature {
            label: label.to_string(),
            input,
            signature: signature_bytes,
            created: params.created,
            expires: params.expires,
            keyid: params.keyid,
            alg: params.alg,
            nonce: params.nonce,
            tag: params.tag,
        })
    }

    /// Whether the signature covers the component `name` with no parameters (`"@method"`,
    /// `"authorization"`): what a rule's required components are checked with.
    pub fn covers(&self, name: &str) -> bool {
        self.input.items.iter().any(|item| {
            item.params.is_empty() && matches!(&item.bare, BareItem::String(n) if n == name)
        })
    }

    /// The signature base of this signature over `message` (§2.5).
    pub fn base(&self, message: Message<'_>) -> Result<Vec<u8>, Error> {
        signature_base(&self.input, message)
    }
}

/// The signature parameters of §2.3 that Tether reads.
struct SignatureParams {
    created: i64,
    expires: Option<i64>,
    keyid: String,
    alg: Option<String>,
    nonce: Option<String>,
    tag: Option<String>,
}

impl SignatureParams {
    fn read(params: &Parameters) -> Result<SignatureParams, Error> {
        let (mut created, mut expires, mut keyid) = (None, None, None);
        let (mut alg, mut nonce, mut tag) = (None, None, None);
        for (key, value) in params.iter() {
            match (key, value) {
                ("created", BareItem::Integer(t)) if *t >= 0 => created = Some(*t),
                ("expires", BareItem::Integer(t)) if *t >= 0 => expires = Some(*t),
                ("keyid", BareItem::String(s)) => keyid = Some(s.clone()),
                ("alg", BareItem::String(s)) => alg = Some(s.clone()),
                ("nonce", BareItem::String(s)) => nonce = Some(s.clone()),
                ("tag", BareItem::String(s)) => tag = Some(s.clone()),
                ("created" | "expires" | "keyid" | "alg" | "nonce" | "tag", _) => {
                    return Err(Error::InvalidParameter)
                }
                _ => return Err(Error::UnknownParameter),
            }
        }
        Ok(SignatureParams {
            created: created.ok_or(Error::MissingParameter)?,
            expires,
            keyid: keyid.ok_or(Error::MissingParameter)?,
            alg,
            nonce,
            tag,
        })
    }
}

fn read_dictionary(lines: &[&[u8]]) -> Result<Dictionary, Error> {
    let dictionary = sfv::parse_dictionary_lines(lines).map_err(|_| Error::Malformed)?;
    if dictionary.has_repeated_keys() {
        return Err(Error::RepeatedLabel);
    }
    Ok(dictionary)
}

fn covered_list(member: &ListEntry) -> Result<&InnerList, Error> {
    match member {
        ListEntry::InnerList(list)
            if list
                .items
                .iter()
                .all(|item| matches!(item.bare, BareItem::String(_))) =>
        {
            Ok(list)
        }
        _ => Err(Error::InputNotInnerList),
    }
}

fn byte_sequence(member: &ListEntry) -> Result<&[u8], Error> {
    match member {
        ListEntry::Item(Item {
            bare: BareItem::ByteSequence(bytes),
            ..
        }) => Ok(bytes),
        _ => Err(Error::SignatureNotByteSequence),
    }
}

/// The count, the names' size and the uniqueness of the covered components (§2.5: a
/// component identifier, its parameters included, appears once).
fn check_covered(covered: &InnerList) -> Result<(), Error> {
    if covered.items.len() > MAX_COMPONENTS {
        return Err(Error::TooManyComponents);
    }
    let mut seen: Vec<String> = Vec::with_capacity(covered.items.len());
    for item in &covered.items {
        match &item.bare {
            BareItem::String(name)
                if !name.is_empty() && name.len() <= MAX_COMPONENT_NAME_BYTES => {}
            _ => return Err(Error::InvalidComponent),
        }
        let id = sfv::serialize_item(item).map_err(|_| Error::InvalidComponent)?;
        if seen.contains(&id) {
            return Err(Error::DuplicateComponent);
        }
        seen.push(id);
    }
    Ok(())
}

/// Builds the signature base (§2.5) of the covered components `covered` (the Inner List of a
/// `Signature-Input` member, with the signature parameters) over `message`.
pub fn signature_base(covered: &InnerList, message: Message<'_>) -> Result<Vec<u8>, Error> {
    check_covered(covered)?;
    let mut base = Vec::new();
    for item in &covered.items {
        let component = Component::read(item)?;
        let value = component.value(message)?;
        // Every value goes through here: a line break would add a line of the signer's
        // choosing to the base, a NUL would end it early for a C consumer.
        if value.iter().any(|b| matches!(b, b'\r' | b'\n' | 0)) {
            return Err(Error::InvalidComponentValue);
        }
        let id = sfv::serialize_item(item).map_err(|_| Error::InvalidComponent)?;
        append(&mut base, &[id.as_bytes(), b": ", &value, b"\n"])?;
    }
    let params = sfv::serialize_inner_list(covered).map_err(|_| Error::InvalidParameter)?;
    append(&mut base, &[b"\"@signature-params\": ", params.as_bytes()])?;
    Ok(base)
}

fn append(base: &mut Vec<u8>, parts: &[&[u8]]) -> Result<(), Error> {
    let length = parts
        .iter()
        .fold(base.len(), |sum, part| sum.saturating_add(part.len()));
    if length > MAX_BASE_BYTES {
        return Err(Error::BaseTooLong);
    }
    for part in parts {
        base.extend_from_slice(part);
    }
    Ok(())
}

/// A covered component identifier (§2), its parameters read.
#[derive(Default)]
struct Component<'c> {
    name: &'c str,
    /// `;sf` (§2.1.1).
    sf: bool,
    /// `;key="..."` (§2.1.2).
    key: Option<&'c str>,
    /// `;bs` (§2.1.3).
    bs: bool,
    /// `;req` (§2.4).
    req: bool,
    /// `;name="..."` of `@query-param` (§2.2.8).
    query_name: Option<&'c str>,
}

impl<'c> Component<'c> {
    fn read(item: &'c Item) -> Result<Component<'c>, Error> {
        let BareItem::String(name) = &item.bare else {
            return Err(Error::InvalidComponent);
        };
        let mut component = Component {
            name,
            ..Component::default()
        };
        for (key, value) in item.params.iter() {
            match (key, value) {
                ("sf", BareItem::Boolean(true)) => component.sf = true,
                ("bs", BareItem::Boolean(true)) => component.bs = true,
                ("req", BareItem::Boolean(true)) => component.req = true,
                ("key", BareItem::String(k)) => component.key = Some(k),
                ("name", BareItem::String(n)) => component.query_name = Some(n),
                // Trailers (§2.1.4) are not gathered by the filter.
                ("tr", BareItem::Boolean(true)) => return Err(Error::UnsupportedComponent),
                ("sf" | "bs" | "req" | "key" | "name" | "tr", _) => {
                    return Err(Error::InvalidComponent)
                }
                _ => return Err(Error::UnknownComponent),
            }
        }
        // §2.1.3: a byte sequence is never also re-serialized as a structured field.
        if component.bs && (component.sf || component.key.is_some()) {
            return Err(Error::InvalidComponent);
        }
        let is_derived = name.starts_with('@');
        if is_derived && (component.sf || component.bs || component.key.is_some()) {
            return Err(Error::InvalidComponent);
        }
        if component.query_name.is_some() != (*name == "@query-param") {
            return Err(Error::InvalidComponent);
        }
        Ok(component)
    }

    /// The component's value in `message` (§2.1, §2.2, §2.4).
    fn value(&self, message: Message<'_>) -> Result<Vec<u8>, Error> {
        // §2.4: `;req` takes the component from the request a response answers; on a
        // request it has no meaning, and on a response everything else is the response's.
        let (request, response) = match (message, self.req) {
            (Message::Request(_), true) => return Err(Error::UnsupportedComponent),
            (Message::Request(request), false) => (Some(request), None),
            (Message::Response(response), true) => {
                (Some(response.request.ok_or(Error::ComponentMissing)?), None)
            }
            (Message::Response(response), false) => (None, Some(response)),
        };
        if self.name.starts_with('@') {
            return match (self.name, request, response) {
                ("@status", None, Some(response)) => Ok(response.status.to_string().into_bytes()),
                ("@signature-params" | "@status", _, _) => Err(Error::InvalidComponent),
                (name, Some(request), _) => self.derived(name, &request),
                (
                    "@method" | "@target-uri" | "@authority" | "@scheme" | "@request-target"
                    | "@path" | "@query" | "@query-param",
                    None,
                    _,
                ) => Err(Error::InvalidComponent),
                _ => Err(Error::UnknownComponent),
            };
        }
        let headers = match (request, response) {
            (Some(request), _) => request.headers,
            (None, Some(response)) => response.headers,
            (None, None) => return Err(Error::ComponentMissing),
        };
        self.field(headers)
    }

    /// A derived component of a request (§2.2).
    fn derived(&self, name: &str, request: &Request<'_>) -> Result<Vec<u8>, Error> {
        let (path, query) = match request.path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (request.path_and_query, None),
        };
        let value = match name {
            "@method" => request.method.to_string(),
            "@target-uri" => format!(
                "{}://{}{}",
                request.scheme.to_ascii_lowercase(),
                authority(request),
                request.path_and_query
            ),
            "@authority" => authority(request),
            "@scheme" => request.scheme.to_ascii_lowercase(),
            "@request-target" => request.path_and_query.to_string(),
            // §2.2.6: an empty path is `/`.
            "@path" if path.is_empty() => "/".to_string(),
            "@path" => path.to_string(),
            // §2.2.7: no query is `?` alone.
            "@query" => format!("?{}", query.unwrap_or_default()),
            "@query-param" => {
                let wanted = self.query_name.ok_or(Error::InvalidComponent)?;
                query_param(query.unwrap_or_default(), wanted)?
            }
            _ => return Err(Error::UnknownComponent),
        };
        Ok(value.into_bytes())
    }

    /// An HTTP field (§2.1): every line, trimmed, joined with `, `; or re-serialized (`;sf`,
    /// `;key`); or each line as a Byte Sequence (`;bs`).
    fn field(&self, headers: &[Header<'_>]) -> Result<Vec<u8>, Error> {
        // §2.1: the component name is the lowercased field name.
        if !self
            .name
            .bytes()
            .all(|b| is_tchar(b) && !b.is_ascii_uppercase())
        {
            return Err(Error::InvalidComponent);
        }
        let lines: Vec<&[u8]> = headers
            .iter()
            .filter(|(name, _)| *name == self.name.as_bytes())
            .map(|(_, value)| trim_ows(value))
            .collect();
        if lines.is_empty() {
            return Err(Error::ComponentMissing);
        }
        if self.bs {
            let encoded: Vec<String> = lines
                .iter()
                .map(|line| format!(":{}:", STANDARD.encode(line)))
                .collect();
            return Ok(encoded.join(", ").into_bytes());
        }
        if let Some(key) = self.key {
            // §2.1.2: the field is read as a Dictionary, whatever its registered type.
            let dictionary =
                sfv::parse_dictionary_lines(&lines).map_err(|_| Error::InvalidComponentValue)?;
            let member = dictionary.get(key).ok_or(Error::ComponentMissing)?;
            let serialized = match member {
                ListEntry::Item(item) => sfv::serialize_item(item),
                ListEntry::InnerList(list) => sfv::serialize_inner_list(list),
            };
            return serialized
                .map(String::into_bytes)
                .map_err(|_| Error::InvalidComponentValue);
        }
        if self.sf {
            let serialized = match field_type(self.name) {
                Some(FieldType::Dictionary) => {
                    sfv::parse_dictionary_lines(&lines).and_then(|d| sfv::serialize_dictionary(&d))
                }
                Some(FieldType::List) => {
                    sfv::parse_list_lines(&lines).and_then(|l| sfv::serialize_list(&l))
                }
                Some(FieldType::Item) => {
                    sfv::parse_item_lines(&lines).and_then(|i| sfv::serialize_item(&i))
                }
                None => return Err(Error::UnsupportedComponent),
            };
            return serialized
                .map(String::into_bytes)
                .map_err(|_| Error::InvalidComponentValue);
        }
        Ok(lines.join(&b", "[..]))
    }
}

/// The structured type of a field, for `;sf` (§2.1.1 needs it and a field does not say).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FieldType {
    Dictionary,
    List,
    Item,
}

/// The structured fields Tether can re-serialize for `;sf`, by the specification that
/// defines each; `;sf` on any other field is [`Error::UnsupportedComponent`].
pub fn field_type(name: &str) -> Option<FieldType> {
    Some(match name {
        // RFC 9421 §4.1, §4.2, §5.1; RFC 9530 §2, §3, §4; RFC 9218 §5.
        "signature-input"
        | "signature"
        | "accept-signature"
        | "content-digest"
        | "repr-digest"
        | "want-content-digest"
        | "want-repr-digest"
        | "priority" => FieldType::Dictionary,
        // RFC 9211 §2; RFC 9209 §2.
        "cache-status" | "proxy-status" => FieldType::List,
        _ => return None,
    })
}

/// `@authority` (§2.2.3): the authority lowercased, without the scheme's default port
/// (RFC 9110 §4.2.3 calls both forms equivalent).
fn authority(request: &Request<'_>) -> String {
    let authority = request.authority.to_ascii_lowercase();
    let default_port = match request.scheme.to_ascii_lowercase().as_str() {
        "https" => ":443",
        "http" => ":80",
        _ => return authority,
    };
    match authority.strip_suffix(default_port) {
        Some(host) => host.to_string(),
        None => authority,
    }
}

/// `@query-param;name` (§2.2.8): the query is parsed as `application/x-www-form-urlencoded`,
/// names and values percent-decoded, then each re-encoded with every byte but ASCII
/// alphanumerics and `*-._` as `%XX` (a space as `%20`); `wanted` is compared with the
/// re-encoded name. A name present more than once "MUST NOT be included" (§2.2.8): refused,
/// rather than choosing one of the values.
fn query_param(query: &str, wanted: &str) -> Result<String, Error> {
    let mut found = None;
    for pair in query.split('&').filter(|pair| !pair.is_empty()) {
        let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
        if form_reencode(name.as_bytes()) != wanted {
            continue;
        }
        if found.is_some() {
            return Err(Error::InvalidComponentValue);
        }
        found = Some(form_reencode(value.as_bytes()));
    }
    found.ok_or(Error::ComponentMissing)
}

fn form_reencode(raw: &[u8]) -> String {
    let mut out = String::new();
    for byte in percent::form_decode(raw) {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'*' | b'-' | b'.' | b'_') {
            out.push(char::from(byte));
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

fn trim_ows(value: &[u8]) -> &[u8] {
    let is_ows = |b: &u8| matches!(b, b' ' | b'\t');
    let start = value.iter().position(|b| !is_ows(b)).unwrap_or(value.len());
    let end = value
        .iter()
        .rposition(|b| !is_ows(b))
        .map_or(start, |i| i + 1);
    value.get(start..end).unwrap_or_default()
}

/// The algorithms of RFC 9421 §3.3 that Tether verifies.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Algorithm {
    /// §3.3.1: RSASSA-PSS, SHA-512, MGF1 SHA-512, 64-byte salt (JWS `PS512`).
    RsaPssSha512,
    /// §3.3.2: RSASSA-PKCS1-v1_5 with SHA-256 (JWS `RS256`).
    RsaV15Sha256,
    /// §3.3.3: HMAC-SHA256 with a shared secret.
    HmacSha256,
    /// §3.3.4: ECDSA P-256 with SHA-256, `r || s` (JWS `ES256`).
    EcdsaP256Sha256,
    /// §3.3.5: ECDSA P-384 with SHA-384, `r || s` (JWS `ES384`).
    EcdsaP384Sha384,
    /// §3.3.6: Ed25519 (JWS `EdDSA`).
    Ed25519,
}

impl Algorithm {
    /// The algorithm an `alg` parameter names (§6.2.2).
    pub fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "rsa-pss-sha512" => Algorithm::RsaPssSha512,
            "rsa-v1_5-sha256" => Algorithm::RsaV15Sha256,
            "hmac-sha256" => Algorithm::HmacSha256,
            "ecdsa-p256-sha256" => Algorithm::EcdsaP256Sha256,
            "ecdsa-p384-sha384" => Algorithm::EcdsaP384Sha384,
            "ed25519" => Algorithm::Ed25519,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RsaPssSha512 => "rsa-pss-sha512",
            Algorithm::RsaV15Sha256 => "rsa-v1_5-sha256",
            Algorithm::HmacSha256 => "hmac-sha256",
            Algorithm::EcdsaP256Sha256 => "ecdsa-p256-sha256",
            Algorithm::EcdsaP384Sha384 => "ecdsa-p384-sha384",
            Algorithm::Ed25519 => "ed25519",
        }
    }
}

/// The key a signature is checked with.
#[derive(Clone, Copy, Debug)]
pub enum Key<'a> {
    /// A public key; its one JWS algorithm decides the RFC 9421 algorithm.
    Public(&'a VerificationKey),
    /// An `hmac-sha256` shared secret.
    Shared(&'a [u8]),
}

impl Key<'_> {
    /// The key's algorithm; a public key bound to a JWS algorithm RFC 9421 has no name for
    /// (`PS256`, `RS512`, ...) has none.
    pub fn algorithm(&self) -> Option<Algorithm> {
        match self {
            Key::Shared(_) => Some(Algorithm::HmacSha256),
            Key::Public(key) => match key.alg {
                Alg::Ps512 => Some(Algorithm::RsaPssSha512),
                Alg::Rs256 => Some(Algorithm::RsaV15Sha256),
                Alg::Es256 => Some(Algorithm::EcdsaP256Sha256),
                Alg::Es384 => Some(Algorithm::EcdsaP384Sha384),
                Alg::EdDsa => Some(Algorithm::Ed25519),
                _ => None,
            },
        }
    }
}

/// Verifies `signature` over `base` with `key`. `alg`, the signature's parameter, must name
/// the key's algorithm when present; without it the key decides (§3.3.7). An HMAC tag is
/// compared in constant time.
pub fn verify(
    base: &[u8],
    signature: &[u8],
    key: Key<'_>,
    alg: Option<&str>,
    verifier: &dyn SignatureVerifier,
) -> Result<(), Error> {
    let algorithm = key.algorithm().ok_or(Error::UnsupportedAlgorithm)?;
    if let Some(name) = alg {
        if Algorithm::from_name(name).ok_or(Error::UnsupportedAlgorithm)? != algorithm {
            return Err(Error::AlgorithmMismatch);
        }
    }
    let verified = match key {
        Key::Public(key) => verifier.verify(key, base, signature),
        Key::Shared(secret) => crypto::hmac_sha256_verify(secret, base, signature),
    };
    if verified {
        Ok(())
    } else {
        Err(Error::BadSignature)
    }
}

/// The replay record's key: the SHA-256 of the signature base, what was signed, never the
/// signature bytes (an ECDSA signature is malleable: a second valid signature of the same
/// base must not pass as another request). The base holds `@signature-params`, so `created`,
/// `nonce` and `keyid` are in it.
pub fn replay_id(base: &[u8]) -> [u8; 32] {
    let mut id = Sha256::new();
    id.update(b"tether.replay.httpsig.v1\0");
    id.update(base);
    id.finalize().into()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::InVm;
    use crate::jwk;
    use hmac::Mac as _;
    use serde_json::json;

    // RFC 9421 Appendix B.2: the test request and response.
    const REQUEST_DIGEST: &str = "sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:";
    const RESPONSE_DIGEST: &str = "sha-512=:mEWXIS7MaLRuGgxOBdODa3xqM1XdEvxoYhvlCFJ41QJgJc4GTsPp29l5oGX69wWdXymyU0rjJuahq4l5aGgfLQ==:";
    const REQUEST_HEADERS: [Header<'static>; 5] = [
        (b"host", b"example.com"),
        (b"date", b"Tue, 20 Apr 2021 02:07:55 GMT"),
        (b"content-type", b"application/json"),
        (b"content-digest", REQUEST_DIGEST.as_bytes()),
        (b"content-length", b"18"),
    ];
    const RESPONSE_HEADERS: [Header<'static>; 4] = [
        (b"date", b"Tue, 20 Apr 2021 02:07:56 GMT"),
        (b"content-type", b"application/json"),
        (b"content-digest", RESPONSE_DIGEST.as_bytes()),
        (b"content-length", b"23"),
    ];

    fn test_request() -> Request<'static> {
        Request {
            method: "POST",
            scheme: "https",
            authority: "example.com",
            path_and_query: "/foo?param=Value&Pet=dog",
            headers: &REQUEST_HEADERS,
        }
    }

    fn test_response() -> Response<'static> {
        Response {
            status: 200,
            headers: &RESPONSE_HEADERS,
            request: Some(test_request()),
        }
    }

    // RFC 9421 Appendix B.1.2, test-key-rsa-pss: the RFC's SubjectPublicKeyInfo PEM as a
    // JWK, by `openssl rsa -pubin -noout -modulus` (hex, converted to unpadded base64url
    // with `xxd -r -p | base64 -w0 | tr '+/' '-_' | tr -d =`) and `-text` (e = 65537).
    const RSA_PSS_N: &str = "r4tmm3r20Wd_PbqvP1s2-QEtvpuRaV8Yq40gjUR8y2Rjxa6dpG2GXHbPfvMs8ct-Lh1GH45x28Rw3Ry53mm-oAXjyQ86OnDkZ5N8lYbggD4O3w6M6pAvLkhk95AndTrifbIFPNU8PPMO7OyrFAHqgDsznjPFmTOtCEcN2Z1FpWgchwuYLPL-Wokqltd11nqqzi-bJ9cvSKADYdUAAN5WUtzdpiy6LbTgSxP7ociU4Tn0g5I6aDZJ7A8Lzo0KSyZYoA485mqcO0GVAdVw9lq4aOT9v6d-nb4bnNkQVklLQ3fVAvJm-xdDOp9LCNCN48V2pnDOkFV6-U9nV5oyc6XI2w";
    // RFC 9421 Appendix B.1.3, test-key-ecc-p256: the last 64 bytes of the PEM's DER
    // (`openssl pkey -pubin -outform DER | tail -c 64`), x then y, in base64url.
    const P256_X: &str = "qIVYZVLCrPZHGHjP17CTW0_-D9Lfw0EkjqF7xB4FivA";
    const P256_Y: &str = "Mc4nN9LTDOBhfoUeg8Ye9WedFRhnZXZJA12Qp0zZ6F0";
    // RFC 9421 Appendix B.1.4, test-key-ed25519: the last 32 bytes of the private and the
    // public PEM's DER (`openssl pkey [-pubout] -outform DER | tail -c 32`), in base64url.
    const ED25519_D: &str = "n4Ni-HpISpVObnQMW0wOhCKROaIKqKtW_2ZYb2p9KcU";
    const ED25519_X: &str = "JrQLj5P_89iXES9-vFgrIy29clF9CC_oPPsw3c5D0bs";
    // RFC 9421 Appendix B.1.5, test-shared-secret.
    const SHARED_SECRET: &str =
        "uzvJfB4u3N0Jy4T7NZ75MDVcr8zSTInedJtkgcu46YW4XByzNJjxBdtjUkdJPBtbmHhIDi6pcl8jsasjlTMtDQ==";

    fn key(jwk: serde_json::Value) -> VerificationKey {
        jwk::parse_one(&jwk).unwrap().remove(0)
    }

    fn rsa_pss_key() -> VerificationKey {
        key(json!({"kty": "RSA", "alg": "PS512", "n": RSA_PSS_N, "e": "AQAB"}))
    }

    fn p256_key() -> VerificationKey {
        key(json!({"kty": "EC", "crv": "P-256", "x": P256_X, "y": P256_Y}))
    }

    fn ed25519_key() -> VerificationKey {
        key(json!({"kty": "OKP", "crv": "Ed25519", "x": ED25519_X}))
    }

    fn shared_secret() -> Vec<u8> {
        STANDARD.decode(SHARED_SECRET).unwrap()
    }

    /// Reads `label` from the two fields and builds its base over `message`.
    fn read_and_build(
        input: &str,
        signature: &str,
        label: &str,
        message: Message<'_>,
    ) -> (Signature, String) {
        let signature = Signature::read(
            &[input.as_bytes()],
            &[signature.as_bytes()],
            Select::Label(label),
        )
        .unwrap();
        let base = signature.base(message).unwrap();
        (signature, String::from_utf8(base).unwrap())
    }

    fn check_vector(
        input: &str,
        signature: &str,
        label: &str,
        message: Message<'_>,
        expected_base: &[&str],
        key: Key<'_>,
    ) -> Vec<u8> {
        let (signature, base) = read_and_build(input, signature, label, message);
        assert_eq!(base, expected_base.join("\n"), "{label}");
        verify(
            base.as_bytes(),
            &signature.signature,
            key,
            signature.alg.as_deref(),
            &InVm,
        )
        .unwrap();
        base.into_bytes()
    }

    /// RFC 9421 Appendix B.2.1: minimal signature, rsa-pss-sha512.
    #[test]
    fn rfc9421_b21_minimal_signature_verifies() {
        let key = rsa_pss_key();
        check_vector(
            r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#,
            "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:",
            "sig-b21",
            Message::Request(test_request()),
            &[r#""@signature-params": ();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#],
            Key::Public(&key),
        );
    }

    /// RFC 9421 Appendix B.2.2: selective covered components, rsa-pss-sha512.
    #[test]
    fn rfc9421_b22_selective_components_verify() {
        let key = rsa_pss_key();
        check_vector(
            r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
            "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:",
            "sig-b22",
            Message::Request(test_request()),
            &[
                r#""@authority": example.com"#,
                &format!(r#""content-digest": {REQUEST_DIGEST}"#),
                r#""@query-param";name="Pet": dog"#,
                r#""@signature-params": ("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#,
            ],
            Key::Public(&key),
        );
    }

    const B23_INPUT: &str = r#"sig-b23=("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#;
    const B23_SIGNATURE: &str = "sig-b23=:bbN8oArOxYoyylQQUU6QYwrTuaxLwjAC9fbY2F6SVWvh0yBiMIRGOnMYwZ/5MR6fb0Kh1rIRASVxFkeGt683+qRpRRU5p2voTp768ZrCUb38K0fUxN0O0iC59DzYx8DFll5GmydPxSmme9v6ULbMFkl+V5B1TP/yPViV7KsLNmvKiLJH1pFkh/aYA2HXXZzNBXmIkoQoLd7YfW91kE9o/CCoC1xMy7JA1ipwvKvfrs65ldmlu9bpG6A9BmzhuzF8Eim5f8ui9eH8LZH896+QIF61ka39VBrohr9iyMUJpvRX2Zbhl5ZJzSRxpJyoEZAFL2FUo5fTIztsDZKEgM4cUA==:";

    /// RFC 9421 Appendix B.2.3: full coverage, rsa-pss-sha512.
    #[test]
    fn rfc9421_b23_full_coverage_verifies() {
        let key = rsa_pss_key();
        check_vector(
            B23_INPUT,
            B23_SIGNATURE,
            "sig-b23",
            Message::Request(test_request()),
            &[
                r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
                r#""@method": POST"#,
                r#""@path": /foo"#,
                r#""@query": ?param=Value&Pet=dog"#,
                r#""@authority": example.com"#,
                r#""content-type": application/json"#,
                &format!(r#""content-digest": {REQUEST_DIGEST}"#),
                r#""content-length": 18"#,
                r#""@signature-params": ("date" "@method" "@path" "@query" "@authority" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-rsa-pss""#,
            ],
            Key::Public(&key),
        );
    }

    /// RFC 9421 Appendix B.2.4: a signed response, ecdsa-p256-sha256.
    #[test]
    fn rfc9421_b24_response_signature_verifies() {
        let key = p256_key();
        check_vector(
            r#"sig-b24=("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
            "sig-b24=:wNmSUAhwb5LxtOtOpNa6W5xj067m5hFrj0XQ4fvpaCLx0NKocgPquLgyahnzDnDAUy5eCdlYUEkLIj+32oiasw==:",
            "sig-b24",
            Message::Response(test_response()),
            &[
                r#""@status": 200"#,
                r#""content-type": application/json"#,
                &format!(r#""content-digest": {RESPONSE_DIGEST}"#),
                r#""content-length": 23"#,
                r#""@signature-params": ("@status" "content-type" "content-digest" "content-length");created=1618884473;keyid="test-key-ecc-p256""#,
            ],
            Key::Public(&key),
        );
    }

    /// RFC 9421 Appendix B.2.5: hmac-sha256, deterministic: signing the base gives the RFC's tag.
    #[test]
    fn rfc9421_b25_hmac_verifies_and_is_reproduced() {
        let secret = shared_secret();
        let tag = "pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=";
        let base = check_vector(
            r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
            &format!("sig-b25=:{tag}:"),
            "sig-b25",
            Message::Request(test_request()),
            &[
                r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
                r#""@authority": example.com"#,
                r#""content-type": application/json"#,
                r#""@signature-params": ("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#,
            ],
            Key::Shared(&secret),
        );
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(&secret).unwrap();
        mac.update(&base);
        assert_eq!(STANDARD.encode(mac.finalize().into_bytes()), tag);
        // `alg` naming the key's algorithm is fine too; a tag one bit off is not.
        let mut bad = STANDARD.decode(tag).unwrap();
        verify(
            &base,
            &bad,
            Key::Shared(&secret),
            Some("hmac-sha256"),
            &InVm,
        )
        .unwrap();
        bad[0] ^= 1;
        assert_eq!(
            verify(&base, &bad, Key::Shared(&secret), None, &InVm),
            Err(Error::BadSignature)
        );
    }

    /// RFC 9421 Appendix B.2.6: ed25519, deterministic: signing the base gives the RFC's
    /// signature.
    #[test]
    fn rfc9421_b26_ed25519_verifies_and_is_reproduced() {
        let key = ed25519_key();
        let signature = "wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==";
        let base = check_vector(
            r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
            &format!("sig-b26=:{signature}:"),
            "sig-b26",
            Message::Request(test_request()),
            &[
                r#""date": Tue, 20 Apr 2021 02:07:55 GMT"#,
                r#""@method": POST"#,
                r#""@path": /foo"#,
                r#""@authority": example.com"#,
                r#""content-type": application/json"#,
                r#""content-length": 18"#,
                r#""@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#,
            ],
            Key::Public(&key),
        );
        let signer = crate::sign::SigningKey::from_private_jwk(
            "test-key-ed25519",
            &json!({"kty": "OKP", "crv": "Ed25519", "d": ED25519_D, "x": ED25519_X}),
        )
        .unwrap();
        assert_eq!(STANDARD.encode(signer.sign(&base)), signature);
    }

    /// The base of one component over a request, without the `@signature-params` line.
    fn line(component: &str, request: Request<'_>) -> Result<String, Error> {
        let input = format!("s=({component});created=1;keyid=\"k\"");
        let signature = Signature::read(&[input.as_bytes()], &[b"s=:AA==:"], Select::Label("s"))?;
        let base = String::from_utf8(signature.base(Message::Request(request))?).unwrap();
        Ok(base.split('\n').next().unwrap().to_string())
    }

    fn example_request(path_and_query: &'static str) -> Request<'static> {
        Request {
            method: "POST",
            scheme: "https",
            authority: "www.example.com",
            path_and_query,
            headers: &[],
        }
    }

    /// The examples of RFC 9421 §2.2.1 to §2.2.7, on `POST /path?param=value` to
    /// `www.example.com` over https.
    #[test]
    fn rfc9421_derived_component_examples() {
        let request = example_request("/path?param=value");
        for (component, expected) in [
            (r#""@method""#, r#""@method": POST"#),
            (
                r#""@target-uri""#,
                r#""@target-uri": https://www.example.com/path?param=value"#,
            ),
            (r#""@authority""#, r#""@authority": www.example.com"#),
            (r#""@scheme""#, r#""@scheme": https"#),
            (
                r#""@request-target""#,
                r#""@request-target": /path?param=value"#,
            ),
            (r#""@path""#, r#""@path": /path"#),
            (r#""@query""#, r#""@query": ?param=value"#),
        ] {
            assert_eq!(line(component, request).unwrap(), expected);
        }
        // §2.2.7: no query is `?` alone; §2.2.6: an empty path is `/`.
        assert_eq!(
            line(r#""@query""#, example_request("/path")).unwrap(),
            r#""@query": ?"#
        );
        assert_eq!(
            line(r#""@path""#, example_request("")).unwrap(),
            r#""@path": /"#
        );
    }

    #[test]
    fn authority_is_lowercased_without_the_default_port() {
        let mut request = example_request("/");
        request.authority = "WWW.Example.COM:443";
        assert_eq!(
            line(r#""@authority""#, request).unwrap(),
            r#""@authority": www.example.com"#
        );
        request.authority = "www.example.com:8443";
        assert_eq!(
            line(r#""@authority""#, request).unwrap(),
            r#""@authority": www.example.com:8443"#
        );
        request.scheme = "HTTP";
        request.authority = "www.example.com:80";
        assert_eq!(
            line(r#""@target-uri""#, request).unwrap(),
            r#""@target-uri": http://www.example.com/"#
        );
    }

    /// RFC 9421 §2.2.8's examples.
    #[test]
    fn rfc9421_query_param_examples() {
        let request = example_request("/path?param=value&foo=bar&baz=batman&qux=");
        assert_eq!(
            line(r#""@query-param";name="baz""#, request).unwrap(),
            r#""@query-param";name="baz": batman"#
        );
        assert_eq!(
            line(r#""@query-param";name="qux""#, request).unwrap(),
            r#""@query-param";name="qux": "#
        );
        assert_eq!(
            line(r#""@query-param";name="param""#, request).unwrap(),
            r#""@query-param";name="param": value"#
        );
        let request = example_request("/parameters?var=this%20is%20a%20big%0Amultiline%20value&bar=with+plus+whitespace&fa%C3%A7ade%22%3A%20=something");
        assert_eq!(
            line(r#""@query-param";name="var""#, request).unwrap(),
            r#""@query-param";name="var": this%20is%20a%20big%0Amultiline%20value"#
        );
        assert_eq!(
            line(r#""@query-param";name="bar""#, request).unwrap(),
            r#""@query-param";name="bar": with%20plus%20whitespace"#
        );
        assert_eq!(
            line(r#""@query-param";name="fa%C3%A7ade%22%3A%20""#, request).unwrap(),
            r#""@query-param";name="fa%C3%A7ade%22%3A%20": something"#
        );
        // Absent, or present twice (§2.2.8: such a parameter is not signed).
        assert_eq!(
            line(r#""@query-param";name="nope""#, request),
            Err(Error::ComponentMissing)
        );
        let twice = example_request("/p?a=1&a=2");
        assert_eq!(
            line(r#""@query-param";name="a""#, twice),
            Err(Error::InvalidComponentValue)
        );
        assert_eq!(
            line(r#""@query-param""#, twice),
            Err(Error::InvalidComponent)
        );
    }

    const FIELDS: [Header<'static>; 6] = [
        (b"x-list", b"  a, b "),
        (b"x-list", b"\tc"),
        (b"example-dict", b" a=1,    b=2;x=1;y=2, c=(a   b   c)"),
        (b"content-digest", b"sha-256=:AA==:,  sha-512=:AAAA:"),
        (b"x-empty", b""),
        (b"x-bad", b"a\nb"),
    ];

    fn with_fields() -> Request<'static> {
        Request {
            headers: &FIELDS,
            ..test_request()
        }
    }

    #[test]
    fn fields_are_trimmed_and_combined_and_re_serialized() {
        let request = with_fields();
        assert_eq!(
            line(r#""x-list""#, request).unwrap(),
            r#""x-list": a, b, c"#
        );
        assert_eq!(line(r#""x-empty""#, request).unwrap(), r#""x-empty": "#);
        // §2.1.1, §2.1.2 (the example's dictionary).
        assert_eq!(
            line(r#""content-digest";sf"#, request).unwrap(),
            r#""content-digest";sf: sha-256=:AA==:, sha-512=:AAAA:"#
        );
        assert_eq!(
            line(r#""example-dict";key="a""#, request).unwrap(),
            r#""example-dict";key="a": 1"#
        );
        assert_eq!(
            line(r#""example-dict";key="b""#, request).unwrap(),
            r#""example-dict";key="b": 2;x=1;y=2"#
        );
        assert_eq!(
            line(r#""example-dict";key="c""#, request).unwrap(),
            r#""example-dict";key="c": (a b c)"#
        );
        assert_eq!(
            line(r#""example-dict";key="d""#, request),
            Err(Error::ComponentMissing)
        );
        // §2.1.3: each line on its own.
        assert_eq!(
            line(r#""x-list";bs"#, request).unwrap(),
            r#""x-list";bs: :YSwgYg==:, :Yw==:"#
        );
        // `;sf` only for a field whose type is known.
        assert_eq!(
            line(r#""x-list";sf"#, request),
            Err(Error::UnsupportedComponent)
        );
    }

    #[test]
    fn components_that_cannot_be_built_are_refused() {
        let request = with_fields();
        for (component, error) in [
            (r#""x-missing""#, Error::ComponentMissing),
            (r#""x-bad""#, Error::InvalidComponentValue),
            (r#""X-List""#, Error::InvalidComponent),
            (r#""x-list";bs;sf"#, Error::InvalidComponent),
            (r#""example-dict";bs;key="a""#, Error::InvalidComponent),
            (r#""x-list";tr"#, Error::UnsupportedComponent),
            (r#""x-list";req"#, Error::UnsupportedComponent),
            (r#""x-list";foo"#, Error::UnknownComponent),
            (r#""x-list";sf=?0"#, Error::InvalidComponent),
            (r#""@method";sf"#, Error::InvalidComponent),
            (r#""@nonsense""#, Error::UnknownComponent),
            (r#""@status""#, Error::InvalidComponent),
            (r#""@signature-params""#, Error::InvalidComponent),
            (r#""""#, Error::InvalidComponent),
        ] {
            assert_eq!(line(component, request), Err(error), "{component}");
        }
        let long = format!("\"{}\"", "a".repeat(MAX_COMPONENT_NAME_BYTES + 1));
        assert_eq!(line(&long, request), Err(Error::InvalidComponent));
    }

    #[test]
    fn response_takes_req_components_from_its_request() {
        let response = test_response();
        let input = r#"s=("@status" "@method";req "content-digest";req "content-digest");created=1;keyid="k""#;
        let signature =
            Signature::read(&[input.as_bytes()], &[b"s=:AA==:"], Select::Label("s")).unwrap();
        let base = String::from_utf8(signature.base(Message::Response(response)).unwrap()).unwrap();
        let lines: Vec<&str> = base.split('\n').collect();
        assert_eq!(lines[1], r#""@method";req: POST"#);
        assert_eq!(
            lines[2],
            format!(r#""content-digest";req: {REQUEST_DIGEST}"#)
        );
        assert_eq!(lines[3], format!(r#""content-digest": {RESPONSE_DIGEST}"#));
        // A request component without `;req`, or `;req` without the request.
        let input = r#"s=("@method");created=1;keyid="k""#;
        let signature =
            Signature::read(&[input.as_bytes()], &[b"s=:AA==:"], Select::Label("s")).unwrap();
        assert_eq!(
            signature.base(Message::Response(response)),
            Err(Error::InvalidComponent)
        );
        let input = r#"s=("@method";req);created=1;keyid="k""#;
        let signature =
            Signature::read(&[input.as_bytes()], &[b"s=:AA==:"], Select::Label("s")).unwrap();
        let orphan = Response {
            request: None,
            ..response
        };
        assert_eq!(
            signature.base(Message::Response(orphan)),
            Err(Error::ComponentMissing)
        );
    }

    /// Every covered fact of B.2.3 changed alone changes the base: the RFC's signature no
    /// longer verifies.
    #[test]
    fn a_changed_covered_fact_breaks_the_signature() {
        let key = rsa_pss_key();
        let tampered_digest = REQUEST_DIGEST.replace("WZDP", "XZDP");
        let headers: Vec<Header<'_>> = REQUEST_HEADERS
            .iter()
            .map(|&(name, value)| match name {
                b"content-digest" => (name, tampered_digest.as_bytes()),
                _ => (name, value),
            })
            .collect();
        let changed_date: Vec<Header<'_>> = REQUEST_HEADERS
            .iter()
            .map(|&(name, value)| match name {
                b"date" => (name, &b"Tue, 20 Apr 2021 02:07:56 GMT"[..]),
                _ => (name, value),
            })
            .collect();
        let requests = [
            Request {
                method: "PUT",
                ..test_request()
            },
            Request {
                path_and_query: "/bar?param=Value&Pet=dog",
                ..test_request()
            },
            Request {
                path_and_query: "/foo?param=Value&Pet=cat",
                ..test_request()
            },
            Request {
                authority: "example.org",
                ..test_request()
            },
            Request {
                headers: &headers,
                ..test_request()
            },
            Request {
                headers: &changed_date,
                ..test_request()
            },
        ];
        let signature = Signature::read(
            &[B23_INPUT.as_bytes()],
            &[B23_SIGNATURE.as_bytes()],
            Select::Label("sig-b23"),
        )
        .unwrap();
        let genuine = signature.base(Message::Request(test_request())).unwrap();
        verify(
            &genuine,
            &signature.signature,
            Key::Public(&key),
            None,
            &InVm,
        )
        .unwrap();
        for request in requests {
            let base = signature.base(Message::Request(request)).unwrap();
            assert_ne!(base, genuine);
            assert_ne!(replay_id(&base), replay_id(&genuine));
            assert_eq!(
                verify(&base, &signature.signature, Key::Public(&key), None, &InVm),
                Err(Error::BadSignature)
            );
        }
    }

    #[test]
    fn alg_must_be_the_keys() {
        let key = ed25519_key();
        let base = b"base";
        for (alg, error) in [
            ("rsa-pss-sha512", Error::AlgorithmMismatch),
            ("hmac-sha256", Error::AlgorithmMismatch),
            ("ecdsa-p256-sha256", Error::AlgorithmMismatch),
            ("EdDSA", Error::UnsupportedAlgorithm),
            ("none", Error::UnsupportedAlgorithm),
        ] {
            assert_eq!(
                verify(base, &[0; 64], Key::Public(&key), Some(alg), &InVm),
                Err(error),
                "{alg}"
            );
        }
        assert_eq!(
            verify(base, &[0; 64], Key::Public(&key), Some("ed25519"), &InVm),
            Err(Error::BadSignature)
        );
        assert_eq!(
            verify(
                base,
                &[0; 32],
                Key::Shared(b"secret"),
                Some("ed25519"),
                &InVm
            ),
            Err(Error::AlgorithmMismatch)
        );
        // A key bound to a JWS algorithm RFC 9421 does not name verifies nothing here.
        let ps256 = key_with_alg("PS256");
        assert_eq!(
            verify(base, &[0; 256], Key::Public(&ps256), None, &InVm),
            Err(Error::UnsupportedAlgorithm)
        );
    }

    fn key_with_alg(alg: &str) -> VerificationKey {
        key(json!({"kty": "RSA", "alg": alg, "n": RSA_PSS_N, "e": "AQAB"}))
    }

    fn read(input: &str, signature: &str, select: Select<'_>) -> Result<Signature, Error> {
        Signature::read(&[input.as_bytes()], &[signature.as_bytes()], select)
    }

    #[test]
    fn fields_are_read_strictly() {
        let ok = r#"a=("@method");created=1;keyid="k""#;
        assert!(read(ok, "a=:AA==:", Select::Label("a")).is_ok());
        for (input, signature, error) in [
            ("a=(\"@method\"", "a=:AA==:", Error::Malformed),
            (ok, "a=:AA=:", Error::Malformed),
            // §4.1: a label given twice, on one line or two.
            (&format!("{ok}, {ok}"), "a=:AA==:", Error::RepeatedLabel),
            (ok, "a=:AA==:, a=:AA==:", Error::RepeatedLabel),
            (ok, "b=:AA==:", Error::LabelMismatch),
            (
                &format!("{ok}, b=();created=1;keyid=\"k\""),
                "a=:AA==:",
                Error::LabelMismatch,
            ),
            (
                r#"a=("@method" 1);created=1;keyid="k""#,
                "a=:AA==:",
                Error::InputNotInnerList,
            ),
            (
                r#"a="@method";created=1;keyid="k""#,
                "a=:AA==:",
                Error::InputNotInnerList,
            ),
            (
                &format!("{ok}, b=1"),
                "a=:AA==:, b=:AA==:",
                Error::InputNotInnerList,
            ),
            (ok, "a=\"AA==\"", Error::SignatureNotByteSequence),
            (ok, "a=(:AA==:)", Error::SignatureNotByteSequence),
            ("", "", Error::NotFound),
            (
                r#"a=("@method");keyid="k""#,
                "a=:AA==:",
                Error::MissingParameter,
            ),
            (
                r#"a=("@method");created=1"#,
                "a=:AA==:",
                Error::MissingParameter,
            ),
            (
                r#"a=("@method");created="1";keyid="k""#,
                "a=:AA==:",
                Error::InvalidParameter,
            ),
            (
                r#"a=("@method");created=-1;keyid="k""#,
                "a=:AA==:",
                Error::InvalidParameter,
            ),
            (
                r#"a=("@method");created=1;keyid=k"#,
                "a=:AA==:",
                Error::InvalidParameter,
            ),
            (
                r#"a=("@method");created=1;keyid="k";alg=ed25519"#,
                "a=:AA==:",
                Error::InvalidParameter,
            ),
            (
                r#"a=("@method");created=1;keyid="k";context="x""#,
                "a=:AA==:",
                Error::UnknownParameter,
            ),
            // §2.5: a component identifier once.
            (
                r#"a=("@method" "@method");created=1;keyid="k""#,
                "a=:AA==:",
                Error::DuplicateComponent,
            ),
            (
                r#"a=("x";key="a" "x";key="a");created=1;keyid="k""#,
                "a=:AA==:",
                Error::DuplicateComponent,
            ),
        ] {
            assert_eq!(
                read(input, signature, Select::Label("a")).unwrap_err(),
                error,
                "{input} / {signature}"
            );
        }
        // The same name with other parameters is another component.
        assert!(read(
            r#"a=("x" "x";sf "x";key="a");created=1;keyid="k""#,
            "a=:AA==:",
            Select::Label("a")
        )
        .is_ok());
        let many = (0..=MAX_COMPONENTS)
            .map(|i| format!("\"h{i}\""))
            .collect::<Vec<_>>()
            .join(" ");
        let input = format!("a=({many});created=1;keyid=\"k\"");
        assert_eq!(
            read(&input, "a=:AA==:", Select::Label("a")).unwrap_err(),
            Error::TooManyComponents
        );
    }

    #[test]
    fn parameters_are_read() {
        let input = r#"a=("@method");created=1618884473;expires=1618884773;keyid="test-key-ed25519";alg="ed25519";nonce="n";tag="fapi-2-request""#;
        let signature = read(input, "a=:AAEC:", Select::Label("a")).unwrap();
        assert_eq!(signature.label, "a");
        assert_eq!(signature.signature, [0, 1, 2]);
        assert_eq!(
            (signature.created, signature.expires),
            (1618884473, Some(1618884773))
        );
        assert_eq!(signature.keyid, "test-key-ed25519");
        assert_eq!(signature.alg.as_deref(), Some("ed25519"));
        assert_eq!(signature.nonce.as_deref(), Some("n"));
        assert_eq!(signature.tag.as_deref(), Some("fapi-2-request"));
        assert!(signature.covers("@method"));
        assert!(!signature.covers("@path"));
    }

    #[test]
    fn signature_is_selected_by_label_or_by_a_unique_tag() {
        let input = r#"one=();created=1;keyid="k";tag="fapi-2-request", two=();created=2;keyid="k";tag="other", three=();created=3;keyid="k""#;
        let signature = "one=:AA==:, two=:AQ==:, three=:Ag==:";
        assert_eq!(
            read(input, signature, Select::Label("two"))
                .unwrap()
                .created,
            2
        );
        assert_eq!(
            read(input, signature, Select::Tag("fapi-2-request"))
                .unwrap()
                .label,
            "one"
        );
        assert_eq!(
            read(input, signature, Select::Label("four")).unwrap_err(),
            Error::NotFound
        );
        assert_eq!(
            read(input, signature, Select::Tag("missing")).unwrap_err(),
            Error::NotFound
        );
        let twice = r#"one=();created=1;keyid="k";tag="t", two=();created=2;keyid="k";tag="t""#;
        assert_eq!(
            read(twice, "one=:AA==:, two=:AQ==:", Select::Tag("t")).unwrap_err(),
            Error::AmbiguousTag
        );
    }

    /// §3.2 step 5: `@signature-params` is the inner list re-serialized, not the bytes as
    /// received; a non-canonical spelling of the same list gives the same base.
    #[test]
    fn signature_params_are_re_serialized_canonically() {
        let input = r#"sig-b26=("date"   "@method" "@path" "@authority" "content-type" "content-length");created=01618884473;keyid="test-key-ed25519""#;
        let signature = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";
        let (signature, base) = read_and_build(
            input,
            signature,
            "sig-b26",
            Message::Request(test_request()),
        );
        assert!(base.ends_with(r#""@signature-params": ("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#));
        verify(
            base.as_bytes(),
            &signature.signature,
            Key::Public(&ed25519_key()),
            None,
            &InVm,
        )
        .unwrap();
    }

    #[test]
    fn base_is_bounded() {
        let big = vec![b'a'; 9000];
        let headers: [Header<'_>; 2] = [(b"x-a", &big), (b"x-b", &big)];
        let request = Request {
            headers: &headers,
            ..test_request()
        };
        assert!(line(r#""x-a""#, request).is_ok());
        assert_eq!(line(r#""x-a" "x-b""#, request), Err(Error::BaseTooLong));
    }

    #[test]
    fn replay_id_is_of_the_base_with_a_version_tag() {
        let mut expected = Sha256::new();
        expected.update(b"tether.replay.httpsig.v1\0base");
        assert_eq!(replay_id(b"base"), <[u8; 32]>::from(expected.finalize()));
        assert_ne!(replay_id(b"base"), replay_id(b"base2"));
    }
}
