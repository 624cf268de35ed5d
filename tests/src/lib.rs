//! Cross-service test harness.
