//! One held request's life, from its headers to its decision: the pure part of the glue.
//!
//! Tether holds a request while it waits for something the decision needs: a fetched key set
//! (not loaded yet, or refetched for an unknown `kid`), or the body, over which the request
//! signature is verified. Whatever arrives meanwhile (body chunks, trailers, the keys, the
//! clock's ticks) is an event; each event returns a [`Step`] for the glue to carry out.
//!
//! The rule every path keeps: **nothing of a held request goes on until it is decided**.
//! Trailers end the body, they never release the request (issue 7, finding 1: proxy-wasm's
//! default answer to trailers let a held request through unchecked). A body that does not
//! arrive by its deadline is refused (`body_timeout`), and one that arrives late is verified
//! at the time it arrives, so a signature cannot outlive its window (finding 2).

use std::collections::{HashMap, HashSet};

use crate::reject::Reason;

/// How long a held request may wait, and how much body it may hold.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The longest the body of a request held for it may take, from the headers.
    pub body_timeout_ms: u64,
    /// The largest body held for a request signature.
    pub max_body_bytes: usize,
}

/// What the request waits for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A fetched key set: decided again once the set is newer than `seen_fetched_at`, or when
    /// the wait runs out.
    AwaitingKeys { set: usize, seen_fetched_at: u64 },
    /// An introspection answer: decided again once the issuer's endpoint has answered more
    /// than `seen_answers` times, or when the wait runs out.
    AwaitingIntrospection { issuer: usize, seen_answers: u64 },
    /// The whole body, to verify the request signature over it.
    AwaitingBody,
    /// Decided (allowed or refused): nothing is held any more.
    Decided,
}

/// What the decision found, as far as the request's life goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decision {
    Allow,
    Deny(Reason),
    /// Everything is verified but the request signature, which needs the body.
    NeedBody,
    /// Key set `set`, whose copy in this VM was fetched at `seen_fetched_at`, must be
    /// (re)loaded first (any other `fetched_at` is a new load); the request may wait for it `timeout_ms` (the set's).
    NeedKeys {
        set: usize,
        seen_fetched_at: u64,
        timeout_ms: u64,
    },
    /// The token must be introspected by `issuer`'s endpoint first, which had given
    /// `seen_answers` answers in this VM (any further answer may be this one); the request may
    /// wait for it `timeout_ms`.
    NeedIntrospection {
        issuer: usize,
        seen_answers: u64,
        timeout_ms: u64,
    },
}

/// What a held request waits for, to tell how far it has come ([`Held::due`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// A key set: when this VM last loaded it.
    Keys(usize),
    /// An issuer's introspection endpoint: how many answers this VM has had from it.
    Introspection(usize),
}

/// What the glue does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    /// Let the request go on (from a request's own callback: `Continue`; from the root
    /// context: resume it).
    Continue,
    /// Keep holding it.
    Pause,
    /// The body is complete: verify the request signature over it now, and report with
    /// [`Held::verified`].
    Verify,
    /// Decide the request again now (its key set changed, or its wait ran out; `may_wait`
    /// says whether it may wait again), and report with [`Held::decided`].
    Decide { may_wait: bool },
    /// Refuse it.
    Refuse(Reason),
}

/// What is known of the body so far.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Body {
    /// Bytes buffered so far.
    buffered: usize,
    /// The body is complete (end of stream, or trailers).
    complete: bool,
    /// A body or trailers callback reached the filter: Envoy hands a held request's body
    /// over only with `allow_on_headers_stop_iteration`.
    seen: bool,
}

/// One request's life. Created on the headers; the glue keeps it while it is not decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Held {
    stage: Stage,
    body: Body,
    /// The body's announced length (`content-length`), if any.
    announced: Option<usize>,
    limits: Limits,
    /// When a wait for keys or an introspection ends (set when the first one starts).
    wait_deadline_ms: Option<u64>,
    /// When the body must have arrived.
    body_deadline_ms: u64,
}

impl Held {
    /// A request whose headers arrived at `now_ms` (with `end_of_stream` if it has no body),
    /// before its first decision.
    pub fn new(now_ms: u64, end_of_stream: bool, announced: Option<usize>, limits: Limits) -> Held {
        Held {
            stage: Stage::Decided,
            body: Body {
                complete: end_of_stream,
                ..Body::default()
            },
            announced,
            limits,
            wait_deadline_ms: None,
            body_deadline_ms: now_ms.saturating_add(limits.body_timeout_ms),
        }
    }

