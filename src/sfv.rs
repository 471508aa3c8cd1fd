//! HTTP Structured Field Values (RFC 9651, which obsoletes RFC 8941): the syntax of the
//! `Signature-Input` and `Signature` fields of HTTP Message Signatures (RFC 9421 §4.1, §4.2),
//! parsed by the algorithms of RFC 9651 §4.2 and written by those of §4.1 (RFC 9421's
//! signature base re-serializes what it covers: `;sf`, `;key`, `@signature-params`).
//!
//! **Strict.** The parser follows §4.2 step by step, and whatever a step does not accept is an
//! error: one reading of a field, the one RFC 9651 defines, so that a signer, a proxy or a
//! server cannot read into a field something Tether did not check. The field must be ASCII;
//! only leading and trailing SP are trimmed (§4.2 steps 2 and 6), and OWS (SP or HTAB) is
//! allowed only around the commas of a List or Dictionary (§4.2.1, §4.2.2).
//!
//! **Bounded.** A field longer than [`MAX_FIELD_BYTES`], or with more than [`MAX_MEMBERS`]
//! members, [`MAX_INNER_LIST_ITEMS`] items in an inner list or [`MAX_PARAMETERS`] parameters
//! on one item or inner list is refused before it is read further. These bounds are below the
//! sizes §3.1 asks a general-purpose parser to support (1024 members, 256 inner-list items and
//! parameters), on purpose: the fields Tether reads carry a few signatures of a few dozen
//! components, and a request that needs more is refused rather than parsed at length. There is
//! no recursion: an inner list holds items only (§3.1.1), so nesting is not a depth to bound
//! but a syntax error.
//!
//! **Repeated keys.** §4.2.2 keeps the last value of a repeated Dictionary key, at the place the
//! key first appeared. [`Dictionary`] does the same, and also records that a key was repeated
//! ([`Dictionary::has_repeated_keys`]): RFC 9421 §4.1 requires signature labels to be unique
//! across all the field's lines, and a verifier must refuse a field in which a label was given
//! twice rather than silently check only the last signature. Repeated parameter keys follow
//! §4.2.3.2 (the last value wins, at the first position) and are not reported.
//!
//! **Canonical Byte Sequences only.** §4.2.7 says parsers SHOULD NOT fail on missing `=`
//! padding or on non-zero pad bits; Tether does (the test suite marks both `can_fail`). Every
//! Byte Sequence then has exactly one spelling: a captured signature cannot be respelled into
//! a field that looks new (to a replay record, a log, a `;key` component) and decodes the same.
//!
//! Errors are values ([`Error`]) that never carry any of the input.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;

/// The longest field value read, in bytes, all its lines combined. RFC 9421 fields with a few
/// RSA-4096 signatures and their covered components fit with room to spare.
pub const MAX_FIELD_BYTES: usize = 8192;
/// The most members a List or a Dictionary may have (repeated keys counted each time).
pub const MAX_MEMBERS: usize = 64;
/// The most items one inner list may have.
pub const MAX_INNER_LIST_ITEMS: usize = 64;
/// The most parameters one item or inner list may have (repeated keys counted each time).
pub const MAX_PARAMETERS: usize = 32;
/// The largest magnitude of an Integer or a Date (RFC 9651 §3.3.1, §3.3.7): 15 digits.
pub const MAX_INTEGER: i64 = 999_999_999_999_999;

/// Why a field was not parsed or a value not serialized. No variant carries any of the input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The field value, its lines combined, is longer than [`MAX_FIELD_BYTES`].
    TooLong,
    /// More than [`MAX_MEMBERS`] members, [`MAX_INNER_LIST_ITEMS`] items in an inner list, or
    /// [`MAX_PARAMETERS`] parameters on one item or inner list.
    TooMany,
    /// The field is not a value of the expected type by RFC 9651 §4.2: a syntax error, a byte
    /// outside ASCII, a number out of range, a non-canonical Byte Sequence, a Display String
    /// that is not UTF-8.
    Malformed,
    /// The value cannot be serialized (RFC 9651 §4.1): an Integer or Date out of range, a
    /// String with a character outside printable ASCII, a Token or a key outside its grammar.
    Unserializable,
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Error::TooLong => "structured field too long",
            Error::TooMany => "structured field has too many members or parameters",
            Error::Malformed => "malformed structured field",
            Error::Unserializable => "value cannot be serialized as a structured field",
        })
    }
}

impl std::error::Error for Error {}

/// A Decimal (RFC 9651 §3.3.2), held exactly as a whole number of thousandths (`1.5` is 1500):
/// at most 12 integer digits and 3 fractional digits, which is all a Decimal can carry, so no
/// value is ever rounded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Decimal(i64);

impl Decimal {
    /// The Decimal of `thousandths` / 1000; `None` beyond ±999,999,999,999.999.
    pub fn from_thousandths(thousandths: i64) -> Option<Decimal> {
        (-MAX_INTEGER..=MAX_INTEGER)
            .contains(&thousandths)
            .then_some(Decimal(thousandths))
    }

    /// The value in thousandths.
    pub fn thousandths(self) -> i64 {
        self.0
    }
}

/// A Bare Item (RFC 9651 §3.3).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BareItem {
    /// §3.3.1: at most 15 digits ([`MAX_INTEGER`]).
    Integer(i64),
    /// §3.3.2.
    Decimal(Decimal),
    /// §3.3.3: printable ASCII (SP to `~`), unescaped.
    String(String),
    /// §3.3.4: `ALPHA` or `*`, then `tchar`, `:` or `/`. Case-sensitive.
    Token(String),
    /// §3.3.5: the decoded bytes.
    ByteSequence(Vec<u8>),
    /// §3.3.6.
    Boolean(bool),
    /// §3.3.7: seconds since the Unix epoch, at most 15 digits.
    Date(i64),
    /// §3.3.8: any Unicode text, decoded.
    DisplayString(String),
}

/// Parameters (RFC 9651 §3.1.2): an ordered map from keys to bare items. A key inserted again
/// keeps its place and takes the new value (§4.2.3.2 steps 7 and 8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Parameters(Vec<(String, BareItem)>);

