//! The task lifecycle, defined once: which operation moves a task from which
//! states to which. Both store backends follow it; the differential test
//! checks every state change either makes against this table, and the
//! README's state table is explained by it.

use crate::state::TaskState::{self, *};

/// An operation of the store that may change a task's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// Submitted: QUEUED, or SCHEDULED with a countdown or ETA.
    Submit,
    /// A due SCHEDULED task enters its queue.
    Promote,
    /// A worker session leases a QUEUED task; or the lease finds it expired,
    /// or rate-parks it until its slot.
    Lease,
    /// The worker reported that the handler started (`--track-started`).
    Start,
    /// The handler returned a value.
    Succeed,
    /// The handler failed and the policy allows a retry: back to SCHEDULED.
    Retry,
    /// The handler failed for good: a dead letter.
    Fail,
    /// The lease was given back or lost (stream broke, session reaped).
    Release,
    /// Revoked before it finished.
    Cancel,
    /// Not started before its `expires` instant.
    Expire,
    /// A dead letter queued again.
    Replay,
    /// A finished task deleted (ForgetTask, or its result TTL passed).
    Forget,
    /// A workflow node's parents finished as its trigger needs: it enters
    /// its queue (SCHEDULED with a delay); or it was a link_error callback
    /// none of whose parents failed, or a dependent of a cancelled node:
    /// CANCELLED.
    Ready,
    /// A workflow node that cannot run because a parent failed or expired.
    DependencyFailed,
}

/// One rule: `operation` takes a task in one of `from` (none: it did not
/// exist) to `to` (none: it no longer exists).
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    /// The operation.
    pub operation: Operation,
    /// States it applies to.
    pub from: &'static [Option<TaskState>],
    /// The state after it.
    pub to: Option<TaskState>,
}

const LEASED_OR_RUNNING: &[Option<TaskState>] = &[Some(Leased), Some(Running)];
const UNFINISHED: &[Option<TaskState>] = &[
    Some(Scheduled),
    Some(Queued),
    Some(Leased),
    Some(Running),
    Some(Waiting),
];
const TERMINAL: &[Option<TaskState>] = &[
    Some(Succeeded),
    Some(Failed),
    Some(Cancelled),
    Some(Expired),
];

/// The lifecycle.
pub const RULES: &[Rule] = &[
    Rule {
        operation: Operation::Submit,
        from: &[None],
        to: Some(Queued),
    },
    Rule {
        operation: Operation::Submit,
        from: &[None],
        to: Some(Scheduled),
    },
    Rule {
        operation: Operation::Promote,
        from: &[Some(Scheduled)],
        to: Some(Queued),
    },
    Rule {
        operation: Operation::Lease,
        from: &[Some(Queued)],
        to: Some(Leased),
    },
    // A rate-limited task whose slot is later waits for it, SCHEDULED.
    Rule {
        operation: Operation::Lease,
        from: &[Some(Queued)],
        to: Some(Scheduled),
    },
    Rule {
        operation: Operation::Start,
        from: &[Some(Leased)],
        to: Some(Running),
    },
    Rule {
        operation: Operation::Succeed,
        from: LEASED_OR_RUNNING,
        to: Some(Succeeded),
    },
    Rule {
        operation: Operation::Retry,
        from: LEASED_OR_RUNNING,
        to: Some(Scheduled),
    },
    Rule {
        operation: Operation::Fail,
        from: LEASED_OR_RUNNING,
        to: Some(Failed),
    },
    Rule {
        operation: Operation::Release,
        from: LEASED_OR_RUNNING,
        to: Some(Queued),
    },
    Rule {
        operation: Operation::Cancel,
        from: UNFINISHED,
        to: Some(Cancelled),
    },
    Rule {
        operation: Operation::Expire,
        from: &[Some(Scheduled), Some(Queued)],
        to: Some(Expired),
    },
    Rule {
        operation: Operation::Replay,
        from: &[Some(Failed)],
        to: Some(Queued),
    },
    Rule {
        operation: Operation::Forget,
        from: TERMINAL,
        to: None,
    },
    Rule {
        operation: Operation::Submit,
        from: &[None],
        to: Some(Waiting),
    },
    Rule {
        operation: Operation::Ready,
        from: &[Some(Waiting)],
        to: Some(Queued),
    },
    Rule {
        operation: Operation::Ready,
        from: &[Some(Waiting)],
        to: Some(Scheduled),
    },
    Rule {
        operation: Operation::DependencyFailed,
        from: &[Some(Waiting)],
        to: Some(Failed),
    },
    // A workflow's head settles when its last node finishes.
    Rule {
        operation: Operation::Ready,
        from: &[Some(Waiting)],
        to: Some(Succeeded),
    },
];

/// Whether some operation takes a task from `from` to `to` in one step
/// (staying put is always allowed).
pub fn allows(from: Option<TaskState>, to: Option<TaskState>) -> bool {
    from == to
        || RULES
            .iter()
            .any(|rule| rule.to == to && rule.from.contains(&from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_allows_the_lifecycle_and_nothing_else() {
        assert!(allows(None, Some(Queued)));
        assert!(allows(Some(Running), Some(Scheduled)));
        assert!(allows(Some(Failed), Some(Queued)));
        assert!(allows(Some(Succeeded), None));
        assert!(!allows(Some(Succeeded), Some(Queued)), "a success is final");
        assert!(
            !allows(Some(Running), None),
            "only finished tasks are deleted"
        );
        assert!(
            !allows(Some(Leased), Some(Expired)),
            "a started task does not expire"
        );
        assert!(!allows(None, Some(Running)));
    }
}
