//! Every etcd key citadel reads or writes is built and parsed here, and nowhere else.
//!
//! ```text
//! <prefix>/engines/<engine>                 operator
//! <prefix>/requests/<request>               user
//! <prefix>/decisions/<request>              leader; a placement's reservation lives inside it
//! <prefix>/volumes/<name>                   leader: the engine a named volume lives on
//! <prefix>/health/<engine>                  leader (`--docker`) or the engine's agent, on a lease
//! <prefix>/assignments/<engine>/<request>   leader, in the placement's txn: what the agent runs
//! <prefix>/runs/<engine>/<request>          the engine's agent: what became of it
//! <prefix>/profiles/<image, %-escaped>      leader: learned usage per image
//! <prefix>/leader/<lease>                   etcd election
//! <prefix>/leader-resigned                  the last replica that withdrew cleanly (a marker,
//!                                           written as it deletes its campaign key)
//! ```
//!
//! etcd keys are bytes. A request key whose last segment cannot be a request id (not UTF-8,
//! empty, or holding a `/`) is still answered: its decision key mirrors its bytes
//! ([`Keys::odd_decision`]).
//!
//! It may not read or write etcd, nor look inside a value: it knows names, not JSON.

use crate::model::{EngineId, IdError, RequestId};

/// The key schema under one prefix (default `/citadel`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Always starts with `/` and ends with `/`: `/citadel/`.
    root: String,
}

/// A parsed key under the prefix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Key {
    Engine(EngineId),
    Request(RequestId),
    Decision(RequestId),
    Health(EngineId),
    /// `volumes/<name>`: the engine a named volume lives on.
    Volume(String),
    /// A campaign key of the election; the string is etcd's suffix (the lease id in hex).
    Leader(String),
    /// A request key whose last segment cannot be a request id (`requests/`, `requests/a/b`,
    /// or bytes that are not UTF-8), and why. It gets an `invalid` decision at the decision
    /// key with the same segment ([`Key::OddDecision`]). Ids that can name a key but are too
    /// long or unprintable are `Request`s, and get an `invalid` decision the usual way (see
    /// [`RequestId::check`]).
    OddRequest(Vec<u8>, String),
    /// The decision key of an [`Key::OddRequest`], by the same segment.
    OddDecision(Vec<u8>),
    /// An engine key whose last segment is not UTF-8 text: no command line can name it, so it
    /// is never scheduled, and reported (`engine ls`, `citadel check`, the log).
    OddEngine(Vec<u8>),
    /// `assignments/<engine>/<request>`: what the engine's agent must run.
    Assignment(EngineId, RequestId),
    /// `runs/<engine>/<request>`: what the engine's agent reports of it.
    Run(EngineId, RequestId),
}

/// Why a request or engine key whose last segment is not UTF-8 text cannot name an id.
pub const NOT_TEXT_ID: &str = "id: the key's last segment is not UTF-8 text";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("prefix {0:?} must be a path like /citadel, without spaces")]
pub struct PrefixError(String);

impl Default for Keys {
    fn default() -> Self {
        Self {
            root: "/citadel/".to_string(),
        }
    }
}