impl Parameters {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&BareItem> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`; true if `key` was already there (its old value is replaced).
    pub fn insert(&mut self, key: impl Into<String>, value: BareItem) -> bool {
        insert_last_wins(&mut self.0, key.into(), value)
    }

    /// The parameters in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &BareItem)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// An Item (RFC 9651 §3.3): a bare item and its parameters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    pub bare: BareItem,
    pub params: Parameters,
}

impl Item {
    /// An item without parameters.
    pub fn new(bare: BareItem) -> Item {
        Item {
            bare,
            params: Parameters::default(),
        }
    }
}

/// An Inner List (RFC 9651 §3.1.1): items (never inner lists) and the list's own parameters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InnerList {
    pub items: Vec<Item>,
    pub params: Parameters,
}

/// A member of a List, or the value of a Dictionary member (RFC 9651 §3.1, §3.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListEntry {
    Item(Item),
    InnerList(InnerList),
}

/// A List (RFC 9651 §3.1).
pub type List = Vec<ListEntry>;

/// A Dictionary (RFC 9651 §3.2): an ordered map from keys to items or inner lists, which also
/// remembers whether a key was given more than once (see the module documentation).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Dictionary {
    members: Vec<(String, ListEntry)>,
    repeated_keys: bool,
}

impl Dictionary {
    /// The value of `key`.
    pub fn get(&self, key: &str) -> Option<&ListEntry> {
        self.members.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    /// Sets `key` to `value`, as §4.2.2 steps 4 and 5 do: a key already there keeps its place,
    /// takes the new value, and is recorded as repeated. True if `key` was already there.
    pub fn insert(&mut self, key: impl Into<String>, value: ListEntry) -> bool {
        let repeated = insert_last_wins(&mut self.members, key.into(), value);
        self.repeated_keys |= repeated;
        repeated
    }

    /// Whether some key was inserted more than once: for a parsed Dictionary, whether the field
    /// repeated a key (RFC 9421 §4.1: signature labels MUST be unique, so a verifier refuses
    /// such a field). Serialization writes each key once: the flag does not survive it.
    pub fn has_repeated_keys(&self) -> bool {
        self.repeated_keys
    }

    /// The members in order (the place of each key's first appearance).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &ListEntry)> {
        self.members.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.members.len()
    }

    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

fn insert_last_wins<V>(entries: &mut Vec<(String, V)>, key: String, value: V) -> bool {
    match entries.iter_mut().find(|(k, _)| *k == key) {
        Some((_, old)) => {
            *old = value;
            true
        }
        None => {
            entries.push((key, value));
            false
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Parsing (RFC 9651 §4.2)
// ---------------------------------------------------------------------------------------------

/// Parses a field value as an Item (§4.2 with `field_type` "item").
pub fn parse_item(field: &[u8]) -> Result<Item, Error> {
    parse_field(field, Parser::item)
}

/// Parses a field value as a List (§4.2 with `field_type` "list"). An empty field is an empty
/// List.
pub fn parse_list(field: &[u8]) -> Result<List, Error> {
    parse_field(field, Parser::list)
}

/// Parses a field value as a Dictionary (§4.2 with `field_type` "dictionary"). An empty field
/// is an empty Dictionary. A repeated key is not an error: see
/// [`Dictionary::has_repeated_keys`].
pub fn parse_dictionary(field: &[u8]) -> Result<Dictionary, Error> {
    parse_field(field, Parser::dictionary)
}

/// [`parse_item`] of a field's lines (one value per header line), combined as §4.2 requires.
pub fn parse_item_lines(lines: &[&[u8]]) -> Result<Item, Error> {
    parse_item(&combine_lines(lines)?)
}

/// [`parse_list`] of a field's lines (one value per header line), combined as §4.2 requires.
pub fn parse_list_lines(lines: &[&[u8]]) -> Result<List, Error> {
    parse_list(&combine_lines(lines)?)
}

/// [`parse_dictionary`] of a field's lines (one value per header line), combined as §4.2
/// requires: a key repeated on another line is a repeated key too.
pub fn parse_dictionary_lines(lines: &[&[u8]]) -> Result<Dictionary, Error> {
    parse_dictionary(&combine_lines(lines)?)
}

/// One field value from its lines, joined with `, ` (RFC 9110 §5.3; RFC 9651 §4.2). No lines
/// is the empty field; an empty line leaves an empty member, which does not parse. The length
/// is checked before anything is copied.
fn combine_lines(lines: &[&[u8]]) -> Result<Vec<u8>, Error> {
    let separators = lines.len().saturating_sub(1).saturating_mul(2);
    let length = lines
        .iter()
        .fold(separators, |sum, line| sum.saturating_add(line.len()));
    if length > MAX_FIELD_BYTES {
        return Err(Error::TooLong);
    }
    let mut field = Vec::with_capacity(length);
    for (i, line) in lines.iter().enumerate() {
        if i > 0 {
            field.extend_from_slice(b", ");
        }
        field.extend_from_slice(line);
    }
    Ok(field)
}

/// §4.2: the length cap first, then ASCII (step 1), leading SP (step 2), the structure (steps
/// 3-5), trailing SP (step 6), and nothing after it (step 7).
fn parse_field<'a, T>(
    field: &'a [u8],
    structure: fn(&mut Parser<'a>) -> Result<T, Error>,
) -> Result<T, Error> {
    if field.len() > MAX_FIELD_BYTES {
        return Err(Error::TooLong);
    }
    if !field.is_ascii() {
        return Err(Error::Malformed);
    }
    let mut parser = Parser { rest: field };
    parser.skip_sp();
    let output = structure(&mut parser)?;
    parser.skip_sp();
    if parser.rest.is_empty() {
        Ok(output)
    } else {
        Err(Error::Malformed)
    }
}

/// The unread rest of the field: every step consumes from its front, as the RFC's do.
struct Parser<'a> {
    rest: &'a [u8],
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.rest.first().copied()
    }

    fn next(&mut self) -> Option<u8> {
        let (&first, rest) = self.rest.split_first()?;
        self.rest = rest;
        Some(first)
    }

    /// Consumes `expected` if it comes next.
    fn eat(&mut self, expected: u8) -> bool {
        let next_is_expected = self.peek() == Some(expected);
        if next_is_expected {
            self.next();
        }
        next_is_expected
    }

    fn skip_sp(&mut self) {
        while self.eat(b' ') {}
    }

    /// OWS (RFC 9110 §5.6.3): SP and HTAB.
    fn skip_ows(&mut self) {
        while self.eat(b' ') || self.eat(b'\t') {}
    }

    /// Consumes the longest prefix of bytes that `accept`s (ASCII, checked up front).
    fn take_while(&mut self, accept: fn(u8) -> bool) -> String {
        let end = self
            .rest
            .iter()
            .position(|b| !accept(*b))
            .unwrap_or(self.rest.len());
        let (taken, rest) = self.rest.split_at_checked(end).unwrap_or((self.rest, &[]));
        self.rest = rest;
        taken.iter().copied().map(char::from).collect()
    }

    /// §4.2.1: members separated by commas with optional whitespace; no trailing comma.
    fn list(&mut self) -> Result<List, Error> {
        let mut members = Vec::new();
        while !self.rest.is_empty() {
            if members.len() == MAX_MEMBERS {
                return Err(Error::TooMany);
            }
            members.push(self.item_or_inner_list()?);
            if self.end_of_member()? {
                break;
            }
        }
        Ok(members)
    }

    /// §4.2.2.
    fn dictionary(&mut self) -> Result<Dictionary, Error> {
        let mut dictionary = Dictionary::default();
        let mut members = 0;
        while !self.rest.is_empty() {
            if members == MAX_MEMBERS {
                return Err(Error::TooMany);
            }
            members += 1;
            let key = self.key()?;
            let member = if self.eat(b'=') {
                self.item_or_inner_list()?
            } else {
                // A key alone is Boolean true, with the parameters that follow it.
                ListEntry::Item(Item {
                    bare: BareItem::Boolean(true),
                    params: self.parameters()?,
                })
            };
            dictionary.insert(key, member);
            if self.end_of_member()? {
                break;
            }
        }
        Ok(dictionary)
    }

    /// The end of a List or Dictionary member (§4.2.1 steps 2.2-2.6, §4.2.2 steps 2.6-2.10):
    /// true at the end of the field, false after a comma that another member follows.
    fn end_of_member(&mut self) -> Result<bool, Error> {
        self.skip_ows();
        if self.rest.is_empty() {
            return Ok(true);
        }
        if self.next() != Some(b',') {
            return Err(Error::Malformed);
        }
        self.skip_ows();
        if self.rest.is_empty() {
            // A trailing comma.
            return Err(Error::Malformed);
        }
        Ok(false)
    }

    /// §4.2.1.1.
    fn item_or_inner_list(&mut self) -> Result<ListEntry, Error> {
        if self.peek() == Some(b'(') {
            self.inner_list().map(ListEntry::InnerList)
        } else {
            self.item().map(ListEntry::Item)
        }
    }

    /// §4.2.1.2: items separated by SP only. An item cannot start with `(`: an inner list
    /// inside an inner list is a syntax error, and parsing never recurses.
    fn inner_list(&mut self) -> Result<InnerList, Error> {
        if !self.eat(b'(') {
            return Err(Error::Malformed);
        }
        let mut items = Vec::new();
        while !self.rest.is_empty() {
            self.skip_sp();
            if self.eat(b')') {
                let params = self.parameters()?;
                return Ok(InnerList { items, params });
            }
            if items.len() == MAX_INNER_LIST_ITEMS {
                return Err(Error::TooMany);
            }
            items.push(self.item()?);
            if !matches!(self.peek(), Some(b' ' | b')')) {
                return Err(Error::Malformed);
            }
        }
        // No closing parenthesis.
        Err(Error::Malformed)
    }

    /// §4.2.3.
    fn item(&mut self) -> Result<Item, Error> {
        let bare = self.bare_item()?;
        let params = self.parameters()?;
        Ok(Item { bare, params })
    }

    /// §4.2.3.1: the first character decides the type.
    fn bare_item(&mut self) -> Result<BareItem, Error> {
        match self.peek() {
            Some(b'-' | b'0'..=b'9') => self.integer_or_decimal(),
            Some(b'"') => self.string().map(BareItem::String),
            Some(b'*' | b'A'..=b'Z' | b'a'..=b'z') => self.token().map(BareItem::Token),
            Some(b':') => self.byte_sequence().map(BareItem::ByteSequence),
            Some(b'?') => self.boolean().map(BareItem::Boolean),
            Some(b'@') => self.date().map(BareItem::Date),
            Some(b'%') => self.display_string().map(BareItem::DisplayString),
            _ => Err(Error::Malformed),
        }
    }

    /// §4.2.3.2: `;` then SP, a key, and `=` with a bare item or nothing (Boolean true).
    fn parameters(&mut self) -> Result<Parameters, Error> {
        let mut params = Parameters::default();
        let mut count = 0;
        while self.eat(b';') {
            if count == MAX_PARAMETERS {
                return Err(Error::TooMany);
            }
            count += 1;
            self.skip_sp();
            let key = self.key()?;
            let value = if self.eat(b'=') {
                self.bare_item()?
            } else {
                BareItem::Boolean(true)
            };
            params.insert(key, value);
        }
        Ok(params)
    }

    /// §4.2.3.3.
    fn key(&mut self) -> Result<String, Error> {
        if !self.peek().is_some_and(is_key_start) {
            return Err(Error::Malformed);
        }
        Ok(self.take_while(is_key_char))
    }

    /// §4.2.4: at most 15 digits for an Integer; for a Decimal at most 12 before the point
    /// and 1 to 3 after it. (The RFC also caps a Decimal at 16 characters in all: with at most
    /// 12 integer digits, the 3-digit cap on the fraction is always the one that binds.)
    fn integer_or_decimal(&mut self) -> Result<BareItem, Error> {
        let sign = if self.eat(b'-') { -1 } else { 1 };
        if !self.peek().is_some_and(|b| b.is_ascii_digit()) {
            return Err(Error::Malformed);
        }
        let mut integer: i64 = 0;
        let mut integer_digits = 0;
        // The fraction's value and number of digits, once a `.` was read.
        let mut fraction: Option<(i64, u32)> = None;
        loop {
            match (self.peek(), fraction.as_mut()) {
                (Some(digit @ b'0'..=b'9'), None) => {
                    integer_digits += 1;
                    if integer_digits > 15 {
                        return Err(Error::Malformed);
                    }
                    integer = append_digit(integer, digit)?;
                }
                (Some(digit @ b'0'..=b'9'), Some((value, digits))) => {
                    *digits += 1;
                    if *digits > 3 {
                        return Err(Error::Malformed);
                    }
                    *value = append_digit(*value, digit)?;
                }
                (Some(b'.'), None) => {
                    if integer_digits > 12 {
                        return Err(Error::Malformed);
                    }
                    fraction = Some((0, 0));
                }
                _ => break,
            }
            self.next();
        }
        match fraction {
            None => Ok(BareItem::Integer(sign * integer)),
            // A Decimal ends with a digit (step 9.1).
            Some((_, 0)) => Err(Error::Malformed),
            Some((value, digits)) => {
                let thousandths = integer
                    .checked_mul(1000)
                    .and_then(|t| t.checked_add(value * 10_i64.pow(3 - digits)))
                    .ok_or(Error::Malformed)?;
                Decimal::from_thousandths(sign * thousandths)
                    .map(BareItem::Decimal)
                    .ok_or(Error::Malformed)
            }
        }
    }

    /// §4.2.5: printable ASCII between double quotes; `\` escapes only `"` and `\`.
    fn string(&mut self) -> Result<String, Error> {
        if !self.eat(b'"') {
            return Err(Error::Malformed);
        }
        let mut output = String::new();
        loop {
            match self.next() {
                Some(b'\\') => match self.next() {
                    Some(escaped @ (b'"' | b'\\')) => output.push(char::from(escaped)),
                    _ => return Err(Error::Malformed),
                },
                Some(b'"') => return Ok(output),
                Some(c @ 0x20..=0x7e) => output.push(char::from(c)),
                // A control character, or the end of the field before the closing quote.
                _ => return Err(Error::Malformed),
            }
        }
    }

    /// §4.2.6.
    fn token(&mut self) -> Result<String, Error> {
        if !self.peek().is_some_and(is_token_start) {
            return Err(Error::Malformed);
        }
        Ok(self.take_while(is_token_char))
    }

    /// §4.2.7: standard base64 between colons, canonical only (see the module documentation).
    fn byte_sequence(&mut self) -> Result<Vec<u8>, Error> {
        if !self.eat(b':') {
            return Err(Error::Malformed);
        }
        let end = self
            .rest
            .iter()
            .position(|b| *b == b':')
            .ok_or(Error::Malformed)?;
        let (content, rest) = self.rest.split_at_checked(end).ok_or(Error::Malformed)?;
        self.rest = rest.get(1..).unwrap_or_default();
        // Step 6; the decoder would refuse these too (base64url's `-` and `_` among them).
        let alphabet = |b: &u8| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=');
        if !content.iter().all(alphabet) {
            return Err(Error::Malformed);
        }
        // `STANDARD` requires canonical padding and zero pad bits.
        STANDARD.decode(content).map_err(|_| Error::Malformed)
    }

    /// §4.2.8: `?1` or `?0`.
    fn boolean(&mut self) -> Result<bool, Error> {
        if !self.eat(b'?') {
            return Err(Error::Malformed);
        }
        match self.next() {
            Some(b'1') => Ok(true),
            Some(b'0') => Ok(false),
            _ => Err(Error::Malformed),
        }
    }

    /// §4.2.9: `@` and an Integer (a Decimal is an error).
    fn date(&mut self) -> Result<i64, Error> {
        if !self.eat(b'@') {
            return Err(Error::Malformed);
        }
        match self.integer_or_decimal()? {
            BareItem::Integer(seconds) => Ok(seconds),
            _ => Err(Error::Malformed),
        }
    }

    /// §4.2.10: `%"`, printable ASCII in which `%` and two lowercase hex digits stand for a
    /// byte, then `"`; the bytes must be UTF-8. `\` is no escape here.
    fn display_string(&mut self) -> Result<String, Error> {
        if !(self.eat(b'%') && self.eat(b'"')) {
            return Err(Error::Malformed);
        }
        let mut bytes = Vec::new();
        loop {
            match self.next() {
                Some(b'%') => {
                    let high = self
                        .next()
                        .and_then(lowercase_hex)
                        .ok_or(Error::Malformed)?;
                    let low = self
                        .next()
                        .and_then(lowercase_hex)
                        .ok_or(Error::Malformed)?;
                    bytes.push(high << 4 | low);
                }
                Some(b'"') => return String::from_utf8(bytes).map_err(|_| Error::Malformed),
                Some(c @ 0x20..=0x7e) => bytes.push(c),
                _ => return Err(Error::Malformed),
            }
        }
    }
}

/// `input_number` with one more digit; numbers have at most 15 digits, so this never fails.
fn append_digit(number: i64, digit: u8) -> Result<i64, Error> {
    number
        .checked_mul(10)
        .and_then(|n| n.checked_add(i64::from(digit - b'0')))
        .ok_or(Error::Malformed)
}

fn lowercase_hex(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Whether `key` is a valid Dictionary or Parameters key (§3.1.2).
pub fn is_key(key: &str) -> bool {
    key.bytes().next().is_some_and(is_key_start) && key.bytes().all(is_key_char)
}

/// `key = ( lcalpha / "*" ) *( lcalpha / DIGIT / "_" / "-" / "." / "*" )` (§3.1.2).
fn is_key_start(c: u8) -> bool {
    c.is_ascii_lowercase() || c == b'*'
}

fn is_key_char(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.' | b'*')
}

/// `sf-token = ( ALPHA / "*" ) *( tchar / ":" / "/" )` (§3.3.4; `tchar`: RFC 9110 §5.6.2).
fn is_token_start(c: u8) -> bool {
    c.is_ascii_alphabetic() || c == b'*'
}

fn is_token_char(c: u8) -> bool {
    is_tchar(c) || matches!(c, b':' | b'/')
}

/// RFC 9110 §5.6.2 `tchar`: what a field name (and, with `:` and `/`, an sf-token) is made of.
pub fn is_tchar(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&c)
}

// ---------------------------------------------------------------------------------------------
// Serialization (RFC 9651 §4.1)
// ---------------------------------------------------------------------------------------------

/// Serializes an Item (§4.1.3).
pub fn serialize_item(item: &Item) -> Result<String, Error> {
    let mut output = String::new();
    write_item(&mut output, item)?;
    Ok(output)
}

/// Serializes an Inner List with its parameters (§4.1.1.1): `@signature-params` (RFC 9421
/// §2.3) is exactly this.
pub fn serialize_inner_list(inner_list: &InnerList) -> Result<String, Error> {
    let mut output = String::new();
    write_inner_list(&mut output, inner_list)?;
    Ok(output)
}

/// Serializes Parameters (§4.1.1.2): `;key=value` each, `;key` alone for Boolean true.
pub fn serialize_parameters(params: &Parameters) -> Result<String, Error> {
    let mut output = String::new();
    write_parameters(&mut output, params)?;
    Ok(output)
}

/// Serializes a List (§4.1.1), members separated by `, `. An empty List is the empty string:
/// §4.1 says not to send the field at all.
pub fn serialize_list(list: &[ListEntry]) -> Result<String, Error> {
    let mut output = String::new();
    for (i, member) in list.iter().enumerate() {
        if i > 0 {
            output.push_str(", ");
        }
        write_list_entry(&mut output, member)?;
    }
    Ok(output)
}

/// Serializes a Dictionary (§4.1.2), members separated by `, `; a member whose value is
/// Boolean true is its key and parameters alone. An empty Dictionary is the empty string: §4.1
/// says not to send the field at all.
pub fn serialize_dictionary(dictionary: &Dictionary) -> Result<String, Error> {
    let mut output = String::new();
    for (i, (key, member)) in dictionary.iter().enumerate() {
        if i > 0 {
            output.push_str(", ");
        }
        write_key(&mut output, key)?;
        match member {
            ListEntry::Item(Item {
                bare: BareItem::Boolean(true),
                params,
            }) => write_parameters(&mut output, params)?,
            member => {
                output.push('=');
                write_list_entry(&mut output, member)?;
            }
        }
    }
    Ok(output)
}

fn write_list_entry(output: &mut String, entry: &ListEntry) -> Result<(), Error> {
    match entry {
        ListEntry::Item(item) => write_item(output, item),
        ListEntry::InnerList(inner_list) => write_inner_list(output, inner_list),
    }
}

fn write_inner_list(output: &mut String, inner_list: &InnerList) -> Result<(), Error> {
    output.push('(');
    for (i, item) in inner_list.items.iter().enumerate() {
        if i > 0 {
            output.push(' ');
        }
        write_item(output, item)?;
    }
    output.push(')');
    write_parameters(output, &inner_list.params)
}

fn write_item(output: &mut String, item: &Item) -> Result<(), Error> {
    write_bare_item(output, &item.bare)?;
    write_parameters(output, &item.params)
}

fn write_parameters(output: &mut String, params: &Parameters) -> Result<(), Error> {
    for (key, value) in params.iter() {
        output.push(';');
        write_key(output, key)?;
        if *value != BareItem::Boolean(true) {
            output.push('=');
            write_bare_item(output, value)?;
        }
    }
    Ok(())
}

/// §4.1.1.3.
fn write_key(output: &mut String, key: &str) -> Result<(), Error> {
    if !is_key(key) {
        return Err(Error::Unserializable);
    }
    output.push_str(key);
    Ok(())
}

/// §4.1.3.1.
fn write_bare_item(output: &mut String, bare: &BareItem) -> Result<(), Error> {
    match bare {
        BareItem::Integer(n) => write_integer(output, *n)?,
        BareItem::Decimal(d) => write_decimal(output, *d),
        BareItem::String(s) => write_string(output, s)?,
        BareItem::Token(t) => write_token(output, t)?,
        BareItem::ByteSequence(bytes) => {
            // §4.1.8.
            output.push(':');
            output.push_str(&STANDARD.encode(bytes));
            output.push(':');
        }
        BareItem::Boolean(b) => output.push_str(if *b { "?1" } else { "?0" }),
        BareItem::Date(seconds) => {
            // §4.1.10.
            output.push('@');
            write_integer(output, *seconds)?;
        }
        BareItem::DisplayString(text) => write_display_string(output, text),
    }
    Ok(())
}

/// §4.1.4.
fn write_integer(output: &mut String, n: i64) -> Result<(), Error> {
    if !(-MAX_INTEGER..=MAX_INTEGER).contains(&n) {
        return Err(Error::Unserializable);
    }
    output.push_str(&n.to_string());
    Ok(())
}

/// §4.1.5: the integer part, `.`, and the fraction's significant digits (`0` if it has none).
/// A [`Decimal`] holds 3 fractional digits at most, so there is never anything to round.
fn write_decimal(output: &mut String, decimal: Decimal) {
    let thousandths = decimal.thousandths();
    if thousandths < 0 {
        output.push('-');
    }
    let magnitude = thousandths.unsigned_abs();
    output.push_str(&(magnitude / 1000).to_string());
    output.push('.');
    match magnitude % 1000 {
        0 => output.push('0'),
        fraction => output.push_str(format!("{fraction:03}").trim_end_matches('0')),
    }
}

/// §4.1.6.
fn write_string(output: &mut String, s: &str) -> Result<(), Error> {
    if !s.bytes().all(|b| (0x20..=0x7e).contains(&b)) {
        return Err(Error::Unserializable);
    }
    output.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            output.push('\\');
        }
        output.push(c);
    }
    output.push('"');
    Ok(())
}

