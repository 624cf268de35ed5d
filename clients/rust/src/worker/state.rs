//! The pure parts of a worker session: its phases and their transitions, how
//! it ends, and how many credits it may grant.

use std::time::Duration;

use conveyor_api::pb;
use tokio::time::Instant;

use crate::error::Error;
use crate::payload::duration_from_proto;

/// Heartbeat interval when Welcome names none.
const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(10);
/// Shortest heartbeat interval honoured, against a runaway loop.
const MIN_HEARTBEAT: Duration = Duration::from_millis(10);
/// Credit limit when Welcome names none (the protocol's own limit).
const DEFAULT_MAX_CREDITS: usize = 1024;

/// How a session ended, which decides what the worker does next.
#[derive(Debug)]
pub(crate) enum SessionEnd {
    /// Local shutdown: running tasks finished or the grace period passed.
    Stopped,
    /// The dispatcher asked to drain and the session did: reconnect.
    Drained,
    /// The stream failed or ended unasked: reconnect after a backoff.
    Broken {
        error: Error,
        /// Whether Welcome arrived, i.e. the connection itself worked.
        welcomed: bool,
    },
}

impl SessionEnd {
    pub(crate) fn broken(error: Error, welcomed: bool) -> SessionEnd {
        SessionEnd::Broken { error, welcomed }
    }
}

/// The phase of a session. Transitions happen only through the methods
/// below.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Taking work.
    Active,
    /// Taking no more work; running tasks may finish until `deadline`.
    Draining {
        deadline: Instant,
        /// True when the drain is the worker's own shutdown (rather than, or
        /// as well as, the dispatcher's request): the worker then stops
        /// instead of reconnecting.
        stopping: bool,
    },
}

impl Phase {
    /// Starts draining, or tightens a drain already under way: the earlier
    /// deadline wins, and a local shutdown request is never forgotten.
    pub(crate) fn drain(self, stopping: bool, grace: Duration) -> Phase {
        let proposed = Instant::now() + grace;
        match self {
            Phase::Active => Phase::Draining {
                deadline: proposed,
                stopping,
            },
            Phase::Draining {
                deadline,
                stopping: already_stopping,
            } => Phase::Draining {
                deadline: deadline.min(proposed),
                stopping: already_stopping || stopping,
            },
        }
    }

    pub(crate) fn is_draining(self) -> bool {
        matches!(self, Phase::Draining { .. })
    }

    pub(crate) fn is_stopping(self) -> bool {
        matches!(self, Phase::Draining { stopping: true, .. })
    }

    pub(crate) fn deadline(self) -> Option<Instant> {
        match self {
            Phase::Active => None,
            Phase::Draining { deadline, .. } => Some(deadline),
        }
    }

    /// The end of a draining session once nothing runs any more.
    pub(crate) fn completed(self, idle: bool) -> Option<SessionEnd> {
        if idle {
            self.ended_by_dispatcher()
        } else {
            None
        }
    }

    /// The end of a session whose drain deadline passed.
    pub(crate) fn grace_over(self) -> SessionEnd {
        self.ended_by_dispatcher().unwrap_or(SessionEnd::Drained)
    }

    /// The end of a session whose stream the dispatcher closed: expected
    /// while draining, a failure (`None`) otherwise.
    pub(crate) fn ended_by_dispatcher(self) -> Option<SessionEnd> {
        match self {
            Phase::Active => None,
            Phase::Draining { stopping: true, .. } => Some(SessionEnd::Stopped),
            Phase::Draining {
                stopping: false, ..
            } => Some(SessionEnd::Drained),
        }
    }
}

/// Credits to grant now, so that running tasks plus unused credits never
/// exceed the worker's slots, nor unused credits the session's limit.
/// `in_flight` counts every task still running, including those abandoned
/// by an earlier session, as they still hold slots.
pub(crate) fn credits_to_grant(
    concurrency: usize,
    in_flight: usize,
    outstanding: usize,
    max_credits: usize,
    draining: bool,
) -> usize {
    if draining {
        return 0;
    }
    let free_slots = concurrency.saturating_sub(in_flight.saturating_add(outstanding));
    let credit_room = max_credits.saturating_sub(outstanding);
    free_slots.min(credit_room)
}

/// How often to heartbeat: the worker's override, else Welcome's interval.
pub(crate) fn heartbeat_interval(
    welcome: &pb::Welcome,
    worker_override: Option<Duration>,
) -> Duration {
    worker_override
        .or_else(|| duration_from_proto(welcome.heartbeat_interval.as_ref()))
        .unwrap_or(DEFAULT_HEARTBEAT)
        .max(MIN_HEARTBEAT)
}

/// Most credits that may be outstanding in the session Welcome opened.
pub(crate) fn max_credits(welcome: &pb::Welcome) -> usize {
    match welcome.max_credits {
        0 => DEFAULT_MAX_CREDITS,
        limit => usize::try_from(limit).unwrap_or(usize::MAX),
    }
}

