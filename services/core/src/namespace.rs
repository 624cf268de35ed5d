//! Namespaces: every task, queue, schedule, idempotency key, limit and worker
//! belongs to one, and nothing of one is visible from another.
//!
//! In the store, the namespace `default` (the empty name on the wire) adds
//! nothing to any key, so single-tenant deployments pay nothing. Another
//! namespace `ns` scopes queues as `ns/queue` ('/' cannot occur in queue
//! names) and free-form keys (idempotency keys, rate buckets, concurrency
//! keys, schedule ids) as `ns` + U+001F + key (control characters cannot
//! occur in those keys).

use crate::error::{ConveyorError, Result};
use crate::validate::check_name;

/// The namespace of requests that name none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// Separates a namespace from a free-form key.
const KEY_SEPARATOR: char = '\u{1f}';

/// A checked namespace name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Namespace(String);

impl Namespace {
    /// Checks a namespace from a request (`field` names it in errors); ""
    /// is `default`.
    pub fn parse(field: &str, name: &str) -> Result<Self> {
        if name.is_empty() || name == DEFAULT_NAMESPACE {
            return Ok(Self::default());
        }
        check_name(field, name, 100, &[])?;
        Ok(Self(name.to_string()))
    }

    /// The namespace of a stored record ("" is `default`), unchecked.
    pub fn from_stored(name: &str) -> Self {
        if name == DEFAULT_NAMESPACE {
            Self::default()
        } else {
            Self(name.to_string())
        }
    }

    /// Whether this is `default`.
    pub fn is_default(&self) -> bool {
        self.0.is_empty()
    }

    /// The name as stored in records: "" for `default`.
    pub fn stored(&self) -> &str {
        &self.0
    }

    /// The name as shown to users.
    pub fn name(&self) -> &str {
        if self.0.is_empty() {
            DEFAULT_NAMESPACE
        } else {
            &self.0
        }
    }

    /// A queue of this namespace, as the store names it.
    pub fn queue(&self, queue: &str) -> String {
        if self.is_default() {
            queue.to_string()
        } else {
            format!("{}/{queue}", self.0)
        }
    }

    /// A free-form key of this namespace, as the store names it.
    pub fn key(&self, key: &str) -> String {
        if self.is_default() {
            key.to_string()
        } else {
            format!("{}{KEY_SEPARATOR}{key}", self.0)
        }
    }

    /// The key without this namespace's scope, when it belongs to it.
    pub fn unscope_key<'a>(&self, scoped: &'a str) -> Option<&'a str> {
        if self.is_default() {
            return (!scoped.contains(KEY_SEPARATOR)).then_some(scoped);
        }
        scoped
            .strip_prefix(self.0.as_str())?
            .strip_prefix(KEY_SEPARATOR)
    }
}

/// The namespace and plain queue name of a store queue name.
pub fn split_queue(scoped: &str) -> (Namespace, &str) {
    match scoped.split_once('/') {
        Some((namespace, queue)) => (Namespace(namespace.to_string()), queue),
        None => (Namespace::default(), scoped),
    }
}

/// The namespace and plain key of a store key made by [`Namespace::key`].
pub fn split_key(scoped: &str) -> (Namespace, &str) {
    match scoped.split_once(KEY_SEPARATOR) {
        Some((namespace, key)) => (Namespace(namespace.to_string()), key),
        None => (Namespace::default(), scoped),
    }
}

/// `NOT_FOUND`-style check: whether a record of `stored` belongs to `caller`.
pub fn owns(caller: &Namespace, stored: &str) -> bool {
    caller == &Namespace::from_stored(stored)
}

/// Refuses a namespace mismatch as the thing not being there.
pub fn check_owner(caller: &Namespace, stored: &str, kind: &'static str, id: &str) -> Result<()> {
    if owns(caller, stored) {
        Ok(())
    } else {
        Err(ConveyorError::NotFound {
            kind,
            id: id.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_adds_nothing_and_others_scope() {
        let default = Namespace::parse("namespace", "").unwrap();
        assert_eq!(default, Namespace::parse("namespace", "default").unwrap());
        assert_eq!(default.queue("q"), "q");
        assert_eq!(default.key("k"), "k");
        let team = Namespace::parse("namespace", "team-a").unwrap();
        assert_eq!(team.queue("q"), "team-a/q");
        assert_eq!(split_queue("team-a/q"), (team.clone(), "q"));
        assert_eq!(split_queue("q"), (default.clone(), "q"));
        let key = team.key("k");
        assert_eq!(team.unscope_key(&key), Some("k"));
        assert_eq!(default.unscope_key(&key), None);
        assert_eq!(team.unscope_key("k"), None);
        assert!(Namespace::parse("namespace", "a/b").is_err());
        assert!(Namespace::parse("namespace", "x\u{1f}").is_err());
        assert!(owns(&default, ""));
        assert!(!owns(&team, ""));
    }
}
