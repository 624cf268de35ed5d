//! Task states and the transitions between them.

use conveyor_api::pb;

/// The lifecycle state of a task; numbering matches `conveyor.v1.TaskState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TaskState {
    /// Due later.
    Scheduled,
    /// In its queue.
    Queued,
    /// Assigned to a worker under a lease.
    Leased,
    /// The handler started.
    Running,
    /// Finished with a result.
    Succeeded,
    /// Finished with an error, no retries left.
    Failed,
    /// Cancelled before finishing.
    Cancelled,
    /// Not started before `expires`.
    Expired,
    /// A workflow node waiting for its parents.
    Waiting,
}

impl TaskState {
    /// Whether the state is final.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::Cancelled | Self::Expired
        )
    }

    /// Whether a worker holds the task.
    pub fn is_leased(self) -> bool {
        matches!(self, Self::Leased | Self::Running)
    }

    /// The wire and store number.
    pub fn as_i32(self) -> i32 {
        self.to_pb() as i32
    }

    /// From the wire and store number.
    pub fn from_i32(value: i32) -> Option<Self> {
        Some(match pb::TaskState::try_from(value).ok()? {
            pb::TaskState::Scheduled => Self::Scheduled,
            pb::TaskState::Queued => Self::Queued,
            pb::TaskState::Leased => Self::Leased,
            pb::TaskState::Running => Self::Running,
            pb::TaskState::Succeeded => Self::Succeeded,
            pb::TaskState::Failed => Self::Failed,
            pb::TaskState::Cancelled => Self::Cancelled,
            pb::TaskState::Expired => Self::Expired,
            pb::TaskState::Waiting => Self::Waiting,
            pb::TaskState::Unspecified => return None,
        })
    }

    /// The protobuf enum.
    pub fn to_pb(self) -> pb::TaskState {
        match self {
            Self::Scheduled => pb::TaskState::Scheduled,
            Self::Queued => pb::TaskState::Queued,
            Self::Leased => pb::TaskState::Leased,
            Self::Running => pb::TaskState::Running,
            Self::Succeeded => pb::TaskState::Succeeded,
            Self::Failed => pb::TaskState::Failed,
            Self::Cancelled => pb::TaskState::Cancelled,
            Self::Expired => pb::TaskState::Expired,
            Self::Waiting => pb::TaskState::Waiting,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_round_trip() {
        for value in 1..=8 {
            let state = TaskState::from_i32(value).unwrap();
            assert_eq!(state.as_i32(), value);
        }
        assert_eq!(TaskState::from_i32(0), None);
        assert!(TaskState::Expired.is_terminal());
        assert!(!TaskState::Running.is_terminal());
    }
}