/// Errors that reconnecting would only repeat.
pub(crate) fn is_fatal(error: &Error) -> bool {
    match error {
        Error::Rpc(status) => matches!(
            status.code(),
            tonic::Code::InvalidArgument
                | tonic::Code::Unauthenticated
                | tonic::Code::PermissionDenied
                | tonic::Code::Unimplemented
        ),
        Error::Protocol(_) | Error::Config(_) => true,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_free_slots_up_to_the_credit_limit() {
        assert_eq!(credits_to_grant(8, 0, 0, 1024, false), 8, "initial grant");
        assert_eq!(
            credits_to_grant(8, 3, 5, 1024, false),
            0,
            "all slots spoken for"
        );
        assert_eq!(
            credits_to_grant(8, 1, 5, 1024, false),
            2,
            "two slots freed at once"
        );
        assert_eq!(
            credits_to_grant(2000, 0, 0, 1024, false),
            1024,
            "capped by Welcome"
        );
        assert_eq!(credits_to_grant(2000, 0, 1000, 1024, false), 24);
        assert_eq!(
            credits_to_grant(8, 10, 0, 1024, false),
            0,
            "abandoned tasks hold slots"
        );
        assert_eq!(
            credits_to_grant(8, 0, 0, 1024, true),
            0,
            "none while draining"
        );
    }

    #[test]
    fn only_errors_that_retrying_repeats_are_fatal() {
        assert!(is_fatal(&tonic::Status::unauthenticated("no token").into()));
        assert!(is_fatal(
            &tonic::Status::invalid_argument("bad hello").into()
        ));
        assert!(is_fatal(&Error::Protocol("no welcome".into())));
        assert!(!is_fatal(&tonic::Status::unavailable("restarting").into()));
        assert!(!is_fatal(&tonic::Status::deadline_exceeded("slow").into()));
        assert!(!is_fatal(&tonic::Status::resource_exhausted("busy").into()));
    }

    #[test]
    fn reads_session_limits_from_welcome() {
        let welcome = pb::Welcome {
            heartbeat_interval: Some(prost_types::Duration {
                seconds: 2,
                nanos: 0,
            }),
            max_credits: 64,
            ..Default::default()
        };
        assert_eq!(heartbeat_interval(&welcome, None), Duration::from_secs(2));
        let quick = Some(Duration::from_millis(50));
        assert_eq!(
            heartbeat_interval(&welcome, quick),
            Duration::from_millis(50)
        );
        assert_eq!(max_credits(&welcome), 64);
        let empty = pb::Welcome::default();
        assert_eq!(heartbeat_interval(&empty, None), DEFAULT_HEARTBEAT);
        assert_eq!(
            heartbeat_interval(&empty, Some(Duration::ZERO)),
            MIN_HEARTBEAT
        );
        assert_eq!(max_credits(&empty), 1024);
    }

    #[tokio::test(start_paused = true)]
    async fn drain_keeps_the_earliest_deadline_and_the_stop_request() {
        let start = Instant::now();
        let local = Phase::Active.drain(true, Duration::from_secs(30));
        assert_eq!(local.deadline(), Some(start + Duration::from_secs(30)));
        assert!(local.is_stopping());

        let tightened = local.drain(false, Duration::from_secs(5));
        assert_eq!(tightened.deadline(), Some(start + Duration::from_secs(5)));
        assert!(
            tightened.is_stopping(),
            "a dispatcher drain does not cancel a stop"
        );

        let dispatcher = Phase::Active.drain(false, Duration::from_secs(5));
        assert!(dispatcher.is_draining() && !dispatcher.is_stopping());
        let widened = dispatcher.drain(true, Duration::from_secs(30));
        assert_eq!(widened.deadline(), Some(start + Duration::from_secs(5)));
        assert!(widened.is_stopping());
    }

    #[tokio::test(start_paused = true)]
    async fn ends_by_phase() {
        assert!(
            Phase::Active.completed(true).is_none(),
            "idle but active goes on"
        );
        assert!(
            Phase::Active.ended_by_dispatcher().is_none(),
            "unasked end is a failure"
        );
        let stopping = Phase::Active.drain(true, Duration::from_secs(1));
        assert!(
            stopping.completed(false).is_none(),
            "waits for running tasks"
        );
        assert!(matches!(
            stopping.completed(true),
            Some(SessionEnd::Stopped)
        ));
        assert!(matches!(stopping.grace_over(), SessionEnd::Stopped));
        let drained = Phase::Active.drain(false, Duration::from_secs(1));
        assert!(matches!(drained.completed(true), Some(SessionEnd::Drained)));
        assert!(matches!(
            drained.ended_by_dispatcher(),
            Some(SessionEnd::Drained)
        ));
        assert!(matches!(drained.grace_over(), SessionEnd::Drained));
    }
}