impl Keys {
    pub fn new(prefix: &str) -> Result<Self, PrefixError> {
        let trimmed = prefix.trim_end_matches('/');
        if trimmed.is_empty() || trimmed.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(PrefixError(prefix.to_string()));
        }
        let mut root = String::new();
        if !trimmed.starts_with('/') {
            root.push('/');
        }
        root.push_str(trimmed);
        root.push('/');
        Ok(Self { root })
    }

    /// `/citadel/`: a range over everything citadel owns.
    pub fn root(&self) -> &str {
        &self.root
    }
    pub fn prefix(&self) -> &str {
        self.root.trim_end_matches('/')
    }

    /// `<root><kind><id>`: built once per key on the leader's hot path, so without `format!`.
    fn join(&self, kind: &str, id: &str) -> String {
        let mut key = String::with_capacity(self.root.len() + kind.len() + id.len());
        key.push_str(&self.root);
        key.push_str(kind);
        key.push_str(id);
        key
    }

    pub fn engines(&self) -> String {
        format!("{}engines/", self.root)
    }
    pub fn engine(&self, id: &EngineId) -> String {
        self.join("engines/", id.as_str())
    }
    pub fn requests(&self) -> String {
        format!("{}requests/", self.root)
    }
    pub fn request(&self, id: &RequestId) -> String {
        self.join("requests/", id.as_str())
    }
    pub fn decisions(&self) -> String {
        format!("{}decisions/", self.root)
    }
    pub fn decision(&self, id: &RequestId) -> String {
        self.join("decisions/", id.as_str())
    }
    pub fn health(&self, engine: &EngineId) -> String {
        self.join("health/", engine.as_str())
    }
    /// `assignments/<engine>/`: one agent's whole range (its etcd role reads only this).
    pub fn assignments_of(&self, engine: &EngineId) -> String {
        let mut key = self.join("assignments/", engine.as_str());
        key.push('/');
        key
    }
    pub fn assignments(&self) -> String {
        format!("{}assignments/", self.root)
    }
    pub fn assignment(&self, engine: &EngineId, id: &RequestId) -> String {
        let mut key = self.assignments_of(engine);
        key.push_str(id.as_str());
        key
    }
    /// `runs/<engine>/`: where one agent reports (its etcd role writes only this).
    pub fn runs_of(&self, engine: &EngineId) -> String {
        let mut key = self.join("runs/", engine.as_str());
        key.push('/');
        key
    }
    pub fn runs(&self) -> String {
        format!("{}runs/", self.root)
    }
    pub fn run(&self, engine: &EngineId, id: &RequestId) -> String {
        let mut key = self.runs_of(engine);
        key.push_str(id.as_str());
        key
    }
    pub fn healths(&self) -> String {
        format!("{}health/", self.root)
    }
    pub fn volumes(&self) -> String {
        format!("{}volumes/", self.root)
    }
    /// A named volume's key; names are checked like request ids (no `/`).
    pub fn volume(&self, name: &str) -> String {
        self.join("volumes/", name)
    }
    pub fn profiles(&self) -> String {
        format!("{}profiles/", self.root)
    }
    /// An image name as one key segment: `/` and `%` are %-escaped (`library%2Fnginx:1`).
    pub fn profile(&self, image: &str) -> String {
        let mut key = self.profiles();
        for c in image.chars() {
            match c {
                '/' => key.push_str("%2F"),
                '%' => key.push_str("%25"),
                c => key.push(c),
            }
        }
        key
    }
    /// The request key whose last segment is `segment`, whatever its bytes.
    pub fn odd_request(&self, segment: &[u8]) -> Vec<u8> {
        self.join_bytes("requests/", segment)
    }
    /// The decision key that answers [`Keys::odd_request`]`(segment)`: the same segment.
    pub fn odd_decision(&self, segment: &[u8]) -> Vec<u8> {
        self.join_bytes("decisions/", segment)
    }
    fn join_bytes(&self, kind: &str, segment: &[u8]) -> Vec<u8> {
        let mut key = Vec::with_capacity(self.root.len() + kind.len() + segment.len());
        key.extend_from_slice(self.root.as_bytes());
        key.extend_from_slice(kind.as_bytes());
        key.extend_from_slice(segment);
        key
    }
    /// The election's name; campaign keys live under `<this>/`.
    pub fn leader(&self) -> String {
        format!("{}leader", self.root)
    }

    /// The resignation marker: a replica that withdraws cleanly writes it in the transaction
    /// that deletes its campaign key, so that a deletion without it is a lease that expired.
    /// Not under `leader/` (it would be a candidate), and of no kind [`Keys::parse`] knows:
    /// releases before it skip it.
    pub fn resigned(&self) -> String {
        format!("{}leader-resigned", self.root)
    }

    /// A key's kind (`requests`, `decisions`, …) and the rest after it, without allocating:
    /// the watch calls this for every event.
    pub fn split<'a>(&self, key: &'a [u8]) -> Option<(&'a str, &'a str)> {
        let key = std::str::from_utf8(key).ok()?;
        key.strip_prefix(self.root.as_str())?.split_once('/')
    }

    /// Parses a key under the prefix. `None` for keys outside it or of no known kind.
    pub fn parse(&self, key: &[u8]) -> Option<Key> {
        let rest = key.strip_prefix(self.root.as_bytes())?;
        let slash = rest.iter().position(|b| *b == b'/')?;
        let (kind, tail) = (&rest[..slash], &rest[slash + 1..]);
        let Ok(tail) = std::str::from_utf8(tail) else {
            return match kind {
                b"requests" => Some(Key::OddRequest(tail.to_vec(), NOT_TEXT_ID.into())),
                b"decisions" => Some(Key::OddDecision(tail.to_vec())),
                b"engines" => Some(Key::OddEngine(tail.to_vec())),
                _ => None,
            };
        };
        match std::str::from_utf8(kind).ok()? {
            "engines" => EngineId::from_key_segment(tail).map(Key::Engine),
            "requests" => Some(match RequestId::from_key_segment(tail) {
                Some(id) => Key::Request(id),
                None => Key::OddRequest(tail.into(), format!("id: {}", bad_id(tail))),
            }),
            "decisions" => Some(match RequestId::from_key_segment(tail) {
                Some(id) => Key::Decision(id),
                None => Key::OddDecision(tail.into()),
            }),
            "health" => EngineId::from_key_segment(tail).map(Key::Health),
            "volumes" => {
                (!tail.is_empty() && !tail.contains('/')).then(|| Key::Volume(tail.into()))
            }
            "leader" => Some(Key::Leader(tail.to_string())),
            "assignments" | "runs" => {
                let (engine, id) = tail.split_once('/')?;
                let engine = EngineId::from_key_segment(engine)?;
                let id = RequestId::from_key_segment(id)?;
                Some(if kind == b"runs" {
                    Key::Run(engine, id)
                } else {
                    Key::Assignment(engine, id)
                })
            }
            _ => None,
        }
    }
}

