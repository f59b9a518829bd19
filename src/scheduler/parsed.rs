//! A request's bytes made ready to schedule: parsed, checked (its id too) and its constraints
//! compiled, once, when the request is read.

use std::sync::Arc;

use super::Prepared;
use crate::model::{Invalid, Request, RequestId};

/// A request ready to schedule, or why it is invalid. Made before the cache's lock is taken:
/// parsing and compiling constraints is the costliest thing a request asks of a replica.
pub type Parsed = Result<Arc<Prepared>, Invalid>;

/// Parses and checks a request (its id too) and compiles its constraints.
pub fn prepare(id: &RequestId, raw: &[u8]) -> Parsed {
    if let Err(e) = id.check() {
        return Err(Invalid(format!("id: {e}")));
    }
    let request = Request::parse(raw)?;
    Prepared::new(request)
        .map(Arc::new)
        .map_err(|e| Invalid(e.to_string()))
}
