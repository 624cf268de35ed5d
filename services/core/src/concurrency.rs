//! Concurrency keys: distributed semaphores a task may need several of at
//! once, taken all-or-nothing. Both stores implement the same policy, which
//! the differential test holds them to; this module names its constants.
//!
//! - **All or nothing.** A task is admitted (leased) only when every one of
//!   its keys has a free permit; it takes them all in one atomic store
//!   operation and gives them all back when its attempt ends. A task never
//!   holds some permits while it waits for others, so no set of tasks can
//!   deadlock however their keys overlap (the dining philosophers).
//! - **Parking.** A task that cannot be admitted is *parked* in the waiting
//!   line of each of its keys, ordered by one sequence number per task taken
//!   from one counter when it first parks (it keeps it when it parks again),
//!   so every line orders any two tasks the same way.
//! - **Waking.** When a key gains capacity (a permit given back, a
//!   reservation dropped, a parked task leaving a line with room in it), the
//!   first [`WAKE_WINDOW`] tasks of its line are examined oldest first and
//!   those that would be admitted now go back to the head of their queue.
//! - **Bounded overtaking.** A younger task may take a permit while an older
//!   one waits for it (that keeps forks busy while a philosopher waits for
//!   its second fork). Each key counts these overtakes of its oldest waiter;
//!   after [`OVERTAKE_LIMIT`] of them, one permit of the key is *reserved*
//!   for that waiter: younger tasks leave it free. The oldest waiting task is
//!   therefore overtaken at most [`OVERTAKE_LIMIT`] times per key before its
//!   keys are held for it, then waits only for the tasks already holding
//!   them: nobody starves.

/// Most concurrency keys of one task (`concurrency_key` included).
pub const MAX_KEYS: usize = 8;

/// Overtakes of a key's oldest waiter before a permit is reserved for it.
pub const OVERTAKE_LIMIT: u32 = 4;

/// Waiting tasks examined when a key gains capacity.
pub const WAKE_WINDOW: usize = 32;

/// Separator of a task's keys when stored as one string (keys exclude it).
pub const KEY_SEPARATOR: char = '|';
