//! Task ids: UUIDv7 (time-ordered) whose last two bytes name the store
//! partition, so any service can find a task's partition from its id alone.

use std::fmt;

use uuid::Uuid;

use crate::error::{ConveyorError, Result};

/// A task id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(Uuid);

impl TaskId {
    /// A new time-ordered id placed in `partition`.
    pub fn new(partition: u16) -> Self {
        let mut bytes = *Uuid::now_v7().as_bytes();
        bytes[14..16].copy_from_slice(&partition.to_be_bytes());
        Self(Uuid::from_bytes(bytes))
    }

    /// Parses the hyphenated form; `field` names the request field on error.
    pub fn parse(text: &str, field: &str) -> Result<Self> {
        if text.is_empty() {
            return Err(ConveyorError::invalid(field, "must not be empty"));
        }
        Uuid::parse_str(text)
            .map(Self)
            .map_err(|_| ConveyorError::invalid(field, "must be a UUID"))
    }

    /// The partition chosen at creation.
    pub fn partition(&self) -> u16 {
        let bytes = self.0.as_bytes();
        u16::from_be_bytes([bytes[14], bytes[15]])
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_round_trips_and_ids_are_ordered() {
        let first = TaskId::new(7);
        let second = TaskId::new(7);
        assert_eq!(first.partition(), 7);
        assert!(first.to_string() < second.to_string() || first.as_uuid() < second.as_uuid());
        let parsed = TaskId::parse(&first.to_string(), "task_id").unwrap();
        assert_eq!(parsed, first);
        assert_eq!(parsed.as_uuid().get_version_num(), 7);
    }

    #[test]
    fn bad_ids_name_the_field() {
        let error = TaskId::parse("nope", "task_id").unwrap_err();
        assert!(error.to_string().contains("task_id"));
        assert!(TaskId::parse("", "task_id").is_err());
    }
}