    pub fn stage(&self) -> Stage {
        self.stage
    }

    /// Whether the request is still held (not decided).
    pub fn is_held(&self) -> bool {
        self.stage != Stage::Decided
    }

    /// Whether neither body nor trailers ever reached the filter: at a body timeout, a sign
    /// that Envoy holds the body back (`allow_on_headers_stop_iteration` is not set).
    pub fn body_never_seen(&self) -> bool {
        !self.body.seen
    }

    /// The body's size once complete; `None` while it is still arriving.
    pub fn complete_body(&self) -> Option<usize> {
        self.body.complete.then_some(self.body.buffered)
    }

    /// The request has been decided (on its headers, or again).
    pub fn decided(&mut self, decision: Decision, now_ms: u64) -> Step {
        match decision {
            Decision::Allow => self.finish(Step::Continue),
            Decision::Deny(reason) => self.finish(Step::Refuse(reason)),
            Decision::NeedBody => {
                let max = self.limits.max_body_bytes;
                if self.body.buffered > max || self.announced.is_some_and(|n| n > max) {
                    return self.finish(Step::Refuse(Reason::BodyTooLarge));
                }
                self.stage = Stage::AwaitingBody;
                if self.body.complete {
                    Step::Verify
                } else {
                    Step::Pause
                }
            }
            Decision::NeedKeys {
                set,
                seen_fetched_at,
                timeout_ms,
            } => {
                // A request may wait for a second key set after the first (the issuer's,
                // then the client's), but never past its first deadline.
                self.wait_deadline_ms
                    .get_or_insert(now_ms.saturating_add(timeout_ms));
                self.stage = Stage::AwaitingKeys {
                    set,
                    seen_fetched_at,
                };
                Step::Pause
            }
            Decision::NeedIntrospection {
                issuer,
                seen_answers,
                timeout_ms,
            } => {
                // The same first deadline bounds every wait of a request.
                self.wait_deadline_ms
                    .get_or_insert(now_ms.saturating_add(timeout_ms));
                self.stage = Stage::AwaitingIntrospection {
                    issuer,
                    seen_answers,
                };
                Step::Pause
            }
        }
    }

    /// A body callback: `buffered` bytes so far, `end_of_stream` if that is all.
    pub fn on_body(&mut self, buffered: usize, end_of_stream: bool) -> Step {
        if self.stage == Stage::Decided {
            return Step::Continue;
        }
        self.body.seen = true;
        self.body.buffered = buffered;
        self.body.complete |= end_of_stream;
        match self.stage {
            Stage::AwaitingBody if buffered > self.limits.max_body_bytes => {
                self.finish(Step::Refuse(Reason::BodyTooLarge))
            }
            Stage::AwaitingBody if self.body.complete => Step::Verify,
            _ => Step::Pause,
        }
    }

    /// The trailers arrived: the body is complete. They go on only with the request.
    pub fn on_trailers(&mut self) -> Step {
        if self.stage == Stage::Decided {
            return Step::Continue;
        }
        self.body.seen = true;
        self.body.complete = true;
        match self.stage {
            Stage::AwaitingBody => Step::Verify,
            _ => Step::Pause,
        }
    }

    /// The signature over the body was verified (or refused with a reason).
    pub fn verified(&mut self, result: Result<(), Reason>) -> Step {
        match result {
            Ok(()) => self.finish(Step::Continue),
            Err(reason) => self.finish(Step::Refuse(reason)),
        }
    }

    /// On the root context's tick, a key set's arrival or an introspection answer: what is
    /// due for this request now, given how far what it waits for has come in this VM
    /// (`progress`: when a key set was last loaded, how many answers an endpoint gave).
    /// `None`: nothing.
    pub fn due(&mut self, now_ms: u64, progress: impl Fn(Wait) -> u64) -> Option<Step> {
        let in_time = self.wait_deadline_ms.is_none_or(|d| now_ms < d);
        match self.stage {
            Stage::AwaitingKeys {
                set,
                seen_fetched_at,
            } => (progress(Wait::Keys(set)) != seen_fetched_at || !in_time)
                .then_some(Step::Decide { may_wait: in_time }),
            Stage::AwaitingIntrospection {
                issuer,
                seen_answers,
            } => (progress(Wait::Introspection(issuer)) != seen_answers || !in_time)
                .then_some(Step::Decide { may_wait: in_time }),
            Stage::AwaitingBody if now_ms >= self.body_deadline_ms => {
                Some(self.finish(Step::Refuse(Reason::BodyTimeout)))
            }
            Stage::AwaitingBody | Stage::Decided => None,
        }
    }

