//! The conformance suite against each backend.

async fn memory() -> Option<std::sync::Arc<dyn conveyor_store::Store>> {
    Some(conveyor_store::conformance::memory_store().await)
}

conveyor_store::conformance_suite!(memory_backend, super::memory);
conveyor_store::conformance_suite!(redis_backend, conveyor_store::conformance::redis_store);
