//! Helpers shared by the store's integration tests.

use conveyor_api::pb;
use conveyor_core::Limits;
use conveyor_core::validate::validate_spec;

/// A valid `add` task with every option at its default, submitted now.
pub fn task() -> conveyor_core::NewTask {
    let spec = pb::TaskSpec {
        name: "add".into(),
        ..Default::default()
    };
    validate_spec(
        spec,
        "task",
        &Limits::default(),
        conveyor_core::time::now_ms(),
        0,
    )
    .unwrap()
}