    fn finish(&mut self, step: Step) -> Step {
        self.stage = Stage::Decided;
        step
    }
}

/// A request in the [`Table`]: its life, its token's fingerprint (which bounds how many one
/// token may hold), and whatever the glue needs to decide it (`R`: its facts, the pending
/// signature, the headers to set).
pub struct Entry<R> {
    pub held: Held,
    pub token_fp: Option<String>,
    pub request: R,
}

/// What the glue does with a request whose steps have run out.
pub enum Driven<R> {
    /// Let it go on (setting the headers `R` carries).
    Continue(Entry<R>),
    /// It is held (the table keeps it).
    Held,
    /// Refuse it.
    Refuse(Reason, Entry<R>),
}

/// What deciding a held request takes: the glue's access to the verdict, the keys and the
/// body.
pub trait Pipeline<R> {
    /// Decides the request on its headers (again); `may_wait` is false once its wait for keys
    /// has run out.
    fn decide(&mut self, entry: &mut Entry<R>, may_wait: bool) -> Decision;
    /// Verifies what needs the whole body (now complete).
    fn verify(&mut self, entry: &mut Entry<R>) -> Result<(), Reason>;
}

/// The requests one VM holds, by context id, and those it refused (until their streams end).
pub struct Table<R> {
    held: HashMap<u32, Entry<R>>,
    refused: HashSet<u32>,
    /// `max_held_requests`.
    max: usize,
}

impl<R> Table<R> {
    pub fn new(max: usize) -> Self {
        Table {
            held: HashMap::new(),
            refused: HashSet::new(),
            max: max.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }

    /// Takes a held request out to feed it an event (put back by [`drive`](Self::drive)).
    pub fn take(&mut self, id: u32) -> Option<Entry<R>> {
        self.held.remove(&id)
    }

    /// Whether the request was refused: whatever of it still arrives is held, never let
    /// through after the refusal.
    pub fn is_refused(&self, id: u32) -> bool {
        self.refused.contains(&id)
    }

    /// The request's stream has ended.
    pub fn forget(&mut self, id: u32) {
        self.held.remove(&id);
        self.refused.remove(&id);
    }

    /// Marks a request refused outside [`drive`](Self::drive) (on its headers).
    pub fn refused(&mut self, id: u32) {
        self.refused.insert(id);
    }

    /// The held requests with something due at `now_ms` (see [`Held::due`]), taken out of the
    /// table with their step.
    pub fn due(
        &mut self,
        now_ms: u64,
        progress: impl Fn(Wait) -> u64,
    ) -> Vec<(u32, Entry<R>, Step)> {
        let ids: Vec<(u32, Step)> = self
            .held
            .iter_mut()
            .filter_map(|(id, entry)| Some((*id, entry.held.due(now_ms, &progress)?)))
            .collect();
        ids.into_iter()
            .filter_map(|(id, step)| Some((id, self.held.remove(&id)?, step)))
            .collect()
    }

    /// Runs a request's steps until it is held or decided: the one place a request is put
    /// back, refused or let go.
    pub fn drive(
        &mut self,
        id: u32,
        mut entry: Entry<R>,
        mut step: Step,
        pipeline: &mut dyn Pipeline<R>,
        now_ms: u64,
    ) -> Driven<R> {
        loop {
            step = match step {
                Step::Decide { may_wait } => {
                    let decision = pipeline.decide(&mut entry, may_wait);
                    entry.held.decided(decision, now_ms)
                }
                Step::Verify => {
                    let result = pipeline.verify(&mut entry);
                    entry.held.verified(result)
                }
                Step::Continue => return Driven::Continue(entry),
                Step::Refuse(reason) => {
                    self.refused.insert(id);
                    return Driven::Refuse(reason, entry);
                }
                Step::Pause => match self.admit(&entry) {
                    Ok(()) => {
                        self.held.insert(id, entry);
                        return Driven::Held;
                    }
                    Err(reason) => {
                        self.refused.insert(id);
                        return Driven::Refuse(reason, entry);
                    }
                },
            };
        }
    }

    /// Whether the table has room for one more: at most `max` in all (issue 7: the table
    /// grew without bound), and one token at most a quarter of them waiting for bodies, whose
    /// pace is the client's (one client trickling bodies on many streams cannot take every
    /// place).
    fn admit(&self, entry: &Entry<R>) -> Result<(), Reason> {
        if self.held.len() >= self.max {
            return Err(Reason::HeldRequestsFull);
        }
        if entry.held.stage() == Stage::AwaitingBody {
            let per_token = (self.max / 4).max(1);
            let same = self
                .held
                .values()
                .filter(|o| o.held.stage() == Stage::AwaitingBody && o.token_fp == entry.token_fp)
                .count();
            if same >= per_token {
                return Err(Reason::HeldRequestsFull);
            }
        }
        Ok(())
    }
}

/// What the glue does with a response held to be signed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResponseStep {
    /// Let the response (or this part of it) go on.
    Continue,
    /// Keep holding it: Envoy buffers the body.
    Pause,
    /// The body is complete: sign the response now, and report with [`Outgoing::signed`].
    Sign,
    /// Replace the response with this refusal: it is never sent unsigned.
    Refuse(Reason),
}