fn bad_id(raw: &str) -> IdError {
    RequestId::new(raw).err().unwrap_or(IdError::Empty)
}

/// The end of a prefix range: the key just past every key starting with `prefix`.
pub fn prefix_end(prefix: &str) -> Vec<u8> {
    let mut end = prefix.as_bytes().to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rid(s: &str) -> RequestId {
        RequestId::new(s).unwrap()
    }
    fn eid(s: &str) -> EngineId {
        EngineId::new(s).unwrap()
    }

    #[test]
    fn keys_round_trip() {
        let k = Keys::default();
        assert_eq!(
            k.parse(k.engine(&eid("e1")).as_bytes()),
            Some(Key::Engine(eid("e1")))
        );
        assert_eq!(
            k.parse(k.request(&rid("r1")).as_bytes()),
            Some(Key::Request(rid("r1")))
        );
        assert_eq!(
            k.parse(k.decision(&rid("r1")).as_bytes()),
            Some(Key::Decision(rid("r1")))
        );
        assert_eq!(
            k.parse(k.health(&eid("e1")).as_bytes()),
            Some(Key::Health(eid("e1")))
        );
        assert_eq!(
            k.parse(k.assignment(&eid("e1"), &rid("r1")).as_bytes()),
            Some(Key::Assignment(eid("e1"), rid("r1")))
        );
        assert_eq!(
            k.parse(k.run(&eid("e1"), &rid("r1")).as_bytes()),
            Some(Key::Run(eid("e1"), rid("r1")))
        );
        assert!(
            k.assignment(&eid("e1"), &rid("r1"))
                .starts_with(&k.assignments_of(&eid("e1")))
        );
        assert_eq!(k.parse(b"/citadel/runs/e1"), None);
        assert_eq!(k.parse(b"/citadel/runs/e1/a/b"), None);
        assert_eq!(
            k.parse(b"/citadel/leader/694d7a1c2b3e4f01"),
            Some(Key::Leader("694d7a1c2b3e4f01".into()))
        );
        // The resignation marker is no key a reader of any release acts on.
        assert_eq!(k.parse(k.resigned().as_bytes()), None);
        assert_eq!(k.split(k.resigned().as_bytes()), None);
        assert_eq!(
            k.split(b"/citadel/leader/694d7a1c2b3e4f01"),
            Some(("leader", "694d7a1c2b3e4f01"))
        );
    }

    #[test]
    fn odd_request_ids_are_answered_at_the_decision_key_with_the_same_bytes() {
        let k = Keys::default();
        // (request key, its segment, why it cannot be an id)
        let cases: [(&[u8], &[u8], &str); 3] = [
            (b"/citadel/requests/a/b", b"a/b", "id: id contains '/'"),
            (b"/citadel/requests/", b"", "id: id is empty"),
            (
                b"/citadel/requests/r\xff\xfe",
                b"r\xff\xfe",
                "id: the key's last segment is not UTF-8 text",
            ),
        ];
        for (key, segment, why) in cases {
            assert_eq!(
                k.parse(key),
                Some(Key::OddRequest(segment.to_vec(), why.into())),
                "{key:?}"
            );
            assert_eq!(k.odd_request(segment), key);
            let decision = k.odd_decision(segment);
            assert_eq!(k.parse(&decision), Some(Key::OddDecision(segment.to_vec())));
        }
        // An engine key that is not text is named, to be reported; other kinds are not ours.
        assert_eq!(
            k.parse(b"/citadel/engines/e\xff"),
            Some(Key::OddEngine(b"e\xff".to_vec()))
        );
        assert_eq!(k.parse(b"/citadel/health/e\xff"), None);
        // Long ids still name a key, so they get an `invalid` decision rather than silence.
        let long = format!("/citadel/requests/{}", "x".repeat(300));
        match k.parse(long.as_bytes()) {
            Some(Key::Request(id)) => assert_eq!(id.check(), Err(IdError::TooLong(300))),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn prefix_is_normalised_and_isolates() {
        let k = Keys::new("test-run-7/").unwrap();
        assert_eq!(k.root(), "/test-run-7/");
        assert_eq!(k.parse(b"/citadel/requests/r1"), None);
        assert_eq!(k.parse(b"/test-run-7x/requests/r1"), None);
        assert!(Keys::new("/").is_err());
        assert!(Keys::new("/a b").is_err());
    }

    #[test]
    fn prefix_end_covers_the_prefix() {
        assert_eq!(prefix_end("/citadel/"), b"/citadel0".to_vec());
    }
}
