//! The strategies that choose among the engines that fit, and which container `type` each one
//! schedules. Owns the names operators write (`--scheduler TYPE=STRATEGY`); knows nothing of
//! engines or requests.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use super::SchedulerError;

/// How to choose among the engines that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// Least reserved fraction first: spreads load, limits the blast radius of one engine.
    Spread,
    /// Most reserved fraction that still fits: keeps whole engines free for big requests.
    Binpack,
    /// Any engine that fits, chosen by the seed passed in.
    Random,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::Spread => "spread",
            Strategy::Binpack => "binpack",
            Strategy::Random => "random",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = SchedulerError;
    fn from_str(s: &str) -> Result<Self, SchedulerError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "spread" => Ok(Strategy::Spread),
            "binpack" => Ok(Strategy::Binpack),
            "random" => Ok(Strategy::Random),
            other => Err(SchedulerError::UnknownStrategy(other.to_string())),
        }
    }
}

/// Which strategy schedules which container `type`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedulers(BTreeMap<String, Strategy>);

impl Default for Schedulers {
    fn default() -> Self {
        Schedulers(BTreeMap::from([
            ("batch".to_string(), Strategy::Binpack),
            ("service".to_string(), Strategy::Spread),
        ]))
    }
}

impl Schedulers {
    /// The defaults with `TYPE=STRATEGY` overrides applied.
    pub fn with_overrides<S: AsRef<str>>(overrides: &[S]) -> Result<Self, SchedulerError> {
        let mut s = Schedulers::default();
        for o in overrides {
            let o = o.as_ref();
            let (kind, strategy) = o
                .split_once('=')
                .ok_or_else(|| SchedulerError::NotTypeEqualsStrategy(o.to_string()))?;
            let kind = kind.trim();
            if kind.is_empty() {
                return Err(SchedulerError::NoType(o.to_string()));
            }
            s.0.insert(kind.to_string(), strategy.parse()?);
        }
        Ok(s)
    }

    pub fn for_type(&self, kind: &str) -> Result<Strategy, SchedulerError> {
        self.0
            .get(kind)
            .copied()
            .ok_or_else(|| SchedulerError::UnknownType {
                known: self
                    .0
                    .keys()
                    .map(String::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheduler_map_defaults_and_overrides() {
        let s = Schedulers::default();
        assert_eq!(s.for_type("service"), Ok(Strategy::Spread));
        assert_eq!(s.for_type("batch"), Ok(Strategy::Binpack));
        let err = s.for_type("daemon").unwrap_err().to_string();
        assert!(err.contains("known types: batch, service"), "{err}");
        let s = Schedulers::with_overrides(&["batch=random", "gpu=binpack"]).unwrap();
        assert_eq!(s.for_type("batch"), Ok(Strategy::Random));
        assert_eq!(s.for_type("gpu"), Ok(Strategy::Binpack));
        assert!(Schedulers::with_overrides(&["batch"]).is_err());
        assert!(Schedulers::with_overrides(&["batch=fast"]).is_err());
    }
}