/// The response of an allowed request on a `sign_response` route: held, headers and body,
/// until the body is complete, then signed. Nothing of it goes on unsigned: a body larger
/// than `max_body_bytes` (announced or received) replaces it with a refusal, and trailers end
/// the body like end of stream, never release it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Outgoing {
    max_body_bytes: usize,
    /// Signed (or refused): whatever comes after goes on untouched.
    done: bool,
}

impl Outgoing {
    pub fn new(max_body_bytes: usize) -> Outgoing {
        Outgoing {
            max_body_bytes,
            done: false,
        }
    }

    /// The response headers, with `end_of_stream` if there is no body, and the announced
    /// `content-length`, if any.
    pub fn on_headers(&mut self, end_of_stream: bool, announced: Option<usize>) -> ResponseStep {
        if self.done {
            return ResponseStep::Continue;
        }
        if announced.is_some_and(|n| n > self.max_body_bytes) {
            return self.finish(ResponseStep::Refuse(Reason::ResponseTooLargeToSign));
        }
        if end_of_stream {
            ResponseStep::Sign
        } else {
            ResponseStep::Pause
        }
    }

    /// A body callback: `buffered` bytes so far, `end_of_stream` if that is all.
    pub fn on_body(&mut self, buffered: usize, end_of_stream: bool) -> ResponseStep {
        if self.done {
            return ResponseStep::Continue;
        }
        if buffered > self.max_body_bytes {
            return self.finish(ResponseStep::Refuse(Reason::ResponseTooLargeToSign));
        }
        if end_of_stream {
            ResponseStep::Sign
        } else {
            ResponseStep::Pause
        }
    }

    /// The trailers: the body is complete.
    pub fn on_trailers(&mut self) -> ResponseStep {
        if self.done {
            return ResponseStep::Continue;
        }
        ResponseStep::Sign
    }

