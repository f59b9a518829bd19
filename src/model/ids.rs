//! Request and engine ids: checked once, shared by reference count.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

use super::MAX_ID_BYTES;

/// Why an id cannot name a key. The id is not quoted back: the text may go into a decision.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("id is empty")]
    Empty,
    #[error("id contains '/'")]
    Slash,
    #[error("id is {0} bytes long, the limit is {MAX_ID_BYTES}")]
    TooLong(usize),
    #[error("id contains a control character or whitespace")]
    Unprintable,
}

fn check_id(id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty);
    }
    if id.contains('/') {
        return Err(IdError::Slash);
    }
    if id.len() > MAX_ID_BYTES {
        return Err(IdError::TooLong(id.len()));
    }
    if id.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(IdError::Unprintable);
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// Shared, not copied: the cache, the leader's work sets and its in-flight batches
        /// each hold every id, and a clone is a reference count.
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(std::sync::Arc<str>);

        impl $name {
            /// A valid id: non-empty, no `/`, at most 253 bytes, printable.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                check_id(&id)?;
                Ok(Self(id.into()))
            }
            /// A key segment as etcd holds it: non-empty and without `/`. The stricter checks
            /// of [`Self::new`] are applied later, so that a long or odd id still gets an
            /// `invalid` decision instead of silence.
            pub fn from_key_segment(id: &str) -> Option<Self> {
                Self::names_key_segment(id).then(|| Self(id.into()))
            }
            /// Whether [`Self::from_key_segment`] would take `id`, without building one.
            pub fn names_key_segment(id: &str) -> bool {
                !id.is_empty() && !id.contains('/')
            }
            /// The strict checks of [`Self::new`], for an id that came from a key.
            pub fn check(&self) -> Result<(), IdError> {
                check_id(&self.0)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        // Hash and Eq are those of the text, so maps keyed by ids answer a lookup by `&str`.
        impl std::borrow::Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }
    };
}

id_type!(
    /// The last segment of `requests/<id>`.
    RequestId
);
id_type!(
    /// The last segment of `engines/<id>`.
    EngineId
);
id_type!(
    /// A controller replica's id (`controller --id`): in its election key's value and in the
    /// decisions it writes (`decided_by`).
    ReplicaId
);