/// §4.1.7.
fn write_token(output: &mut String, token: &str) -> Result<(), Error> {
    let valid =
        token.bytes().next().is_some_and(is_token_start) && token.bytes().all(is_token_char);
    if !valid {
        return Err(Error::Unserializable);
    }
    output.push_str(token);
    Ok(())
}

/// §4.1.11: UTF-8, with `%`, `"` and every byte outside printable ASCII as `%` and two
/// lowercase hex digits.
fn write_display_string(output: &mut String, text: &str) {
    output.push_str("%\"");
    for byte in text.bytes() {
        match byte {
            b'%' | b'"' | 0x00..=0x1f | 0x7f..=0xff => {
                output.push_str(&format!("%{byte:02x}"));
            }
            _ => output.push(char::from(byte)),
        }
    }
    output.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    // The test vectors below come from two places, named on each:
    // - the HTTP WG's structured field test suite, https://github.com/httpwg/structured-field-tests
    //   (`file.json: "test name"`); a case with `canonical` expects that serialization, one
    //   without expects the raw value back. The `*-generated.json` files come from the suite's
    //   `generate.py`, whose loops are rewritten here rather than copied.
    // - the RFCs' own examples (RFC 9651, RFC 9421), with RFC 8792 line wrapping undone.

    fn lines<'a>(raw: &[&'a str]) -> Vec<&'a [u8]> {
        raw.iter().map(|line| line.as_bytes()).collect()
    }

    /// The canonical serialization of a field parsed as `kind`.
    fn reserialized(kind: &str, raw: &[&str]) -> Result<String, Error> {
        let raw = lines(raw);
        match kind {
            "item" => parse_item_lines(&raw).and_then(|item| serialize_item(&item)),
            "list" => parse_list_lines(&raw).and_then(|list| serialize_list(&list)),
            "dictionary" => parse_dictionary_lines(&raw).and_then(|d| serialize_dictionary(&d)),
            _ => unreachable!("{kind}"),
        }
    }

    /// Each case, parsed as `kind`: provenance, raw lines, and the canonical serialization.
    fn check_parses(kind: &str, cases: &[(&str, &[&str], &str)]) {
        for (provenance, raw, canonical) in cases {
            assert_eq!(
                reserialized(kind, raw).as_deref(),
                Ok(*canonical),
                "{provenance}"
            );
            // The canonical form is a fixed point.
            assert_eq!(
                reserialized(kind, &[canonical]).as_deref(),
                Ok(*canonical),
                "{provenance} (canonical)"
            );
        }
    }

    /// Each case, parsed as `kind`: provenance and raw lines; all must fail (`must_fail`).
    fn check_fails(kind: &str, cases: &[(&str, &[&str])]) {
        for (provenance, raw) in cases {
            assert_eq!(
                reserialized(kind, raw),
                Err(Error::Malformed),
                "{provenance}"
            );
        }
    }

    fn token(t: &str) -> BareItem {
        BareItem::Token(t.into())
    }

    fn string(s: &str) -> BareItem {
        BareItem::String(s.into())
    }

    fn params(entries: &[(&str, BareItem)]) -> Parameters {
        let mut params = Parameters::default();
        for (key, value) in entries {
            params.insert(*key, value.clone());
        }
        params
    }

    fn item(bare: BareItem, entries: &[(&str, BareItem)]) -> Item {
        Item {
            bare,
            params: params(entries),
        }
    }

    /// Lists of the suite and their canonical serializations.
    const SUITE_LISTS: &[(&str, &[&str], &str)] = &[
        ("list.json: basic list", &["1, 42"], "1, 42"),
        ("list.json: empty list", &[""], ""),
        ("list.json: leading SP list", &["  42, 43"], "42, 43"),
        ("list.json: single item list", &["42"], "42"),
        ("list.json: no whitespace list", &["1,42"], "1, 42"),
        ("list.json: extra whitespace list", &["1 , 42"], "1, 42"),
        ("list.json: tab separated list", &["1\t,\t42"], "1, 42"),
        ("list.json: two line list", &["1", "42"], "1, 42"),
        (
            "listlist.json: basic list of lists",
            &["(1 2), (42 43)"],
            "(1 2), (42 43)",
        ),
        (
            "listlist.json: single item list of lists",
            &["(42)"],
            "(42)",
        ),
        ("listlist.json: empty item list of lists", &["()"], "()"),
        (
            "listlist.json: empty middle item list of lists",
            &["(1),(),(42)"],
            "(1), (), (42)",
        ),
        (
            "listlist.json: extra whitespace list of lists",
            &["(  1  42  )"],
            "(1 42)",
        ),
        (
            "param-list.json: basic parameterised list",
            &["abc_123;a=1;b=2; cdef_456, ghi;q=9;r=\"+w\""],
            "abc_123;a=1;b=2;cdef_456, ghi;q=9;r=\"+w\"",
        ),
        (
            "param-list.json: single item parameterised list",
            &["text/html;q=1.0"],
            "text/html;q=1.0",
        ),
        (
            "param-list.json: missing parameter value parameterised list",
            &["text/html;a;q=1.0"],
            "text/html;a;q=1.0",
        ),
        (
            "param-list.json: missing terminal parameter value parameterised list",
            &["text/html;q=1.0;a"],
            "text/html;q=1.0;a",
        ),
        (
            "param-list.json: no whitespace parameterised list",
            &["text/html,text/plain;q=0.5"],
            "text/html, text/plain;q=0.5",
        ),
        (
            "param-list.json: whitespace after ; parameterised list",
            &["text/html, text/plain; q=0.5"],
            "text/html, text/plain;q=0.5",
        ),
        (
            "param-list.json: extra whitespace parameterised list",
            &["text/html  ,  text/plain;  q=0.5;  charset=utf-8"],
            "text/html, text/plain;q=0.5;charset=utf-8",
        ),
        (
            "param-list.json: two lines parameterised list",
            &["text/html", "text/plain;q=0.5"],
            "text/html, text/plain;q=0.5",
        ),
        (
            "param-listlist.json: parameterised inner list",
            &["(abc_123);a=1;b=2, cdef_456"],
            "(abc_123);a=1;b=2, cdef_456",
        ),
        (
            "param-listlist.json: parameterised inner list item",
            &["(abc_123;a=1;b=2;cdef_456)"],
            "(abc_123;a=1;b=2;cdef_456)",
        ),
        (
            "param-listlist.json: parameterised inner list with parameterised item",
            &["(abc_123;a=1;b=2);cdef_456"],
            "(abc_123;a=1;b=2);cdef_456",
        ),
        ("token.json: basic token - list", &["a_b-c3/*"], "a_b-c3/*"),
        (
            "token.json: token starting with capitals - list",
            &["FooBar"],
            "FooBar",
        ),
        (
            "examples.json: Example-StrListHeader",
            &["\"foo\", \"bar\", \"It was the best of times.\""],
            "\"foo\", \"bar\", \"It was the best of times.\"",
        ),
        (
            "examples.json: Example-Hdr (list on two lines)",
            &["foo", "bar"],
            "foo, bar",
        ),
        (
            "examples.json: Example-StrListListHeader",
            &["(\"foo\" \"bar\"), (\"baz\"), (\"bat\" \"one\"), ()"],
            "(\"foo\" \"bar\"), (\"baz\"), (\"bat\" \"one\"), ()",
        ),
        (
            "examples.json: Example-ListListParam",
            &["(\"foo\"; a=1;b=2);lvl=5, (\"bar\" \"baz\");lvl=1"],
            "(\"foo\";a=1;b=2);lvl=5, (\"bar\" \"baz\");lvl=1",
        ),
        (
            "examples.json: Example-ParamListHeader",
            &["abc;a=1;b=2; cde_456, (ghi;jk=4 l);q=\"9\";r=w"],
            "abc;a=1;b=2;cde_456, (ghi;jk=4 l);q=\"9\";r=w",
        ),
    ];

    #[test]
    fn suite_lists_parse_to_their_canonical_form() {
        check_parses("list", SUITE_LISTS);
    }

    /// Lists the suite says must fail.
    const SUITE_LIST_FAILURES: &[(&str, &[&str])] = &[
        ("list.json: trailing comma list", &["1, 42,"]),
        ("list.json: empty item list", &["1,,42"]),
        (
            "listlist.json: wrong whitespace list of lists",
            &["(1\t 42)"],
        ),
        (
            "listlist.json: no trailing parenthesis list of lists",
            &["(1 42"],
        ),
        (
            "listlist.json: no trailing parenthesis middle list of lists",
            &["(1 2, (42 43)"],
        ),
        (
            "listlist.json: no spaces in inner-list",
            &["(abc\"def\"?0123*dXZ3*xyz)"],
        ),
        (
            "param-list.json: whitespace before = parameterised list",
            &["text/html, text/plain;q =0.5"],
        ),
        (
            "param-list.json: whitespace after = parameterised list",
            &["text/html, text/plain;q= 0.5"],
        ),
        (
            "param-list.json: whitespace before ; parameterised list",
            &["text/html, text/plain ;q=0.5"],
        ),
        (
            "param-list.json: trailing comma parameterised list",
            &["text/html,text/plain;q=0.5,"],
        ),
        (
            "param-list.json: empty item parameterised list",
            &["text/html,,text/plain;q=0.5,"],
        ),
    ];

    #[test]
    fn suite_list_failures_are_refused() {
        check_fails("list", SUITE_LIST_FAILURES);
    }

    /// Dictionaries of the suite and their canonical serializations.
    const SUITE_DICTIONARIES: &[(&str, &[&str], &str)] = &[
        (
            "dictionary.json: basic dictionary",
            &["en=\"Applepie\", da=:w4ZibGV0w6ZydGUK:"],
            "en=\"Applepie\", da=:w4ZibGV0w6ZydGUK:",
        ),
        ("dictionary.json: empty dictionary", &[""], ""),
        ("dictionary.json: single item dictionary", &["a=1"], "a=1"),
        (
            "dictionary.json: list item dictionary",
            &["a=(1 2)"],
            "a=(1 2)",
        ),
        (
            "dictionary.json: single list item dictionary",
            &["a=(1)"],
            "a=(1)",
        ),
        (
            "dictionary.json: empty list item dictionary",
            &["a=()"],
            "a=()",
        ),
        (
            "dictionary.json: no whitespace dictionary",
            &["a=1,b=2"],
            "a=1, b=2",
        ),
        (
            "dictionary.json: extra whitespace dictionary",
            &["a=1 ,  b=2"],
            "a=1, b=2",
        ),
        (
            "dictionary.json: tab separated dictionary",
            &["a=1\t,\tb=2"],
            "a=1, b=2",
        ),
        (
            "dictionary.json: leading whitespace dictionary",
            &["     a=1 ,  b=2"],
            "a=1, b=2",
        ),
        (
            "dictionary.json: two lines dictionary",
            &["a=1", "b=2"],
            "a=1, b=2",
        ),
        (
            "dictionary.json: missing value dictionary",
            &["a=1, b, c=3"],
            "a=1, b, c=3",
        ),
        (
            "dictionary.json: all missing value dictionary",
            &["a, b, c"],
            "a, b, c",
        ),
        (
            "dictionary.json: start missing value dictionary",
            &["a, b=2"],
            "a, b=2",
        ),
        (
            "dictionary.json: end missing value dictionary",
            &["a=1, b"],
            "a=1, b",
        ),
        (
            "dictionary.json: missing value with params dictionary",
            &["a=1, b;foo=9, c=3"],
            "a=1, b;foo=9, c=3",
        ),
        (
            "dictionary.json: explicit true value with params dictionary",
            &["a=1, b=?1;foo=9, c=3"],
            "a=1, b;foo=9, c=3",
        ),
        (
            "dictionary.json: duplicate key dictionary",
            &["a=1,b=2,a=3"],
            "a=3, b=2",
        ),
        (
            "param-dict.json: basic parameterised dict",
            &["abc=123;a=1;b=2, def=456, ghi=789;q=9;r=\"+w\""],
            "abc=123;a=1;b=2, def=456, ghi=789;q=9;r=\"+w\"",
        ),
        (
            "param-dict.json: single item parameterised dict",
            &["a=b; q=1.0"],
            "a=b;q=1.0",
        ),
        (
            "param-dict.json: list item parameterised dictionary",
            &["a=(1 2); q=1.0"],
            "a=(1 2);q=1.0",
        ),
        (
            "param-dict.json: missing parameter value parameterised dict",
            &["a=3;c;d=5"],
            "a=3;c;d=5",
        ),
        (
            "param-dict.json: terminal missing parameter value parameterised dict",
            &["a=3;c=5;d"],
            "a=3;c=5;d",
        ),
        (
            "param-dict.json: no whitespace parameterised dict",
            &["a=b;c=1,d=e;f=2"],
            "a=b;c=1, d=e;f=2",
        ),
        (
            "param-dict.json: whitespace after ; parameterised dict",
            &["a=b; q=0.5"],
            "a=b;q=0.5",
        ),
        (
            "param-dict.json: extra whitespace parameterised dict",
            &["a=b;  c=1  ,  d=e; f=2; g=3"],
            "a=b;c=1, d=e;f=2;g=3",
        ),
        (
            "param-dict.json: two lines parameterised list",
            &["a=b;c=1", "d=e;f=2"],
            "a=b;c=1, d=e;f=2",
        ),
        (
            "examples.json: Example-DictHeader",
            &["a=?0, b, c; foo=bar"],
            "a=?0, b, c;foo=bar",
        ),
        (
            "examples.json: Example-DictListHeader",
            &["rating=1.5, feelings=(joy sadness)"],
            "rating=1.5, feelings=(joy sadness)",
        ),
        (
            "examples.json: Example-MixDict",
            &["a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid"],
            "a=(1 2), b=3, c=4;aa=bb, d=(5 6);valid",
        ),
        (
            "examples.json: Example-Hdr (dictionary on two lines)",
            &["foo=1", "bar=2"],
            "foo=1, bar=2",
        ),
    ];

    #[test]
    fn suite_dictionaries_parse_to_their_canonical_form() {
        check_parses("dictionary", SUITE_DICTIONARIES);
    }

    /// Dictionaries the suite says must fail.
    const SUITE_DICTIONARY_FAILURES: &[(&str, &[&str])] = &[
        (
            "dictionary.json: whitespace before = dictionary",
            &["a =1, b=2"],
        ),
        (
            "dictionary.json: whitespace after = dictionary",
            &["a=1, b= 2"],
        ),
        ("dictionary.json: trailing comma dictionary", &["a=1, b=2,"]),
        ("dictionary.json: empty item dictionary", &["a=1,,b=2,"]),
        ("dictionary.json: numeric key dictionary", &["a=1,1b=2,a=1"]),
        (
            "dictionary.json: uppercase key dictionary",
            &["a=1,B=2,a=1"],
        ),
        ("dictionary.json: bad key dictionary", &["a=1,b!=2,a=1"]),
        (
            "param-dict.json: whitespace before = parameterised dict",
            &["a=b;q =0.5"],
        ),
        (
            "param-dict.json: whitespace after = parameterised dict",
            &["a=b;q= 0.5"],
        ),
        (
            "param-dict.json: whitespace before ; parameterised dict",
            &["a=b ;q=0.5"],
        ),
        (
            "param-dict.json: trailing comma parameterised list",
            &["a=b; q=1.0,"],
        ),
        (
            "param-dict.json: empty item parameterised list",
            &["a=b; q=1.0,,c=d"],
        ),
    ];

    #[test]
    fn suite_dictionary_failures_are_refused() {
        check_fails("dictionary", SUITE_DICTIONARY_FAILURES);
    }

    /// display-string.json: "all printable ascii", `"` and `%` escaped, `\` as it is.
    const PRINTABLE_DISPLAY_STRING: &str = concat!(
        "%\" !%22#$%25&'()*+,-./0123456789:;<=>?@",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ[\\]^_`abcdefghijklmnopqrstuvwxyz{|}~\"",
    );

    /// Items of the suite (and of RFC 9651) and their canonical serializations.
    const SUITE_ITEMS: &[(&str, &[&str], &str)] = &[
        ("item.json: leading space", &["  1"], "1"),
        ("item.json: trailing space", &["1  "], "1"),
        ("item.json: leading and trailing space", &["  1  "], "1"),
        ("number.json: basic integer", &["42"], "42"),
        ("number.json: zero integer", &["0"], "0"),
        ("number.json: leading 0 zero", &["00"], "0"),
        ("number.json: negative zero", &["-0"], "0"),
        ("number.json: negative integer", &["-42"], "-42"),
        ("number.json: leading 0 integer", &["042"], "42"),
        ("number.json: leading 0 negative integer", &["-042"], "-42"),
        (
            "number.json: long integer",
            &["123456789012345"],
            "123456789012345",
        ),
        (
            "number.json: long negative integer",
            &["-123456789012345"],
            "-123456789012345",
        ),
        ("number.json: simple decimal", &["1.23"], "1.23"),
        ("number.json: negative decimal", &["-1.23"], "-1.23"),
        (
            "number.json: tricky precision decimal",
            &["123456789012.1"],
            "123456789012.1",
        ),
        (
            "number.json: decimal with three fractional digits",
            &["1.123"],
            "1.123",
        ),
        (
            "number.json: negative decimal with three fractional digits",
            &["-1.123"],
            "-1.123",
        ),
        ("string.json: basic string", &["\"foo bar\""], "\"foo bar\""),
        ("string.json: empty string", &["\"\""], "\"\""),
        ("string.json: whitespace string", &["\"   \""], "\"   \""),
        (
            "string.json: string quoting",
            &[r#""foo \"bar\" \\ baz""#],
            r#""foo \"bar\" \\ baz""#,
        ),
        (
            "token.json: basic token - item",
            &["a_b-c.d3:f%00/*"],
            "a_b-c.d3:f%00/*",
        ),
        (
            "token.json: token with capitals - item",
            &["fooBar"],
            "fooBar",
        ),
        (
            "token.json: token starting with capitals - item",
            &["FooBar"],
            "FooBar",
        ),
        ("binary.json: basic binary", &[":aGVsbG8=:"], ":aGVsbG8=:"),
        ("binary.json: empty binary", &["::"], "::"),
        ("binary.json: non-ASCII binary", &[":/+Ah:"], ":/+Ah:"),
        ("boolean.json: basic true boolean", &["?1"], "?1"),
        ("boolean.json: basic false boolean", &["?0"], "?0"),
        (
            "display-string.json: basic display string (ascii content)",
            &["%\"foo bar\""],
            "%\"foo bar\"",
        ),
        (
            "display-string.json: all printable ascii",
            &[PRINTABLE_DISPLAY_STRING],
            PRINTABLE_DISPLAY_STRING,
        ),
        (
            "display-string.json: non-ascii display string (lowercase escaping)",
            &["%\"f%c3%bc%c3%bc\""],
            "%\"f%c3%bc%c3%bc\"",
        ),
        (
            "display-string.json: display string quoting",
            &["%\"foo %22bar%22 \\ baz\""],
            "%\"foo %22bar%22 \\ baz\"",
        ),
        (
            "display-string.json: BOM in display string",
            &["%\"BOM: %ef%bb%bf\""],
            "%\"BOM: %ef%bb%bf\"",
        ),
        (
            "RFC 9651 §3.3.7: the example Date",
            &["@1659578233"],
            "@1659578233",
        ),
        (
            "RFC 9651 §3.3.7: a Date before the epoch",
            &["@-1659578233"],
            "@-1659578233",
        ),
        (
            "examples.json: Foo-Example",
            &["2; foourl=\"https://foo.example.com/\""],
            "2;foourl=\"https://foo.example.com/\"",
        ),
        (
            "examples.json: Example-IntHeader",
            &["1; a; b=?0"],
            "1;a;b=?0",
        ),
        (
            "examples.json: Example-IntItemHeader (params)",
            &["5; foo=bar"],
            "5;foo=bar",
        ),
        ("examples.json: Example-FloatHeader", &["4.5"], "4.5"),
        (
            "examples.json: Example-BinaryHdr",
            &[":cHJldGVuZCB0aGlzIGlzIGJpbmFyeSBjb250ZW50Lg==:"],
            ":cHJldGVuZCB0aGlzIGlzIGJpbmFyeSBjb250ZW50Lg==:",
        ),
    ];

    #[test]
    fn suite_items_parse_to_their_canonical_form() {
        check_parses("item", SUITE_ITEMS);
    }

    /// Items the suite (and RFC 9651) says must fail.
    const SUITE_ITEM_FAILURES: &[(&str, &[&str])] = &[
        ("item.json: empty item", &[""]),
        ("number.json: double negative zero", &["--0"]),
        ("number.json: comma", &["2,3"]),
        ("number.json: negative non-DIGIT first character", &["-a23"]),
        ("number.json: sign out of place", &["4-2"]),
        ("number.json: whitespace after sign", &["- 42"]),
        ("number.json: too long integer", &["1234567890123456"]),
        (
            "number.json: negative too long integer",
            &["-1234567890123456"],
        ),
        ("number.json: decimal, whitespace after decimal", &["1. 23"]),
        (
            "number.json: decimal, whitespace before decimal",
            &["1 .23"],
        ),
        (
            "number.json: negative decimal, whitespace after sign",
            &["- 1.23"],
        ),
        ("number.json: double decimal decimal", &["1.5.4"]),
        ("number.json: adjacent double decimal decimal", &["1..4"]),
        (
            "number.json: decimal with four fractional digits",
            &["1.1234"],
        ),
        (
            "number.json: negative decimal with four fractional digits",
            &["-1.1234"],
        ),
        (
            "number.json: decimal with thirteen integer digits",
            &["1234567890123.0"],
        ),
        (
            "number.json: negative decimal with thirteen integer digits",
            &["-1234567890123.0"],
        ),
        ("string.json: non-ascii string", &["\"füü\""]),
        ("string.json: tab in string", &[r#""\t""#]),
        ("string.json: newline in string", &[r#"" \n ""#]),
        ("string.json: single quoted string", &["'foo'"]),
        ("string.json: unbalanced string", &["\"foo"]),
        ("string.json: bad string quoting", &[r#""foo \,""#]),
        ("string.json: ending string quote", &[r#""foo \""#]),
        ("string.json: abruptly ending string quote", &[r#""foo \"#]),
        ("binary.json: bad end delimiter", &[":aGVsbG8="]),
        ("binary.json: extra whitespace", &[":aGVsb G8=:"]),
        ("binary.json: extra chars", &[":aGVsbG!8=:"]),
        ("binary.json: suffix chars", &[":aGVsbG8=!:"]),
        ("binary.json: base64url binary", &[":_-Ah:"]),
        // `can_fail` in the suite, refused here: only canonical base64 (module documentation).
        ("binary.json: bad padding", &[":aGVsbG8:"]),
        ("binary.json: non-zero pad bits", &[":iZ==:"]),
        ("boolean.json: unknown boolean", &["?Q"]),
        ("boolean.json: whitespace boolean", &["? 1"]),
        ("boolean.json: negative zero boolean", &["?-0"]),
        ("boolean.json: T boolean", &["?T"]),
        ("boolean.json: F boolean", &["?F"]),
        ("boolean.json: t boolean", &["?t"]),
        ("boolean.json: f boolean", &["?f"]),
        ("boolean.json: spelled-out True boolean", &["?True"]),
        ("boolean.json: spelled-out False boolean", &["?False"]),
        (
            "display-string.json: non-ascii display string (uppercase escaping)",
            &["%\"f%C3%BC%C3%BC\""],
        ),
        ("display-string.json: tab in display string", &["%\"\t\""]),
        (
            "display-string.json: newline in display string",
            &["%\"\n\""],
        ),
        (
            "display-string.json: single quoted display string",
            &["%'foo'"],
        ),
        ("display-string.json: unquoted display string", &["%foo"]),
        (
            "display-string.json: display string missing initial quote",
            &["%foo\""],
        ),
        (
            "display-string.json: unbalanced display string",
            &["%\"foo"],
        ),
        (
            "display-string.json: bad display string escaping",
            &["%\"foo %a"],
        ),
        (
            "display-string.json: bad display string utf-8 (invalid 2-byte seq)",
            &["%\"%c3%28\""],
        ),
        (
            "display-string.json: bad display string utf-8 (invalid sequence id)",
            &["%\"%a0%a1\""],
        ),
        (
            "display-string.json: bad display string utf-8 (invalid 3-byte seq)",
            &["%\"%e2%28%a1\""],
        ),
        (
            "display-string.json: bad display string utf-8 (invalid 4-byte seq)",
            &["%\"%f0%28%8c%28\""],
        ),
        (
            "RFC 9651 §4.2.9 step 4: a Date is an Integer, never a Decimal",
            &["@1659578233.5"],
        ),
        ("RFC 9651 §4.2.9: no space after @", &["@ 1"]),
        ("RFC 9651 §3.3.7: at most 15 digits", &["@1234567890123456"]),
    ];

    #[test]
    fn suite_item_failures_are_refused() {
        check_fails("item", SUITE_ITEM_FAILURES);
    }

    #[test]
    fn suite_values_parse_to_the_expected_structure() {
        // dictionary.json: "basic dictionary" (the bytes are UTF-8 "Æbletærte\n").
        let basic = parse_dictionary(b"en=\"Applepie\", da=:w4ZibGV0w6ZydGUK:").unwrap();
        let members: Vec<_> = basic.iter().collect();
        assert_eq!(
            members,
            [
                ("en", &ListEntry::Item(Item::new(string("Applepie")))),
                (
                    "da",
                    &ListEntry::Item(Item::new(BareItem::ByteSequence(
                        "Æbletærte\n".as_bytes().to_vec()
                    )))
                ),
            ]
        );
        // param-listlist.json: "parameterised inner list with parameterised item".
        let list = parse_list(b"(abc_123;a=1;b=2);cdef_456").unwrap();
        let expected = InnerList {
            items: vec![item(
                token("abc_123"),
                &[("a", BareItem::Integer(1)), ("b", BareItem::Integer(2))],
            )],
            params: params(&[("cdef_456", BareItem::Boolean(true))]),
        };
        assert_eq!(list, [ListEntry::InnerList(expected)]);
        // examples.json: "Example-DictListHeader" (a Decimal, held exactly).
        let dictionary = parse_dictionary(b"rating=1.5, feelings=(joy sadness)").unwrap();
        assert_eq!(
            dictionary.get("rating"),
            Some(&ListEntry::Item(Item::new(BareItem::Decimal(
                Decimal::from_thousandths(1500).unwrap()
            ))))
        );
        // display-string.json: "non-ascii display string (lowercase escaping)", "BOM in
        // display string".
        assert_eq!(
            parse_item(b"%\"f%c3%bc%c3%bc\"").unwrap().bare,
            BareItem::DisplayString("füü".into())
        );
        assert_eq!(
            parse_item(b"%\"BOM: %ef%bb%bf\"").unwrap().bare,
            BareItem::DisplayString("BOM: \u{feff}".into())
        );
        // RFC 9651 §3.3.7.
        assert_eq!(
            parse_item(b"@1659578233").unwrap().bare,
            BareItem::Date(1_659_578_233)
        );
        // string.json: "string quoting".
        assert_eq!(
            parse_item(br#""foo \"bar\" \\ baz""#).unwrap().bare,
            string(r#"foo "bar" \ baz"#)
        );
        // examples.json: "Example-IntHeader".
        assert_eq!(
            parse_item(b"1; a; b=?0").unwrap(),
            item(
                BareItem::Integer(1),
                &[
                    ("a", BareItem::Boolean(true)),
                    ("b", BareItem::Boolean(false))
                ]
            )
        );
    }

    /// key-generated.json, from `generate.py`'s four parsing loops over every ASCII character.
    #[test]
    fn suite_generated_keys() {
        let key_start = |c: u8| c.is_ascii_lowercase() || c == b'*';
        let key_char =
            |c: u8| key_start(c) || c.is_ascii_digit() || matches!(c, b'_' | b'-' | b'.');
        for c in 0..=0x7f_u8 {
            let ch = char::from(c);
            // "0x.. as a single-character dictionary key" (SP is stripped, leaving "=1").
            let single = reserialized("dictionary", &[&format!("{ch}=1")]);
            let expected = if key_start(c) {
                Ok(format!("{ch}=1"))
            } else {
                Err(Error::Malformed)
            };
            assert_eq!(
                single, expected,
                "0x{c:02x} as a single-character dictionary key"
            );
            // "0x.. in dictionary key".
            let inside = parse_dictionary(format!("a{ch}a=1").as_bytes());
            match c {
                // "a" (true), then "a=1": a repeated key, the last value at the first place.
                b',' => {
                    let inside = inside.unwrap();
                    assert!(inside.has_repeated_keys());
                    assert_eq!(serialize_dictionary(&inside).unwrap(), "a=1");
                }
                b';' => assert_eq!(serialize_dictionary(&inside.unwrap()).unwrap(), "a;a=1"),
                c if key_char(c) => {
                    assert_eq!(
                        serialize_dictionary(&inside.unwrap()).unwrap(),
                        format!("a{ch}a=1")
                    )
                }
                _ => assert_eq!(inside, Err(Error::Malformed), "0x{c:02x} in dictionary key"),
            }
            // "0x.. starting a dictionary key".
            let starting = reserialized("dictionary", &[&format!("{ch}a=1")]);
            let expected = match c {
                b' ' => Ok("a=1".to_string()),
                c if key_start(c) => Ok(format!("{ch}a=1")),
                _ => Err(Error::Malformed),
            };
            assert_eq!(starting, expected, "0x{c:02x} starting a dictionary key");
            // "0x.. in parameterised list key".
            let in_param = reserialized("list", &[&format!("foo; a{ch}a=1")]);
            let expected = match c {
                b';' => Ok("foo;a=1".to_string()),
                c if key_char(c) => Ok(format!("foo;a{ch}a=1")),
                _ => Err(Error::Malformed),
            };
            assert_eq!(in_param, expected, "0x{c:02x} in parameterised list key");
            // "0x.. starting a parameterised list key".
            let param_start = reserialized("list", &[&format!("foo; {ch}a=1")]);
            let expected = match c {
                b' ' => Ok("foo;a=1".to_string()),
                c if key_start(c) => Ok(format!("foo;{ch}a=1")),
                _ => Err(Error::Malformed),
            };
            assert_eq!(
                param_start, expected,
                "0x{c:02x} starting a parameterised list key"
            );
        }
    }

    /// token-generated.json, from `generate.py`'s token loops.
    #[test]
    fn suite_generated_tokens() {
        let token_char = |c: u8| c.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&c);
        for c in 0..=0x7f_u8 {
            let ch = char::from(c);
            // "0x.. in token".
            let inside = parse_item(format!("a{ch}a").as_bytes());
            let expected = match c {
                b';' => Ok(item(token("a"), &[("a", BareItem::Boolean(true))])),
                c if token_char(c) => Ok(Item::new(token(&format!("a{ch}a")))),
                _ => Err(Error::Malformed),
            };
            assert_eq!(inside, expected, "0x{c:02x} in token");
            // "0x.. starting a token".
            let starting = parse_item(format!("{ch}a").as_bytes());
            let expected = match c {
                b' ' => Ok(Item::new(token("a"))),
                c if c.is_ascii_alphabetic() || c == b'*' => {
                    Ok(Item::new(token(&format!("{ch}a"))))
                }
                _ => Err(Error::Malformed),
            };
            assert_eq!(starting, expected, "0x{c:02x} starting a token");
        }
    }

    /// string-generated.json, from `generate.py`'s string loops.
    #[test]
    fn suite_generated_strings() {
        for c in 0..=0x7f_u8 {
            let ch = char::from(c);
            // "0x.. in string".
            let inside = parse_item(format!("\" {ch} \"").as_bytes());
            let allowed = (0x20..=0x7e).contains(&c) && c != b'"' && c != b'\\';
            if allowed {
                assert_eq!(inside.unwrap().bare, string(&format!(" {ch} ")));
            } else {
                assert_eq!(inside, Err(Error::Malformed), "0x{c:02x} in string");
            }
            // "Escaped 0x.. in string".
            let escaped = parse_item(format!("\"\\{ch}\"").as_bytes());
            if c == b'"' || c == b'\\' {
                assert_eq!(escaped.unwrap().bare, string(&ch.to_string()));
            } else {
                assert_eq!(
                    escaped,
                    Err(Error::Malformed),
                    "Escaped 0x{c:02x} in string"
                );
            }
        }
    }

    /// number-generated.json, from `generate.py`'s number loops.
    #[test]
    fn suite_generated_numbers() {
        let run = |s: &str| reserialized("item", &[s]);
        for i in 1..=15 {
            // "{i} digits of zero", "{i} digit small integer", "{i} digit large integer".
            assert_eq!(run(&"0".repeat(i)).as_deref(), Ok("0"));
            assert_eq!(run(&"1".repeat(i)), Ok("1".repeat(i)));
            assert_eq!(run(&"9".repeat(i)), Ok("9".repeat(i)));
        }
        for i in 1..=12 {
            for j in 1..=3 {
                // "{k} digit 0, {j} fractional small decimal", "{k} digit, {j} fractional 0
                // decimal", "... small decimal", "... large decimal".
                let zeros = format!("{}.{}", "0".repeat(i), "1".repeat(j));
                assert_eq!(run(&zeros), Ok(format!("0.{}", "1".repeat(j))));
                let whole = format!("{}.{}", "1".repeat(i), "0".repeat(j));
                assert_eq!(run(&whole), Ok(format!("{}.0", "1".repeat(i))));
                let small = format!("{}.{}", "1".repeat(i), "1".repeat(j));
                assert_eq!(run(&small), Ok(small.clone()));
                let large = format!("{}.{}", "9".repeat(i), "9".repeat(j));
                assert_eq!(run(&large), Ok(large.clone()));
            }
        }
        // "too many digit 0 decimal", "too many fractional digits 0 decimal", "too many digit
        // 9 decimal", "too many fractional digits 9 decimal".
        for too_many in [
            format!("{}.0", "0".repeat(15)),
            format!("{}.{}", "0".repeat(12), "0".repeat(4)),
            format!("{}.9", "9".repeat(15)),
            format!("{}.{}", "9".repeat(12), "9".repeat(4)),
        ] {
            assert_eq!(run(&too_many), Err(Error::Malformed), "{too_many}");
        }
    }

    /// serialisation-tests/number.json, and the serialise-only loops of `generate.py` for
    /// strings, tokens and keys.
    #[test]
    fn suite_unserializable_values_are_refused() {
        let serialize = |bare: BareItem| serialize_item(&Item::new(bare));
        // "too big postive integer - serialize", "too big negative integer - serialize".
        for n in [
            1_000_000_000_000_000,
            -1_000_000_000_000_000,
            i64::MIN,
            i64::MAX,
        ] {
            assert_eq!(serialize(BareItem::Integer(n)), Err(Error::Unserializable));
            assert_eq!(serialize(BareItem::Date(n)), Err(Error::Unserializable));
        }
        assert_eq!(
            serialize(BareItem::Integer(MAX_INTEGER)).as_deref(),
            Ok("999999999999999")
        );
        // "too big postive decimal - serialize", "too big negative decimal - serialize": such a
        // Decimal cannot even be made.
        assert_eq!(Decimal::from_thousandths(1_000_000_000_000_100), None);
        assert_eq!(Decimal::from_thousandths(-1_000_000_000_000_100), None);
        assert!(Decimal::from_thousandths(MAX_INTEGER).is_some());
        let key_char = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"_-.*".contains(&c);
        let token_char = |c: u8| c.is_ascii_alphanumeric() || b":/!#$%&'*+-.^_`|~".contains(&c);
        for c in 0..=0x7f_u8 {
            let ch = char::from(c);
            // "0x.. in string - serialise only".
            if !(0x20..=0x7e).contains(&c) {
                assert_eq!(
                    serialize(string(&ch.to_string())),
                    Err(Error::Unserializable)
                );
            }
            // "0x.. in token - serialise only", "0x.. starting a token - serialise only".
            if !token_char(c) {
                assert_eq!(
                    serialize(token(&format!("a{ch}a"))),
                    Err(Error::Unserializable)
                );
            }
            if !(c.is_ascii_alphabetic() || c == b'*') {
                assert_eq!(
                    serialize(token(&format!("{ch}a"))),
                    Err(Error::Unserializable)
                );
            }
            // "0x.. in dictionary key - serialise only", "0x.. starting a dictionary key -
            // serialise only", and the same for parameterised list keys.
            let one = ListEntry::Item(Item::new(BareItem::Integer(1)));
            let as_dictionary = |key: String| {
                let mut d = Dictionary::default();
                d.insert(key, one.clone());
                serialize_dictionary(&d)
            };
            let as_param = |key: String| {
                serialize_list(&[ListEntry::Item(item(
                    token("foo"),
                    &[(key.as_str(), BareItem::Integer(1))],
                ))])
            };
            if !key_char(c) {
                assert_eq!(as_dictionary(format!("a{ch}a")), Err(Error::Unserializable));
                assert_eq!(as_param(format!("a{ch}a")), Err(Error::Unserializable));
            }
            if !(c.is_ascii_lowercase() || c == b'*') {
                assert_eq!(as_dictionary(format!("{ch}a")), Err(Error::Unserializable));
                assert_eq!(as_param(format!("{ch}a")), Err(Error::Unserializable));
            }
        }
        assert_eq!(serialize(string("füü")), Err(Error::Unserializable));
        assert_eq!(serialize(token("")), Err(Error::Unserializable));
        assert_eq!(
            serialize_parameters(&params(&[("", BareItem::Integer(1))])),
            Err(Error::Unserializable)
        );
    }

    #[test]
    fn decimals_serialize_their_significant_fraction_digits() {
        // RFC 9651 §4.1.5: "0" for no fraction, trailing zeros dropped, no rounding needed.
        for (thousandths, expected) in [
            (1500, "1.5"),
            (1000, "1.0"),
            (1050, "1.05"),
            (1, "0.001"),
            (0, "0.0"),
            (-500, "-0.5"),
            (-1_123, "-1.123"),
            (MAX_INTEGER, "999999999999.999"),
            (-MAX_INTEGER, "-999999999999.999"),
        ] {
            let decimal = BareItem::Decimal(Decimal::from_thousandths(thousandths).unwrap());
            let serialized = serialize_item(&Item::new(decimal.clone())).unwrap();
            assert_eq!(serialized, expected);
            assert_eq!(parse_item(serialized.as_bytes()).unwrap().bare, decimal);
        }
    }

    #[test]
    fn display_strings_percent_encode_what_is_not_printable_ascii() {
        // RFC 9651 §4.1.11; display-string.json: "display string quoting".
        let text = BareItem::DisplayString("füü 100% \"ok\" \\ \u{1f600}\n".into());
        let serialized = serialize_item(&Item::new(text.clone())).unwrap();
        assert_eq!(
            serialized,
            "%\"f%c3%bc%c3%bc 100%25 %22ok%22 \\ %f0%9f%98%80%0a\""
        );
        assert_eq!(parse_item(serialized.as_bytes()).unwrap().bare, text);
    }

    // RFC 9421's own fields (RFC 8792 line wrapping undone).

    /// RFC 9421 §4.1.
    const RFC9421_4_1_INPUT: &str = r#"sig1=("@method" "@target-uri" "@authority" "content-digest" "cache-control");created=1618884475;keyid="test-key-rsa-pss""#;
    /// RFC 9421 §4.2 (an RSA-2048 signature: 256 bytes).
    const RFC9421_4_2_SIGNATURE: &str = "sig1=:P0wLUszWQjoi54udOtydf9IWTfNhy+r53jGFj9XZuP4uKwxyJo1RSHi+oEF1FuX6O29d+lbxwwBao1BAgadijW+7O/PyezlTnqAOVPWx9GlyntiCiHzC87qmSQjvu1CFyFuWSjdGa3qLYYlNm7pVaJFalQiKWnUaqfT4LyttaXyoyZW84jS8gyarxAiWI97mPXU+OVM64+HVBHmnEsS+lTeIsEQo36T3NFf2CujWARPQg53r58RmpZ+J9eKR2CD6IJQvacn5A4Ix5BUAVGqlyp8JYm+S/CWJi31PNUjRRCusCVRj05NrxABNFv3r5S9IXf2fYJK+eyW4AiGVMvMcOg==:";
    /// RFC 9421 §4.3, the client's signature (P-256: 64 bytes).
    const RFC9421_4_3_INPUT: &str = r#"sig1=("@method" "@authority" "@path" "content-digest" "content-type" "content-length");created=1618884475;keyid="test-key-ecc-p256""#;
    const RFC9421_4_3_SIGNATURE: &str = "sig1=:X5spyd6CFnAG5QnDyHfqoSNICd+BUP4LYMz2Q0JXlb//4Ijpzp+kve2w4NIyqeAuM7jTDX+sNalzA8ESSaHD3A==:";
    /// RFC 9421 Appendix B.2.1: no covered components (RSA-PSS: 256 bytes).
    const RFC9421_B21_INPUT: &str =
        r#"sig-b21=();created=1618884473;keyid="test-key-rsa-pss";nonce="b3k2pp5k7z-50gnwp.yemd""#;
    const RFC9421_B21_SIGNATURE: &str = "sig-b21=:d2pmTvmbncD3xQm8E9ZV2828BjQWGgiwAaw5bAkgibUopemLJcWDy/lkbbHAve4cRAtx31Iq786U7it++wgGxbtRxf8Udx7zFZsckzXaJMkA7ChG52eSkFxykJeNqsrWH5S+oxNFlD4dzVuwe8DhTSja8xxbR/Z2cOGdCbzR72rgFWhzx2VjBqJzsPLMIQKhO4DGezXehhWwE56YCE+O6c0mKZsfxVrogUvA4HELjVKWmAvtl6UnCh8jYzuVG5WSb/QEVPnP5TmcAnLH1g+s++v6d4s8m0gCw1fV5/SITLq9mhho8K3+7EPYTU8IU1bLhdxO5Nyt8C8ssinQ98Xw9Q==:";
    /// RFC 9421 Appendix B.2.2: a component with a parameter (RSA-PSS: 256 bytes).
    const RFC9421_B22_INPUT: &str = r#"sig-b22=("@authority" "content-digest" "@query-param";name="Pet");created=1618884473;keyid="test-key-rsa-pss";tag="header-example""#;
    const RFC9421_B22_SIGNATURE: &str = "sig-b22=:LjbtqUbfmvjj5C5kr1Ugj4PmLYvx9wVjZvD9GsTT4F7GrcQEdJzgI9qHxICagShLRiLMlAJjtq6N4CDfKtjvuJyE5qH7KT8UCMkSowOB4+ECxCmT8rtAmj/0PIXxi0A0nxKyB09RNrCQibbUjsLS/2YyFYXEu4TRJQzRw1rLEuEfY17SARYhpTlaqwZVtR8NV7+4UKkjqpcAoFqWFQh62s7Cl+H2fjBSpqfZUJcsIk4N6wiKYd4je2U/lankenQ99PZfB4jY3I5rSV2DSBVkSFsURIjYErOs0tFTQosMTAoxk//0RoKUqiYY8Bh0aaUEb0rQl3/XaVe4bXTugEjHSw==:";
    /// RFC 9421 Appendix B.2.5 (HMAC-SHA256: 32 bytes).
    const RFC9421_B25_INPUT: &str = r#"sig-b25=("date" "@authority" "content-type");created=1618884473;keyid="test-shared-secret""#;
    const RFC9421_B25_SIGNATURE: &str = "sig-b25=:pxcQw6G3AjtMBQjwo8XzkZf/bws5LelbaMk5rGIGtE8=:";
    /// RFC 9421 Appendix B.2.6 (Ed25519: 64 bytes).
    const RFC9421_B26_INPUT: &str = r#"sig-b26=("date" "@method" "@path" "@authority" "content-type" "content-length");created=1618884473;keyid="test-key-ed25519""#;
    const RFC9421_B26_SIGNATURE: &str = "sig-b26=:wqcAqbmYJ2ji2glfAMaRy4gruYYnx2nEFN2HN6jrnDnQCK1u02Gb04v9EDgwUPiu4A0w6vuQv5lIp5WPpBKRCw==:";

    #[test]
    fn rfc9421_fields_parse_and_serialize_back_byte_for_byte() {
        for (input, signature, label, signature_bytes) in [
            (RFC9421_4_1_INPUT, RFC9421_4_2_SIGNATURE, "sig1", 256),
            (RFC9421_4_3_INPUT, RFC9421_4_3_SIGNATURE, "sig1", 64),
            (RFC9421_B21_INPUT, RFC9421_B21_SIGNATURE, "sig-b21", 256),
            (RFC9421_B22_INPUT, RFC9421_B22_SIGNATURE, "sig-b22", 256),
            (RFC9421_B25_INPUT, RFC9421_B25_SIGNATURE, "sig-b25", 32),
            (RFC9421_B26_INPUT, RFC9421_B26_SIGNATURE, "sig-b26", 64),
        ] {
            let parsed_input = parse_dictionary(input.as_bytes()).unwrap();
            assert_eq!(parsed_input.len(), 1, "{label}");
            assert!(!parsed_input.has_repeated_keys());
            assert!(
                matches!(parsed_input.get(label), Some(ListEntry::InnerList(_))),
                "{label}"
            );
            assert_eq!(serialize_dictionary(&parsed_input).unwrap(), input);
            let parsed_signature = parse_dictionary(signature.as_bytes()).unwrap();
            match parsed_signature.get(label) {
                Some(ListEntry::Item(Item {
                    bare: BareItem::ByteSequence(bytes),
                    params,
                })) => {
                    assert_eq!(bytes.len(), signature_bytes, "{label}");
                    assert!(params.is_empty());
                }
                other => panic!("{label}: {other:?}"),
            }
            assert_eq!(serialize_dictionary(&parsed_signature).unwrap(), signature);
        }
    }

    #[test]
    fn rfc9421_signature_input_has_the_expected_structure() {
        // RFC 9421 Appendix B.2.2.
        let dictionary = parse_dictionary(RFC9421_B22_INPUT.as_bytes()).unwrap();
        let expected = InnerList {
            items: vec![
                Item::new(string("@authority")),
                Item::new(string("content-digest")),
                item(string("@query-param"), &[("name", string("Pet"))]),
            ],
            params: params(&[
                ("created", BareItem::Integer(1_618_884_473)),
                ("keyid", string("test-key-rsa-pss")),
                ("tag", string("header-example")),
            ]),
        };
        assert_eq!(
            dictionary.get("sig-b22"),
            Some(&ListEntry::InnerList(expected))
        );
    }

    #[test]
    fn rfc9421_signature_params_serialize_as_an_inner_list() {
        // RFC 9421 §2.5, Figure 1: the `@signature-params` line of the example signature base.
        let components = [
            "@method",
            "@authority",
            "@path",
            "content-digest",
            "content-length",
            "content-type",
        ];
        let signature_params = InnerList {
            items: components.iter().map(|c| Item::new(string(c))).collect(),
            params: params(&[
                ("created", BareItem::Integer(1_618_884_473)),
                ("keyid", string("test-key-rsa-pss")),
            ]),
        };
        assert_eq!(
            serialize_inner_list(&signature_params).unwrap(),
            r#"("@method" "@authority" "@path" "content-digest" "content-length" "content-type");created=1618884473;keyid="test-key-rsa-pss""#
        );
        let mut dictionary = Dictionary::default();
        dictionary.insert("sig1", ListEntry::InnerList(signature_params.clone()));
        let field = serialize_dictionary(&dictionary).unwrap();
        assert_eq!(parse_dictionary(field.as_bytes()).unwrap(), dictionary);
        assert_eq!(
            serialize_parameters(&signature_params.params).unwrap(),
            r#";created=1618884473;keyid="test-key-rsa-pss""#
        );
    }

    #[test]
    fn rfc9421_fields_on_several_lines_are_combined() {
        // RFC 9421 §4.1: several Signature-Input lines; the labels of B.2.5 and B.2.6.
        let two = [RFC9421_B25_INPUT.as_bytes(), RFC9421_B26_INPUT.as_bytes()];
        let dictionary = parse_dictionary_lines(&two).unwrap();
        let labels: Vec<_> = dictionary.iter().map(|(label, _)| label).collect();
        assert_eq!(labels, ["sig-b25", "sig-b26"]);
        assert!(!dictionary.has_repeated_keys());
        assert_eq!(
            serialize_dictionary(&dictionary).unwrap(),
            format!("{RFC9421_B25_INPUT}, {RFC9421_B26_INPUT}")
        );
        assert_eq!(parse_dictionary_lines(&[]), Ok(Dictionary::default()));
        assert_eq!(parse_list_lines(&[]), Ok(Vec::new()));
        assert_eq!(parse_item_lines(&[]), Err(Error::Malformed));
        // An Item's field given twice is two members, not one item.
        assert_eq!(parse_item_lines(&[b"1", b"2"]), Err(Error::Malformed));
        // An empty line leaves an empty member.
        assert_eq!(
            parse_dictionary_lines(&[b"a=1", b""]),
            Err(Error::Malformed)
        );
        assert_eq!(
            parse_dictionary_lines(&[b"", b"a=1"]),
            Err(Error::Malformed)
        );
    }

    /// RFC 9421 §4.1: "The signature labels MUST be unique across all field values." A label
    /// given twice, on one line or across two, must be seen, not silently resolved to the last.
    #[test]
    fn repeated_signature_label_is_detected() {
        let forged = r#"sig1=("@method");created=1;keyid="attacker""#;
        let one_line = format!("{RFC9421_4_1_INPUT}, {forged}");
        let dictionary = parse_dictionary(one_line.as_bytes()).unwrap();
        assert!(dictionary.has_repeated_keys());
        // §4.2.2: the last value wins, at the first place.
        assert_eq!(dictionary.len(), 1);
        assert_eq!(serialize_dictionary(&dictionary).unwrap(), forged);
        let across_lines =
            parse_dictionary_lines(&[RFC9421_4_1_INPUT.as_bytes(), forged.as_bytes()]).unwrap();
        assert!(across_lines.has_repeated_keys());
        // The same with a key alone (Boolean true) and as the first of several keys.
        assert!(parse_dictionary(b"a, b=2, a=3")
            .unwrap()
            .has_repeated_keys());
        assert!(!parse_dictionary(b"a, b=2, c=3")
            .unwrap()
            .has_repeated_keys());
        // A repeated parameter key is resolved by §4.2.3.2 (last value, first place).
        let item = parse_item(b"1;a=1;b=2;a=3").unwrap();
        assert_eq!(serialize_item(&item).unwrap(), "1;a=3;b=2");
    }

    #[test]
    fn oversized_field_is_refused_before_parsing() {
        let at_cap = format!("\"{}\"", "a".repeat(MAX_FIELD_BYTES - 2));
        assert!(parse_item(at_cap.as_bytes()).is_ok());
        let over = format!("\"{}\"", "a".repeat(MAX_FIELD_BYTES - 1));
        assert_eq!(parse_item(over.as_bytes()), Err(Error::TooLong));
        // Even garbage: the length is checked first.
        assert_eq!(
            parse_list(&[0xff; MAX_FIELD_BYTES + 1]),
            Err(Error::TooLong)
        );
        // Lines: the separators count, and nothing is copied when over.
        let half = "a".repeat(MAX_FIELD_BYTES / 2 - 1);
        assert!(parse_list_lines(&[half.as_bytes(), half.as_bytes()]).is_ok());
        let half_and_one = "a".repeat(MAX_FIELD_BYTES / 2);
        assert_eq!(
            parse_list_lines(&[half_and_one.as_bytes(), half.as_bytes()]),
            Err(Error::TooLong)
        );
        let many_empty_lines = vec![&b""[..]; MAX_FIELD_BYTES];
        assert_eq!(parse_list_lines(&many_empty_lines), Err(Error::TooLong));
    }

    #[test]
    fn too_many_members_items_or_parameters_are_refused() {
        let members = |n: usize| {
            (0..n)
                .map(|i| format!("a{i}=1"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        assert_eq!(
            parse_dictionary(members(MAX_MEMBERS).as_bytes())
                .unwrap()
                .len(),
            MAX_MEMBERS
        );
        assert_eq!(
            parse_dictionary(members(MAX_MEMBERS + 1).as_bytes()),
            Err(Error::TooMany)
        );
        // Repeated keys count each time: they cost parsing work all the same.
        let repeated = vec!["a=1"; MAX_MEMBERS + 1].join(",");
        assert_eq!(parse_dictionary(repeated.as_bytes()), Err(Error::TooMany));
        let list = |n: usize| vec!["1"; n].join(",");
        assert_eq!(
            parse_list(list(MAX_MEMBERS).as_bytes()).unwrap().len(),
            MAX_MEMBERS
        );
        assert_eq!(
            parse_list(list(MAX_MEMBERS + 1).as_bytes()),
            Err(Error::TooMany)
        );
        let inner = |n: usize| format!("({})", vec!["1"; n].join(" "));
        assert!(parse_list(inner(MAX_INNER_LIST_ITEMS).as_bytes()).is_ok());
        assert_eq!(
            parse_list(inner(MAX_INNER_LIST_ITEMS + 1).as_bytes()),
            Err(Error::TooMany)
        );
        let with_params = |n: usize| format!("1{}", ";a".repeat(n));
        assert!(parse_item(with_params(MAX_PARAMETERS).as_bytes()).is_ok());
        assert_eq!(
            parse_item(with_params(MAX_PARAMETERS + 1).as_bytes()),
            Err(Error::TooMany)
        );
        let inner_params = format!("(1){}", ";a".repeat(MAX_PARAMETERS + 1));
        assert_eq!(parse_list(inner_params.as_bytes()), Err(Error::TooMany));
        let dict_params = format!("a{}", ";b".repeat(MAX_PARAMETERS + 1));
        assert_eq!(
            parse_dictionary(dict_params.as_bytes()),
            Err(Error::TooMany)
        );
        // large-generated.json: "large dictionary" (1024 members) is beyond Tether's bound.
        assert_eq!(
            parse_dictionary(members(1024).as_bytes()),
            Err(Error::TooMany)
        );
    }

    #[test]
    fn nesting_beyond_one_inner_list_is_a_syntax_error() {
        for nested in [&b"((1))"[..], b"(1 (2))", b"a=((1))", b"(()"] {
            assert_eq!(parse_list(nested), Err(Error::Malformed), "{nested:?}");
            assert_eq!(
                parse_dictionary(nested),
                Err(Error::Malformed),
                "{nested:?}"
            );
        }
        // An item is never an inner list.
        assert_eq!(parse_item(b"(1)"), Err(Error::Malformed));
        // Deep nesting costs nothing: the first `(` inside an inner list fails.
        let deep = "(".repeat(MAX_FIELD_BYTES);
        assert_eq!(parse_list(deep.as_bytes()), Err(Error::Malformed));
    }

    #[test]
    fn non_ascii_and_control_bytes_are_refused() {
        for field in [
            &b"a=\"\xc3\xa9\""[..],
            b"a=1, b=\xff",
            b"\xef\xbb\xbfa=1",
            b"a=\"x\x00y\"",
            b"a=1\x00",
            b"a=\"\x7f\"",
            b"a=\"\r\n\"",
            b"a=1\r\n",
            b"a=%\"\x01\"",
        ] {
            assert_eq!(parse_dictionary(field), Err(Error::Malformed), "{field:?}");
        }
    }

    #[test]
    fn malformed_strings_keys_and_byte_sequences_are_refused() {
        for field in [
            // Unterminated strings and bad escapes.
            &b"a=\"abc"[..],
            b"a=\"abc\\\"",
            b"a=\"\\n\"",
            b"a=\"\\u0041\"",
            b"a=\"\\'\"",
            // Empty, uppercase or otherwise bad keys.
            b"=1",
            b"a=1, =2",
            b"A=1",
            b"aB=1",
            b"a=1;=2",
            b"a=1;B=2",
            b"-a=1",
            b"_a=1",
            // Base64: another alphabet, bad or missing padding, stray characters.
            b"a=:aGVsbG8-:",
            b"a=:aGVs_bG8=:",
            b"a=:aGVsbG8:",
            b"a=:aGVsbG8==:",
            b"a=:aGV=sbG8:",
            b"a=:=:",
            b"a=:a:",
            b"a=:aGVsbG8=",
            b"a=:aGVsbG8\t=:",
            // Numbers: 16 digits, 4 fraction digits, no digit after the point.
            b"a=1234567890123456",
            b"a=-999999999999999.5",
            b"a=1.1234",
            b"a=1.",
            b"a=-",
            // Trailing comma, empty member, garbage after a member.
            b"a=1,",
            b"a=1, ",
            b"a=1,,b=2",
            b"a=1 b=2",
            b"a=1;",
            b"a=1;b=",
        ] {
            assert_eq!(parse_dictionary(field), Err(Error::Malformed), "{field:?}");
        }
    }

    #[test]
    fn only_sp_is_allowed_where_the_grammar_says_sp() {
        // OWS (SP or HTAB) around commas.
        for ok in [&b"a=1\t,\tb=2"[..], b"a=1 \t, \t b=2", b"a=1\t"] {
            assert!(parse_dictionary(ok).is_ok(), "{ok:?}");
        }
        // SP only: leading, after `;`, between inner-list items, and an item's trailing space.
        for bad in [
            &b"\ta=1"[..],
            b"a=1;\tb=2",
            b"a=(1\t2)",
            b"a=(\t1)",
            b"a=(1\t)",
            b"a=\t1",
            b"a\t=1",
        ] {
            assert_eq!(parse_dictionary(bad), Err(Error::Malformed), "{bad:?}");
        }
        assert_eq!(parse_item(b"1\t"), Err(Error::Malformed));
        assert_eq!(parse_item(b"\t1"), Err(Error::Malformed));
        assert!(parse_item(b" 1 ").is_ok());
        // Other whitespace is never whitespace here.
        for bad in [&b"a=1\n,b=2"[..], b"a=1,\x0bb=2", b"a=1\r"] {
            assert_eq!(parse_dictionary(bad), Err(Error::Malformed), "{bad:?}");
        }
    }

    #[test]
    fn errors_do_not_carry_the_input() {
        let secret = b"a=\"sk_live_abcdef";
        let error = parse_dictionary(secret).unwrap_err();
        assert!(!format!("{error:?} {error}").contains("sk_live"));
    }

    // Round trip: parse(serialize(x)) == x for any value within the bounds, and parsing any
    // bytes never panics. Fixed seed and no regression file, as in tests/properties.rs.

    mod properties {
        use super::super::*;
        use proptest::collection::vec;
        use proptest::prelude::*;
        use proptest::test_runner::{RngAlgorithm, RngSeed};

        fn config() -> ProptestConfig {
            ProptestConfig {
                cases: 512,
                failure_persistence: None,
                rng_algorithm: RngAlgorithm::ChaCha,
                rng_seed: RngSeed::Fixed(0x5f_7e7),
                ..ProptestConfig::default()
            }
        }

        fn key() -> impl Strategy<Value = String> {
            "[a-z*][a-z0-9_.*-]{0,6}"
        }

        fn bare_item() -> impl Strategy<Value = BareItem> {
            prop_oneof![
                (-MAX_INTEGER..=MAX_INTEGER).prop_map(BareItem::Integer),
                (-MAX_INTEGER..=MAX_INTEGER)
                    .prop_filter_map("in range", Decimal::from_thousandths)
                    .prop_map(BareItem::Decimal),
                "[ -~]{0,12}".prop_map(BareItem::String),
                "[A-Za-z*][A-Za-z0-9:/!#$%&'*+.^_`|~-]{0,8}".prop_map(BareItem::Token),
                vec(any::<u8>(), 0..20).prop_map(BareItem::ByteSequence),
                any::<bool>().prop_map(BareItem::Boolean),
                (-MAX_INTEGER..=MAX_INTEGER).prop_map(BareItem::Date),
                any::<String>().prop_map(|s| BareItem::DisplayString(s.chars().take(8).collect())),
            ]
        }

        fn parameters() -> impl Strategy<Value = Parameters> {
            vec((key(), bare_item()), 0..4).prop_map(|entries| {
                let mut params = Parameters::default();
                for (k, v) in entries {
                    params.insert(k, v);
                }
                params
            })
        }

        fn item() -> impl Strategy<Value = Item> {
            (bare_item(), parameters()).prop_map(|(bare, params)| Item { bare, params })
        }

        fn entry() -> impl Strategy<Value = ListEntry> {
            prop_oneof![
                item().prop_map(ListEntry::Item),
                (vec(item(), 0..4), parameters())
                    .prop_map(|(items, params)| ListEntry::InnerList(InnerList { items, params })),
            ]
        }

        fn members_of(dictionary: &Dictionary) -> Vec<(&str, &ListEntry)> {
            dictionary.iter().collect()
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn serialized_values_parse_back_to_themselves(
                list in vec(entry(), 0..5),
                members in vec((key(), entry()), 0..5),
            ) {
                let serialized = serialize_list(&list).unwrap();
                prop_assert_eq!(parse_list(serialized.as_bytes()).unwrap(), list);
                let mut dictionary = Dictionary::default();
                for (k, v) in members {
                    dictionary.insert(k, v);
                }
                // A Dictionary built with a repeated key records it; the field it makes does not.
                let repeated = dictionary.has_repeated_keys();
                let serialized = serialize_dictionary(&dictionary).unwrap();
                let parsed = parse_dictionary(serialized.as_bytes()).unwrap();
                prop_assert!(!parsed.has_repeated_keys());
                prop_assert_eq!(members_of(&parsed), members_of(&dictionary));
                prop_assert_eq!(parsed == dictionary, !repeated);
            }

            #[test]
            fn parsing_any_bytes_never_panics_and_reserializes_stably(
                field in prop_oneof![
                    vec(any::<u8>(), 0..64),
                    vec(prop::sample::select(b" \t,;=()\"\\:?@%*-.019aAzZ+/".to_vec()), 0..64),
                ],
            ) {
                if let Ok(list) = parse_list(&field) {
                    let canonical = serialize_list(&list).unwrap();
                    prop_assert_eq!(parse_list(canonical.as_bytes()).unwrap(), list);
                }
                if let Ok(dictionary) = parse_dictionary(&field) {
                    let canonical = serialize_dictionary(&dictionary).unwrap();
                    let again = parse_dictionary(canonical.as_bytes()).unwrap();
                    prop_assert_eq!(members_of(&again), members_of(&dictionary));
                }
                if let Ok(item) = parse_item(&field) {
                    let canonical = serialize_item(&item).unwrap();
                    prop_assert_eq!(parse_item(canonical.as_bytes()).unwrap(), item);
                }
            }
        }
    }
}