    /// The response was signed, or could not be.
    pub fn signed(&mut self, result: Result<(), Reason>) -> ResponseStep {
        match result {
            Ok(()) => self.finish(ResponseStep::Continue),
            Err(reason) => self.finish(ResponseStep::Refuse(reason)),
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    fn finish(&mut self, step: ResponseStep) -> ResponseStep {
        self.done = true;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        body_timeout_ms: 10_000,
        max_body_bytes: 1_000,
    };
    const T0: u64 = 1_000_000;

    fn awaiting_body(end_of_stream: bool) -> Held {
        let mut held = Held::new(T0, end_of_stream, None, LIMITS);
        held.decided(Decision::NeedBody, T0);
        held
    }

    fn awaiting_keys() -> Held {
        let mut held = Held::new(T0, false, None, LIMITS);
        let step = held.decided(
            Decision::NeedKeys {
                set: 0,
                seen_fetched_at: 7,
                timeout_ms: 2_000,
            },
            T0,
        );
        assert_eq!(step, Step::Pause);
        held
    }

    #[test]
    fn trailers_cannot_release_a_request_held_for_its_body() {
        let mut held = awaiting_body(false);
        assert_eq!(held.on_body(10, false), Step::Pause);
        // The trailers end the body: the signature is verified, the request is not let go.
        assert_eq!(held.on_trailers(), Step::Verify);
        assert_eq!(held.complete_body(), Some(10));
        assert!(held.is_held());
        assert_eq!(
            held.verified(Err(Reason::RequestSignatureInvalid)),
            Step::Refuse(Reason::RequestSignatureInvalid)
        );
        assert!(!held.is_held());
    }

    #[test]
    fn trailers_without_any_data_end_an_empty_body() {
        let mut held = awaiting_body(false);
        assert_eq!(held.on_trailers(), Step::Verify);
        assert_eq!(held.complete_body(), Some(0));
    }

    #[test]
    fn trailers_cannot_release_a_request_held_for_its_keys() {
        let mut held = awaiting_keys();
        assert_eq!(held.on_body(10, false), Step::Pause);
        assert_eq!(held.on_trailers(), Step::Pause);
        assert!(held.is_held());
        // When the keys come, the request is decided; its body is already complete.
        assert_eq!(
            held.due(T0 + 100, |_| 8),
            Some(Step::Decide { may_wait: true })
        );
        assert_eq!(held.decided(Decision::NeedBody, T0 + 100), Step::Verify);
        assert_eq!(held.complete_body(), Some(10));
    }

    #[test]
    fn body_end_of_stream_verifies_and_later_callbacks_pass() {
        let mut held = awaiting_body(false);
        assert_eq!(held.on_body(500, true), Step::Verify);
        assert_eq!(held.verified(Ok(())), Step::Continue);
        assert_eq!(held.on_body(500, true), Step::Continue);
        assert_eq!(held.on_trailers(), Step::Continue);
    }

    #[test]
    fn request_without_body_is_verified_at_once() {
        let mut held = Held::new(T0, true, None, LIMITS);
        assert_eq!(held.decided(Decision::NeedBody, T0), Step::Verify);
        assert_eq!(held.complete_body(), Some(0));
    }

    #[test]
    fn body_over_the_limit_is_refused_announced_or_received() {
        let mut announced = Held::new(T0, false, Some(1_001), LIMITS);
        assert_eq!(
            announced.decided(Decision::NeedBody, T0),
            Step::Refuse(Reason::BodyTooLarge)
        );
        // Streamed without content-length: refused once it grows past the limit.
        let mut streamed = awaiting_body(false);
        assert_eq!(streamed.on_body(1_000, false), Step::Pause);
        assert_eq!(
            streamed.on_body(1_001, false),
            Step::Refuse(Reason::BodyTooLarge)
        );
        assert!(!streamed.is_held());
    }

    #[test]
    fn body_that_does_not_arrive_by_the_deadline_is_refused() {
        let mut held = awaiting_body(false);
        assert_eq!(held.due(T0 + 9_999, |_| 0), None);
        assert!(held.body_never_seen());
        assert_eq!(
            held.due(T0 + 10_000, |_| 0),
            Some(Step::Refuse(Reason::BodyTimeout))
        );
        assert!(!held.is_held());
        assert_eq!(held.due(T0 + 20_000, |_| 0), None);
    }

    #[test]
    fn a_body_chunk_counts_as_seen() {
        let mut held = awaiting_body(false);
        held.on_body(1, false);
        assert!(!held.body_never_seen());
    }

    #[test]
    fn key_wait_ends_when_newer_keys_arrive_or_the_deadline_passes() {
        let mut held = awaiting_keys();
        assert_eq!(held.due(T0 + 100, |_| 7), None);
        assert_eq!(
            held.due(T0 + 2_000, |_| 7),
            Some(Step::Decide { may_wait: false })
        );
        let mut held = awaiting_keys();
        assert_eq!(
            held.due(T0 + 100, |wait| if wait == Wait::Keys(0) { 9 } else { 0 }),
            Some(Step::Decide { may_wait: true })
        );
    }

    /// Issue 12: a request held for its token's introspection is decided again on the
    /// issuer's next answer (any token's: its own may be among them), or at the deadline,
    /// which a key wait before it had already set.
    #[test]
    fn an_introspection_wait_ends_on_a_new_answer_or_the_deadline() {
        let introspecting = |held: &mut Held, now_ms| {
            held.decided(
                Decision::NeedIntrospection {
                    issuer: 1,
                    seen_answers: 4,
                    timeout_ms: 500,
                },
                now_ms,
            )
        };
        let mut held = awaiting_body(true);
        assert_eq!(introspecting(&mut held, T0), Step::Pause);
        let answers = |n: u64| move |wait: Wait| if wait == Wait::Introspection(1) { n } else { 0 };
        assert_eq!(held.due(T0 + 100, answers(4)), None);
        // Another issuer's answers, or key sets, do not count.
        let others = |wait: Wait| match wait {
            Wait::Introspection(1) => 4,
            _ => 9,
        };
        assert_eq!(held.due(T0 + 100, others), None);
        assert_eq!(
            held.due(T0 + 100, answers(5)),
            Some(Step::Decide { may_wait: true })
        );
        assert_eq!(
            held.due(T0 + 500, answers(4)),
            Some(Step::Decide { may_wait: false })
        );
        // After a key wait, the first deadline holds.
        let mut held = awaiting_keys();
        assert_eq!(introspecting(&mut held, T0 + 1_900), Step::Pause);
        assert_eq!(
            held.due(T0 + 2_000, answers(4)),
            Some(Step::Decide { may_wait: false })
        );
    }

    #[test]
    fn a_second_key_wait_keeps_the_first_deadline() {
        let mut held = awaiting_keys();
        let step = held.decided(
            Decision::NeedKeys {
                set: 1,
                seen_fetched_at: 0,
                timeout_ms: 2_000,
            },
            T0 + 1_500,
        );
        assert_eq!(step, Step::Pause);
        assert_eq!(held.due(T0 + 1_999, |_| 0), None);
        assert_eq!(
            held.due(T0 + 2_000, |_| 0),
            Some(Step::Decide { may_wait: false })
        );
    }

    #[test]
    fn keys_then_body_still_waits_for_the_body_and_its_deadline() {
        let mut held = awaiting_keys();
        assert_eq!(held.decided(Decision::NeedBody, T0 + 500), Step::Pause);
        assert_eq!(held.stage(), Stage::AwaitingBody);
        assert_eq!(held.on_body(20, true), Step::Verify);
        let mut late = awaiting_keys();
        late.decided(Decision::NeedBody, T0 + 500);
        assert_eq!(
            late.due(T0 + 10_000, |_| 0),
            Some(Step::Refuse(Reason::BodyTimeout))
        );
    }

    #[test]
    fn allow_or_deny_after_keys_ends_the_hold() {
        let mut held = awaiting_keys();
        assert_eq!(held.decided(Decision::Allow, T0 + 10), Step::Continue);
        assert!(!held.is_held());
        assert_eq!(held.on_body(5, true), Step::Continue);
        let mut held = awaiting_keys();
        assert_eq!(
            held.decided(Decision::Deny(Reason::KeyUnknown), T0 + 10),
            Step::Refuse(Reason::KeyUnknown)
        );
    }

    #[test]
    fn a_request_held_for_keys_is_not_bound_by_the_signature_body_limit() {
        // Only a body held for a signature is bounded by max_body_bytes; Envoy's own buffer
        // limit bounds the rest.
        let mut held = awaiting_keys();
        assert_eq!(held.on_body(5_000, false), Step::Pause);
        assert_eq!(held.decided(Decision::Allow, T0 + 10), Step::Continue);
    }

    /// A pipeline that answers from a script, and says what it was asked.
    #[derive(Default)]
    struct Script {
        decisions: Vec<Decision>,
        verdicts: Vec<Result<(), Reason>>,
        asked: Vec<&'static str>,
    }

    impl Pipeline<()> for Script {
        fn decide(&mut self, _: &mut Entry<()>, may_wait: bool) -> Decision {
            self.asked.push(if may_wait {
                "decide"
            } else {
                "decide, no wait"
            });
            self.decisions.remove(0)
        }
        fn verify(&mut self, _: &mut Entry<()>) -> Result<(), Reason> {
            self.asked.push("verify");
            self.verdicts.remove(0)
        }
    }

    fn entry(end_of_stream: bool, token: &str) -> Entry<()> {
        Entry {
            held: Held::new(T0, end_of_stream, None, LIMITS),
            token_fp: Some(token.to_string()),
            request: (),
        }
    }

    /// A request with a body to come, whose headers just arrived: decided a first time.
    fn start(table: &mut Table<()>, id: u32, token: &str, script: &mut Script) -> Driven<()> {
        table.drive(
            id,
            entry(false, token),
            Step::Decide { may_wait: true },
            script,
            T0,
        )
    }

    const KEYS_0: Decision = Decision::NeedKeys {
        set: 0,
        seen_fetched_at: 0,
        timeout_ms: 2_000,
    };

    /// The double wait 14b5a40 fixed: the issuer's key set, then the client's, then the body.
    #[test]
    fn a_request_waits_for_two_key_sets_in_turn_then_its_body() {
        let mut table = Table::new(16);
        let mut script = Script {
            decisions: vec![
                KEYS_0,
                Decision::NeedKeys {
                    set: 1,
                    seen_fetched_at: 0,
                    timeout_ms: 2_000,
                },
                Decision::NeedBody,
            ],
            verdicts: vec![Ok(())],
            ..Script::default()
        };
        assert!(matches!(
            start(&mut table, 1, "t", &mut script),
            Driven::Held
        ));
        // Set 0 arrives: decided again, now waiting for set 1 (not for set 0 again).
        let due = table.due(T0 + 100, |wait| u64::from(wait == Wait::Keys(0)));
        assert_eq!(due.len(), 1);
        let (id, e, step) = due.into_iter().next().unwrap();
        assert!(matches!(
            table.drive(id, e, step, &mut script, T0 + 100),
            Driven::Held
        ));
        assert!(table
            .due(T0 + 200, |wait| u64::from(wait == Wait::Keys(0)))
            .is_empty());
        // Set 1 arrives: now the body is needed; it is not complete, so still held.
        let (id, e, step) = table.due(T0 + 300, |_| 1).into_iter().next().unwrap();
        assert!(matches!(
            table.drive(id, e, step, &mut script, T0 + 300),
            Driven::Held
        ));
        // The body ends: verified, let go.
        let mut e = table.take(1).unwrap();
        let step = e.held.on_body(10, true);
        assert!(matches!(
            table.drive(1, e, step, &mut script, T0 + 400),
            Driven::Continue(_)
        ));
        assert_eq!(script.asked, ["decide", "decide", "decide", "verify"]);
        assert!(table.is_empty());
    }

    #[test]
    fn the_second_wait_keeps_the_first_deadline_and_is_then_refused() {
        let mut table = Table::new(16);
        let mut script = Script {
            decisions: vec![KEYS_0, KEYS_0, Decision::Deny(Reason::KeySetUnavailable)],
            ..Script::default()
        };
        start(&mut table, 1, "t", &mut script);
        let (id, e, step) = table.due(T0 + 1_000, |_| 5).into_iter().next().unwrap();
        table.drive(id, e, step, &mut script, T0 + 1_000);
        // The deadline is the first one: T0 + 2000, and then it may not wait again.
        let (id, e, step) = table.due(T0 + 2_000, |_| 5).into_iter().next().unwrap();
        assert_eq!(step, Step::Decide { may_wait: false });
        let driven = table.drive(id, e, step, &mut script, T0 + 2_000);
        assert!(matches!(
            driven,
            Driven::Refuse(Reason::KeySetUnavailable, _)
        ));
        assert!(table.is_refused(1));
        assert_eq!(script.asked, ["decide", "decide", "decide, no wait"]);
    }

    #[test]
    fn the_table_is_bounded_and_one_token_holds_a_quarter_of_it_for_bodies() {
        fn hold_for_body(table: &mut Table<()>, id: u32, token: &str) -> Option<Reason> {
            let mut script = Script {
                decisions: vec![Decision::NeedBody],
                ..Script::default()
            };
            match start(table, id, token, &mut script) {
                Driven::Held => None,
                Driven::Refuse(reason, _) => Some(reason),
                Driven::Continue(_) => panic!("let go"),
            }
        }
        let mut table = Table::new(8);
        // A quarter of 8 for one token.
        assert_eq!(hold_for_body(&mut table, 1, "mallory"), None);
        assert_eq!(hold_for_body(&mut table, 2, "mallory"), None);
        assert_eq!(
            hold_for_body(&mut table, 3, "mallory"),
            Some(Reason::HeldRequestsFull)
        );
        // Other tokens fill the rest, then the table is full for everyone.
        for id in 4..10 {
            assert_eq!(
                hold_for_body(&mut table, id, &format!("client-{id}")),
                None,
                "{id}"
            );
        }
        assert_eq!(table.len(), 8);
        assert_eq!(
            hold_for_body(&mut table, 10, "alice"),
            Some(Reason::HeldRequestsFull)
        );
        // Waiting for keys is not a body's pace: the per-token share does not apply.
        let mut keys = Table::new(8);
        for id in 0..8 {
            let mut script = Script {
                decisions: vec![KEYS_0],
                ..Script::default()
            };
            let driven = start(&mut keys, id, "t", &mut script);
            assert!(matches!(driven, Driven::Held), "{id}");
        }
    }

    #[test]
    fn a_refused_request_stays_refused_until_its_stream_ends() {
        let mut table = Table::new(8);
        let mut script = Script {
            decisions: vec![Decision::NeedBody],
            verdicts: vec![Err(Reason::RequestSignatureInvalid)],
            ..Script::default()
        };
        start(&mut table, 1, "t", &mut script);
        let mut e = table.take(1).unwrap();
        let step = e.held.on_trailers();
        assert!(matches!(
            table.drive(1, e, step, &mut script, T0),
            Driven::Refuse(Reason::RequestSignatureInvalid, _)
        ));
        assert!(table.is_refused(1) && table.take(1).is_none());
        table.forget(1);
        assert!(!table.is_refused(1));
    }

    #[test]
    fn a_body_that_never_comes_is_refused_at_the_deadline_by_the_tick() {
        let mut table = Table::new(8);
        let mut script = Script {
            decisions: vec![Decision::NeedBody],
            ..Script::default()
        };
        start(&mut table, 1, "t", &mut script);
        assert!(table.due(T0 + 9_999, |_| 0).is_empty());
        let (id, e, step) = table.due(T0 + 10_000, |_| 0).into_iter().next().unwrap();
        assert!(e.held.body_never_seen());
        assert!(matches!(
            table.drive(id, e, step, &mut script, T0 + 10_000),
            Driven::Refuse(Reason::BodyTimeout, _)
        ));
    }

    #[test]
    fn a_response_is_held_until_its_body_is_complete_then_signed() {
        let mut out = Outgoing::new(1_000);
        assert_eq!(out.on_headers(false, Some(500)), ResponseStep::Pause);
        assert_eq!(out.on_body(200, false), ResponseStep::Pause);
        assert_eq!(out.on_body(500, true), ResponseStep::Sign);
        assert!(!out.is_done());
        assert_eq!(out.signed(Ok(())), ResponseStep::Continue);
        // After the signature, nothing more is held or signed again.
        assert_eq!(out.on_body(500, true), ResponseStep::Continue);
        assert_eq!(out.on_trailers(), ResponseStep::Continue);
    }

    #[test]
    fn a_response_without_body_is_signed_on_its_headers() {
        let mut out = Outgoing::new(1_000);
        assert_eq!(out.on_headers(true, None), ResponseStep::Sign);
        assert_eq!(
            out.signed(Err(Reason::ResponseSigningFailed)),
            ResponseStep::Refuse(Reason::ResponseSigningFailed)
        );
        assert!(out.is_done());
    }

    #[test]
    fn response_trailers_end_the_body_and_never_release_it_unsigned() {
        let mut out = Outgoing::new(1_000);
        assert_eq!(out.on_headers(false, None), ResponseStep::Pause);
        assert_eq!(out.on_body(10, false), ResponseStep::Pause);
        assert_eq!(out.on_trailers(), ResponseStep::Sign);
        assert!(!out.is_done());
    }

    #[test]
    fn a_response_too_large_to_sign_is_replaced_announced_or_received() {
        let mut announced = Outgoing::new(1_000);
        assert_eq!(
            announced.on_headers(false, Some(1_001)),
            ResponseStep::Refuse(Reason::ResponseTooLargeToSign)
        );
        assert_eq!(announced.on_body(1_001, true), ResponseStep::Continue);
        let mut streamed = Outgoing::new(1_000);
        assert_eq!(streamed.on_headers(false, None), ResponseStep::Pause);
        assert_eq!(streamed.on_body(1_000, false), ResponseStep::Pause);
        assert_eq!(
            streamed.on_body(1_001, false),
            ResponseStep::Refuse(Reason::ResponseTooLargeToSign)
        );
    }
}
